package svcreg

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/balance"
)

func init() {
	caddy.RegisterModule(UpstreamSource{})
	caddy.RegisterModule(new(FailoverSelection))
}

// statusPlaceholder is set by reverse_proxy once an upstream has answered.
const statusPlaceholder = "http.reverse_proxy.status_code"

// UpstreamSource is the service_registry dynamic upstream source: the
// endpoints of the request's service version, straight from the registry's
// current snapshot, as fresh Upstreams on every call (reverse_proxy
// modifies them). It does no I/O.
//
// By default the service version is the one the service_version matcher
// found; Service and Version name one explicitly instead.
type UpstreamSource struct {
	// Service is the service to proxy to; placeholders are expanded.
	// Default: the service_version matcher's {svc.name}.
	Service string `json:"service,omitempty"`

	// Version is the version to proxy to; placeholders are expanded.
	// Default: the service_version matcher's {svc.version}.
	Version string `json:"version,omitempty"`

	registry tryRegistry
}

// CaddyModule returns the Caddy module information.
func (UpstreamSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.service_registry",
		New: func() caddy.Module { return new(UpstreamSource) },
	}
}

// tryRegistry is what a request's tries ask of the registry: an
// interface, so that a test can count the lookups.
type tryRegistry interface {
	Lookup(key registry.ServiceKey) (*registry.Service, error)
	Report(svc *registry.Service, ep *registry.Endpoint, o registry.Outcome, latency time.Duration)
	Failure(key registry.ServiceKey, address string)
}

// Provision attaches the source to the registry.
func (u *UpstreamSource) Provision(ctx caddy.Context) error {
	app, err := registryApp(ctx)
	if err != nil {
		return err
	}
	u.registry = app.Registry()
	return nil
}

// Validate checks that a version comes with a service.
func (u *UpstreamSource) Validate() error {
	if u.Version != "" && u.Service == "" {
		return errors.New("a version needs a service")
	}
	if u.Service != "" && u.Version == "" {
		return errors.New("a service needs a version")
	}
	return nil
}

var errNoService = errors.New("no service for this request: use the service_version matcher, or name service and version in the upstream source")

// GetUpstreams returns the request's endpoints. An unknown service version
// gives an empty list, which service_failover answers with 503. On a retry
// it keeps what the request tried, even if the registry changed meanwhile.
func (u *UpstreamSource) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	// one walk of the request's context for all its vars
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	name, version, err := u.serviceOf(r, vars)
	if err != nil {
		return nil, err
	}
	var prev *attempt
	var svc *registry.Service
	switch v := vars[attemptVar].(type) {
	case *attempt:
		prev = v
	case *registry.Service:
		svc = v // the request's first try: the version the matcher found
	}
	if svc == nil || u.Service != "" || svc.Name != name || svc.Version != version {
		// a retry, or no version from the matcher: the current snapshot's
		if svc, err = u.registry.Lookup(registry.ServiceKey{Service: name, Version: version}); err != nil {
			svc = nil
		}
	}
	if prev != nil && !prev.retrying {
		prev = nil // another proxy loop of the same request: start afresh
	}
	if prev != nil {
		prev.retrying = false
		if prev.svc == svc {
			return prev.pool, nil
		}
	}
	a := newAttempt(svc, nil)
	a.reg = u.registry
	if prev != nil {
		// The registry changed between two tries: report the failed try
		// against the old snapshot and carry over what was tried.
		prev.reportPrevious(u.registry, r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer))
		if prev.svc != nil && svc != nil {
			for i, ep := range prev.svc.Endpoints {
				if prev.wasTried(i) {
					if j := slices.IndexFunc(svc.Endpoints, func(e *registry.Endpoint) bool { return e.Address == ep.Address }); j >= 0 {
						a.markTried(j)
					}
				}
			}
		}
		a.retryAfter = prev.retryAfter
		a.deposited, a.noRetry = prev.deposited, prev.noRetry
	}
	if vars != nil {
		vars[attemptVar] = a
	}
	return a.pool, nil
}

// ResetCache is called by reverse_proxy before it gets the upstreams of a
// retry; it tells GetUpstreams that the request's attempt goes on.
func (u *UpstreamSource) ResetCache(r *http.Request) error {
	if a, _ := caddyhttp.GetVar(r.Context(), attemptVar).(*attempt); a != nil {
		a.retrying = true
	}
	return nil
}

// serviceOf returns the service and version the request is for.
func (u *UpstreamSource) serviceOf(r *http.Request, vars map[string]any) (string, string, error) {
	if u.Service != "" {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		return repl.ReplaceAll(u.Service, ""), repl.ReplaceAll(u.Version, ""), nil
	}
	name, _ := vars[varName].(string)
	version, _ := vars[varVersion].(string)
	if name == "" || version == "" {
		return "", "", errNoService
	}
	return name, version, nil
}

// FailoverSelection is the service_failover selection policy. It balances
// every request across the available hosts of the pool, honoring endpoint
// weights, and on a retry never picks a host that the request already
// tried while an untried one remains. Each retry tells it that the
// previous host failed: it reports that to the registry, which takes the
// host out of rotation until it accepts connections again. When every
// untried host is out of rotation it tries them anyway (panic mode)
// rather than answer 503 while hosts are registered.
//
// An empty pool (a known service version with no endpoints, or a registry
// not synced yet) gets 503 with Retry-After: 1.
//
// With a pool that does not come from the service_registry upstream source
// (static upstreams, say) it balances and never retries a host twice, but
// has no registry to report failures to.
type FailoverSelection struct {
	// Balance is how to choose among the available hosts: round_robin
	// (default), random, least_conn (fewest requests in flight per unit
	// of weight, ties broken at random), p2c (the less busy of two
	// random hosts) or peak_ewma (the cheaper of two random hosts by
	// peak-EWMA latency times requests in flight; service_proxy's
	// default).
	Balance string `json:"balance,omitempty"`

	balance  balance.Algorithm
	registry *registry.Registry
	rotation balance.Rotation // for pools not from the registry
}

// CaddyModule returns the Caddy module information.
func (*FailoverSelection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.service_failover",
		New: func() caddy.Module { return new(FailoverSelection) },
	}
}

// Provision sets the default algorithm and attaches to the registry.
func (p *FailoverSelection) Provision(ctx caddy.Context) error {
	if p.Balance == "" {
		p.Balance = balance.RoundRobin.String()
	}
	p.balance, _ = balance.Parse(p.Balance) // Validate reports an error
	app, err := registryApp(ctx)
	if err != nil {
		return err
	}
	p.registry = app.Registry()
	return nil
}

// Validate checks the algorithm.
func (p *FailoverSelection) Validate() error {
	_, err := balance.Parse(p.Balance)
	return err
}

// Select picks the host for the request's next try, or nil when there is
// none (empty pool, nothing available, or every host already tried).
func (p *FailoverSelection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	a := attemptFor(r, pool)
	a.balance = p.balance
	var reg tryRegistry // nil, not a nil *registry.Registry, when unprovisioned
	if p.registry != nil {
		reg = p.registry
	}
	a.reportPrevious(reg, repl)
	if a.noRetry {
		return nil // the retry budget is spent: the last try's error stands
	}

	rot := &p.rotation
	if a.svc != nil {
		rot = a.svc.Rotation()
	}
	i := p.balance.Pick(a, rot, false)
	if i < 0 && a.untried() > 0 {
		i = p.balance.Pick(a, rot, true) // panic mode: every untried host is out of rotation
	}
	if i < 0 {
		if len(pool) == 0 || a.untried() > 0 {
			// nothing to try at all: 503, come back in a second
			w.Header().Set("Retry-After", "1")
			a.retryAfter = true
			if a.svc != nil {
				repl.Set(placeholderError, stateOf(a.svc).unavailable)
			} else if name, matched := repl.GetString(placeholderName); matched {
				repl.Set(placeholderError, unavailableText(p.registry, name, repl))
			}
		}
		return nil
	}
	if a.retryAfter {
		w.Header().Del("Retry-After")
		a.retryAfter = false
	}
	repl.Delete(statusPlaceholder) // so that the next Select can tell a failed try from an answered one
	a.markTried(i)
	a.last = i
	if a.svc != nil {
		ep := a.svc.Endpoints[i]
		ep.Sent()
		// tell the registry where reverse_proxy counts the requests in
		// flight that drains and least_conn look at
		if host := pool[i].Host; host != nil {
			ep.CountInFlight(host)
		}
	}
	return pool[i]
}

// unavailableText is the 503 text of a request for a service version
// the snapshot does not hold: the registry has not synced with its
// backend yet, or a traffic policy chose a version whose last host left.
// Rare, so made on demand.
func unavailableText(reg *registry.Registry, name string, repl *caddy.Replacer) string {
	version, _ := repl.GetString(placeholderVersion)
	msg := fmt.Sprintf("no available host for service %q version %q", name, version)
	if reg != nil && !reg.Snapshot().Synced() {
		msg += " (the registry has not loaded its backend yet)"
	}
	return msg
}

// Interface guards
var (
	_ caddy.Provisioner           = (*UpstreamSource)(nil)
	_ caddy.Validator             = (*UpstreamSource)(nil)
	_ reverseproxy.UpstreamSource = (*UpstreamSource)(nil)
	_ caddy.Provisioner           = (*FailoverSelection)(nil)
	_ caddy.Validator             = (*FailoverSelection)(nil)
	_ reverseproxy.Selector       = (*FailoverSelection)(nil)
	// service_failover depends on reverse_proxy calling ResetCache before
	// the GetUpstreams of a retry, an interface Caddy marks experimental:
	// if it changes, this stops compiling instead of failover breaking.
	_ reverseproxy.CachingUpstreamSource = (*UpstreamSource)(nil)
)
