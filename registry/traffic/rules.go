package traffic

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"
)

// buckets is how many buckets a split divides clients into: a client's
// bucket, from its sticky cookie or a hash of its header or IP, picks its
// version, so that a change of weights moves only the buckets whose range
// changed.
const buckets = 10000

// Rules are the checked policy of one service, ready to choose versions
// (Policy.Compile returns them). They are immutable.
type Rules struct {
	service  string
	policy   Policy
	versions []string // of the split, in name order
	bounds   []int    // bounds[i]: the first bucket after versions[i]'s range

	names    Names
	aliases  []alias
	attached atomic.Value // Attach's
}

// alias is an alias of a policy.
type alias struct{ name, version string }

// Service returns the name of the policy's service.
func (r *Rules) Service() string { return r.service }

// Names are the names a request is read by.
type Names struct {
	Header, Cookie, Sticky, StickyHeader string
}

// Names returns the header, cookie and stickiness of the policy, with the
// defaults filled in and header names canonical.
func (r *Rules) Names() *Names { return &r.names }

// Policy returns the policy with its defaults filled in.
func (r *Rules) Policy() Policy { return r.policy }

// Split returns the versions of the split, in name order: a Choice's
// Index is a place in it. Nil without a split.
func (r *Rules) Split() []string { return slices.Clone(r.versions) }

// resolve returns the version name names: itself if known (or named by
// the policy: a version of its split or its fallback, which may have no
// host right now), the version of an alias, or "" for none of these.
func (r *Rules) resolve(name string, known func(string) bool) string {
	if known(name) || r.namesVersion(name) {
		return name
	}
	return r.alias(name)
}

// namesVersion reports whether the policy's split or fallback names version v.
func (r *Rules) namesVersion(v string) bool {
	if v == r.policy.Fallback && v != "" {
		return true
	}
	_, found := slices.BinarySearch(r.versions, v)
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
	NumSources                 // how many sources there are, not a source
)

var sourceNames = [NumSources]string{"path", "alias", "header", "cookie", "sticky", "split", "fallback"}

// String returns the source's name, as {svc.version_from} shows it.
func (s Source) String() string {
	if s < NumSources {
		return sourceNames[s]
	}
	return "unknown"
}

// Request is what a request carries that can choose its version.
type Request struct {
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
	// Index is Version's place in the split (Rules.Split) when a bucket
	// chose it, else -1.
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
func (r *Rules) Choose(req Request, known func(string) bool) Choice {
	if req.Header != "" {
		if v := r.resolve(req.Header, known); v != "" {
			return Choice{Version: v, From: FromHeader, Bucket: -1, Index: -1}
		}
		return Choice{Named: req.Header, From: FromHeader, Bucket: -1, Index: -1}
	}
	if req.Cookie != "" {
		if b, ok := parseStickyCookie(req.Cookie); ok {
			if r.splits() && r.policy.Sticky == "cookie" {
				return r.bucketChoice(b, FromSticky)
			}
		} else if v := r.resolve(req.Cookie, known); v != "" {
			return Choice{Version: v, From: FromCookie, Bucket: -1, Index: -1}
		}
	}
	if !r.splits() {
		return Choice{From: FromSplit, Bucket: -1, Index: -1}
	}
	switch r.policy.Sticky {
	case "header", "ip":
		if req.StickyKey != "" {
			return r.bucketChoice(bucketOf(req.StickyKey), FromSticky)
		}
	}
	n := req.Random
	if n == 0 {
		n = rand.Uint64()
	}
	b := int(n % buckets)
	c := r.bucketChoice(b, FromSplit)
	if r.policy.Sticky == "cookie" {
		c.Bucket = b
	}
	return c
}

// bucketChoice is the split's version for bucket b.
func (r *Rules) bucketChoice(b int, from Source) Choice {
	i := r.index(b)
	return Choice{Version: r.versions[i], From: from, Bucket: -1, Index: i}
}

// alias returns the version an alias names, or "" when it names none.
// A policy has few aliases: comparing them costs less than hashing.
func (r *Rules) alias(alias string) string {
	for i := range r.aliases {
		if a := &r.aliases[i]; a.name == alias {
			return a.version
		}
	}
	return ""
}

// Fallback returns the policy's fallback version, or "".
func (r *Rules) Fallback() string { return r.policy.Fallback }

// Attachment returns the value a caller attached to the rules with
// Attach, or nil: what it derives from them once (the Caddy module, the
// values of its placeholders) can stay with them, since Rules never
// change.
func (r *Rules) Attachment() any { return r.attached.Load() }

// Attach attaches v to the rules unless a value is attached already (the
// first of concurrent callers wins), and returns the value attached. Every
// value attached must be of the same type.
func (r *Rules) Attach(v any) any {
	if r.attached.CompareAndSwap(nil, v) {
		return v
	}
	return r.attached.Load()
}

// splits reports whether the policy has a split.
func (r *Rules) splits() bool { return len(r.versions) > 0 }

// Version returns the split's version for bucket b (0 <= b < 10000),
// or "" without a split.
func (r *Rules) Version(b int) string {
	if !r.splits() {
		return ""
	}
	return r.versions[r.index(b)]
}

// index returns the place in the split of bucket b's version; the policy
// has a split.
func (r *Rules) index(b int) int {
	for i, bound := range r.bounds {
		if b < bound {
			return i
		}
	}
	return len(r.bounds) - 1
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
