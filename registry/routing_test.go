package registry

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// compile compiles p, the policy of "users", whose versions are versions.
func compile(t *testing.T, p traffic.Policy, versions ...string) *traffic.Rules {
	t.Helper()
	rules, err := p.Compile("users", func(v string) bool { return slices.Contains(versions, v) })
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// A table keeps its traffic policies when its endpoints change, and the
// other way round; Feed.PublishTraffic puts stored policies over seeds
// and leaves out bad ones.
func TestTableTraffic(t *testing.T) {
	feed := NewFeed()
	feed.Configure(BackendEnv{Traffic: map[string]traffic.Policy{"users": {Split: map[string]int{"v1": 1}}, "orders": {Split: map[string]int{"v1": 1}}}})
	feed.PublishTraffic(map[string]traffic.Policy{"users": {Split: map[string]int{"v2": 1}}, "x": {Sticky: "maybe"}})
	tbl := feed.table
	if all := tbl.Snapshot().Policies(); len(all) != 2 || tbl.Snapshot().Traffic("users").Version(0) != "v2" {
		t.Fatalf("published %v, want users' stored policy and orders' seeded one, not x's", all)
	}
	tbl.replace(map[ServiceKey][]Endpoint{{Service: "users", Version: "v2"}: nil})
	tbl.set(ServiceKey{Service: "users", Version: "v1"}, nil)
	tbl.remove(ServiceKey{Service: "users", Version: "v1"})
	tbl.setSynced(false)
	snap := tbl.Snapshot()
	if snap.Traffic("users") == nil || snap.Traffic("orders") == nil || len(snap.Policies()) != 2 {
		t.Error("endpoint changes lost the traffic policies")
	}
	if !snap.Versions("users").Known("v2") || snap.Versions("users").Known("v1") {
		t.Error("Known does not reflect the versions")
	}
	tbl.setTraffic(nil)
	if tbl.Snapshot().Traffic("users") != nil || !tbl.Snapshot().Versions("users").Known("v2") {
		t.Error("setTraffic(nil) did not clear the policies, or lost the endpoints")
	}
}

// A snapshot's Routing resolves the split's versions to the Services of
// that snapshot, through every kind of change.
func TestRoutingFollowsVersions(t *testing.T) {
	tbl := newTable(time.Now)
	split := func() (v1, v2 *Service) {
		r := tbl.Snapshot().Versions("users").Routing()
		if r == nil {
			t.Fatal("no routing for users")
		}
		return r.SplitService(0), r.SplitService(1)
	}
	same := func(what string, got *Service, version string) {
		t.Helper()
		want, _ := tbl.Snapshot().Lookup("users", version)
		if got != want {
			t.Errorf("%s: split resolves %s to %p, the snapshot has %p", what, version, got, want)
		}
	}
	tbl.setTraffic(map[string]*traffic.Rules{"users": compile(t, traffic.Policy{Split: map[string]int{"v1": 50, "v2": 50}}, "v1", "v2")})
	if v1, v2 := split(); v1 != nil || v2 != nil {
		t.Errorf("no versions yet, resolved %p %p", v1, v2)
	}
	tbl.replace(map[ServiceKey][]Endpoint{{Service: "users", Version: "v1"}: {{Address: "127.0.0.1:1", Weight: 1}}})
	v1, v2 := split()
	same("after Replace", v1, "v1")
	if v2 != nil {
		t.Error("v2 resolved before it exists")
	}
	tbl.set(ServiceKey{Service: "users", Version: "v2"}, []Endpoint{{Address: "127.0.0.1:2", Weight: 1}})
	v1, v2 = split()
	same("after Set v2", v1, "v1")
	same("after Set v2", v2, "v2")
	tbl.set(ServiceKey{Service: "users", Version: "v1"}, []Endpoint{{Address: "127.0.0.1:3", Weight: 1}})
	v1, _ = split()
	same("after v1 changed", v1, "v1")
	tbl.remove(ServiceKey{Service: "users", Version: "v1"})
	if v1, _ = split(); v1 != nil {
		t.Error("v1 still resolved after its removal")
	}
	tbl.set(ServiceKey{Service: "orders", Version: "v1"}, nil) // another service: same routing
	_, v2 = split()
	same("after another service changed", v2, "v2")
}

// The version-name filter never hides a version: every name added may be
// there, whatever its length or first byte; and it does rule names out.
func TestNameFilter(t *testing.T) {
	var f nameFilter
	rng := rand.New(rand.NewPCG(1, 2))
	const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
	var names []string
	for range 200 {
		b := make([]byte, 1+rng.IntN(MaxNameLen+10))
		for i := range b {
			b[i] = chars[rng.IntN(len(chars))]
		}
		names = append(names, string(b))
		f.add(string(b))
		for _, n := range names {
			if !f.mayHave(n) {
				t.Fatalf("%q added, mayHave says no", n)
			}
		}
	}
	var g nameFilter
	g.add("v1")
	g.add("v2")
	for _, n := range []string{"list", "stable", "x", "", "w1"} {
		if g.mayHave(n) {
			t.Errorf("{v1 v2} may have %q", n)
		}
	}
}
