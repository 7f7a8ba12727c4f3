package svcreg

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(HTTPTransport{})
}

// HTTPTransport is Caddy's http transport (every option of `transport
// http` applies) with one addition: a request that never completely left
// Caddy (a write to its upstream connection failed) is reported to
// reverse_proxy as a dial error, which it retries on another host whatever
// the method, provided the body can be sent again (no body, or a body
// reverse_proxy buffered whole with request_buffers).
//
// This closes the window right after a host dies, when reverse_proxy may
// still pick one of the host's pooled keep-alive connections before Go
// notices the connection was reset: without it such a POST fails with 502
// although the host never received it. A request that was completely sent
// and then failed is not retried (unless lb_retry_match says so). The rule
// applies to HTTP/1 only: on a shared HTTP/2 connection a failed write says
// nothing about one request.
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
// never completely left as safe to retry.
func (t *HTTPTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.http1Only || !bodyReplayable(req) {
		return t.HTTPTransport.RoundTrip(req)
	}
	var conn *writeTrackingConn
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conn, _ = info.Conn.(*writeTrackingConn)
	}}
	resp, err := t.HTTPTransport.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil && conn != nil && conn.writeFailed.Load() {
		return nil, reverseproxy.NewDialError(err)
	}
	return resp, err
}

// writeTrackingConn remembers whether a write on it failed. A failed write
// ends an HTTP/1 connection, so it can only concern the request being sent
// on it at the time; once that request's round trip has returned, the
// writer has stopped.
type writeTrackingConn struct {
	net.Conn
	writeFailed atomic.Bool
}

func (c *writeTrackingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.writeFailed.Store(true)
	}
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

// UnmarshalCaddyfile takes the same options as `transport http`:
//
//	transport service_http {
//		<any http transport option>
//	}
func (t *HTTPTransport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return t.HTTPTransport.UnmarshalCaddyfile(d)
}

// Interface guards
var (
	_ caddy.Provisioner                   = (*HTTPTransport)(nil)
	_ caddy.CleanerUpper                  = (*HTTPTransport)(nil)
	_ http.RoundTripper                   = (*HTTPTransport)(nil)
	_ reverseproxy.TLSTransport           = (*HTTPTransport)(nil)
	_ reverseproxy.ProxyProtocolTransport = (*HTTPTransport)(nil)
	_ caddyfile.Unmarshaler               = (*HTTPTransport)(nil)
)
