package svcreg

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

func init() {
	caddy.RegisterModule(MatchServiceVersion{})
}

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

	registry *registry.Registry
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
//
// With a traffic policy for the service (traffic.Policy), a path
// whose second segment is an alias goes to the alias's version, and one
// whose second segment is not a version of the service (or that has
// none) goes to the version its header, cookie, sticky bucket or the
// split chooses, the whole rest being its path; a gRPC request (content
// type application/grpc) keeps its whole path, /<package.Service>/<Method>.
// {svc.version_from} says which.
func (m MatchServiceVersion) MatchWithError(r *http.Request) (bool, error) {
	name, seg, segOK, ok := splitServicePath(r.URL.EscapedPath(), m.Prefix)
	if !ok || (m.Service != "" && name != m.Service) {
		return false, nil
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	snap := m.registry.Snapshot()
	versions := snap.Versions(name)
	tr := versions.Routing()
	grpc := tr != nil && isGRPC(r)
	var svc *registry.Service
	if segOK && !grpc {
		svc = versions.Get(seg)
	}
	if svc != nil {
		if m.Version != "" && seg != m.Version {
			return false, nil
		}
		b := stateOf(svc)
		prefix := b.prefix
		if m.Prefix != "" {
			prefix = m.Prefix + svc.Prefix
		}
		setServiceVars(r, repl, svc, b.name, b.version, prefix, "path")
		b.countRouted(traffic.FromPath)
		return true, nil
	}
	// No version in the path (seg is none, or was not looked up): why.
	lookedUp := segOK && !grpc
	switch {
	case lookedUp && !snap.Synced():
		if m.Version != "" && seg != m.Version {
			return false, nil
		}
		// The backend has not loaded yet: let the request through, so
		// that reverse_proxy answers 503 with Retry-After.
		setServiceVars(r, repl, nil, name, seg, m.Prefix+"/"+name+"/"+seg, "path")
		return true, nil

	case tr != nil && (!lookedUp || versions.Exist()):
		return m.matchTraffic(r, repl, versions, tr, name, seg, segOK, grpc)

	case !segOK || (m.Version != "" && seg != m.Version):
		return false, nil

	default:
		return m.unknown(r, repl, versions.Missing(), name, seg)
	}
}

// unknown answers a request naming an unknown service or version. The
// version may come from a request header, so the text quotes no more
// than a short excerpt of it.
func (m MatchServiceVersion) unknown(r *http.Request, repl *caddy.Replacer, err error, name, version string) (bool, error) {
	msg := unknownText(err, excerpt(name), excerpt(version))
	repl.Set(placeholderError, msg)
	if m.Unknown == "match" {
		caddyhttp.SetVar(r.Context(), varUnknown, true)
		return true, nil
	}
	return false, caddyhttp.Error(http.StatusNotFound, errors.New(msg))
}

// unknownText is how the proxy's 404, the admin API and the CLI all word
// an unknown service (err matches registry.ErrUnknownService) or version
// of a known service.
func unknownText(err error, service, version string) string {
	if errors.Is(err, registry.ErrUnknownService) {
		return fmt.Sprintf("unknown service %q", service)
	}
	return fmt.Sprintf("unknown version %q of service %q", version, service)
}

// unknownError is an unknown service, version or endpoint, worded as
// unknownText does; it matches the registry error it stands for.
type unknownError struct {
	msg string
	err error
}

func (e unknownError) Error() string { return e.msg }
func (e unknownError) Unwrap() error { return e.err }

// newUnknownError words err, which matches registry.ErrUnknownService,
// ErrUnknownVersion or ErrUnknownEndpoint, for key and address. A version
// unknown to a snapshot that holds no version of the service at all is an
// unknown service: a backend that cannot tell them apart says version.
func newUnknownError(snap *registry.Snapshot, err error, key registry.ServiceKey, address string) error {
	switch {
	case errors.Is(err, registry.ErrUnknownEndpoint):
		return unknownError{fmt.Sprintf("unknown endpoint %q of version %q of service %q", address, key.Version, key.Service), err}
	case errors.Is(err, registry.ErrUnknownVersion) && snap != nil && !snap.Versions(key.Service).Exist():
		return unknownError{unknownText(registry.ErrUnknownService, key.Service, ""), registry.ErrUnknownService}
	}
	return unknownError{unknownText(err, key.Service, key.Version), err}
}

// excerpt returns s, or its first bytes and "..." when it is longer than
// a name may be: what an error text quotes of client input (always with
// %q, which escapes it).
func excerpt(s string) string {
	if len(s) <= registry.MaxNameLen {
		return s
	}
	return s[:registry.MaxNameLen] + "..."
}

// matchTraffic matches a request to a service with a traffic policy
// whose path names no version of it: seg, when segOK, is an alias or the
// start of the path.
func (m MatchServiceVersion) matchTraffic(r *http.Request, repl *caddy.Replacer, versions registry.Versions, tr *registry.Routing, name, seg string, segOK, grpc bool) (bool, error) {
	var version string
	var from traffic.Source
	var svc *registry.Service
	boxes := trafficBoxesOf(tr.Rules)
	prefix := boxes.splitPrefix
	bucket := -1
	if alias, aliasPrefix := boxes.aliasOf(seg); segOK && !grpc && alias != "" {
		version, from, prefix = alias, traffic.FromAlias, aliasPrefix
	} else {
		p := tr.Names()
		var req traffic.Request // Choose draws a random number if it needs one
		if h := r.Header[p.Header]; len(h) > 0 {
			req.Header = h[0]
		}
		if !grpc {
			req.Cookie = cookieValue(r.Header, p.Cookie)
		}
		switch p.Sticky {
		case "header":
			if h := r.Header[p.StickyHeader]; len(h) > 0 {
				req.StickyKey = h[0]
			}
		case "ip":
			req.StickyKey = clientIP(r)
		}
		c := tr.Choose(req, versions.Known)
		switch {
		case c.Version == "" && c.Named != "":
			return m.unknown(r, repl, registry.ErrUnknownVersion, name, c.Named)
		case c.Version == "":
			// no split: the path must name a version
			if !segOK {
				return false, nil
			}
			return m.unknown(r, repl, registry.ErrUnknownVersion, name, seg)
		}
		version, from, bucket = c.Version, c.From, c.Bucket
		if c.Index >= 0 {
			svc = tr.SplitService(c.Index)
		}
		if from == traffic.FromSplit {
			// A request the matcher already sent to a version of this
			// service (it runs more than once per request in some
			// configs) keeps it: this draw could choose another.
			vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
			if n, _ := vars[varName].(string); n == name {
				v, _ := vars[varVersion].(string)
				return m.Version == "" || v == m.Version, nil
			}
		}
		if grpc {
			prefix, bucket = emptyPrefix, -1
		}
	}
	if svc == nil {
		svc = versions.Get(version)
	}
	// A version the policy chose that has no host at all (its last one
	// left the registry) is as one with no available host: its requests
	// go to the fallback, or get 503, never 404.
	if fb := tr.Fallback(); fb != "" && fb != version && (svc == nil || !anyAvailable(svc)) {
		if other := versions.Get(fb); other != nil {
			svc, from = other, traffic.FromFallback
		}
	}
	if m.Prefix != "" {
		prefix = m.Prefix + prefix.(string)
	}
	if svc == nil {
		if m.Version != "" && version != m.Version {
			return false, nil
		}
		// reverse_proxy finds no host: 503 with Retry-After
		setServiceVars(r, repl, nil, name, version, prefix, boxedSource(from))
	} else {
		if m.Version != "" && svc.Version != m.Version {
			return false, nil
		}
		b := stateOf(svc)
		setServiceVars(r, repl, svc, b.name, b.version, prefix, boxedSource(from))
		b.countRouted(from)
	}
	if bucket >= 0 {
		caddyhttp.SetVar(r.Context(), varSticky, stickyCookie{tr: tr.Rules, bucket: bucket, path: m.Prefix + "/" + name})
	}
	return true, nil
}

// emptyPrefix is the prefix of a gRPC request: nothing is stripped.
var emptyPrefix any = ""

// anyAvailable reports whether a service version has an endpoint in
// rotation.
func anyAvailable(svc *registry.Service) bool {
	for _, ep := range svc.Endpoints {
		if ep.Pickable(false) {
			return true
		}
	}
	return false
}

// isGRPC reports whether r is a gRPC request (which needs HTTP/2 or 3).
func isGRPC(r *http.Request) bool {
	if r.ProtoMajor < 2 {
		return false
	}
	ct := r.Header["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// clientIP returns the request's client IP as Caddy determined it
// (trusted proxies), else the connection's.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// cookieValue returns the value of the first cookie named name in h, or
// "", without allocating (http.Request.Cookie parses every cookie).
func cookieValue(h http.Header, name string) string {
	for _, line := range h["Cookie"] {
		for line != "" {
			for line != "" && (line[0] == ' ' || line[0] == '\t') {
				line = line[1:]
			}
			end := strings.IndexByte(line, ';')
			if end < 0 {
				end = len(line)
			}
			if n := len(name); end > n && line[n] == '=' && line[:n] == name {
				v := line[n+1 : end]
				for v != "" && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
					v = v[:len(v)-1]
				}
				if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v
			}
			if end == len(line) {
				break
			}
			line = line[end+1:]
		}
	}
	return ""
}

// stickyCookie is the sticky cookie service_errors sets on the answer to
// a request the split sent to its version.
type stickyCookie struct {
	tr     *traffic.Rules
	bucket int
	path   string
}

// header returns the Set-Cookie header value.
func (c stickyCookie) header() string {
	return (&http.Cookie{
		Name: c.tr.Policy().Cookie, Value: traffic.StickyCookie(c.bucket), Path: c.path,
		HttpOnly: true, SameSite: http.SameSiteLaxMode,
	}).String()
}

// setServiceVars sets the placeholders and variables of a match to the
// service version name, version, and hands the upstream source svc, the
// snapshot's (nil when it holds none), where the request's attempt goes,
// so that its first try does not look the version up again.
func setServiceVars(r *http.Request, repl *caddy.Replacer, svc *registry.Service, name, version, prefix, from any) {
	repl.Set(placeholderName, name)
	repl.Set(placeholderVersion, version)
	repl.Set(placeholderPrefix, prefix)
	repl.Set(placeholderVersionFrom, from)
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		vars[varName], vars[varVersion], vars[attemptVar] = name, version, svc
	}
}

// splitServicePath returns the service named by the first segment after
// prefix of the escaped request path, and the second segment (seg),
// cleaned the way Caddy's strip_prefix cleans it (dot segments resolved,
// slashes merged), so that the prefix {svc.prefix} names is exactly what
// strip_prefix removes. ok says the path is <prefix>/<service>[/...] with
// a valid service name; segOK that a second segment follows and is a
// valid name too. Both must be valid names once unescaped: an escaped
// slash, a NUL, a non-ASCII byte or an overlong segment never is.
func splitServicePath(escapedPath, prefix string) (service, seg string, segOK, ok bool) {
	p := escapedPath
	if strings.Contains(p, "//") || strings.Contains(p, "/.") {
		p = caddyhttp.CleanPath(p, true)
	}
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok || !strings.HasPrefix(rest, "/") {
		return "", "", false, false
	}
	rest = rest[1:]
	service, rest, hasSeg := strings.Cut(rest, "/")
	if service, ok = unescapeName(service); !ok {
		return "", "", false, false
	}
	if !hasSeg {
		return service, "", false, true
	}
	seg, _, _ = strings.Cut(rest, "/")
	seg, segOK = unescapeName(seg)
	return service, seg, segOK, true
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
