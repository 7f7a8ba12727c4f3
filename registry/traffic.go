package registry

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// TrafficPolicy is how requests to a service that name no version, or
// name an alias, choose a version (../shared/DESIGN.md, "Version
// traffic"). Its zero value is no policy: a request must name a version.
type TrafficPolicy struct {
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

// Defaults of a traffic policy.
const (
	DefaultTrafficHeader = "X-Service-Version"
	DefaultTrafficCookie = "svc_version"
)

// Buckets is how many buckets a split divides clients into: a client's
// bucket, from its sticky cookie or a hash of its header or IP, picks its
// version, so that a change of weights moves only the buckets whose range
// changed.
const Buckets = 10000

// Traffic is a checked traffic policy, ready to choose versions.
type Traffic struct {
	policy   TrafficPolicy
	versions []string // of the split, in name order
	bounds   []int    // bounds[i]: the first bucket after versions[i]'s range
}

// Compile checks p against the service's versions (known reports whether
// a version exists) and returns it ready to choose. The error names every
// unknown version and every bad weight.
func (p TrafficPolicy) Compile(known func(version string) bool) (*Traffic, error) {
	t := &Traffic{policy: p}
	if t.policy.Header == "" {
		t.policy.Header = DefaultTrafficHeader
	}
	if t.policy.Cookie == "" {
		t.policy.Cookie = DefaultTrafficCookie
	}
	if t.policy.Sticky == "" {
		t.policy.Sticky = "cookie"
	}
	var problems, unknown []string
	total := 0
	for v, w := range p.Split {
		if !known(v) {
			unknown = append(unknown, v)
		}
		if w < 0 || w > 100 {
			problems = append(problems, fmt.Sprintf("split weight of %q is %d: want 0 to 100", v, w))
		}
		total += w
		t.versions = append(t.versions, v)
	}
	if len(p.Split) > 0 && total == 0 {
		problems = append(problems, "split: every weight is 0")
	}
	for alias, v := range p.Aliases {
		if !ValidName(alias) {
			problems = append(problems, fmt.Sprintf("alias %q: not a valid name", alias))
		}
		if known(alias) {
			problems = append(problems, fmt.Sprintf("alias %q is also a version", alias))
		}
		if !known(v) {
			unknown = append(unknown, v)
		}
	}
	if p.Fallback != "" && !known(p.Fallback) {
		unknown = append(unknown, p.Fallback)
	}
	switch t.policy.Sticky {
	case "cookie", "ip", "off":
		if p.StickyHeader != "" {
			problems = append(problems, "sticky_header needs sticky header")
		}
	case "header":
		if p.StickyHeader == "" {
			problems = append(problems, "sticky header needs sticky_header, the header to hash")
		}
	default:
		problems = append(problems, fmt.Sprintf("sticky %q: want cookie, header, ip or off", p.Sticky))
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		unknown = slices.Compact(unknown)
		problems = append(problems, "unknown versions: "+strings.Join(unknown, ", "))
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, Invalidf("traffic policy: %s", strings.Join(problems, "; "))
	}
	// Ranges in version-name order: raising one weight moves only the
	// buckets between the old and the new bound.
	slices.Sort(t.versions)
	acc := 0
	for _, v := range t.versions {
		acc += p.Split[v]
		t.bounds = append(t.bounds, acc*Buckets/total)
	}
	return t, nil
}

// Policy returns the policy with its defaults filled in.
func (t *Traffic) Policy() TrafficPolicy { return t.policy }

// Resolve returns the version name names: itself if known, the version
// of an alias, or "" for neither.
func (t *Traffic) Resolve(name string, known func(string) bool) string {
	if known(name) {
		return name
	}
	return t.policy.Aliases[name]
}

// Splits reports whether the policy has a split.
func (t *Traffic) Splits() bool { return len(t.versions) > 0 }

// Version returns the split's version for bucket b (0 <= b < Buckets),
// or "" without a split.
func (t *Traffic) Version(b int) string {
	for i, bound := range t.bounds {
		if b < bound {
			return t.versions[i]
		}
	}
	return ""
}

// Bucket hashes a sticky key (a header value, a client IP) to a bucket,
// with FNV-1a.
func Bucket(key string) int {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return int(h % Buckets)
}

// stickyPrefix starts a cookie value that carries a bucket rather than a
// version or alias; no name starts with it.
const stickyPrefix = "~"

// StickyCookie returns the cookie value that keeps a client in bucket b.
func StickyCookie(b int) string { return stickyPrefix + strconv.Itoa(b) }

// ParseStickyCookie returns the bucket a sticky cookie value carries.
func ParseStickyCookie(v string) (int, bool) {
	rest, ok := strings.CutPrefix(v, stickyPrefix)
	if !ok {
		return 0, false
	}
	b, err := strconv.Atoi(rest)
	if err != nil || b < 0 || b >= Buckets || strings.TrimLeft(rest, "0123456789") != "" {
		return 0, false
	}
	return b, true
}
