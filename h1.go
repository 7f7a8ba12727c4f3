package svcreg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"golang.org/x/net/http/httpguts"

	"github.com/svcreg/caddy-svcreg/internal/h1"
)

// newOwnClient returns service_http's own HTTP/1.1 client (package h1) for
// t, or nil when t's settings ask for something only Go's transport does:
// TLS, HTTP/2 or 3, a proxy (from the transport or the environment), PROXY
// protocol, no keep-alive, limits on connections, a response header
// timeout.
func newOwnClient(t *HTTPTransport) *h1.Client {
	rt := t.Transport
	switch {
	case !t.tracked, t.h2c, t.TLS != nil, rt == nil,
		!slices.Contains(t.Versions, "1.1") && len(t.Versions) > 0,
		t.ProxyProtocol != "", len(t.NetworkProxyRaw) > 0, t.ForwardProxyURL != "", proxyInEnvironment(),
		rt.DisableKeepAlives, rt.MaxConnsPerHost > 0, rt.MaxIdleConns > 0, rt.ResponseHeaderTimeout > 0:
		return nil
	}
	return h1.New(h1.Config{
		Dial:                   t.ownDial,
		DisableCompression:     rt.DisableCompression,
		MaxResponseHeaderBytes: rt.MaxResponseHeaderBytes,
		MaxIdleConnsPerHost:    rt.MaxIdleConnsPerHost,
		IdleConnTimeout:        rt.IdleConnTimeout,
		ReadBufferSize:         rt.ReadBufferSize,
		WriteBufferSize:        rt.WriteBufferSize,
	})
}

// ownDial opens a connection for the own client through the transport's
// dialer (Caddy's, with its timeouts, and trackDial's accounting of the
// dialing time). The client counts what it writes itself: it gets the
// connection without writeTrackingConn's count.
func (t *HTTPTransport) ownDial(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := t.Transport.DialContext(ctx, network, address)
	if tc, ok := c.(*writeTrackingConn); ok {
		return tc.Conn, err
	}
	return c, err
}

// proxyInEnvironment reports whether Go's transport may send plain HTTP
// requests through a proxy named in the environment (it reads
// HTTP_PROXY, then NO_PROXY for each request: such a setup stays with it).
func proxyInEnvironment() bool {
	for _, name := range []string{"HTTP_PROXY", "http_proxy"} {
		if os.Getenv(name) != "" {
			return true
		}
	}
	return false
}

// ownClientSends reports whether the own client sends req: over plain
// TCP, with no body or a small one that request_buffers holds whole (so
// that it can be sent again), not an upgrade, not expecting 100-continue,
// and nothing in it that Go's transport would refuse.
func (t *HTTPTransport) ownClientSends(req *http.Request) bool {
	if t.ownClient == nil || t.TLS != nil { // EnableTLS after Provision
		return false
	}
	if req.Body != nil && req.Body != http.NoBody &&
		(req.ContentLength <= 0 || req.ContentLength > h1.MaxBody || !bodyReplayable(req)) {
		return false
	}
	if _, upgrade := req.Header["Upgrade"]; upgrade {
		return false
	}
	if _, expect := req.Header["Expect"]; expect {
		return false
	}
	// Go's transport refuses what Request.Write would send as it is
	// (control characters in a value, a bad name or method): it answers
	// those, with its error.
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) {
		return false
	}
	for name, values := range req.Header {
		if !httpguts.ValidHeaderFieldName(name) {
			return false
		}
		for _, v := range values {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// ownRoundTrip sends req with the own client, with the try's watchdog w
// (nil: none). neverSent says that req provably did not reach the host:
// not one byte of it was written.
func (t *HTTPTransport) ownRoundTrip(req *http.Request, w *watchdog) (resp *http.Response, err error, neverSent bool) {
	host := h1.Host{Network: "tcp", Address: req.URL.Host}
	if di, ok := reverseproxy.GetDialInfo(req.Context()); ok {
		host = h1.Host{Network: di.Network, Address: di.Address}
	}
	var watch h1.Watchdog
	if w != nil {
		watch = w
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil && retriedAnyway(req) {
		// The client sends a request that may reach its host twice
		// again on a new connection when a reused one fails before it
		// is answered, as Go's transport does: with GetBody, as with Go's.
		req = withGetBody(req)
	}
	resp, err = t.ownClient.RoundTrip(req, host, watch)
	if err == nil {
		return resp, nil, false
	}
	err, neverSent = ownError(req, w, err)
	return nil, err, neverSent
}

// ownError returns the error of a failed round trip through the own
// client as service_http reports it, and whether the request provably
// did not reach the host.
func ownError(req *http.Request, w *watchdog, err error) (error, bool) {
	switch {
	case req.Context().Err() != nil, w != nil && w.Fired():
		// the client went away, or the watchdog cut the try: the
		// caller says which
		return err, false
	case errors.As(err, new(*h1.NotSentError)):
		return reverseproxy.NewDialError(err), true
	case errors.As(err, new(reverseproxy.DialError)):
		return err, false // no connection
	}
	// Not a net.Error, as Go's transport's errors are not: reverse_proxy
	// answers 502, not 504 (a read_timeout).
	return fmt.Errorf("service_http: %w", err), false
}
