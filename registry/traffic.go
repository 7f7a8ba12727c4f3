package registry

import (
	"fmt"
	"math/rand/v2"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// TrafficPolicy is how requests to a service that name no version, or
// name an alias, choose a version (README, "Version traffic"). Its zero
// value is no policy: a request must name a version.
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
	defaultTrafficHeader = "X-Service-Version"
	defaultTrafficCookie = "svc_version"
)

// buckets is how many buckets a split divides clients into: a client's
// bucket, from its sticky cookie or a hash of its header or IP, picks its
// version, so that a change of weights moves only the buckets whose range
// changed.
const buckets = 10000

// Traffic is a checked traffic policy of one service, ready to choose
// versions. It is immutable.
type Traffic struct {
	service  string
	policy   TrafficPolicy
	versions []string // of the split, in name order
	bounds   []int    // bounds[i]: the first bucket after versions[i]'s range

	names    TrafficNames
	aliases  []alias
	attached atomic.Value // Attach's
}

// alias is an alias of a policy.
type alias struct{ name, version string }

// Compile checks p, the policy of service, and returns it ready to
// choose. known reports whether a version of the service exists; with
// known nil the version names are only checked to be names (a policy
// from the config or the store may name versions that come later). The
// error names every unknown version and every other problem.
func (p TrafficPolicy) Compile(service string, known func(version string) bool) (*Traffic, error) {
	t := &Traffic{service: service, policy: p}
	if t.policy.Header == "" {
		t.policy.Header = defaultTrafficHeader
	}
	if t.policy.Cookie == "" {
		t.policy.Cookie = defaultTrafficCookie
	}
	if t.policy.Sticky == "" {
		t.policy.Sticky = "cookie"
	}
	var problems, unknown []string
	isVersion := func(v string) {
		if !ValidName(v) {
			problems = append(problems, fmt.Sprintf("%q is not a version name", v))
		} else if known != nil && !known(v) {
			unknown = append(unknown, v)
		}
	}
	if err := CheckName("service", service); err != nil {
		problems = append(problems, err.Error())
	}
	total := 0
	for v, w := range p.Split {
		isVersion(v)
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
		if !ValidName(alias) || strings.HasPrefix(alias, stickyPrefix) {
			problems = append(problems, fmt.Sprintf("alias %q: not a valid name", alias))
		} else if known != nil && known(alias) {
			problems = append(problems, fmt.Sprintf("alias %q is also a version", alias))
		}
		isVersion(v)
	}
	if p.Fallback != "" {
		isVersion(p.Fallback)
	}
	if !validToken(t.policy.Header) {
		problems = append(problems, fmt.Sprintf("header %q: not a header name", t.policy.Header))
	}
	if !validToken(t.policy.Cookie) {
		problems = append(problems, fmt.Sprintf("cookie %q: not a cookie name", t.policy.Cookie))
	}
	switch t.policy.Sticky {
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
		return nil, Invalidf("traffic policy of %q: %s", service, strings.Join(problems, "; "))
	}
	t.policy.Header = textproto.CanonicalMIMEHeaderKey(t.policy.Header)
	if t.policy.StickyHeader != "" {
		t.policy.StickyHeader = textproto.CanonicalMIMEHeaderKey(t.policy.StickyHeader)
	}
	// Ranges in version-name order: raising one weight moves only the
	// buckets between the old and the new bound.
	slices.Sort(t.versions)
	acc := 0
	for _, v := range t.versions {
		acc += p.Split[v]
		t.bounds = append(t.bounds, acc*buckets/total)
	}
	t.names = TrafficNames{Header: t.policy.Header, Cookie: t.policy.Cookie, Sticky: t.policy.Sticky, StickyHeader: t.policy.StickyHeader}
	for a, v := range p.Aliases {
		t.aliases = append(t.aliases, alias{name: a, version: v})
	}
	return t, nil
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

// Service returns the name of the policy's service.
func (t *Traffic) Service() string { return t.service }

// TrafficNames are the names a request is read by.
type TrafficNames struct {
	Header, Cookie, Sticky, StickyHeader string
}

// Names returns the header, cookie and stickiness of the policy, with the
// defaults filled in and header names canonical.
func (t *Traffic) Names() *TrafficNames { return &t.names }

// Policy returns the policy with its defaults filled in.
func (t *Traffic) Policy() TrafficPolicy { return t.policy }

// resolve returns the version name names: itself if known (or named by
// the policy: a version of its split or its fallback, which may have no
// host right now), the version of an alias, or "" for none of these.
func (t *Traffic) resolve(name string, known func(string) bool) string {
	if known(name) || t.namesVersion(name) {
		return name
	}
	return t.alias(name)
}

// namesVersion reports whether the policy's split or fallback names version v.
func (t *Traffic) namesVersion(v string) bool {
	if v == t.policy.Fallback && v != "" {
		return true
	}
	_, found := slices.BinarySearch(t.versions, v)
	return found
}

// Source says why a request went to its version: {svc.version_from}.
type Source uint8

// Sources of a request's version.
const (
	FromPath     Source = iota // the path names the version
	FromAlias                  // the path names an alias of it
	FromHeader                 // the policy's header names it (or an alias)
	FromCookie                 // the policy's cookie names it (or an alias)
	FromSticky                 // the client's sticky bucket (cookie, header or IP hash)
	FromSplit                  // a random draw from the split
	FromFallback               // the chosen version had no available host
	sourceCount
)

var sourceNames = [sourceCount]string{"path", "alias", "header", "cookie", "sticky", "split", "fallback"}

// String returns the source's name, as {svc.version_from} shows it.
func (s Source) String() string {
	if s < sourceCount {
		return sourceNames[s]
	}
	return "unknown"
}

// TrafficRequest is what a request carries that can choose its version.
type TrafficRequest struct {
	// Header is the value of the policy's header; "" for none.
	Header string
	// Cookie is the value of the policy's cookie; "" for none.
	Cookie string
	// StickyKey is what sticky "header" or "ip" hashes: the value of the
	// sticky header, or the client IP; "" for none.
	StickyKey string
	// Random is a random number for a request the split decides; 0:
	// Choose draws one (math/rand/v2) if it needs one.
	Random uint64
}

// Choice is the version a request that names none in its path goes to.
type Choice struct {
	// Version is the version, or "" for none: the request names an
	// unknown one (Named), or the policy has no split.
	Version string
	// Named is the version or alias the header or cookie named, when it
	// is unknown.
	Named string
	// From says why.
	From Source
	// Bucket is the client's bucket to set in its sticky cookie, or -1:
	// set only when the split drew it and the policy is sticky by cookie.
	Bucket int
	// Index is Version's place in the split when a bucket chose it
	// (Routing.SplitService), else -1.
	Index int
}

// Choose returns the version for a request to the policy's service that
// names no version in its path: the one its header names, else its
// cookie (a version, an alias, or a sticky bucket), else its sticky key's
// bucket, else a random bucket of the split. known reports whether a
// version of the service exists. It does not allocate.
//
// A header naming no version is the client's explicit mistake, answered
// as such (Named). A cookie the policy cannot use (a version that is
// gone, a bucket out of range, anything else) is ignored, as if absent:
// a client keeps its cookies, and one that no longer means anything must
// not pin it to an error; the split draws it a new bucket.
func (t *Traffic) Choose(req TrafficRequest, known func(string) bool) Choice {
	if req.Header != "" {
		if v := t.resolve(req.Header, known); v != "" {
			return Choice{Version: v, From: FromHeader, Bucket: -1, Index: -1}
		}
		return Choice{Named: req.Header, From: FromHeader, Bucket: -1, Index: -1}
	}
	if req.Cookie != "" {
		if b, ok := parseStickyCookie(req.Cookie); ok {
			if t.splits() && t.policy.Sticky == "cookie" {
				return t.bucketChoice(b, FromSticky)
			}
		} else if v := t.resolve(req.Cookie, known); v != "" {
			return Choice{Version: v, From: FromCookie, Bucket: -1, Index: -1}
		}
	}
	if !t.splits() {
		return Choice{From: FromSplit, Bucket: -1, Index: -1}
	}
	switch t.policy.Sticky {
	case "header", "ip":
		if req.StickyKey != "" {
			return t.bucketChoice(bucketOf(req.StickyKey), FromSticky)
		}
	}
	r := req.Random
	if r == 0 {
		r = rand.Uint64()
	}
	b := int(r % buckets)
	c := t.bucketChoice(b, FromSplit)
	if t.policy.Sticky == "cookie" {
		c.Bucket = b
	}
	return c
}

// bucketChoice is the split's version for bucket b.
func (t *Traffic) bucketChoice(b int, from Source) Choice {
	i := t.index(b)
	return Choice{Version: t.versions[i], From: from, Bucket: -1, Index: i}
}

// alias returns the version an alias names, or "" when it names none.
// A policy has few aliases: comparing them costs less than hashing.
func (t *Traffic) alias(alias string) string {
	for i := range t.aliases {
		if a := &t.aliases[i]; a.name == alias {
			return a.version
		}
	}
	return ""
}

// Fallback returns the policy's fallback version, or "".
func (t *Traffic) Fallback() string { return t.policy.Fallback }

// Attachment returns the value a caller attached to the policy with
// Attach, or nil: what it derives from the policy once (the Caddy module,
// the values of its placeholders) can stay with it, since a Traffic never
// changes.
func (t *Traffic) Attachment() any { return t.attached.Load() }

// Attach attaches v to the policy unless a value is attached already (the
// first of concurrent callers wins), and returns the value attached. Every
// value attached must be of the same type.
func (t *Traffic) Attach(v any) any {
	if t.attached.CompareAndSwap(nil, v) {
		return v
	}
	return t.attached.Load()
}

// splits reports whether the policy has a split.
func (t *Traffic) splits() bool { return len(t.versions) > 0 }

// Version returns the split's version for bucket b (0 <= b < 10000),
// or "" without a split.
func (t *Traffic) Version(b int) string {
	if !t.splits() {
		return ""
	}
	return t.versions[t.index(b)]
}

// index returns the place in the split of bucket b's version; the policy
// has a split.
func (t *Traffic) index(b int) int {
	for i, bound := range t.bounds {
		if b < bound {
			return i
		}
	}
	return len(t.bounds) - 1
}

// bucketOf hashes a sticky key (a header value, a client IP) to a bucket,
// with FNV-1a.
func bucketOf(key string) int {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return int(h % buckets)
}

// stickyPrefix starts a cookie value that carries a bucket rather than a
// version or alias; no name starts with it.
const stickyPrefix = "~"

// StickyCookie returns the cookie value that keeps a client in bucket b.
func StickyCookie(b int) string { return stickyPrefix + strconv.Itoa(b) }

// parseStickyCookie returns the bucket a sticky cookie value carries.
func parseStickyCookie(v string) (int, bool) {
	if len(v) < 2 || len(v) > 5 || v[0] != stickyPrefix[0] {
		return 0, false
	}
	b := 0
	for i := 1; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		b = b*10 + int(c-'0')
	}
	return b, b < buckets
}
