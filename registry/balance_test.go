package registry

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"
)

var balances = []Balance{RoundRobin, Random, LeastConn, P2C, PeakEWMA}

// svcPool is a Pool over a Service's endpoints for one request.
type svcPool struct {
	svc      *Service
	tried    map[int]bool
	inFlight []int
}

func newSvcPool(svc *Service) *svcPool {
	return &svcPool{svc: svc, tried: map[int]bool{}, inFlight: make([]int, len(svc.Endpoints))}
}

func (p *svcPool) Len() int                 { return len(p.svc.Endpoints) }
func (p *svcPool) Load(i int) (int, int)    { return p.inFlight[i], p.svc.Endpoints[i].Weight.Int() }
func (p *svcPool) Endpoint(i int) *Endpoint { return p.svc.Endpoints[i] }
func (p *svcPool) Candidate(i int, ignoreHealth bool) bool {
	return !p.tried[i] && p.svc.Endpoints[i].Pickable(ignoreHealth)
}

func TestParseBalance(t *testing.T) {
	for _, b := range balances {
		if got, err := ParseBalance(b.String()); err != nil || got != b {
			t.Errorf("ParseBalance(%q) = %v, %v", b, got, err)
		}
	}
	if _, err := ParseBalance("fastest"); err == nil {
		t.Error("ParseBalance accepted fastest")
	}
}

// TestPickEveryHostOnce picks until nothing is left: every host once.
func TestPickEveryHostOnce(t *testing.T) {
	tbl := newTable(time.Now)
	key := ServiceKey{"users", "v1"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{key: {{Address: "127.0.0.1:1", Weight: 3}, {Address: "127.0.0.1:2"}, {Address: "127.0.0.1:3", Weight: 2}}}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	for _, b := range balances {
		p := newSvcPool(svc)
		for range 3 {
			i := b.Pick(p, svc.Rotation(), false)
			if i < 0 || p.tried[i] {
				t.Fatalf("%s: picked %d after %v", b, i, p.tried)
			}
			p.tried[i] = true
		}
		if i := b.Pick(p, svc.Rotation(), false); i != -1 {
			t.Errorf("%s: picked %d with every host tried", b, i)
		}
	}
}

// TestPickShares checks each algorithm's shares over many requests: the
// weights for round_robin and random; the idle host for least_conn and
// for p2c the less busy per unit of weight of two random hosts (host 0,
// with 9 in flight and weight 3, is less busy than host 2 with 5 and 1).
func TestPickShares(t *testing.T) {
	tbl := newTable(time.Now)
	key := ServiceKey{"users", "v1"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{key: {{Address: "127.0.0.1:1", Weight: 3}, {Address: "127.0.0.1:2"}, {Address: "127.0.0.1:3"}}}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	const n = 10000
	for _, tc := range []struct {
		b        Balance
		inFlight []int
		lo, hi   [3]float64
	}{
		{RoundRobin, []int{0, 0, 0}, [3]float64{0.6, 0.2, 0.2}, [3]float64{0.6, 0.2, 0.2}},
		{Random, []int{0, 0, 0}, [3]float64{0.57, 0.18, 0.18}, [3]float64{0.63, 0.22, 0.22}},
		{LeastConn, []int{9, 0, 5}, [3]float64{0, 1, 0}, [3]float64{0, 1, 0}},
		{P2C, []int{9, 0, 5}, [3]float64{0.3, 0.63, 0}, [3]float64{0.37, 0.7, 0}},
	} {
		counts := [3]float64{}
		for range n {
			p := newSvcPool(svc)
			copy(p.inFlight, tc.inFlight)
			counts[tc.b.Pick(p, svc.Rotation(), false)]++
		}
		for i := range counts {
			if share := counts[i] / n; share < tc.lo[i]-1e-9 || share > tc.hi[i]+1e-9 {
				t.Errorf("%s: host %d got %.3f, want %.2f to %.2f", tc.b, i, share, tc.lo[i], tc.hi[i])
			}
		}
	}
}

// TestSlowStartEveryBalance picks among hosts that all ramp up after
// coming back. Whether a ramping host is a candidate is drawn at random on
// every look, so a balance that looks twice must not trust its first
// count. Every pick must be a host of the service, and every request
// finds one: when the draw skips every ramping host, panic mode takes any
// host not tried yet.
func TestSlowStartEveryBalance(t *testing.T) {
	clock := newFakeClock()
	tbl := newTable(clock.Now)
	key := ServiceKey{"users", "v1"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5")}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	for _, ep := range svc.Endpoints {
		ep.health.rampStart.Store(clock.Now().UnixNano())
		ep.health.rampEnd.Store(clock.Now().Add(time.Hour).UnixNano())
	}
	for _, b := range balances {
		for range 2000 {
			p := newSvcPool(svc)
			i := b.Pick(p, svc.Rotation(), false)
			if i < 0 {
				i = b.Pick(p, svc.Rotation(), true)
			}
			if i < 0 || i >= len(svc.Endpoints) {
				t.Fatalf("%s: picked %d", b, i)
			}
		}
	}
}

// TestTries fails over through a service as a program would: every
// endpoint once, those in rotation first, then the failed ones (panic
// mode), never one being removed.
func TestTries(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	r := startRegistry(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")},
		Options{probe: func(context.Context, probeJob) error { return errors.New("down") }})
	policy, err := NewHealthPolicy([]HealthCheck{{MaxEjectedPercent: 100}})
	must(t, err)
	must(t, r.Start(BackendEnv{Seeds: normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")})}, policy, nil))
	r.Failure(key, "127.0.0.1:2")
	svc, _ := r.Lookup(key)
	svc.Endpoint("127.0.0.1:4").health.setOut(outDraining, true)
	for _, b := range balances {
		tries := NewTries(svc)
		var got []string
		for ep := tries.Next(b); ep != nil; ep = tries.Next(b) {
			got = append(got, ep.Address)
		}
		if len(got) != 3 || got[2] != "127.0.0.1:2" || slices.Contains(got, "127.0.0.1:4") {
			t.Errorf("%s tried %v; want 1 and 3 in some order, then the failed 2, never the draining 4", b, got)
		}
	}
}

// TestOutHostShareSpreads takes one of four hosts out: with round_robin
// and random its share goes to the three others evenly, not all to the
// host after it in the order (which made 50/25/25).
func TestOutHostShareSpreads(t *testing.T) {
	tbl := newTable(time.Now)
	key := ServiceKey{"users", "v1"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	svc.Endpoints[1].health.setOut(outPassive, true)
	for _, b := range []Balance{RoundRobin, Random} {
		counts := make([]int, 4)
		for range 12000 {
			counts[b.Pick(newSvcPool(svc), svc.Rotation(), false)]++
		}
		for _, i := range []int{0, 2, 3} {
			if counts[i] < 3400 || counts[i] > 4600 {
				t.Errorf("%s with host 2 of 4 out: %v, want about 4000 each for the others", b, counts)
				break
			}
		}
		if counts[1] != 0 {
			t.Errorf("%s sent %d requests to a host out of rotation", b, counts[1])
		}
	}
}

// TestPeakEWMAProportional checks that peak_ewma shares requests between
// two hosts in inverse proportion to their latency.
func TestPeakEWMAProportional(t *testing.T) {
	clock := newFakeClock()
	tbl := newTable(clock.Now)
	key := ServiceKey{"users", "v1"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2")}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	now := clock.Now().UnixNano()
	svc.Endpoints[0].health.ewma.observe(10*time.Millisecond, now)
	svc.Endpoints[1].health.ewma.observe(20*time.Millisecond, now)
	counts := make([]int, 2)
	for range 9000 {
		counts[PeakEWMA.Pick(newSvcPool(svc), svc.Rotation(), false)]++
	}
	if counts[0] < 5600 || counts[0] > 6400 {
		t.Errorf("10ms and 20ms hosts got %v, want about 2:1", counts)
	}
}

// TestPickSkipsDrained: no algorithm picks a drained endpoint (weight 0),
// not even in panic mode, and a version whose endpoints are all drained
// has no host to pick.
func TestPickSkipsDrained(t *testing.T) {
	tbl := newTable(time.Now)
	key, all := ServiceKey{"users", "v1"}, ServiceKey{"users", "v2"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{
		key: {{Address: "127.0.0.1:1", Weight: Drained}, {Address: "127.0.0.1:2", Weight: 3}, {Address: "127.0.0.1:3", Weight: Drained}, {Address: "127.0.0.1:4"}},
		all: {{Address: "127.0.0.1:5", Weight: Drained}, {Address: "127.0.0.1:6", Weight: Drained}},
	}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	for _, b := range balances {
		for _, panicMode := range []bool{false, true} {
			for range 200 {
				i := b.Pick(newSvcPool(svc), svc.Rotation(), panicMode)
				if i != 1 && i != 3 {
					t.Fatalf("%s (panic mode %v): picked %d, want one of the endpoints not drained (1, 3)", b, panicMode, i)
				}
			}
		}
		tries := NewTries(svc)
		var got []string
		for ep := tries.Next(b); ep != nil; ep = tries.Next(b) {
			got = append(got, ep.Address)
		}
		if slices.Sort(got); !slices.Equal(got, []string{"127.0.0.1:2", "127.0.0.1:4"}) {
			t.Errorf("%s: tries went to %q, want only the endpoints not drained", b, got)
		}
	}
	drained, _ := tbl.Snapshot().Lookup("users", "v2")
	for _, b := range balances {
		if ep := NewTries(drained).Next(b); ep != nil {
			t.Errorf("%s: picked %s of a version whose endpoints are all drained", b, ep.Address)
		}
	}
}

// TestWeightJSON: 0 in JSON is Drained, a missing weight the default,
// and both survive a round trip.
func TestWeightJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Weight
		out  string
	}{
		{`{"address":"127.0.0.1:1"}`, 0, `{"address":"127.0.0.1:1"}`},
		{`{"address":"127.0.0.1:1","weight":0}`, Drained, `{"address":"127.0.0.1:1","weight":0}`},
		{`{"address":"127.0.0.1:1","weight":7}`, 7, `{"address":"127.0.0.1:1","weight":7}`},
	} {
		var ep Endpoint
		if err := json.Unmarshal([]byte(tc.in), &ep); err != nil || ep.Weight != tc.want {
			t.Errorf("%s: weight %d, %v; want %d", tc.in, ep.Weight, err, tc.want)
			continue
		}
		if out, err := json.Marshal(ep); err != nil || string(out) != tc.out {
			t.Errorf("%s: marshaled as %s, %v; want %s", tc.in, out, err, tc.out)
		}
	}
	for _, bad := range []string{`{"weight":-1}`, `{"weight":101}`, `{"weight":"3"}`, `{"weight":1.5}`} {
		var ep Endpoint
		if err := json.Unmarshal([]byte(bad), &ep); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want an ErrInvalid", bad, err)
		}
	}
}
