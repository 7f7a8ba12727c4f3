package balance

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/internal/input"
)

var algorithms = []Algorithm{RoundRobin, Random, LeastConn, P2C, PeakEWMA}

// testPool is a Pool of hosts whose load, health and latency a test sets.
type testPool struct {
	weight   []int
	inFlight []int
	out      []bool // out of rotation: a candidate only in panic mode
	tried    []bool
	ewma     []time.Duration // peak-EWMA latency; 0 = none yet
	silent   []time.Duration // time since the last response
	reads    int             // calls of Now
}

// newPool returns a pool of hosts of the given weights, idle, in rotation
// and with no latency yet.
func newPool(weights ...int) *testPool {
	n := len(weights)
	return &testPool{weight: weights, inFlight: make([]int, n), out: make([]bool, n), tried: make([]bool, n),
		ewma: make([]time.Duration, n), silent: make([]time.Duration, n)}
}

func (p *testPool) Len() int                     { return len(p.weight) }
func (p *testPool) Load(i int) (inFlight, w int) { return p.inFlight[i], p.weight[i] }
func (p *testPool) Candidate(i int, ignoreHealth bool) bool {
	return !p.tried[i] && p.weight[i] > 0 && (ignoreHealth || !p.out[i])
}
func (p *testPool) Now() time.Time { p.reads++; return time.Time{} }
func (p *testPool) Latency(i int, _ time.Time) (float64, time.Duration, bool) {
	return float64(p.ewma[i]), p.silent[i], p.ewma[i] != 0
}

// shares returns how many of n requests, each from a fresh copy of p,
// algorithm a sends to each host.
func shares(a Algorithm, p *testPool, rot *Rotation, n int) []int {
	counts := make([]int, p.Len())
	for range n {
		q := *p
		q.tried = make([]bool, p.Len())
		counts[a.Pick(&q, rot, false)]++
	}
	return counts
}

func TestParse(t *testing.T) {
	for _, a := range algorithms {
		if got, err := Parse(a.String()); err != nil || got != a {
			t.Errorf("Parse(%q) = %v, %v", a, got, err)
		}
	}
	if _, err := Parse("fastest"); !errors.Is(err, input.ErrInvalid) {
		t.Errorf("Parse(fastest): %v, want an error matching ErrInvalid", err)
	}
	if s := Algorithm(len(names)).String(); s != "unknown" {
		t.Errorf("an algorithm past the last: %q, want unknown", s)
	}
}

// TestPickEveryHostOnce picks until nothing is left: every host once.
func TestPickEveryHostOnce(t *testing.T) {
	for _, a := range algorithms {
		p := newPool(3, 1, 2)
		rot := NewRotation(p.weight)
		for range 3 {
			i := a.Pick(p, &rot, false)
			if i < 0 || p.tried[i] {
				t.Fatalf("%s: picked %d after %v", a, i, p.tried)
			}
			p.tried[i] = true
		}
		if i := a.Pick(p, &rot, false); i != -1 {
			t.Errorf("%s: picked %d with every host tried", a, i)
		}
	}
}

// TestPickShares checks each algorithm's shares over many requests: the
// weights for round_robin and random; the idle host for least_conn and
// for p2c the less busy per unit of weight of two random hosts (host 0,
// with 9 in flight and weight 3, is less busy than host 2 with 5 and 1).
func TestPickShares(t *testing.T) {
	const n = 10000
	for _, tc := range []struct {
		a        Algorithm
		inFlight []int
		lo, hi   [3]float64
	}{
		{RoundRobin, []int{0, 0, 0}, [3]float64{0.6, 0.2, 0.2}, [3]float64{0.6, 0.2, 0.2}},
		{Random, []int{0, 0, 0}, [3]float64{0.57, 0.18, 0.18}, [3]float64{0.63, 0.22, 0.22}},
		{LeastConn, []int{9, 0, 5}, [3]float64{0, 1, 0}, [3]float64{0, 1, 0}},
		{P2C, []int{9, 0, 5}, [3]float64{0.3, 0.63, 0}, [3]float64{0.37, 0.7, 0}},
	} {
		p := newPool(3, 1, 1)
		copy(p.inFlight, tc.inFlight)
		rot := NewRotation(p.weight)
		counts := shares(tc.a, p, &rot, n)
		for i := range counts {
			if share := float64(counts[i]) / n; share < tc.lo[i]-1e-9 || share > tc.hi[i]+1e-9 {
				t.Errorf("%s: host %d got %.3f, want %.2f to %.2f", tc.a, i, share, tc.lo[i], tc.hi[i])
			}
		}
	}
}

// TestPickPanicMode: out of rotation, a host is a candidate only when the
// caller ignores health; a drained one (weight 0) never is.
func TestPickPanicMode(t *testing.T) {
	for _, a := range algorithms {
		p := newPool(1, 0, 1)
		p.out[0], p.out[2] = true, true
		var rot Rotation
		if i := a.Pick(p, &rot, false); i != -1 {
			t.Errorf("%s: picked %d with every host out of rotation or drained", a, i)
		}
		for range 200 {
			if i := a.Pick(p, &rot, true); i != 0 && i != 2 {
				t.Fatalf("%s (panic mode): picked %d, want one of the hosts not drained (0, 2)", a, i)
			}
		}
	}
}

// TestOutHostShareSpreads takes one of four hosts out: with round_robin
// and random its share goes to the three others evenly, not all to the
// host after it in the order (which made 50/25/25).
func TestOutHostShareSpreads(t *testing.T) {
	for _, a := range []Algorithm{RoundRobin, Random} {
		p := newPool(1, 1, 1, 1)
		p.out[1] = true
		var rot Rotation
		counts := shares(a, p, &rot, 12000)
		for _, i := range []int{0, 2, 3} {
			if counts[i] < 3400 || counts[i] > 4600 {
				t.Errorf("%s with host 2 of 4 out: %v, want about 4000 each for the others", a, counts)
				break
			}
		}
		if counts[1] != 0 {
			t.Errorf("%s sent %d requests to a host out of rotation", a, counts[1])
		}
	}
}

// TestPeakEWMAProportional checks that peak_ewma shares requests between
// two hosts in inverse proportion to their latency.
func TestPeakEWMAProportional(t *testing.T) {
	p := newPool(1, 1)
	p.ewma[0], p.ewma[1] = 10*time.Millisecond, 20*time.Millisecond
	var rot Rotation
	if counts := shares(PeakEWMA, p, &rot, 9000); counts[0] < 5600 || counts[0] > 6400 {
		t.Errorf("10ms and 20ms hosts got %v, want about 2:1", counts)
	}
}

// TestPeakEWMAWeighs checks the other terms of peak_ewma's cost: requests
// in flight plus one, and weight. Host 0 (2 in flight: cost 3 times its
// latency) and host 1 (weight 3: a third) take 1:9 of the requests the two
// could both take.
func TestPeakEWMAWeighs(t *testing.T) {
	p := newPool(1, 3)
	p.ewma[0], p.ewma[1] = 10*time.Millisecond, 10*time.Millisecond
	p.inFlight[0] = 2
	var rot Rotation
	if counts := shares(PeakEWMA, p, &rot, 10000); counts[0] < 800 || counts[0] > 1200 {
		t.Errorf("hosts of cost 3 and 1/3 got %v, want about 1:9", counts)
	}
}

// TestPeakEWMANoLatencyYet: a host with no latency yet counts as 30 ms
// (Linkerd's default), so it shares evenly with a host of 30 ms, and a
// host of 1 ms takes nearly all of what the two could both take.
func TestPeakEWMANoLatencyYet(t *testing.T) {
	p := newPool(1, 1)
	p.ewma[1] = defaultLatency - time.Microsecond // costs defaultLatency: see ewmaCost
	var rot Rotation
	if counts := shares(PeakEWMA, p, &rot, 10000); counts[0] < 4600 || counts[0] > 5400 {
		t.Errorf("a new host and one of 30 ms got %v, want about even", counts)
	}
	p.ewma[1] = time.Millisecond
	if counts := shares(PeakEWMA, p, &rot, 10000); counts[0] > 600 {
		t.Errorf("a new host and one of 1 ms got %v, want about 1:30", counts)
	}
}

// TestPeakEWMAStoppedAnswering: a host with requests in flight and no
// answer for a while costs as much as that wait, whatever its estimate;
// idle, its estimate alone counts.
func TestPeakEWMAStoppedAnswering(t *testing.T) {
	p := newPool(1, 1, 1)
	for i := range 3 {
		p.ewma[i] = time.Millisecond
	}
	p.silent[0] = 50 * time.Millisecond
	copy(p.inFlight, []int{3, 5, 5})
	var rot Rotation
	if counts := shares(PeakEWMA, p, &rot, 3000); counts[0] > 300 {
		t.Errorf("a host silent for 50 ms with requests in flight got %d of 3000 (%v)", counts[0], counts)
	}
	copy(p.inFlight, []int{0, 0, 0})
	if counts := shares(PeakEWMA, p, &rot, 3000); counts[0] < 800 {
		t.Errorf("an idle host last answering 50 ms ago got %d of 3000 (%v), want a third", counts[0], counts)
	}
}

// flakyPool is a pool whose hosts are candidates at random, as hosts in
// slow start are: a balance that looks twice must not trust its first
// look.
type flakyPool struct{ testPool }

func (p *flakyPool) Candidate(i int, ignoreHealth bool) bool {
	return ignoreHealth || rand.IntN(4) == 0
}

// TestPickFlakyCandidates: every pick is a host of the pool (or none)
// when Candidate answers differently each time it is asked.
func TestPickFlakyCandidates(t *testing.T) {
	p := &flakyPool{*newPool(1, 1, 2, 1, 1)}
	rot := NewRotation(p.weight)
	for _, a := range algorithms {
		for range 2000 {
			i := a.Pick(p, &rot, false)
			if i < 0 {
				i = a.Pick(p, &rot, true)
			}
			if i < 0 || i >= p.Len() {
				t.Fatalf("%s: picked %d", a, i)
			}
		}
	}
}

// BenchmarkPick measures one first try among 10 idle hosts with a
// latency, every algorithm.
func BenchmarkPick(b *testing.B) {
	p := newPool(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	for i := range p.ewma {
		p.ewma[i] = time.Duration(i+1) * time.Millisecond
	}
	var rot Rotation
	for _, a := range algorithms {
		b.Run(a.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if a.Pick(p, &rot, false) < 0 {
					b.Fatal("no host")
				}
			}
		})
	}
}

// TestClockReadOncePerChoice: peak_ewma weighs both hosts of a choice at
// one reading of the pool's clock; the other algorithms never read it.
func TestClockReadOncePerChoice(t *testing.T) {
	for _, a := range algorithms {
		p := newPool(1, 1, 1, 1)
		for i := range p.ewma {
			p.ewma[i] = time.Duration(i+1) * time.Millisecond
		}
		if a.Pick(p, new(Rotation), false) < 0 {
			t.Fatalf("%v: no host", a)
		}
		want := 0
		if a == PeakEWMA {
			want = 1
		}
		if p.reads != want {
			t.Errorf("%v read the clock %d times for one pick, want %d", a, p.reads, want)
		}
	}
}
