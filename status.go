package svcreg

import (
	_ "embed"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/svcreg/caddy-svcreg/registry"
)

func init() {
	caddy.RegisterModule(StatusHandler{})
	httpcaddyfile.RegisterHandlerDirective("service_registry_status", parseStatusHandler)
	httpcaddyfile.RegisterDirectiveOrder("service_registry_status", httpcaddyfile.Before, "respond")
}

// statusPage is the live status page: one HTML file with its CSS and
// script inline, no external assets. It polls status.json (relative to
// its own URL) every second and keeps the last minute of counters to show
// requests/s and error rates.
//
//go:embed status.html
var statusPage []byte

// statusPageCSP lets the page run its inline style and script and fetch
// its data from its own origin, and nothing else.
const statusPageCSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// statusDataName is the last path segment of the page's data.
const statusDataName = "status.json"

// maxStatusEvents is how many ejections and readmissions the page shows.
const maxStatusEvents = 50

// statusEvent is an endpoint leaving or rejoining rotation.
type statusEvent struct {
	Time    time.Time `json:"time"`
	Event   string    `json:"event"` // healthy (readmitted) or unhealthy (ejected)
	Service string    `json:"service"`
	Version string    `json:"version"`
	Host    string    `json:"host"`
	Reason  string    `json:"reason,omitempty"` // probe, passive, unreachable, limit
}

// eventLog keeps the last maxStatusEvents health events of the process,
// across config reloads.
type eventLog struct {
	mu     sync.Mutex
	events [maxStatusEvents]statusEvent
	next   int // index the next event goes to
	n      int // events kept, up to maxStatusEvents
}

// statusEvents are the health events of this process, for the status page.
var statusEvents eventLog

// recorder returns an EventFunc that records health events, then passes
// every event on to next (if not nil).
func (l *eventLog) recorder(next registry.EventFunc) registry.EventFunc {
	return func(name string, data map[string]any) {
		if name == "healthy" || name == "unhealthy" {
			str := func(k string) string { s, _ := data[k].(string); return s }
			l.add(statusEvent{Time: time.Now(), Event: name, Service: str("service"), Version: str("version"), Host: str("host"), Reason: str("reason")})
		}
		if next != nil {
			next(name, data)
		}
	}
}

func (l *eventLog) add(e statusEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events[l.next] = e
	l.next = (l.next + 1) % maxStatusEvents
	l.n = min(l.n+1, maxStatusEvents)
}

// list returns the events kept, newest first.
func (l *eventLog) list() []statusEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]statusEvent, 0, l.n)
	for i := 1; i <= l.n; i++ {
		out = append(out, l.events[(l.next-i+maxStatusEvents)%maxStatusEvents])
	}
	return out
}

// statusData is what the status page shows: status.json.
type statusData struct {
	Time     time.Time       `json:"time"`
	Synced   bool            `json:"synced"`
	Services []serviceStatus `json:"services"`
	Traffic  []trafficStatus `json:"traffic"`
	Events   []statusEvent   `json:"events"`
}

func statusOfApp(app *App) statusData {
	snap := app.Registry().Snapshot()
	out := statusData{Time: time.Now(), Synced: snap.Synced(), Services: []serviceStatus{}, Traffic: []trafficStatus{}, Events: statusEvents.list()}
	for _, svc := range snap.Services() {
		out.Services = append(out.Services, statusOf(svc))
	}
	for _, t := range snap.Policies() {
		out.Traffic = append(out.Traffic, newTrafficStatus(app, snap, t))
	}
	return out
}

// serveStatus answers the page, or its data when the last path segment
// is status.json. The page fetches its data relative to its own URL, so
// it works under any path prefix.
func serveStatus(w http.ResponseWriter, r *http.Request, app *App) error {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if r.URL.Path == statusDataName || strings.HasSuffix(r.URL.Path, "/"+statusDataName) {
		return writeJSON(w, http.StatusOK, statusOfApp(app))
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statusPageCSP)
	// the page's own requests carry a Referer: Caddy's admin endpoint
	// refuses a browser's request that has neither it nor an Origin
	h.Set("Referrer-Policy", "same-origin")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(statusPage)
	return err
}

// StatusHandler serves the service registry's status page (and its data,
// at status.json below the page's path) on a site, read-only, for a site
// to mount behind its own authentication. It answers GET and HEAD, 405
// otherwise; it never passes a request on.
type StatusHandler struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (StatusHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.service_registry_status",
		New: func() caddy.Module { return new(StatusHandler) },
	}
}

// Provision loads the service_registry app.
func (s *StatusHandler) Provision(ctx caddy.Context) error {
	app, err := registryApp(ctx)
	if err != nil {
		return err
	}
	s.app = app
	return nil
}

// ServeHTTP serves the page or its data. A request for the page whose
// URL does not end in a slash (/ops/status with `handle_path
// /ops/status*`) is redirected to the URL with one: the page fetches its
// data relative to its own URL.
func (s *StatusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("the service registry status page is read-only; want GET or HEAD"))
	}
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		p := orig.URL.EscapedPath()
		if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "/"+statusDataName) {
			target := p + "/"
			if orig.URL.RawQuery != "" {
				target += "?" + orig.URL.RawQuery
			}
			http.Redirect(w, r, target, http.StatusPermanentRedirect)
			return nil
		}
	}
	return serveStatus(w, r, s.app)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	service_registry_status [<matcher>]
//
// It takes no arguments and no block. Mount it under a path behind the
// site's own authentication, for example (/status redirects to
// /status/, where the page finds its data):
//
//	handle_path /status* {
//		basic_auth { admin <hash> }
//		service_registry_status
//	}
func (s *StatusHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("service_registry_status takes no block, got subdirective %q", d.Val())
	}
	return nil
}

func parseStatusHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(StatusHandler)
	err := s.UnmarshalCaddyfile(h.Dispenser)
	return s, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*StatusHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusHandler)(nil)
	_ caddyfile.Unmarshaler       = (*StatusHandler)(nil)
)
