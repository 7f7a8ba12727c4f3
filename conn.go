package svcreg

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/svcreg/caddy-svcreg/internal/h1"
)

// trackDial wraps dial: its connections count the bytes written on them,
// and the time it takes is added to the dialing time of the request's
// attempt. A host's latency is how long it takes to answer, not to be
// reached: one slow connect (a busy moment, a SYN resent) would make
// peak_ewma shun a fast host for seconds.
func trackDial(dial func(ctx context.Context, network, address string) (net.Conn, error)) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		begin := time.Now()
		conn, err := dial(ctx, network, address)
		if a, _ := caddyhttp.GetVar(ctx, attemptVar).(*attempt); a != nil {
			a.dialing.Add(int64(time.Since(begin)))
		}
		if err != nil {
			return nil, err
		}
		return &writeTrackingConn{Conn: conn}, nil
	}
}

// writeTrackingConn counts the bytes written on it. An HTTP/1 connection
// carries one request at a time, and once a round trip has failed its
// writer has stopped, so the count tells whether any byte of that request
// left; on an HTTP/2 connection, an unchanged count tells that no byte of
// any request left meanwhile.
type writeTrackingConn struct {
	net.Conn
	written atomic.Int64
	// checkPeer asks the next write to check first that the host has
	// not closed the connection.
	checkPeer atomic.Bool
}

func (c *writeTrackingConn) Write(p []byte) (int, error) {
	if c.checkPeer.Swap(false) && h1.PeerClosed(c.Conn) {
		// nothing written: the transport sends the request elsewhere
		return 0, errPeerClosed
	}
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// errPeerClosed is a write refused because the host had closed the
// connection (or sent something unasked) before it.
var errPeerClosed = errors.New("upstream closed the idle connection before the request was sent")
