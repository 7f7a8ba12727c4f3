// Package zkclient is a ZooKeeper client that survives the ensemble going
// back in time, and a server that does not answer a handshake, for the
// zookeeper backend and for services that register themselves. It imports
// nothing of Caddy.
//
// A ZooKeeper server refuses the session of a client that has seen a
// newer transaction (zxid) than its own: it closes the connection right
// after the handshake ("Refusing session request for client ... as it has
// seen zxid ..."). That is what a client sees of an ensemble wiped and
// started again, or restored from an older snapshot. go-zookeeper sends
// the last zxid it saw on every reconnection and has no way to forget it,
// so it would be refused until the ensemble's zxid passes the old one,
// which may be never.
//
// A Client watches its connection's handshakes. When a server refuses one
// (closes the connection without answering it), the client dials a fresh
// connection, which has seen no zxid. If that one gets a session, the
// client asks the server that gave it (a bare handshake, as a new client
// that has seen the zxid the old connection was refused with): if it
// refuses that too, the ensemble went back in time, and the fresh
// connection replaces the old one. A server that is down (nothing
// listens), still starting, or without a quorum refuses the fresh
// connection too, and one that was only starting when it refused the old
// connection answers the bare handshake: nothing is replaced, the old
// session may still come back.
//
// A handshake that gets no answer within 1 s is given up and tried again:
// ZooKeeper leaves a connection accepted while it starts unanswered (and
// a partition leaves any so), and go-zookeeper alone would wait ten times
// its read timeout (nearly seven session timeouts) before it tries again.
// The first reconnection after a lost connection goes at once, where
// go-zookeeper waits a second.
package zkclient

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-zookeeper/zk"
)

// handshakeWait bounds how long a server may take to answer a handshake
// before the connection is closed and tried again. A ZooKeeper server
// answers one in milliseconds; one that did not, behind a partition that
// has just healed, is tried again this much sooner.
const handshakeWait = time.Second

// probeWait bounds how long a fresh connection may take to get a session
// before it is given up.
const probeWait = 5 * time.Second

// Options set up a Client.
type Options struct {
	// Servers are the ZooKeeper servers, host:port.
	Servers []string
	// SessionTimeout is the session timeout asked for.
	SessionTimeout time.Duration
	// Logger takes go-zookeeper's log lines. Default: none.
	Logger zk.Logger
	// Event is called with every event of the current connection, as
	// go-zookeeper's event callback is (from its goroutines, in order; it
	// must not block). After a replacement, the new connection's state
	// comes as a session event. Default: none.
	Event func(zk.Event)
	// WentBack is called when the client has replaced its connection
	// because the ensemble went back in time, before the new connection's
	// state is sent to Event. Default: none.
	WentBack func()
}

// Client is a ZooKeeper connection that is replaced by a fresh one when
// the ensemble went back in time (see the package doc).
type Client struct {
	opts    Options
	current atomic.Pointer[zk.Conn]
	check   chan struct{} // a handshake was refused, or a session began
	quit    chan struct{}
	done    sync.WaitGroup
	close   sync.Once

	mu  sync.Mutex // serializes the events sent to Options.Event; guards below
	cur *conn      // the connection in use
}

// conn is one go-zookeeper connection and what its handshakes showed.
type conn struct {
	zk         *zk.Conn
	refused    int           // handshakes refused since the last session
	zxid       int64         // the last zxid the last refused one had seen
	session    chan struct{} // closed at the first session
	hadSession bool
}

// New connects in the background, as zk.Connect does.
func New(opts Options) (*Client, error) {
	c := &Client{opts: opts, check: make(chan struct{}, 1), quit: make(chan struct{})}
	cn := &conn{session: make(chan struct{})}
	c.mu.Lock()
	c.cur = cn // before its first event
	c.mu.Unlock()
	if err := c.dial(cn); err != nil {
		return nil, err
	}
	c.current.Store(cn.zk)
	c.done.Go(c.watch)
	return c, nil
}

// Conn returns the connection in use. It may be replaced (and closed) at
// any time: a call on it then fails with zk.ErrClosing, and the next one
// should take Conn again.
func (c *Client) Conn() *zk.Conn { return c.current.Load() }

// Close closes the connection in use, ending its session, and waits for
// the client's own goroutine.
func (c *Client) Close() {
	c.close.Do(func() { close(c.quit) })
	c.done.Wait()
	c.Conn().Close()
}

// dial starts cn's connection, whose events go through c.event and whose
// handshakes are watched (handshakeConn).
func (c *Client) dial(cn *conn) error {
	logger := c.opts.Logger
	if logger == nil {
		logger = quiet{}
	}
	dialer := func(network, address string, timeout time.Duration) (net.Conn, error) {
		nc, err := net.DialTimeout(network, address, timeout)
		if err != nil {
			return nil, err
		}
		h := &handshakeConn{Conn: nc}
		h.refused = func() { c.refused(cn, h.zxid) }
		return h, nil
	}
	z, _, err := zk.Connect(c.opts.Servers, c.opts.SessionTimeout, zk.WithLogger(logger), zk.WithDialer(dialer),
		zk.WithHostProvider(&quickRetry{DNSHostProvider: zk.NewDNSHostProvider()}),
		zk.WithEventCallback(func(ev zk.Event) { c.event(cn, ev) }))
	if err != nil {
		return err
	}
	cn.zk = z
	return nil
}

// refused records that a server refused a handshake of cn, which had seen
// zxid.
func (c *Client) refused(cn *conn, zxid int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cn.refused++
	cn.zxid = zxid
	if cn == c.cur {
		c.poke()
	}
}

// poke wakes the client's goroutine. The caller holds c.mu.
func (c *Client) poke() {
	select {
	case c.check <- struct{}{}:
	default:
	}
}

// event notes the sessions of connection cn and passes its events on
// while it is the one in use.
func (c *Client) event(cn *conn, ev zk.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ev.Type == zk.EventSession && ev.State == zk.StateHasSession {
		cn.refused = 0
		if !cn.hadSession {
			cn.hadSession = true
			close(cn.session)
		}
		if cn == c.cur {
			c.poke() // a probe under way may give up
		}
	}
	if cn == c.cur && c.opts.Event != nil {
		c.opts.Event(ev)
	}
}

// watch probes the ensemble whenever the connection in use has a
// handshake refused, until Close.
func (c *Client) watch() {
	for {
		select {
		case <-c.quit:
			return
		case <-c.check:
		}
		c.mu.Lock()
		refused := c.cur.refused > 0
		c.mu.Unlock()
		if refused && !c.probe() {
			return
		}
	}
}

// probe dials a fresh connection and makes it the one in use if the
// ensemble went back in time: if the fresh connection gets a session from
// a server, and that server refuses a handshake that has seen the zxid the
// old connection was refused with. It gives up if the old session comes
// back, or after probeWait (down, starting, no quorum: serving no one).
// It returns false if the client is closing.
func (c *Client) probe() bool {
	fresh := &conn{session: make(chan struct{})}
	if err := c.dial(fresh); err != nil {
		return true // the servers did not parse: the old connection says so
	}
	giveUp := time.NewTimer(probeWait)
	defer giveUp.Stop()
	for {
		select {
		case <-fresh.session:
			c.mu.Lock()
			zxid := c.cur.zxid
			c.mu.Unlock()
			if zxid == 0 || !refuses(fresh.zk.Server(), zxid) {
				fresh.zk.Close() // it would take the old session: wait for it
				return true
			}
			c.mu.Lock()
			old := c.cur
			if old.refused == 0 { // the old session came back meanwhile
				c.mu.Unlock()
				fresh.zk.Close()
				return true
			}
			c.replace(fresh)
			c.mu.Unlock()
			old.zk.Close()
			return true
		case <-c.check:
			c.mu.Lock()
			back := c.cur.refused == 0
			c.mu.Unlock()
			if back {
				fresh.zk.Close()
				return true
			}
		case <-giveUp.C:
			fresh.zk.Close()
			return true
		case <-c.quit:
			fresh.zk.Close()
			return false
		}
	}
}

// refuses reports whether server closes the connection of a new client
// that has seen zxid without answering its handshake (within
// handshakeWait). A handshake it answers begins a session that nobody
// uses: it expires after the server's shortest session timeout.
func refuses(server string, zxid int64) bool {
	nc, err := net.DialTimeout("tcp", server, handshakeWait)
	if err != nil {
		return false
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(handshakeWait))
	// go-zookeeper's connect request: protocol version, last zxid seen,
	// session timeout (ms), session ID, password (length and bytes)
	req := make([]byte, 4+4+8+4+8+4+16)
	binary.BigEndian.PutUint32(req[0:], uint32(len(req)-4))
	binary.BigEndian.PutUint64(req[8:], uint64(zxid))
	binary.BigEndian.PutUint32(req[16:], 1) // the server's shortest
	binary.BigEndian.PutUint32(req[28:], 16)
	if _, err := nc.Write(req); err != nil {
		return false
	}
	_, err = io.ReadFull(nc, make([]byte, 4))
	return closedUnanswered(0, err)
}

// closedUnanswered reports whether a read that returned n bytes and err
// shows the server closing the connection without an answer.
func closedUnanswered(n int, err error) bool {
	return n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET))
}

// replace makes fresh the connection in use and sends its state on. The
// caller holds c.mu.
func (c *Client) replace(fresh *conn) {
	c.cur = fresh
	c.current.Store(fresh.zk)
	if c.opts.WentBack != nil {
		c.opts.WentBack()
	}
	if c.opts.Event != nil {
		c.opts.Event(zk.Event{Type: zk.EventSession, State: fresh.zk.State(), Server: fresh.zk.Server()})
	}
}

// handshakeConn is a connection to a ZooKeeper server that watches its
// handshake: it notes the zxid go-zookeeper's connect request (the first
// write) has seen, bounds the wait for the answer (the first read) to
// handshakeWait, and reports a server that closed the connection instead
// of answering. go-zookeeper writes the handshake, then reads, from one
// goroutine at a time.
type handshakeConn struct {
	net.Conn
	refused func()
	zxid    int64 // the last zxid seen, as the connect request says
	wrote   bool  // the connect request has been written
	read    bool  // the handshake's first read has returned
}

func (h *handshakeConn) Write(p []byte) (int, error) {
	if !h.wrote {
		h.wrote = true
		if len(p) >= 16 { // length, protocol version, last zxid seen, ...
			h.zxid = int64(binary.BigEndian.Uint64(p[8:16]))
		}
	}
	return h.Conn.Write(p)
}

// SetReadDeadline sets the read deadline, no later than handshakeWait from
// now until the handshake is answered.
func (h *handshakeConn) SetReadDeadline(t time.Time) error {
	if limit := time.Now().Add(handshakeWait); !h.read && !t.IsZero() && t.After(limit) {
		t = limit
	}
	return h.Conn.SetReadDeadline(t)
}

func (h *handshakeConn) Read(p []byte) (int, error) {
	n, err := h.Conn.Read(p)
	if !h.read {
		h.read = true
		if closedUnanswered(n, err) {
			h.refused()
		}
	}
	return n, err
}

// quickRetry is go-zookeeper's host provider, but for the first round of
// servers after a connection: go-zookeeper waits a second before every
// round but the very first, the one that reconnects after a lost
// connection included, which is often the one that succeeds (a server
// restarted, a partition healed). That round goes at once; the next ones
// wait, as before.
type quickRetry struct {
	*zk.DNSHostProvider
	mu    sync.Mutex
	fresh bool // connected since the last round that waited
}

// Next returns the next server, and whether to wait before trying it.
func (q *quickRetry) Next() (string, bool) {
	server, wait := q.DNSHostProvider.Next()
	q.mu.Lock()
	defer q.mu.Unlock()
	if wait && q.fresh {
		q.fresh, wait = false, false
	}
	return server, wait
}

// Connected notes a connection (a session established on it).
func (q *quickRetry) Connected() {
	q.DNSHostProvider.Connected()
	q.mu.Lock()
	q.fresh = true
	q.mu.Unlock()
}

// quiet drops go-zookeeper's log lines.
type quiet struct{}

func (quiet) Printf(string, ...any) {}
