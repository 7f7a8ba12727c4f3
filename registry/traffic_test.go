package registry

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func knownVersions(vs ...string) func(string) bool {
	return func(v string) bool {
		for _, k := range vs {
			if k == v {
				return true
			}
		}
		return false
	}
}

func compile(t *testing.T, p TrafficPolicy, versions ...string) *Traffic {
	t.Helper()
	tr, err := p.Compile("users", knownVersions(versions...))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// Over 10,000 clients hashed by IP, a 90/10 split lands within 2 points.
func TestTrafficSplitShares(t *testing.T) {
	tr := compile(t, TrafficPolicy{Split: map[string]int{"v1": 90, "v2": 10}}, "v1", "v2")
	count := map[string]int{}
	for i := range 10000 {
		count[tr.Version(bucketOf(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)))]++
	}
	if v2 := count["v2"]; v2 < 800 || v2 > 1200 {
		t.Errorf("90/10 split over 10,000 IPs: %v; want v2 within 800-1200", count)
	}
}

// Raising a canary from 10 to 20 moves about 10% of the clients, all of
// them from v1 to v2, and none back.
func TestTrafficRaiseCanary(t *testing.T) {
	before := compile(t, TrafficPolicy{Split: map[string]int{"v1": 90, "v2": 10}}, "v1", "v2")
	after := compile(t, TrafficPolicy{Split: map[string]int{"v1": 80, "v2": 20}}, "v1", "v2")
	rng := rand.New(rand.NewPCG(1, 2))
	moved, back := 0, 0
	for range 1000 {
		b := rng.IntN(buckets)
		was, is := before.Version(b), after.Version(b)
		if was != is {
			moved++
			if was == "v2" {
				back++
			}
		}
	}
	if moved < 70 || moved > 130 || back != 0 {
		t.Errorf("raising the canary from 10 to 20 moved %d of 1,000 clients, %d from v2 back to v1; want about 100, none back", moved, back)
	}
}

func TestTrafficCompileErrors(t *testing.T) {
	known := knownVersions("v1", "v2")
	for _, tc := range []struct {
		p    TrafficPolicy
		want string
	}{
		{TrafficPolicy{Split: map[string]int{"v1": 50, "v3": 50, "v9": 1}}, `unknown versions "v3", "v9" of service "users"`},
		{TrafficPolicy{Split: map[string]int{"v1": 101}}, `split weight of "v1" is 101`},
		{TrafficPolicy{Split: map[string]int{"v1": 0, "v2": 0}}, "every weight is 0"},
		{TrafficPolicy{Aliases: map[string]string{"v2": "v1"}}, `alias "v2" is also a version`},
		{TrafficPolicy{Aliases: map[string]string{"stable": "v7"}}, `unknown version "v7" of service "users"`},
		{TrafficPolicy{Aliases: map[string]string{"a/b": "v1"}}, "not a valid name"},
		{TrafficPolicy{Fallback: "v8"}, `unknown version "v8" of service "users"`},
		{TrafficPolicy{Sticky: "random"}, `sticky "random"`},
		{TrafficPolicy{Sticky: "header"}, "needs sticky_header"},
	} {
		_, err := tc.p.Compile("users", known)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want an error mentioning %q", tc.p, err, tc.want)
		}
	}
	tr := compile(t, TrafficPolicy{Aliases: map[string]string{"stable": "v1"}}, "v1", "v2")
	if p := tr.Policy(); p.Header != defaultTrafficHeader || p.Cookie != defaultTrafficCookie || p.Sticky != "cookie" {
		t.Errorf("defaults: %+v", p)
	}
	if tr.resolve("stable", known) != "v1" || tr.resolve("v2", known) != "v2" || tr.resolve("beta", known) != "" {
		t.Error("Resolve does not resolve versions and aliases")
	}
	if tr.splits() || tr.Version(5) != "" {
		t.Error("a policy without a split chose a version")
	}
}

func TestStickyCookie(t *testing.T) {
	for _, b := range []int{0, 1, 4821, buckets - 1} {
		if got, ok := parseStickyCookie(StickyCookie(b)); !ok || got != b {
			t.Errorf("bucket %d: cookie %q parses to %d, %v", b, StickyCookie(b), got, ok)
		}
	}
	for _, v := range []string{"v1", "~", "~-1", "~10000", "~+5", "~12a", ""} {
		if _, ok := parseStickyCookie(v); ok {
			t.Errorf("%q parsed as a sticky bucket", v)
		}
	}
}

// Choosing a version costs no allocation.
func TestTrafficVersionAllocs(t *testing.T) {
	tr := compile(t, TrafficPolicy{Split: map[string]int{"v1": 90, "v2": 10}}, "v1", "v2")
	if n := testing.AllocsPerRun(1000, func() { _ = tr.Version(bucketOf("10.0.0.1")) }); n != 0 {
		t.Errorf("%v allocations per choice, want 0", n)
	}
}

func BenchmarkTrafficVersion(b *testing.B) {
	tr, _ := TrafficPolicy{Split: map[string]int{"v1": 90, "v2": 10}}.Compile("users", knownVersions("v1", "v2"))
	for b.Loop() {
		_ = tr.Version(bucketOf("10.0.0.1"))
	}
}

// Choose: the header, then the cookie (a version, an alias or a sticky
// bucket), then the sticky key, then the split.
func TestTrafficChoose(t *testing.T) {
	known := knownVersions("v1", "v2")
	tr := compile(t, TrafficPolicy{Split: map[string]int{"v1": 90, "v2": 10}, Aliases: map[string]string{"stable": "v1"}}, "v1", "v2")
	for _, tc := range []struct {
		req  TrafficRequest
		want Choice
	}{
		{TrafficRequest{Header: "v2", Cookie: "v1"}, Choice{Version: "v2", From: FromHeader, Bucket: -1, Index: -1}},
		{TrafficRequest{Header: "stable"}, Choice{Version: "v1", From: FromHeader, Bucket: -1, Index: -1}},
		{TrafficRequest{Header: "v9"}, Choice{Named: "v9", From: FromHeader, Bucket: -1, Index: -1}},
		{TrafficRequest{Cookie: "v2"}, Choice{Version: "v2", From: FromCookie, Bucket: -1, Index: -1}},
		// a cookie the policy cannot use is ignored: the split draws again
		{TrafficRequest{Cookie: "beta", Random: 9500}, Choice{Version: "v2", From: FromSplit, Bucket: 9500, Index: 1}},
		{TrafficRequest{Cookie: "~99999", Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{TrafficRequest{Cookie: "~-1", Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{TrafficRequest{Cookie: "~", Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{TrafficRequest{Cookie: strings.Repeat("x", 10000), Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{TrafficRequest{Cookie: StickyCookie(9999)}, Choice{Version: "v2", From: FromSticky, Bucket: -1, Index: 1}},
		{TrafficRequest{Cookie: StickyCookie(0)}, Choice{Version: "v1", From: FromSticky, Bucket: -1, Index: 0}},
		{TrafficRequest{Random: 9500}, Choice{Version: "v2", From: FromSplit, Bucket: 9500, Index: 1}},
		{TrafficRequest{Random: buckets + 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
	} {
		if got := tr.Choose(tc.req, known); got != tc.want {
			t.Errorf("%+v: %+v, want %+v", tc.req, got, tc.want)
		}
	}
	byIP := compile(t, TrafficPolicy{Split: map[string]int{"v1": 50, "v2": 50}, Sticky: "ip"}, "v1", "v2")
	c := byIP.Choose(TrafficRequest{StickyKey: "10.1.2.3", Random: 1}, known)
	if c.From != FromSticky || c.Bucket != -1 || c.Version != byIP.Version(bucketOf("10.1.2.3")) {
		t.Errorf("sticky ip: %+v", c)
	}
	if c := byIP.Choose(TrafficRequest{Cookie: StickyCookie(1), Random: 9999}, known); c.From != FromSplit || c.Bucket != -1 {
		t.Errorf("sticky ip ignores a bucket cookie and sets none: %+v", c)
	}
	// A version the split names resolves though it has no host (no
	// version in the snapshot): the caller falls back or answers 503.
	gone := compile(t, TrafficPolicy{Split: map[string]int{"v1": 50, "v3": 50}, Fallback: "v1"}, "v1", "v3")
	if c := gone.Choose(TrafficRequest{Header: "v3"}, known); c.Version != "v3" || c.From != FromHeader {
		t.Errorf("header naming a split version with no host: %+v; want v3", c)
	}
	none := compile(t, TrafficPolicy{Aliases: map[string]string{"stable": "v1"}}, "v1", "v2")
	if c := none.Choose(TrafficRequest{Random: 5}, known); c.Version != "" || c.Named != "" {
		t.Errorf("no split, nothing named: %+v; want no version", c)
	}
}

// A table keeps its traffic policies when its endpoints change, and the
// other way round; Feed.PublishTraffic puts stored policies over seeds
// and leaves out bad ones.
func TestTableTraffic(t *testing.T) {
	feed := NewFeed()
	feed.Configure(BackendEnv{Traffic: map[string]TrafficPolicy{"users": {Split: map[string]int{"v1": 1}}, "orders": {Split: map[string]int{"v1": 1}}}})
	feed.PublishTraffic(map[string]TrafficPolicy{"users": {Split: map[string]int{"v2": 1}}, "x": {Sticky: "maybe"}})
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
	tbl.setTraffic(map[string]*Traffic{"users": compile(t, TrafficPolicy{Split: map[string]int{"v1": 50, "v2": 50}}, "v1", "v2")})
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
