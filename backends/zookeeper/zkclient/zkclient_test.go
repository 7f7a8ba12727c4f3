package zkclient

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
)

// start starts a client of servers, closed when the test ends, and
// counts the times it went back in time.
func start(t *testing.T, servers ...string) (*Client, *atomic.Int32) {
	t.Helper()
	var wentBack atomic.Int32
	c, err := New(Options{Servers: servers, SessionTimeout: 10 * time.Second, WentBack: func() { wentBack.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, &wentBack
}

func hasSession(c *Client) func() bool {
	return func() bool { return c.Conn().State() == zk.StateHasSession }
}

// writes makes n writes through c, so that it has seen a zxid above n.
func writes(t *testing.T, c *Client, n int) {
	t.Helper()
	for i := range n {
		if _, err := c.Conn().Create(fmt.Sprintf("/n%d", i), nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
}

// A ZooKeeper wiped and started again refuses the session of a client
// that has seen a newer zxid: the client replaces its connection with a
// fresh one, which gets a new session, and says so once.
func TestWipedGetsAFreshSession(t *testing.T) {
	srv := zktest.Start(t)
	c, wentBack := start(t, srv.Addr)
	testutil.Eventually(t, 15*time.Second, "a session", hasSession(c))
	writes(t, c, 30)
	old := c.Conn()
	first := old.SessionID()

	srv.Wipe()
	testutil.Eventually(t, 20*time.Second, "a session from the wiped ZooKeeper", func() bool {
		return c.Conn() != old && c.Conn().State() == zk.StateHasSession
	})
	if c.Conn().SessionID() == first {
		t.Error("the fresh connection has the old session")
	}
	if _, err := c.Conn().Create("/after", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Errorf("a write in the fresh session: %v", err)
	}
	if n := wentBack.Load(); n != 1 {
		t.Errorf("went back in time %d times, want once", n)
	}
	if _, _, err := old.Exists("/"); err == nil {
		t.Error("the old connection still answers: it was not closed")
	}
}

// A server refuses a new client that has seen a newer zxid than its own,
// and answers one that has not: the check a probe makes.
func TestRefuses(t *testing.T) {
	srv := zktest.Start(t)
	c, _ := start(t, srv.Addr)
	testutil.Eventually(t, 15*time.Second, "a session", hasSession(c))
	writes(t, c, 3)
	_, stat, err := c.Conn().Exists("/n2")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		zxid int64
		want bool
	}{{0, false}, {stat.Czxid, false}, {stat.Czxid + 1000, true}} {
		if got := refuses(srv.Addr, tc.zxid); got != tc.want {
			t.Errorf("a handshake that has seen zxid %#x (the server's is about %#x): refused %v, want %v", tc.zxid, stat.Czxid, got, tc.want)
		}
	}
}

// A ZooKeeper stopped and started again with its data is merely down for
// a while (and refuses handshakes while it starts): the client resumes
// its session and replaces nothing.
func TestRestartedKeepsTheSession(t *testing.T) {
	srv := zktest.Start(t)
	c, wentBack := start(t, srv.Addr)
	testutil.Eventually(t, 15*time.Second, "a session", hasSession(c))
	writes(t, c, 30)
	old := c.Conn()
	first := old.SessionID()

	srv.Stop()
	srv.Restart()
	testutil.Eventually(t, 20*time.Second, "the session back", hasSession(c))
	if c.Conn() != old || c.Conn().SessionID() != first || wentBack.Load() != 0 {
		t.Errorf("after a restart: session %x (was %x), went back in time %d times; want the same connection and session",
			c.Conn().SessionID(), first, wentBack.Load())
	}
}

// fakeServer accepts connections on 127.0.0.1, reads each one's connect
// request and hands the connection to answer; it counts the connections.
func fakeServer(t *testing.T, answer func(net.Conn)) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	var conns sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conns.Go(func() {
				defer conn.Close()
				_, _ = conn.Read(make([]byte, 64)) // the connect request
				answer(conn)
			})
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done; conns.Wait() })
	return ln.Addr().String(), accepted
}

// A server that closes every connection right after the handshake, as
// one without a quorum does (a fake: a single real server cannot stay
// so), refuses a fresh client too: nothing is replaced.
func TestNotServingIsNotWentBack(t *testing.T) {
	addr, accepted := fakeServer(t, func(net.Conn) {})
	c, wentBack := start(t, addr)
	first := c.Conn()
	// the client's handshakes and a fresh client's, refused several times
	testutil.Eventually(t, 20*time.Second, "handshakes refused", func() bool { return accepted.Load() >= 6 })
	if c.Conn() != first || wentBack.Load() != 0 {
		t.Errorf("replaced the connection (went back in time %d times) though no server serves anyone", wentBack.Load())
	}
}

// A server that never answers a handshake (as ZooKeeper does with a
// connection accepted while it starts; a fake, since a real one does so
// only at random) is given up after a few seconds and tried again, not
// after ten read timeouts (over a minute with a 10 s session); it is not
// taken for one that refused the session.
func TestUnansweredHandshakeIsTriedAgain(t *testing.T) {
	stop := make(chan struct{})
	addr, accepted := fakeServer(t, func(net.Conn) { <-stop })
	defer close(stop)
	c, wentBack := start(t, addr)
	first := c.Conn()
	testutil.Eventually(t, 10*time.Second, "the handshake tried again", func() bool { return accepted.Load() >= 2 })
	if c.Conn() != first || wentBack.Load() != 0 {
		t.Errorf("replaced the connection (went back in time %d times) though no server refused it", wentBack.Load())
	}
}

// After a connection, the first round of servers goes at once (the
// reconnection that follows a lost connection); the next rounds wait, as
// go-zookeeper's own provider makes them.
func TestQuickRetry(t *testing.T) {
	for _, servers := range [][]string{{"127.0.0.1:1"}, {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}} {
		q := &quickRetry{DNSHostProvider: zk.NewDNSHostProvider()}
		if err := q.Init(servers); err != nil {
			t.Fatal(err)
		}
		waits := func(n int) (w []bool) {
			for range n {
				_, wait := q.Next()
				w = append(w, wait)
			}
			return w
		}
		waits(1) // the first connection
		q.Connected()
		n := len(servers)
		got := waits(2 * n)
		for i, wait := range got {
			if want := i == 2*n-1; wait != want {
				t.Errorf("%d servers: rounds after a connection wait %v; want only the second round's last server to wait", n, got)
				break
			}
		}
	}
}
