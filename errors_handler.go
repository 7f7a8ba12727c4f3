package svcreg

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(ErrorsHandler{})
}

// ErrorsHandler answers, inside its own route, what the site's error
// routes would otherwise answer for a service request, with the same
// short text bodies:
//
//   - a request the service_version matcher matched in Unknown "match"
//     mode although it names an unknown service or version: 404 with
//     {svc.error};
//   - an error of the handlers after it (reverse_proxy) for a request
//     the matcher matched: its status (503 with Retry-After when no host
//     is available, 502 or 504 when no host answered) with {svc.error}
//     when set, else `no host of service "<name>" version "<version>"
//     answered`.
//
// Other errors go on to the error routes. service_proxy puts it first in
// its route, so that the route needs no error route beside it and can sit
// inside route, handle and handle_path blocks, where only routes may go.
//
// It sets the sticky cookie of a request whose version a traffic
// policy's split chose, so that the client keeps that version.
//
// It also does what service_no_body does (a request without a body goes
// on with a nil Body, so that reverse_proxy's request_buffers skips it):
// one handler instead of two, since every handler of a route costs an
// allocation per request. It has no Caddyfile directive.
//
// With strip_prefix, it also removes the matched prefix ({svc.prefix})
// from the path of a request it hands on, exactly as the rewrite handler's
// strip_prefix does, without the placeholder walk and the rune-by-rune
// comparison for the common path (service_proxy sets it).
type ErrorsHandler struct {
	// StripPrefix removes {svc.prefix} from the path.
	StripPrefix bool `json:"strip_prefix,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (ErrorsHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.service_errors",
		New: func() caddy.Module { return new(ErrorsHandler) },
	}
}

// Provision takes the handler's logger.
func (h *ErrorsHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	return nil
}

// ServeHTTP answers an unknown service, or the next handler's error.
func (h *ErrorsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if unknown, _ := vars[varUnknown].(bool); unknown {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		msg, _ := repl.GetString(placeholderError)
		return answer(w, http.StatusNotFound, msg)
	}
	if c, ok := vars[varSticky].(stickyCookie); ok {
		// the split chose this client's version: it keeps it
		w.Header().Add("Set-Cookie", c.header())
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if h.StripPrefix {
		if prefix, ok := repl.GetString(placeholderPrefix); ok && prefix != "" {
			stripPrefix(r, repl, prefix)
		}
	}
	start := time.Now()
	err := NoBodyHandler{}.ServeHTTP(w, r, next)
	if err == nil {
		// the upstream's status, which the client got
		status, _ := repl.Get(statusPlaceholder)
		code, ok := status.(int)
		if !ok {
			code = http.StatusOK
		}
		h.observe(repl, code, start)
		return nil
	}
	var herr caddyhttp.HandlerError
	if !errors.As(err, &herr) {
		h.observe(repl, http.StatusInternalServerError, start)
		return err
	}
	if _, matched := repl.Get(placeholderName); !matched {
		return err
	}
	status := herr.StatusCode
	if status == 0 {
		status = http.StatusInternalServerError
	}
	h.observe(repl, status, start)
	msg, _ := repl.GetString(placeholderError)
	if msg == "" {
		msg = repl.ReplaceKnown(failedBody, "")
	}
	// Caddy's server logs the errors its error routes answer (5xx at
	// error level); this handler answers them itself, so it logs them.
	if h.logger != nil && status >= 500 {
		name, _ := repl.GetString(placeholderName)
		version, _ := repl.GetString(placeholderVersion)
		h.logger.Error("request failed", zap.Int("status", status), zap.String("service", name),
			zap.String("version", version), zap.String("method", r.Method), zap.String("uri", r.RequestURI), zap.Error(err))
	}
	return answer(w, status, msg)
}

// failedBody is service_errors' text for a matched request that no host
// answered (502, or 504 on a timeout).
const failedBody = `no host of service "{` + placeholderName + `}" version "{` + placeholderVersion + `}" answered`

// observe counts a request of the service version the matcher chose in
// the request metrics, if it chose one.
func (h *ErrorsHandler) observe(repl *caddy.Replacer, status int, start time.Time) {
	name, _ := repl.GetString(placeholderName)
	version, _ := repl.GetString(placeholderVersion)
	if name == "" || version == "" {
		return
	}
	observeRequest(name, version, status, time.Since(start))
}

// stripPrefix removes prefix from r's path as the rewrite handler's
// strip_prefix does. A path that needs none of that handler's care (no
// escapes, nothing to clean, the prefix followed by more path) is cut
// directly, to the same result; any other goes through the handler's own
// code.
func stripPrefix(r *http.Request, repl *caddy.Replacer, prefix string) {
	p := r.URL.Path
	if r.URL.RawPath == "" && len(p) > len(prefix) && p[len(prefix)] == '/' && strings.HasPrefix(p, prefix) &&
		!strings.Contains(p, "//") && !strings.Contains(p, "/.") && r.URL.EscapedPath() == p {
		r.URL.Path = p[len(prefix):]
		r.RequestURI = r.URL.RequestURI()
		return
	}
	rewrite.Rewrite{StripPathPrefix: prefix}.Rewrite(r, repl)
}

// answer writes a short text response.
func answer(w http.ResponseWriter, status int, text string) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, err := w.Write([]byte(text))
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ErrorsHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*ErrorsHandler)(nil)
)
