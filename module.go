// Package svcreg is a Caddy plugin that routes /<service>/<version>/...
// to the hosts registered for that service and version, balances every
// request, and retries a request that fails on a host it has not tried.
//
// The registry itself, its backends' interface, health and balancing are
// in the Caddy-free package registry; the backends (memory, etcd) are
// packages of their own. This package is the Caddy glue, one concept per
// file: the service_registry app (registry.go) owns the registry and its
// backend; the service_version matcher (module.go) finds the service of a
// request; the service_registry upstream source and the service_failover
// selection policy (selection.go) hand its endpoints to reverse_proxy and
// fail over; service_proxy and the other Caddyfile syntax (caddyfile.go),
// the service_http transport (transport.go), the service_no_body handler
// (body.go), the admin API (admin.go) and the metrics (metrics.go).
package svcreg

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/svcreg/caddy-svcreg/registry"
)

func init() {
	caddy.RegisterModule(MatchServiceVersion{})
}

// Placeholders and variables the matcher sets.
const (
	varName    = "svc_name"
	varVersion = "svc_version"

	placeholderName    = "svc.name"
	placeholderVersion = "svc.version"
	placeholderPrefix  = "svc.prefix"
	// placeholderError holds the short text Caddy answers with when the
	// request fails with an unknown service (404) or no available host
	// (503). service_proxy's error route writes it, or, for a matched
	// request no host answered, a text made of {svc.name} and {svc.version}.
	placeholderError = "svc.error"
	// varUnknown is set (true) on a request the matcher matched, in
	// Unknown "match" mode, although it names an unknown service or
	// version: service_errors answers it 404 with {svc.error}.
	varUnknown = "svc_unknown"
)

// MatchServiceVersion matches requests whose cleaned path is
// [<prefix>]/<service>/<version>[/...] for a service version the registry
// knows. On a match it sets the placeholders {svc.name}, {svc.version} and
// {svc.prefix} (the path prefix to strip, such as /users/v1) and the
// variables svc_name and svc_version.
//
// A path of that shape naming a service or version the registry does not
// know is answered with 404 (the matcher returns the error, which ends
// routing), so that a site dedicated to services never falls through to
// Caddy's empty 200. Paths of any other shape, and services the matcher is
// restricted away from, simply do not match. Names are 1 to 64 characters
// of A-Z a-z 0-9 . _ - and are matched case-sensitively.
type MatchServiceVersion struct {
	// Service restricts the match to one service. Default: any service.
	Service string `json:"service,omitempty"`

	// Version restricts the match to one version of Service. Default: any.
	Version string `json:"version,omitempty"`

	// Prefix is a base path in front of the service segment: with /api,
	// /api/users/v1/x matches service users, version v1, and {svc.prefix}
	// is /api/users/v1. Default: none.
	Prefix string `json:"prefix,omitempty"`

	// Unknown is what a path naming a service or version the registry
	// does not know does: "error" (the default) fails the request with
	// 404 in the matcher, for the site's error routes to answer; "match"
	// matches it with {svc.error} set, for the route's service_errors
	// handler to answer 404, so that the route answers everything it
	// claims by itself (service_proxy uses it, which lets it sit inside
	// route, handle and handle_path blocks).
	Unknown string `json:"unknown,omitempty"`

	registry registry.Registry
}

// CaddyModule returns the Caddy module information.
func (MatchServiceVersion) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.matchers.service_version",
		New: func() caddy.Module { return new(MatchServiceVersion) },
	}
}

// Provision attaches the matcher to the registry.
func (m *MatchServiceVersion) Provision(ctx caddy.Context) error {
	m.Prefix = strings.TrimSuffix(m.Prefix, "/")
	app, err := registryApp(ctx)
	if err != nil {
		return err
	}
	m.registry = app.Registry()
	return nil
}

// Validate checks the restriction, the prefix and Unknown.
func (m *MatchServiceVersion) Validate() error {
	if err := (registry.ServiceKey{Service: m.Service, Version: m.Version}).ValidateFilter(); err != nil {
		return err
	}
	if m.Unknown != "" && m.Unknown != "error" && m.Unknown != "match" {
		return fmt.Errorf("unknown %q: want error or match", m.Unknown)
	}
	return checkPrefix(m.Prefix)
}

// checkPrefix accepts "" or /seg[/seg...] with plain segments.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if !strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("prefix %q must start with /", prefix)
	}
	for seg := range strings.SplitSeq(prefix[1:], "/") {
		if !registry.ValidName(seg) {
			return fmt.Errorf("prefix %q: segment %q must be 1 to %d characters of A-Z a-z 0-9 . _ - (not only dots)", prefix, seg, registry.MaxNameLen)
		}
	}
	return nil
}

// Match returns true if r is for a known service version.
func (m MatchServiceVersion) Match(r *http.Request) bool {
	ok, _ := m.MatchWithError(r)
	return ok
}

// MatchWithError matches like Match and answers an unknown service or
// version with a 404 error.
func (m MatchServiceVersion) MatchWithError(r *http.Request) (bool, error) {
	name, version, ok := splitServicePath(r.URL.EscapedPath(), m.Prefix)
	if !ok || (m.Service != "" && name != m.Service) || (m.Version != "" && version != m.Version) {
		return false, nil
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	svc, err := m.registry.Lookup(registry.ServiceKey{Service: name, Version: version})
	switch {
	case err == nil:
		b := svc.Boxed()
		prefix := b.Prefix
		if m.Prefix != "" {
			prefix = m.Prefix + svc.Prefix
		}
		setServiceVars(r, repl, b.Name, b.Version, prefix)
		return true, nil

	case errors.Is(err, registry.ErrNotSynced):
		// The backend has not loaded yet: let the request through, so
		// that reverse_proxy answers 503 with Retry-After.
		setServiceVars(r, repl, name, version, m.Prefix+"/"+name+"/"+version)
		return true, nil

	default:
		var msg string
		if errors.Is(err, registry.ErrUnknownService) {
			msg = fmt.Sprintf("unknown service %q", name)
		} else {
			msg = fmt.Sprintf("unknown version %q of service %q", version, name)
		}
		repl.Set(placeholderError, msg)
		if m.Unknown == "match" {
			caddyhttp.SetVar(r.Context(), varUnknown, true)
			return true, nil
		}
		return false, caddyhttp.Error(http.StatusNotFound, errors.New(msg))
	}
}

func setServiceVars(r *http.Request, repl *caddy.Replacer, name, version, prefix any) {
	repl.Set(placeholderName, name)
	repl.Set(placeholderVersion, version)
	repl.Set(placeholderPrefix, prefix)
	caddyhttp.SetVar(r.Context(), varName, name)
	caddyhttp.SetVar(r.Context(), varVersion, version)
}

// splitServicePath returns the service and version named by the first two
// segments after prefix of the escaped request path, cleaned the way
// Caddy's strip_prefix cleans it (dot segments resolved, slashes merged),
// so that the prefix {svc.prefix} names is exactly what strip_prefix
// removes. Both segments must be valid names once unescaped: an escaped
// slash, a NUL, a non-ASCII byte or an overlong segment never matches.
func splitServicePath(escapedPath, prefix string) (service, version string, ok bool) {
	p := escapedPath
	if strings.Contains(p, "//") || strings.Contains(p, "/.") {
		p = caddyhttp.CleanPath(p, true)
	}
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok || !strings.HasPrefix(rest, "/") {
		return "", "", false
	}
	rest = rest[1:]
	service, rest, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", false
	}
	version, _, _ = strings.Cut(rest, "/")
	if service, ok = unescapeName(service); !ok {
		return "", "", false
	}
	if version, ok = unescapeName(version); !ok {
		return "", "", false
	}
	return service, version, true
}

// unescapeName unescapes a path segment and checks it is a valid name.
func unescapeName(seg string) (string, bool) {
	if len(seg) > 3*registry.MaxNameLen {
		return "", false
	}
	if strings.IndexByte(seg, '%') >= 0 {
		var err error
		if seg, err = url.PathUnescape(seg); err != nil {
			return "", false
		}
	}
	return seg, registry.ValidName(seg)
}

// Interface guards
var (
	_ caddy.Provisioner                 = (*MatchServiceVersion)(nil)
	_ caddy.Validator                   = (*MatchServiceVersion)(nil)
	_ caddyhttp.RequestMatcherWithError = (*MatchServiceVersion)(nil)
)
