package svcreg

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves /service_registry/ on Caddy's admin endpoint:
//
//	GET    /service_registry/                                  the live status page (HTML; see status.go)
//	GET    /service_registry/status.json                       the page's data
//	GET    /service_registry/services                          every service version, its endpoints and their health
//	GET    /service_registry/services/<name>                   the versions of one service, in the same form
//	GET    /service_registry/services/<name>/<version>         one service version
//	POST   /service_registry/services/<name>/<version>         {"address":"127.0.0.1:9091","weight":1} adds an endpoint
//	DELETE /service_registry/services/<name>/<version>/<address> removes one
//	GET    /service_registry/traffic                           every service's traffic policy
//	GET    /service_registry/traffic/<name>                    one service's
//	PUT    /service_registry/traffic/<name>                    {"split":{"v1":90,"v2":10},...} sets it
//	DELETE /service_registry/traffic/<name>                    removes the one set here (the config's applies again)
//
// Bad input gets 400 naming the problem, an unknown service version or
// endpoint 404; a change is applied completely or not at all.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.service_registry",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/service_registry/",
		Handler: caddy.AdminHandlerFunc(a.serve),
	}}
}

// maxAdminBody bounds the size of a POST body.
const maxAdminBody = 64 << 10

// servicesStatus is the answer of GET /services and /services/<name>.
type servicesStatus struct {
	Synced   bool            `json:"synced"`
	Services []serviceStatus `json:"services"`
}

// serviceStatus is how the admin API shows a service version.
type serviceStatus struct {
	Name      string           `json:"name"`
	Version   string           `json:"version"`
	Endpoints []endpointStatus `json:"endpoints"`
	// Retries are tries after a failed one; Hedges backup tries sent
	// while a try waited, HedgesWon those that answered first.
	Retries   uint64 `json:"retries"`
	Hedges    uint64 `json:"hedges"`
	HedgesWon uint64 `json:"hedges_won"`
}

type endpointStatus struct {
	Address  string            `json:"address"`
	Weight   int               `json:"weight"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Drained: weight 0, registered but sent no new request.
	Drained       bool       `json:"drained,omitempty"`
	Healthy       bool       `json:"healthy"`
	OutOfRotation string     `json:"out_of_rotation,omitempty"` // probe, passive, draining
	Fails         int        `json:"fails"`
	LastFailure   *time.Time `json:"last_failure,omitempty"`
	NextCheck     *time.Time `json:"next_check,omitempty"`       // while out after a failed request
	SlowStartEnds *time.Time `json:"slow_start_until,omitempty"` // while ramping up after rejoining
	InFlight      int        `json:"in_flight"`
	Latency       string     `json:"latency,omitempty"` // peak EWMA, as balancing sees it
	Requests      uint64     `json:"requests"`
	Failures      uint64     `json:"failures"`
	// NotTried: no request and no check has reached it yet, so its
	// health is not known (a host added with nothing listening shows
	// "in rotation" until something tries it).
	NotTried bool `json:"not_tried,omitempty"`
	// Held: the store no longer lists it, but it serves while it answers
	// until the store has been back from an outage for recovery_grace.
	Held bool `json:"held,omitempty"`
}

func (adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	app := current.Load()
	if app == nil {
		return apiError(http.StatusNotFound, errors.New("the running config has no service_registry app"))
	}
	reg := app.Registry()

	segs, err := pathSegments(r.URL.EscapedPath(), "/service_registry/")
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	if len(segs) > 0 && segs[0] == "traffic" && len(segs) <= 2 {
		return serveTraffic(w, r, app, segs[1:])
	}
	if len(segs) == 0 || (len(segs) == 1 && segs[0] == statusDataName) {
		// the status page and its data
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return methodNotAllowed(w, http.MethodGet, http.MethodHead)
		}
		return serveStatus(w, r, app)
	}
	if segs[0] != "services" || len(segs) > 4 {
		return apiError(http.StatusNotFound, fmt.Errorf("no such resource %q; see /service_registry/services and /service_registry/traffic", r.URL.Path))
	}

	switch len(segs) {
	case 1, 2: // /services, /services/<name>
		if r.Method != http.MethodGet {
			return methodNotAllowed(w, http.MethodGet)
		}
		snap := reg.Snapshot()
		out := servicesStatus{Synced: snap.Synced(), Services: []serviceStatus{}}
		for _, svc := range snap.Services() {
			if len(segs) == 1 || svc.Name == segs[1] {
				out.Services = append(out.Services, statusOf(svc))
			}
		}
		if len(segs) == 2 && len(out.Services) == 0 {
			if err := registry.CheckName("service", segs[1]); err != nil {
				return apiError(http.StatusBadRequest, err)
			}
			if !snap.Synced() {
				return apiError(http.StatusServiceUnavailable, registry.ErrNotSynced)
			}
			return apiError(http.StatusNotFound, newUnknownError(snap, registry.ErrUnknownService, registry.ServiceKey{Service: segs[1]}, ""))
		}
		return writeJSON(w, http.StatusOK, out)

	case 3: // /services/<name>/<version>
		key := registry.ServiceKey{Service: segs[1], Version: segs[2]}
		if err := key.Validate(); err != nil {
			return apiError(http.StatusBadRequest, err)
		}
		switch r.Method {
		case http.MethodGet:
			svc, err := reg.Lookup(key)
			if err != nil {
				return lookupError(reg.Snapshot(), key, err)
			}
			return writeJSON(w, http.StatusOK, statusOf(svc))
		case http.MethodPost:
			return addEndpoint(w, r, reg, key)
		default:
			return methodNotAllowed(w, http.MethodGet, http.MethodPost)
		}

	default: // /services/<name>/<version>/<address>
		if r.Method != http.MethodDelete {
			return methodNotAllowed(w, http.MethodDelete)
		}
		key := registry.ServiceKey{Service: segs[1], Version: segs[2]}
		if err := key.Validate(); err != nil {
			return apiError(http.StatusBadRequest, err)
		}
		addr, err := registry.ParseAddress(segs[3])
		if err != nil {
			return apiError(http.StatusBadRequest, err)
		}
		drain, err := reg.Delete(r.Context(), key, addr)
		if err != nil {
			if errors.Is(err, registry.ErrUnknownService) || errors.Is(err, registry.ErrUnknownVersion) || errors.Is(err, registry.ErrUnknownEndpoint) {
				return apiError(http.StatusNotFound, newUnknownError(reg.Snapshot(), err, key, addr))
			}
			return changeError(err)
		}
		return writeJSON(w, http.StatusOK, map[string]any{
			"name": key.Service, "version": key.Version, "address": addr, "deleted": true,
			"drained": drain.Drained, "waited": drain.Waited.String(), "in_flight": drain.InFlight,
		})
	}
}

// decodeBody decodes the JSON object of r's body into v, strictly: its
// fields must be among fields, each given once, and nothing may follow.
func decodeBody(r *http.Request, v any, fields ...string) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return apiError(http.StatusBadRequest, fmt.Errorf("content type %q: want application/json", ct))
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody+1))
	if err != nil {
		return apiError(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
	}
	if len(body) > maxAdminBody {
		return apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", maxAdminBody))
	}
	if err := checkJSONObject(body, fields...); err != nil {
		return apiError(http.StatusBadRequest, fmt.Errorf("decoding JSON body: %w", err))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiError(http.StatusBadRequest, fmt.Errorf("decoding JSON body: %w", err))
	}
	if dec.More() {
		return apiError(http.StatusBadRequest, errors.New("decoding JSON body: more than one JSON value"))
	}
	return nil
}

// endpointAdder is what adding an endpoint asks of the registry: an
// interface, so that a test can race a deletion in between.
type endpointAdder interface {
	Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error
	Lookup(key registry.ServiceKey) (*registry.Service, error)
}

func addEndpoint(w http.ResponseWriter, r *http.Request, reg endpointAdder, key registry.ServiceKey) error {
	var req registry.Endpoint // the body of a POST is an endpoint's JSON
	if err := decodeBody(r, &req, "address", "weight", "metadata", "ttl"); err != nil {
		return err
	}
	if req.Address == "" {
		return apiError(http.StatusBadRequest, errors.New(`missing "address": want {"address":"host:port"}`))
	}
	ep, err := req.Normalize()
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}

	status := http.StatusCreated
	if svc, err := reg.Lookup(key); err == nil && svc.Endpoint(ep.Address) != nil {
		status = http.StatusOK
	}
	if err := reg.Add(r.Context(), key, ep); err != nil {
		return changeError(err)
	}
	svc, err := reg.Lookup(key)
	if err != nil || svc.Endpoint(ep.Address) == nil {
		// The add was applied, and a change made meanwhile (a DELETE of
		// the endpoint or its version) undid it: say what this request did.
		return writeJSON(w, status, map[string]any{
			"name": key.Service, "version": key.Version, "address": ep.Address, "added": true,
			"note": "removed again since by another change",
		})
	}
	return writeJSON(w, status, statusOf(svc))
}

// checkJSONObject checks what encoding/json lets through: body must be one
// object whose field names are exactly among fields (encoding/json
// matches them without regard to case), and no object in it may name a
// field twice (encoding/json keeps the last).
func checkJSONObject(body []byte, fields ...string) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return errors.New("want a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name := tok.(string)
		if !slices.Contains(fields, name) {
			return fmt.Errorf("unknown field %q (fields are %s, in lower case)", name, strings.Join(fields, ", "))
		}
		if seen[name] {
			return fmt.Errorf("field %q given twice", name)
		}
		seen[name] = true
		if err := checkNoDuplicates(dec); err != nil {
			return err
		}
	}
	_, err = dec.Token() // the closing brace
	return err
}

// checkNoDuplicates reads the next JSON value from dec, and fails if an
// object in it names a field twice.
func checkNoDuplicates(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				return err
			}
			name := key.(string)
			if seen[name] {
				return fmt.Errorf("field %q given twice", name)
			}
			seen[name] = true
			if err := checkNoDuplicates(dec); err != nil {
				return err
			}
		}
		_, err = dec.Token()
	case json.Delim('['):
		for dec.More() {
			if err := checkNoDuplicates(dec); err != nil {
				return err
			}
		}
		_, err = dec.Token()
	}
	return err
}

// trafficStatus is how the admin API shows a service's traffic policy.
type trafficStatus struct {
	Service string `json:"service"`
	// Source is "config" for the config's policy, "stored" for one set
	// through the admin API and stored by the backend: it survives
	// restarts and wins over the config's until it is deleted.
	Source string `json:"source,omitempty"`
	traffic.Policy
	// NoHost are the versions the policy sends requests to (its split,
	// aliases and fallback) that have no endpoint registered right now:
	// their requests go to the fallback, or get 503.
	NoHost []string `json:"no_host,omitempty"`
}

// newTrafficStatus shows t, a policy of snap, in app.
func newTrafficStatus(app *App, snap *registry.Snapshot, t *traffic.Rules) trafficStatus {
	p := t.Policy()
	out := trafficStatus{Service: t.Service(), Source: app.trafficSource(t), Policy: p}
	named := slices.Collect(maps.Keys(p.Split))
	named = append(named, slices.Collect(maps.Values(p.Aliases))...)
	if p.Fallback != "" {
		named = append(named, p.Fallback)
	}
	slices.Sort(named)
	for _, v := range slices.Compact(named) {
		if svc, err := snap.Lookup(t.Service(), v); err != nil || len(svc.Endpoints) == 0 {
			out.NoHost = append(out.NoHost, v)
		}
	}
	return out
}

// serveTraffic serves /traffic (segs empty) and /traffic/<service>.
func serveTraffic(w http.ResponseWriter, r *http.Request, app *App, segs []string) error {
	reg := app.Registry()
	if len(segs) == 0 {
		if r.Method != http.MethodGet {
			return methodNotAllowed(w, http.MethodGet)
		}
		out := []trafficStatus{}
		snap := reg.Snapshot()
		for _, t := range snap.Policies() {
			out = append(out, newTrafficStatus(app, snap, t))
		}
		return writeJSON(w, http.StatusOK, out)
	}
	service := segs[0]
	if err := registry.CheckName("service", service); err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	switch r.Method {
	case http.MethodGet:
		snap := reg.Snapshot()
		t := snap.Traffic(service)
		if t == nil {
			if !snap.Synced() {
				return apiError(http.StatusServiceUnavailable, registry.ErrNotSynced)
			}
			if !snap.Versions(service).Exist() {
				return apiError(http.StatusNotFound, newUnknownError(snap, registry.ErrUnknownService, registry.ServiceKey{Service: service}, ""))
			}
			return apiError(http.StatusNotFound, fmt.Errorf("service %q has no traffic policy", service))
		}
		return writeJSON(w, http.StatusOK, newTrafficStatus(app, snap, t))
	case http.MethodPut:
		var p traffic.Policy
		if err := decodeBody(r, &p, "split", "aliases", "header", "cookie", "sticky", "sticky_header", "fallback"); err != nil {
			return err
		}
		if snap := reg.Snapshot(); snap.Synced() && !snap.Versions(service).Exist() {
			// no version to send requests to: say so, not "unknown versions"
			return apiError(http.StatusNotFound, newUnknownError(snap, registry.ErrUnknownService, registry.ServiceKey{Service: service}, ""))
		}
		if err := reg.PutTraffic(r.Context(), service, p); err != nil {
			return changeError(err)
		}
		app.emitTraffic(service, "set")
		snap := reg.Snapshot()
		t := snap.Traffic(service)
		if t == nil { // deleted again since by another change
			return writeJSON(w, http.StatusOK, map[string]any{"service": service, "set": true, "note": "removed again since by another change"})
		}
		return writeJSON(w, http.StatusOK, newTrafficStatus(app, snap, t))
	case http.MethodDelete:
		if err := reg.DeleteTraffic(r.Context(), service); err != nil {
			if errors.Is(err, registry.ErrNoTrafficPolicy) {
				return apiError(http.StatusNotFound, err)
			}
			return changeError(err)
		}
		app.emitTraffic(service, "deleted")
		out := map[string]any{"service": service, "deleted": true}
		if snap := reg.Snapshot(); snap.Traffic(service) != nil {
			out["now"] = newTrafficStatus(app, snap, snap.Traffic(service)) // the config's
		}
		return writeJSON(w, http.StatusOK, out)
	default:
		return methodNotAllowed(w, http.MethodGet, http.MethodPut, http.MethodDelete)
	}
}

func statusOf(svc *registry.Service) serviceStatus {
	c := countsOf(svc)
	st := serviceStatus{Name: svc.Name, Version: svc.Version, Endpoints: make([]endpointStatus, 0, len(svc.Endpoints)),
		Retries: c.retries, Hedges: c.hedges, HedgesWon: c.hedgesWon}
	for _, ep := range svc.Endpoints {
		stats := ep.Stats()
		st.Endpoints = append(st.Endpoints, endpointStatus{
			Address: ep.Address, Weight: ep.Weight.Int(), Metadata: ep.Metadata, Drained: ep.Weight == registry.Drained,
			Healthy: stats.Available, OutOfRotation: stats.OutOfRotation, Fails: stats.Fails,
			LastFailure: timeOrNil(stats.LastFailure), NextCheck: timeOrNil(stats.NextCheck),
			SlowStartEnds: timeOrNil(stats.SlowStartUntil),
			InFlight:      stats.InFlight, Requests: stats.Requests, Failures: stats.Failures,
			Latency: latencyText(stats.Latency), Held: stats.Held,
			NotTried: stats.Requests == 0 && !stats.Checked,
		})
	}
	return st
}

// latencyText shows a latency, or nothing before the first answer.
func latencyText(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.Round(time.Microsecond).String()
}

// timeOrNil returns &t, or nil for the zero time (left out of the JSON).
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// pathSegments splits the escaped path below prefix into unescaped
// segments; a segment may not be empty or contain a slash.
func pathSegments(escaped, prefix string) ([]string, error) {
	rest, ok := strings.CutPrefix(escaped, prefix)
	if !ok {
		return nil, nil
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" {
		return nil, nil
	}
	parts := strings.Split(rest, "/")
	for i, p := range parts {
		seg, err := url.PathUnescape(p)
		if err != nil {
			return nil, fmt.Errorf("bad path segment %q: %w", p, err)
		}
		if seg == "" || strings.Contains(seg, "/") {
			return nil, fmt.Errorf("bad path segment %q", p)
		}
		parts[i] = seg
	}
	return parts, nil
}

func lookupError(snap *registry.Snapshot, key registry.ServiceKey, err error) error {
	if errors.Is(err, registry.ErrUnknownService) || errors.Is(err, registry.ErrUnknownVersion) {
		return apiError(http.StatusNotFound, newUnknownError(snap, err, key, ""))
	}
	if errors.Is(err, registry.ErrNotSynced) {
		return apiError(http.StatusServiceUnavailable, err)
	}
	return apiError(http.StatusInternalServerError, err)
}

// changeError maps an Add or Delete error to a status.
func changeError(err error) error {
	switch {
	case errors.Is(err, registry.ErrInvalid):
		return apiError(http.StatusBadRequest, err)
	case errors.Is(err, registry.ErrUnknownService), errors.Is(err, registry.ErrUnknownVersion), errors.Is(err, registry.ErrUnknownEndpoint):
		return apiError(http.StatusNotFound, err)
	case errors.Is(err, registry.ErrSeeded):
		return apiError(http.StatusConflict, err)
	case errors.Is(err, registry.ErrOutcomeUnknown):
		return apiError(http.StatusGatewayTimeout, err)
	case errors.Is(err, registry.ErrNotSynced), errors.Is(err, registry.ErrBackendUnavailable):
		return apiError(http.StatusServiceUnavailable, err)
	default:
		return apiError(http.StatusInternalServerError, err)
	}
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func methodNotAllowed(w http.ResponseWriter, allowed ...string) error {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method not allowed; want %s", strings.Join(allowed, " or ")))
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "\t")
	return enc.Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
