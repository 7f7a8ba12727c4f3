// Package balance holds the balancing algorithms: how a request's next try
// chooses among the hosts it may take. It knows hosts only through a Pool,
// which the caller implements (the registry's Tries over a Service, a
// proxy's pool of upstreams); it imports nothing of the registry or of
// Caddy. Parse's errors match the registry's ErrInvalid.
//
// Pick takes no lock and does not allocate: it runs on every try of
// every request.
package balance

import (
	"math/rand/v2"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/internal/input"
)

// Algorithm is a balancing algorithm.
type Algorithm uint8

// The balancing algorithms.
const (
	// RoundRobin takes the hosts in turn, honoring weights with a smooth
	// weighted order (as nginx does).
	RoundRobin Algorithm = iota
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

var names = [...]string{RoundRobin: "round_robin", Random: "random", LeastConn: "least_conn", P2C: "p2c", PeakEWMA: "peak_ewma"}

// String returns the algorithm's name: round_robin, random, least_conn,
// p2c or peak_ewma.
func (a Algorithm) String() string {
	if int(a) < len(names) {
		return names[a]
	}
	return "unknown"
}

// Parse returns the algorithm of the given name.
func Parse(name string) (Algorithm, error) {
	for a, n := range names {
		if n == name {
			return Algorithm(a), nil
		}
	}
	return 0, input.Errorf("unknown balancing algorithm %q: want round_robin, random, least_conn, p2c or peak_ewma", name)
}

// Pool is the set of hosts one request chooses from, indexed from 0 to
// Len()-1.
type Pool interface {
	// Len returns the number of hosts.
	Len() int
	// Candidate reports whether host i may take the request's next try:
	// not tried by it yet, and in rotation, or, with ignoreHealth (panic
	// mode), merely not being removed. A registry endpoint's Pickable
	// says the second part.
	Candidate(i int, ignoreHealth bool) bool
	// Load returns host i's requests in flight and its weight (1 to 100;
	// a drained host is never a candidate).
	Load(i int) (inFlight, weight int)
	// Now returns the time the pool's latencies are compared at (the
	// clock its registry reports them on: time.Now, unless a test sets
	// another), read once per choice that weighs latencies.
	Now() time.Time
	// Latency returns what PeakEWMA weighs host i by at now: its
	// peak-EWMA latency estimate in nanoseconds and the time since its
	// last response. known is false while the host has no latency yet (no
	// try's latency was reported, or the host does not come from a
	// registry).
	Latency(i int, now time.Time) (ewma float64, sinceReply time.Duration, known bool)
}

// Pick returns the index of the host for the request's next try, or -1
// when no host is a candidate. rot, which must not be nil, is the rotation
// of the pool's hosts (a registry Service's, or one the caller keeps for
// a pool of equal hosts): RoundRobin turns it, and RoundRobin and Random
// follow its weighted order. Pick takes no lock and does not allocate.
func (a Algorithm) Pick(p Pool, rot *Rotation, ignoreHealth bool) int {
	if p.Len() == 0 {
		return -1
	}
	switch a {
	case Random:
		return scan(p, rot.schedule, rand.Uint64(), ignoreHealth)
	case LeastConn:
		return leastConn(p, ignoreHealth)
	case P2C:
		return powerOfTwo(p, ignoreHealth, false)
	case PeakEWMA:
		return powerOfTwo(p, ignoreHealth, true)
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

// inFlightCost is the host's requests in flight per unit of weight.
func inFlightCost(p Pool, i int) float64 {
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
func ewmaCost(p Pool, i int, now time.Time) float64 {
	in, w := p.Load(i)
	lat := float64(defaultLatency)
	if ewma, sinceReply, known := p.Latency(i, now); known {
		lat = ewma + float64(time.Microsecond)
		if in > 0 {
			lat = max(lat, float64(sinceReply))
		}
	}
	return lat * float64(in+1) / float64(w)
}

// powerOfTwo returns one of two random candidates: the one with fewer
// requests in flight per unit of weight, or with byLatency one drawn with
// a chance inversely proportional to its ewmaCost.
func powerOfTwo(p Pool, ignoreHealth bool, byLatency bool) int {
	if n := p.Len(); n > 1 {
		// the common case: two random hosts, both candidates
		i, j := rand.IntN(n), rand.IntN(n-1)
		if j >= i {
			j++
		}
		if p.Candidate(i, ignoreHealth) && p.Candidate(j, ignoreHealth) {
			return choose(p, i, j, byLatency)
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
	return choose(p, cands[k1], cands[k2], byLatency)
}

// choose returns whichever of hosts i and j has fewer requests in flight
// per unit of weight (i on a tie), or with byLatency i with the chance
// ewmaCost(j) / (ewmaCost(i) + ewmaCost(j)), both at one reading of the
// clock.
func choose(p Pool, i, j int, byLatency bool) int {
	if byLatency {
		now := p.Now()
		ci, cj := ewmaCost(p, i, now), ewmaCost(p, j, now)
		if rand.Float64()*(ci+cj) < cj {
			return i
		}
		return j
	}
	if inFlightCost(p, j) < inFlightCost(p, i) {
		return j
	}
	return i
}
