package registry

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Balance is a balancing algorithm: how a request's next try chooses
// among the hosts it may take.
type Balance uint8

// The balancing algorithms.
const (
	// RoundRobin takes the hosts in turn, honoring weights with a smooth
	// weighted order (as nginx does).
	RoundRobin Balance = iota
	// Random takes a random host.
	Random
	// LeastConn takes the host with the fewest requests in flight per
	// unit of weight, ties broken at random.
	LeastConn
	// P2C takes the less busy of two random hosts ("power of two
	// choices"): fewer requests in flight per unit of weight.
	P2C
	// PeakEWMA takes one of two random hosts with a chance inversely
	// proportional to its cost: its peak-EWMA latency times its requests
	// in flight plus one, per unit of weight, as in Finagle's and
	// Linkerd's balancers. A host twice as slow or as busy as another
	// gets half as many of the requests the two could both take; one a
	// thousand times slower, almost none; equal hosts share evenly.
	PeakEWMA
)

var balanceNames = [...]string{RoundRobin: "round_robin", Random: "random", LeastConn: "least_conn", P2C: "p2c", PeakEWMA: "peak_ewma"}

// String returns the algorithm's name: round_robin, random, least_conn,
// p2c or peak_ewma.
func (b Balance) String() string {
	if int(b) < len(balanceNames) {
		return balanceNames[b]
	}
	return "unknown"
}

// ParseBalance returns the algorithm of the given name.
func ParseBalance(name string) (Balance, error) {
	for b, n := range balanceNames {
		if n == name {
			return Balance(b), nil
		}
	}
	return 0, Invalidf("unknown balancing algorithm %q: want round_robin, random, least_conn, p2c or peak_ewma", name)
}

// Pool is the set of hosts one request chooses from, indexed from 0 to
// Len()-1; for a pool made from a Service, index i is Endpoints[i].
type Pool interface {
	// Len returns the number of hosts.
	Len() int
	// Candidate reports whether host i may take the request's next try:
	// not tried by it yet, and (see Endpoint.Pickable) in rotation, or,
	// with ignoreHealth, merely not being removed.
	Candidate(i int, ignoreHealth bool) bool
	// Load returns host i's requests in flight and its weight (1 to 100;
	// a drained host is never a candidate).
	Load(i int) (inFlight, weight int)
	// Endpoint returns host i's endpoint in the registry, or nil for a
	// host that does not come from it (whose latency is then unknown).
	Endpoint(i int) *Endpoint
}

// Rotation is a position in a round-robin order, shared by the requests
// that balance over the same hosts; a Service carries one with its
// weighted schedule. The zero value is a plain rotation over however many
// hosts a pool has.
type Rotation struct {
	schedule []int32 // weighted order of host indexes; nil when weights are equal
	next     atomic.Uint64
}

// Pick returns the index of the host for the request's next try, or -1
// when no host is a candidate. rot, which must not be nil, is a Service's
// rotation, or one the caller keeps for a pool of equal hosts: RoundRobin turns it, and
// RoundRobin and Random follow its weighted order. Pick takes no lock and
// does not allocate.
func (b Balance) Pick(p Pool, rot *Rotation, ignoreHealth bool) int {
	if p.Len() == 0 {
		return -1
	}
	switch b {
	case Random:
		return scan(p, rot.schedule, rand.Uint64(), ignoreHealth)
	case LeastConn:
		return leastConn(p, ignoreHealth)
	case P2C:
		return powerOfTwo(p, ignoreHealth, inFlightCost, false)
	case PeakEWMA:
		return powerOfTwo(p, ignoreHealth, ewmaCost, true)
	default:
		return scan(p, rot.schedule, rot.next.Add(1)-1, ignoreHealth)
	}
}

// scan returns the host at position start of the pool's (weighted)
// round-robin order if it is a candidate. Otherwise it draws random
// positions, and walks the order from one only when a few draws found
// none: the share of a host that cannot take the request spreads evenly
// over the others (by weight), rather than doubling the next one's (a walk
// alone gives the host after it twice the share of the rest's extra).
func scan(p Pool, sched []int32, start uint64, ignoreHealth bool) int {
	n := uint64(p.Len())
	if sched != nil {
		n = uint64(len(sched))
	}
	at := func(k uint64) int {
		if sched != nil {
			return int(sched[k%n])
		}
		return int(k % n)
	}
	if i := at(start); p.Candidate(i, ignoreHealth) {
		return i
	}
	for range scanDraws {
		if i := at(rand.Uint64()); p.Candidate(i, ignoreHealth) {
			return i
		}
	}
	from := rand.Uint64()
	for k := range n {
		if i := at(from + k); p.Candidate(i, ignoreHealth) {
			return i
		}
	}
	return -1
}

// scanDraws is how many random positions scan draws before it walks.
const scanDraws = 8

// leastConn returns the candidate with the fewest requests in flight per
// unit of weight; scanning from a random offset breaks ties at random.
func leastConn(p Pool, ignoreHealth bool) int {
	n := p.Len()
	start := rand.IntN(n)
	best, bestIn, bestW := -1, 0, 1
	for k := range n {
		i := (start + k) % n
		if !p.Candidate(i, ignoreHealth) {
			continue
		}
		// i is less busy than best: in/w < bestIn/bestW
		if in, w := p.Load(i); best < 0 || in*bestW < bestIn*w {
			best, bestIn, bestW = i, in, w
		}
	}
	return best
}

// costFunc returns what it costs host i to take one more request.
type costFunc func(p Pool, i int, now int64) float64

// inFlightCost is the host's requests in flight per unit of weight.
func inFlightCost(p Pool, i int, _ int64) float64 {
	in, w := p.Load(i)
	return float64(in) / float64(w)
}

// defaultLatency is the latency of a host with no answers yet, as
// Linkerd's default RTT: not so low that a new (or black-holed) host
// attracts every request.
const defaultLatency = 30 * time.Millisecond

// ewmaCost is the host's peak-EWMA latency times its requests in flight
// plus one, per unit of weight. While it has requests in flight, its
// latency is at least the time since its last response: a host that
// stops answering (frozen, black-holed) looks slower every millisecond,
// long before its requests time out, and gets no more.
func ewmaCost(p Pool, i int, now int64) float64 {
	in, w := p.Load(i)
	lat := float64(defaultLatency)
	if ep := p.Endpoint(i); ep != nil && ep.health.ewma.stamp.Load() != 0 {
		lat = ep.health.ewma.at(now) + float64(time.Microsecond)
		if in > 0 {
			lat = max(lat, float64(now-ep.health.lastReply.Load()))
		}
	}
	return lat * float64(in+1) / float64(w)
}

// powerOfTwo returns one of two random candidates: the cheaper one, or
// with byChance one drawn with a chance inversely proportional to its
// cost.
func powerOfTwo(p Pool, ignoreHealth bool, cost costFunc, byChance bool) int {
	if n := p.Len(); n > 1 {
		// the common case: two random hosts, both candidates
		i, j := rand.IntN(n), rand.IntN(n-1)
		if j >= i {
			j++
		}
		if p.Candidate(i, ignoreHealth) && p.Candidate(j, ignoreHealth) {
			return choose(p, i, j, cost, byChance)
		}
	}
	// Otherwise pick two among the candidates, asking Candidate once per
	// host: its answer may change between two calls (slow start is random,
	// health changes under us).
	var buf [16]int
	cands := buf[:0]
	for i := range p.Len() {
		if p.Candidate(i, ignoreHealth) {
			cands = append(cands, i)
		}
	}
	switch len(cands) {
	case 0:
		return -1
	case 1:
		return cands[0]
	}
	k1, k2 := rand.IntN(len(cands)), rand.IntN(len(cands)-1)
	if k2 >= k1 {
		k2++
	}
	return choose(p, cands[k1], cands[k2], cost, byChance)
}

// choose returns whichever of hosts i and j costs less (i on a tie), or
// with byChance i with the chance cost(j) / (cost(i) + cost(j)).
func choose(p Pool, i, j int, cost costFunc, byChance bool) int {
	var now int64
	if ep := p.Endpoint(i); ep != nil {
		now = ep.health.now().UnixNano()
	}
	ci, cj := cost(p, i, now), cost(p, j, now)
	if byChance {
		if rand.Float64()*(ci+cj) < cj {
			return i
		}
		return j
	}
	if cj < ci {
		return j
	}
	return i
}

// Tries is a Pool over a Service's endpoints for one request: a program
// that proxies or calls a service itself uses it to balance the request
// and fail over, never trying an endpoint twice.
//
//	tries := registry.NewTries(svc)
//	for ep := tries.Next(registry.RoundRobin); ep != nil; ep = tries.Next(registry.RoundRobin) {
//		ep.Sent()
//		if err := call(ep.Address); err == nil {
//			break
//		}
//		reg.Failure(svc.Key(), ep.Address)
//	}
type Tries struct {
	svc   *Service
	tried []bool
}

// NewTries starts a request's tries on svc.
func NewTries(svc *Service) *Tries {
	return &Tries{svc: svc, tried: make([]bool, len(svc.Endpoints))}
}

// Next picks the endpoint for the next try with b, and marks it tried: one
// in rotation if any is left untried, else (panic mode) any untried one
// not being removed. It returns nil once none is left.
func (t *Tries) Next(b Balance) *Endpoint {
	i := b.Pick(t, t.svc.Rotation(), false)
	if i < 0 {
		i = b.Pick(t, t.svc.Rotation(), true)
	}
	if i < 0 {
		return nil
	}
	t.tried[i] = true
	return t.svc.Endpoints[i]
}

// Len returns the number of endpoints.
func (t *Tries) Len() int { return len(t.tried) }

// Candidate reports whether endpoint i is untried and pickable.
func (t *Tries) Candidate(i int, ignoreHealth bool) bool {
	return !t.tried[i] && t.svc.Endpoints[i].Pickable(ignoreHealth)
}

// Load returns endpoint i's requests in flight (see
// Endpoint.CountInFlight) and weight.
func (t *Tries) Load(i int) (inFlight, weight int) {
	ep := t.svc.Endpoints[i]
	return ep.inFlight(), ep.Weight.Int()
}

// Endpoint returns endpoint i.
func (t *Tries) Endpoint(i int) *Endpoint { return t.svc.Endpoints[i] }

// Interface guards
var _ Pool = (*Tries)(nil)
