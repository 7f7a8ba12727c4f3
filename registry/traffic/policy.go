package traffic

import (
	"fmt"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"github.com/svcreg/caddy-svcreg/registry/internal/input"
)

// Policy is how requests to a service that name no version, or name an
// alias, choose a version (docs/traffic.md). Its zero value is no
// policy: a request must name a version.
type Policy struct {
	// Split weighs the versions a request that names none goes to: 0 to
	// 100 each, at least one above 0.
	Split map[string]int `json:"split,omitempty"`
	// Aliases are other names of versions: /users/stable/... is the
	// version "stable" names.
	Aliases map[string]string `json:"aliases,omitempty"`
	// Header names the request header whose value, a version or alias,
	// chooses the version. Default: X-Service-Version.
	Header string `json:"header,omitempty"`
	// Cookie names the cookie that chooses the version the same way, and
	// carries a client's sticky bucket. Default: svc_version.
	Cookie string `json:"cookie,omitempty"`
	// Sticky is what keeps a client on its version while the split stays
	// the same: "cookie" (the default: a bucket set in the cookie on the
	// first answer), "header" (a hash of StickyHeader), "ip" (a hash of
	// the client IP) or "off".
	Sticky string `json:"sticky,omitempty"`
	// StickyHeader names the header Sticky "header" hashes.
	StickyHeader string `json:"sticky_header,omitempty"`
	// Fallback is the version a request goes to when the version it chose
	// has no available host. Default: none (it gets 503).
	Fallback string `json:"fallback,omitempty"`
}

// Defaults of a policy.
const (
	defaultHeader = "X-Service-Version"
	defaultCookie = "svc_version"
)

// ErrInvalid is matched by every error of Compile. It is the same error
// as registry.ErrInvalid, which every error about bad input matches.
var ErrInvalid = input.ErrInvalid

// Compile checks p, the policy of service, and returns its rules.
// known reports whether a version of the service exists; with known nil
// the version names are only checked to be names (a policy from the
// config or the store may name versions that come later). The error
// names every unknown version and every other problem.
func (p Policy) Compile(service string, known func(version string) bool) (*Rules, error) {
	r := &Rules{service: service, policy: p}
	if r.policy.Header == "" {
		r.policy.Header = defaultHeader
	}
	if r.policy.Cookie == "" {
		r.policy.Cookie = defaultCookie
	}
	if r.policy.Sticky == "" {
		r.policy.Sticky = "cookie"
	}
	var problems, unknown []string
	isVersion := func(v string) {
		if !input.ValidName(v) {
			problems = append(problems, fmt.Sprintf("%q is not a version name", v))
		} else if known != nil && !known(v) {
			unknown = append(unknown, v)
		}
	}
	if err := input.CheckName("service", service); err != nil {
		problems = append(problems, err.Error())
	}
	total := 0
	for v, w := range p.Split {
		isVersion(v)
		if w < 0 || w > 100 {
			problems = append(problems, fmt.Sprintf("split weight of %q is %d: want 0 to 100", v, w))
		}
		total += w
		r.versions = append(r.versions, v)
	}
	if len(p.Split) > 0 && total == 0 {
		problems = append(problems, "split: every weight is 0")
	}
	for alias, v := range p.Aliases {
		if !input.ValidName(alias) || strings.HasPrefix(alias, stickyPrefix) {
			problems = append(problems, fmt.Sprintf("alias %q: not a valid name", alias))
		} else if known != nil && known(alias) {
			problems = append(problems, fmt.Sprintf("alias %q is also a version", alias))
		}
		isVersion(v)
	}
	if p.Fallback != "" {
		isVersion(p.Fallback)
	}
	if !validToken(r.policy.Header) {
		problems = append(problems, fmt.Sprintf("header %q: not a header name", r.policy.Header))
	}
	if !validToken(r.policy.Cookie) {
		problems = append(problems, fmt.Sprintf("cookie %q: not a cookie name", r.policy.Cookie))
	}
	switch r.policy.Sticky {
	case "cookie", "ip", "off":
		if p.StickyHeader != "" {
			problems = append(problems, "sticky_header needs sticky header")
		}
	case "header":
		if p.StickyHeader == "" {
			problems = append(problems, "sticky header needs sticky_header, the header to hash")
		} else if !validToken(p.StickyHeader) {
			problems = append(problems, fmt.Sprintf("sticky_header %q: not a header name", p.StickyHeader))
		}
	default:
		problems = append(problems, fmt.Sprintf("sticky %q: want cookie, header, ip or off", p.Sticky))
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		unknown = slices.Compact(unknown)
		what := "unknown version "
		if len(unknown) > 1 {
			what = "unknown versions "
		}
		for i, v := range unknown {
			unknown[i] = strconv.Quote(v)
		}
		problems = append(problems, what+strings.Join(unknown, ", ")+" of service "+strconv.Quote(service))
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, input.Errorf("traffic policy of %q: %s", service, strings.Join(problems, "; "))
	}
	r.policy.Header = textproto.CanonicalMIMEHeaderKey(r.policy.Header)
	if r.policy.StickyHeader != "" {
		r.policy.StickyHeader = textproto.CanonicalMIMEHeaderKey(r.policy.StickyHeader)
	}
	// Ranges in version-name order: raising one weight moves only the
	// buckets between the old and the new bound.
	slices.Sort(r.versions)
	acc := 0
	for _, v := range r.versions {
		acc += p.Split[v]
		r.bounds = append(r.bounds, acc*buckets/total)
	}
	r.names = Names{Header: r.policy.Header, Cookie: r.policy.Cookie, Sticky: r.policy.Sticky, StickyHeader: r.policy.StickyHeader}
	for a, v := range p.Aliases {
		r.aliases = append(r.aliases, alias{name: a, version: v})
	}
	return r, nil
}

// validToken reports whether s is an HTTP token (a header or cookie name).
func validToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}
