package registry

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/balance"
)

var algorithms = []balance.Algorithm{balance.RoundRobin, balance.Random, balance.LeastConn, balance.P2C, balance.PeakEWMA}

// svcPool is a balance.Pool over a Service's endpoints for one request,
// with the requests in flight the test sets.
type svcPool struct {
	svc      *Service
	tried    map[int]bool
	inFlight []int
}

func newSvcPool(svc *Service) *svcPool {
	return &svcPool{svc: svc, tried: map[int]bool{}, inFlight: make([]int, len(svc.Endpoints))}
}

func (p *svcPool) Len() int              { return len(p.svc.Endpoints) }
func (p *svcPool) Load(i int) (int, int) { return p.inFlight[i], p.svc.Endpoints[i].Weight.Int() }
func (p *svcPool) Now() time.Time        { return p.svc.Endpoints[0].health.now() }
func (p *svcPool) Latency(i int, now time.Time) (float64, time.Duration, bool) {
	return p.svc.Endpoints[i].Latency(now)
}
func (p *svcPool) Candidate(i int, ignoreHealth bool) bool {
	return !p.tried[i] && p.svc.Endpoints[i].Pickable(ignoreHealth)
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
	for _, a := range algorithms {
		for range 2000 {
			p := newSvcPool(svc)
			i := a.Pick(p, svc.Rotation(), false)
			if i < 0 {
				i = a.Pick(p, svc.Rotation(), true)
			}
			if i < 0 || i >= len(svc.Endpoints) {
				t.Fatalf("%s: picked %d", a, i)
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
	for _, a := range algorithms {
		tries := NewTries(svc)
		var got []string
		for ep := tries.Next(a); ep != nil; ep = tries.Next(a) {
			got = append(got, ep.Address)
		}
		if len(got) != 3 || got[2] != "127.0.0.1:2" || slices.Contains(got, "127.0.0.1:4") {
			t.Errorf("%s tried %v; want 1 and 3 in some order, then the failed 2, never the draining 4", a, got)
		}
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
	for _, a := range algorithms {
		for _, panicMode := range []bool{false, true} {
			for range 200 {
				i := a.Pick(newSvcPool(svc), svc.Rotation(), panicMode)
				if i != 1 && i != 3 {
					t.Fatalf("%s (panic mode %v): picked %d, want one of the endpoints not drained (1, 3)", a, panicMode, i)
				}
			}
		}
		tries := NewTries(svc)
		var got []string
		for ep := tries.Next(a); ep != nil; ep = tries.Next(a) {
			got = append(got, ep.Address)
		}
		if slices.Sort(got); !slices.Equal(got, []string{"127.0.0.1:2", "127.0.0.1:4"}) {
			t.Errorf("%s: tries went to %q, want only the endpoints not drained", a, got)
		}
	}
	drained, _ := tbl.Snapshot().Lookup("users", "v2")
	for _, a := range algorithms {
		if ep := NewTries(drained).Next(a); ep != nil {
			t.Errorf("%s: picked %s of a version whose endpoints are all drained", a, ep.Address)
		}
	}
}

// TestTriesFollowWeights: the first tries of successive requests follow
// the service's weighted round-robin order (weights 3, 1, 1).
func TestTriesFollowWeights(t *testing.T) {
	tbl := newTable(time.Now)
	key := ServiceKey{"users", "v1"}
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{key: {{Address: "127.0.0.1:1", Weight: 3}, {Address: "127.0.0.1:2"}, {Address: "127.0.0.1:3"}}}))
	svc, _ := tbl.Snapshot().Lookup("users", "v1")
	var got []string
	for range 5 {
		got = append(got, NewTries(svc).Next(balance.RoundRobin).Address)
	}
	if want := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:1"}; !slices.Equal(got, want) {
		t.Errorf("first tries of 5 requests: %v, want %v", got, want)
	}
}
