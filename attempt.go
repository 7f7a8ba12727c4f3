package svcreg

import (
	"math/bits"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/balance"
)

// attemptVar is the request variable holding the request's *attempt;
// before its first try, the *registry.Service the matcher found, on which
// GetUpstreams starts the attempt (one map slot for both: a request
// variable costs a map insert).
const attemptVar = "service_registry.attempt"

// inlineHosts is how many upstream pointers an attempt holds inline.
const inlineHosts = 8

// attempt is what one request has tried so far. reverse_proxy calls
// GetUpstreams and then Select once per try, on one goroutine, so the
// attempt needs no locking. GetUpstreams starts it (on the service version
// the matcher found) and keeps it in the request's variables; Select and
// the service_http transport's RoundTrip each fetch it from there once and
// hand it down.
type attempt struct {
	svc   *registry.Service // where pool came from; nil for pools not from the registry
	pool  []*reverseproxy.Upstream
	tried []uint64 // bit i: pool[i] was tried
	last  int      // pool index of the previous try; -1 for none

	balance    balance.Algorithm // the selection policy's, for hedges
	retrying   bool              // reverse_proxy announced a retry (ResetCache)
	retryAfter bool              // Retry-After was set on the response

	// Set by the service_http transport:
	reg       tryRegistry // where tries are reported
	reported  bool        // the last try's outcome was reported
	deposited bool        // the request paid into the retry budget
	noRetry   bool        // the retry budget refused the next try
	// dialing is the time spent dialing new connections for the
	// current try, in nanoseconds: a latency sample leaves it out.
	dialing atomic.Int64

	triedInline [1]uint64
	poolInline  [inlineHosts]*reverseproxy.Upstream
}

// newAttempt starts an attempt on pool, or, when pool is nil, on fresh
// upstreams for svc's endpoints: two allocations, the attempt and exactly
// as many upstreams as the version has endpoints (each is ~100 bytes, and
// every allocated byte is garbage after the request).
func newAttempt(svc *registry.Service, pool []*reverseproxy.Upstream) *attempt {
	a := &attempt{svc: svc, pool: pool, last: -1}
	if pool == nil && svc != nil {
		n := len(svc.Endpoints)
		a.pool = a.poolInline[:0]
		if n > inlineHosts {
			a.pool = make([]*reverseproxy.Upstream, 0, n)
		}
		ups := make([]reverseproxy.Upstream, n)
		for i, ep := range svc.Endpoints {
			ups[i].Dial = ep.Address
			a.pool = append(a.pool, &ups[i])
		}
	}
	if words := (len(a.pool) + 63) / 64; words <= len(a.triedInline) {
		a.tried = a.triedInline[:words]
	} else {
		a.tried = make([]uint64, words)
	}
	return a
}

func (a *attempt) wasTried(i int) bool { return a.tried[i/64]&(1<<(i%64)) != 0 }
func (a *attempt) markTried(i int)     { a.tried[i/64] |= 1 << (i % 64) }

// untried counts the pool's hosts not tried yet.
func (a *attempt) untried() int {
	n := len(a.pool)
	for _, w := range a.tried {
		n -= bits.OnesCount64(w)
	}
	return n
}

// reportPrevious tells reg that the previous try failed, unless its host
// answered (a retry on the response, through lb_retry_match). reverse_proxy
// only asks for another host after a failed or rejected try.
//
// The service_http transport reports every try itself; this is for other
// transports.
func (a *attempt) reportPrevious(reg tryRegistry, repl *caddy.Replacer) {
	if a.last < 0 {
		return
	}
	if a.svc != nil {
		stateOf(a.svc).retries.Add(1)
		if _, answered := repl.Get(statusPlaceholder); !answered && reg != nil && !a.reported {
			reg.Failure(a.svc.Key(), a.svc.Endpoints[a.last].Address)
		}
	}
	a.last = -1
	a.reported = false
}

// attemptFor returns the request's attempt for pool, starting one for a
// pool that did not come from the service_registry upstream source.
func attemptFor(r *http.Request, pool []*reverseproxy.Upstream) *attempt {
	a, _ := caddyhttp.GetVar(r.Context(), attemptVar).(*attempt)
	if a != nil && len(a.pool) == len(pool) && (len(pool) == 0 || &a.pool[0] == &pool[0]) {
		return a
	}
	a = newAttempt(nil, pool)
	caddyhttp.SetVar(r.Context(), attemptVar, a)
	return a
}

// Len returns the size of the request's pool (balance.Pool).
func (a *attempt) Len() int { return len(a.pool) }

// Load returns reverse_proxy's count of requests in flight to pool[i],
// and its weight.
func (a *attempt) Load(i int) (inFlight, weight int) {
	if a.svc == nil {
		return a.pool[i].Host.NumRequests(), 1
	}
	return a.pool[i].Host.NumRequests(), a.svc.Endpoints[i].Weight.Int()
}

// Now returns the time the registry's latencies are compared at: the
// registry reports them on time.Now, as the transport does.
func (a *attempt) Now() time.Time { return time.Now() }

// Latency returns pool[i]'s latency at now as the registry knows it (see
// registry.Endpoint.Latency); unknown for a pool not from the registry.
func (a *attempt) Latency(i int, now time.Time) (ewma float64, sinceReply time.Duration, known bool) {
	if a.svc == nil {
		return 0, 0, false
	}
	return a.svc.Endpoints[i].Latency(now)
}

// Candidate reports whether pool[i] may take this try: not tried yet,
// available to reverse_proxy (not full, not tripped), and pickable by the
// registry's health (see registry.Endpoint.Pickable).
func (a *attempt) Candidate(i int, ignoreHealth bool) bool {
	if a.wasTried(i) || !a.pool[i].Available() {
		return false
	}
	return a.svc == nil || a.svc.Endpoints[i].Pickable(ignoreHealth)
}

// Interface guards
var _ balance.Pool = (*attempt)(nil)
