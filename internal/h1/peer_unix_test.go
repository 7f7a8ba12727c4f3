//go:build unix

package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// idleConn returns the one idle connection of the pool, or nil.
func (c *Client) idleConn() *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, list := range c.idle {
		if len(list) == 1 {
			return list[0]
		}
	}
	return nil
}

// An idle connection on which its host sent something unasked without
// closing it (a late answer; a 408 before a close that comes later) is not
// written on again: the next request goes out on a new connection and gets
// its own answer. The poller watches for closes only: the check before a
// reused connection is written on (a read that does not wait) sees this.
func TestClientSkipsIdleConnectionsWithUnaskedBytes(t *testing.T) {
	sendFake := make(chan struct{})
	url := rawServer(t, func(c net.Conn, br *bufio.Reader, _ int) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			id := req.Header.Get("X-Id")
			io.WriteString(c, answer(id))
			if id == "1" {
				select {
				case <-sendFake:
					io.WriteString(c, fake)
				case <-time.After(10 * time.Second):
					return
				}
			}
		}
	})
	c := newTestClient(t)
	tr := roundTripper{c}
	if got := result(tr, request(t, "GET", url, "1", 0)); got != "200 OK id 1" {
		t.Fatalf("GET 1: %s", got)
	}
	idle := c.idleConn()
	if idle == nil {
		t.Fatal("no idle connection after GET 1")
	}
	close(sendFake)
	deadline := time.Now().Add(5 * time.Second)
	for !idle.peer.closed() && time.Now().Before(deadline) { // until the bytes are there
		time.Sleep(time.Millisecond)
	}
	if got := result(tr, request(t, "GET", url, "2", 0)); got != "200 OK id 2" {
		t.Errorf("GET 2: %s; want its own answer, not the bytes sent unasked on the idle connection", got)
	}
}
