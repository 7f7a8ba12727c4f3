package svcreg

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(HTTPTransport{})
}

// HTTPTransport is Caddy's http transport (every option of `transport
// http` applies) with one addition: a request that failed before one byte
// of it reached its upstream connection (the connection was already reset)
// is reported to reverse_proxy as a dial error, which it retries on another
// host whatever the method, provided the body can be sent again (no body,
// or a body reverse_proxy buffered whole with request_buffers).
//
// This closes the window right after a host dies, when reverse_proxy may
// still pick one of the host's pooled keep-alive connections before Go
// notices the connection was reset: without it such a POST fails with 502
// although the host never received a byte of it. A request that was even
// partly sent is not retried (unless lb_retry_match says so), since the host
// may have acted on it. The rule applies to HTTP/1 only (on a shared HTTP/2
// connection a failed write says nothing about one request), and not to
// GET, HEAD and OPTIONS, which reverse_proxy already retries after any
// failure under service_proxy's lb_retry_match (and GET under Caddy's
// default): leaving them alone keeps their path as cheap as plain http.
type HTTPTransport struct {
	reverseproxy.HTTPTransport

	http1Only bool
}

// CaddyModule returns the Caddy module information.
func (HTTPTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.service_http",
		New: func() caddy.Module { return new(HTTPTransport) },
	}
}

// Provision sets up the embedded http transport and, for HTTP/1, makes
// its connections remember a failed write.
func (t *HTTPTransport) Provision(ctx caddy.Context) error {
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	// Provision fills in the default versions ["1.1", "2"]; HTTP/2 is only
	// ever spoken with TLS or when h2c is listed, HTTP/3 when listed.
	t.http1Only = !slices.Contains(t.Versions, "h2c") && !slices.Contains(t.Versions, "3") &&
		(!t.TLSEnabled() || !slices.Contains(t.Versions, "2"))
	if t.http1Only && t.Transport != nil && t.Transport.DialContext != nil {
		dial := t.Transport.DialContext
		t.Transport.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
			conn, err := dial(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return &writeTrackingConn{Conn: conn}, nil
		}
	}
	return nil
}

// RoundTrip sends req with the http transport and marks a request that
// never left as safe to retry.
func (t *HTTPTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.http1Only || retriedAnyway(req.Method) || !bodyReplayable(req) {
		return t.HTTPTransport.RoundTrip(req)
	}
	var conn *writeTrackingConn
	var before int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c := info.Conn
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn()
		}
		if conn, _ = c.(*writeTrackingConn); conn != nil {
			before = conn.written.Load()
		}
	}}
	resp, err := t.HTTPTransport.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil && conn != nil && conn.written.Load() == before && req.Context().Err() == nil {
		// Not one byte of this request reached the connection: the
		// host cannot have seen it, so any method may be sent elsewhere.
		return nil, reverseproxy.NewDialError(err)
	}
	return resp, err
}

// retriedAnyway reports whether service_proxy retries the method after any
// failure.
func retriedAnyway(method string) bool {
	return method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions
}

// writeTrackingConn counts the bytes written on it. An HTTP/1 connection
// carries one request at a time, and once a round trip has failed its
// writer has stopped, so the count tells whether any byte of that request
// left.
type writeTrackingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *writeTrackingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// bodyReplayable reports whether reverse_proxy can send req's body again:
// there is none, or request_buffers holds all of it (reverse_proxy then
// hands each try a fresh io.NopCloser over a bytes.Reader, which is an
// io.WriterTo; a streamed body is not).
func bodyReplayable(req *http.Request) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	_, buffered := req.Body.(io.WriterTo)
	return buffered
}

// Interface guards
var (
	_ caddy.Provisioner                   = (*HTTPTransport)(nil)
	_ caddy.CleanerUpper                  = (*HTTPTransport)(nil)
	_ http.RoundTripper                   = (*HTTPTransport)(nil)
	_ reverseproxy.TLSTransport           = (*HTTPTransport)(nil)
	_ reverseproxy.ProxyProtocolTransport = (*HTTPTransport)(nil)
)
