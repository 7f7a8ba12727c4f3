//go:build linux

package h1

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// The poller's own tests: it is Linux's (epoll), and they look at its
// fields, which the poller of other systems does not have.

// An idle connection whose host closes it, with a FIN or a reset, leaves
// the pool at once (Linux: the poller), not when it is next taken.
func TestClientDropsIdleConnectionsTheHostCloses(t *testing.T) {
	for _, rst := range []bool{false, true} {
		t.Run(fmt.Sprint("reset ", rst), func(t *testing.T) {
			closeNow := make(chan struct{})
			url := rawServer(t, func(c net.Conn, br *bufio.Reader, _ int) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				<-closeNow
				if rst {
					c.(*net.TCPConn).SetLinger(0)
				}
			})
			c := newTestClient(t)
			var resps []*http.Response
			for range 4 { // four connections at once, then idle
				resp, err := roundTripper{c}.RoundTrip(newReq(t, "GET", url, nil))
				if err != nil {
					t.Fatal(err)
				}
				resps = append(resps, resp)
			}
			for _, resp := range resps {
				io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if n := c.idleCount(); n != 4 {
				t.Fatalf("%d idle connections, want 4", n)
			}
			close(closeNow)
			deadline := time.Now().Add(5 * time.Second)
			for c.idleCount() > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if n := c.idleCount(); n != 0 {
				t.Errorf("%d idle connections 5 s after their host closed them, want 0", n)
			}
			c.mu.Lock()
			watched := len(c.watched)
			c.mu.Unlock()
			if watched != 0 {
				t.Errorf("the poller still watches %d closed connections", watched)
			}
		})
	}
}

// Close stops the poller's goroutine.
func TestClientCloseStopsThePoller(t *testing.T) {
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	c := New(Config{Dial: (&net.Dialer{}).DialContext})
	if result(roundTripper{c}, newReq(t, "GET", srv.URL, nil)) != "200 OK ok" {
		t.Fatal("GET failed")
	}
	c.mu.Lock()
	p := c.poller
	c.mu.Unlock()
	if p == nil {
		t.Fatal("no poller after the first connection")
	}
	c.Close()
	select {
	case <-p.done:
	default:
		t.Error("the poller's goroutine outlived Close")
	}
}

// sawHostClose reports whether the poller has seen the host close a
// connection that was in use.
func (c *Client) sawHostClose() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pc := range c.watched {
		if pc.hostClosed {
			return true
		}
	}
	return false
}

// A connection whose host closes it while its response is read (answered,
// then gone without saying so) does not go back to the pool once the body
// is read: the poller, which saw the close then, will not see it again.
func TestClientDoesNotPoolWhatTheHostClosedInUse(t *testing.T) {
	url := rawServer(t, func(c net.Conn, br *bufio.Reader, _ int) {
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		} // and rawServer closes the connection
	})
	c := newTestClient(t)
	resp, err := roundTripper{c}.RoundTrip(newReq(t, "GET", url, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !c.sawHostClose() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !c.sawHostClose() {
		t.Fatal("the poller did not see the host close a connection in use within 5 s")
	}
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "ok" {
		t.Fatalf("body %q, %v", b, err)
	}
	if n := c.idleCount(); n != 0 {
		t.Errorf("%d idle connections: a connection its host closed while in use went back to the pool", n)
	}
}
