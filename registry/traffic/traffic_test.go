package traffic

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
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

func compile(t *testing.T, p Policy, versions ...string) *Rules {
	t.Helper()
	tr, err := p.Compile("users", knownVersions(versions...))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// Over 10,000 clients hashed by IP, a 90/10 split lands within 2 points.
func TestSplitShares(t *testing.T) {
	tr := compile(t, Policy{Split: map[string]int{"v1": 90, "v2": 10}}, "v1", "v2")
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
func TestRaiseCanary(t *testing.T) {
	before := compile(t, Policy{Split: map[string]int{"v1": 90, "v2": 10}}, "v1", "v2")
	after := compile(t, Policy{Split: map[string]int{"v1": 80, "v2": 20}}, "v1", "v2")
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

func TestCompileErrors(t *testing.T) {
	known := knownVersions("v1", "v2")
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{Split: map[string]int{"v1": 50, "v3": 50, "v9": 1}}, `unknown versions "v3", "v9" of service "users"`},
		{Policy{Split: map[string]int{"v1": 101}}, `split weight of "v1" is 101`},
		{Policy{Split: map[string]int{"v1": 0, "v2": 0}}, "every weight is 0"},
		{Policy{Aliases: map[string]string{"v2": "v1"}}, `alias "v2" is also a version`},
		{Policy{Aliases: map[string]string{"stable": "v7"}}, `unknown version "v7" of service "users"`},
		{Policy{Aliases: map[string]string{"a/b": "v1"}}, "not a valid name"},
		{Policy{Fallback: "v8"}, `unknown version "v8" of service "users"`},
		{Policy{Sticky: "random"}, `sticky "random"`},
		{Policy{Sticky: "header"}, "needs sticky_header"},
	} {
		_, err := tc.p.Compile("users", known)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want an invalid-input error mentioning %q", tc.p, err, tc.want)
		}
	}
	tr := compile(t, Policy{Aliases: map[string]string{"stable": "v1"}}, "v1", "v2")
	if p := tr.Policy(); p.Header != defaultHeader || p.Cookie != defaultCookie || p.Sticky != "cookie" {
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
func TestVersionAllocs(t *testing.T) {
	tr := compile(t, Policy{Split: map[string]int{"v1": 90, "v2": 10}}, "v1", "v2")
	if n := testing.AllocsPerRun(1000, func() { _ = tr.Version(bucketOf("10.0.0.1")) }); n != 0 {
		t.Errorf("%v allocations per choice, want 0", n)
	}
}

func BenchmarkVersion(b *testing.B) {
	tr, _ := Policy{Split: map[string]int{"v1": 90, "v2": 10}}.Compile("users", knownVersions("v1", "v2"))
	for b.Loop() {
		_ = tr.Version(bucketOf("10.0.0.1"))
	}
}

// Choose: the header, then the cookie (a version, an alias or a sticky
// bucket), then the sticky key, then the split.
func TestChoose(t *testing.T) {
	known := knownVersions("v1", "v2")
	tr := compile(t, Policy{Split: map[string]int{"v1": 90, "v2": 10}, Aliases: map[string]string{"stable": "v1"}}, "v1", "v2")
	for _, tc := range []struct {
		req  Request
		want Choice
	}{
		{Request{Header: "v2", Cookie: "v1"}, Choice{Version: "v2", From: FromHeader, Bucket: -1, Index: -1}},
		{Request{Header: "stable"}, Choice{Version: "v1", From: FromHeader, Bucket: -1, Index: -1}},
		{Request{Header: "v9"}, Choice{Named: "v9", From: FromHeader, Bucket: -1, Index: -1}},
		{Request{Cookie: "v2"}, Choice{Version: "v2", From: FromCookie, Bucket: -1, Index: -1}},
		// a cookie the policy cannot use is ignored: the split draws again
		{Request{Cookie: "beta", Random: 9500}, Choice{Version: "v2", From: FromSplit, Bucket: 9500, Index: 1}},
		{Request{Cookie: "~99999", Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{Request{Cookie: "~-1", Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{Request{Cookie: "~", Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{Request{Cookie: strings.Repeat("x", 10000), Random: 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
		{Request{Cookie: StickyCookie(9999)}, Choice{Version: "v2", From: FromSticky, Bucket: -1, Index: 1}},
		{Request{Cookie: StickyCookie(0)}, Choice{Version: "v1", From: FromSticky, Bucket: -1, Index: 0}},
		{Request{Random: 9500}, Choice{Version: "v2", From: FromSplit, Bucket: 9500, Index: 1}},
		{Request{Random: buckets + 12}, Choice{Version: "v1", From: FromSplit, Bucket: 12, Index: 0}},
	} {
		if got := tr.Choose(tc.req, known); got != tc.want {
			t.Errorf("%+v: %+v, want %+v", tc.req, got, tc.want)
		}
	}
	// Index is a place in Split, a copy the caller may change.
	split := tr.Split()
	if !slices.Equal(split, []string{"v1", "v2"}) {
		t.Errorf("split %v, want [v1 v2]", split)
	}
	split[0] = "v9"
	if tr.Version(0) != "v1" {
		t.Error("changing Split's answer changed the rules")
	}
	byIP := compile(t, Policy{Split: map[string]int{"v1": 50, "v2": 50}, Sticky: "ip"}, "v1", "v2")
	c := byIP.Choose(Request{StickyKey: "10.1.2.3", Random: 1}, known)
	if c.From != FromSticky || c.Bucket != -1 || c.Version != byIP.Version(bucketOf("10.1.2.3")) {
		t.Errorf("sticky ip: %+v", c)
	}
	if c := byIP.Choose(Request{Cookie: StickyCookie(1), Random: 9999}, known); c.From != FromSplit || c.Bucket != -1 {
		t.Errorf("sticky ip ignores a bucket cookie and sets none: %+v", c)
	}
	// A version the split names resolves though it has no host (no
	// version in the snapshot): the caller falls back or answers 503.
	gone := compile(t, Policy{Split: map[string]int{"v1": 50, "v3": 50}, Fallback: "v1"}, "v1", "v3")
	if c := gone.Choose(Request{Header: "v3"}, known); c.Version != "v3" || c.From != FromHeader {
		t.Errorf("header naming a split version with no host: %+v; want v3", c)
	}
	none := compile(t, Policy{Aliases: map[string]string{"stable": "v1"}}, "v1", "v2")
	if c := none.Choose(Request{Random: 5}, known); c.Version != "" || c.Named != "" {
		t.Errorf("no split, nothing named: %+v; want no version", c)
	}
}
