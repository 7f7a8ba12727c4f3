package svcreg

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(NoBodyHandler{})
}

// NoBodyHandler hands the next handler a request with a nil Body when the
// request has no body (neither a Content-Length above 0 nor a
// Transfer-Encoding). It gives the body back once the next handler
// returns.
//
// service_proxy puts it in front of reverse_proxy. reverse_proxy buffers
// request bodies there (request_buffers) so that a retry sends a POST's
// body again whole; but it sets up a buffer for every request with a
// non-nil Body, including a GET without one, where the buffer is only
// thrown away (9 allocations per request). With the empty body out of the
// way, a bodiless request skips the buffering and costs what it costs
// behind a plain reverse_proxy; a request with a body is not touched.
//
// It has no options and no Caddyfile directive. service_proxy does not add
// it: service_errors, which service_proxy puts first, does the same.
type NoBodyHandler struct{}

// CaddyModule returns the Caddy module information.
func (NoBodyHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.service_no_body",
		New: func() caddy.Module { return new(NoBodyHandler) },
	}
}

// ServeHTTP passes r on with a nil Body if it has no body.
func (NoBodyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// A server request's ContentLength is 0 exactly when it has no body
	// (-1 when the length is not known in advance, as with chunked
	// encoding or an HTTP/2 stream without Content-Length). CONNECT is
	// left alone: its body is a stream whatever the header says.
	if r.ContentLength != 0 || r.Body == nil || r.Method == http.MethodConnect {
		return next.ServeHTTP(w, r)
	}
	body := r.Body
	r.Body = nil
	defer func() { r.Body = body }()
	return next.ServeHTTP(w, r)
}

// Interface guards
var _ caddyhttp.MiddlewareHandler = (*NoBodyHandler)(nil)
