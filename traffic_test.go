package svcreg

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/memory"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// trafficRegistry returns a registry of matcherServices with policy set
// for users through the registry (as the admin API sets it).
func trafficRegistry(t testing.TB, policy traffic.Policy) *registry.Registry {
	t.Helper()
	reg := newTestRegistry(t, matcherServices)
	if err := reg.PutTraffic(context.Background(), "users", policy); err != nil {
		t.Fatal(err)
	}
	return reg
}

// matchTraffic matches one request and returns its version, why, and the
// path strip_prefix leaves.
func matchTraffic(t testing.TB, m MatchServiceVersion, r *http.Request) (version, from, after string, err error) {
	t.Helper()
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	ok, err := m.MatchWithError(r)
	if err != nil || !ok {
		return "", "", "", err
	}
	version, _ = repl.GetString(placeholderVersion)
	from, _ = repl.GetString(placeholderVersionFrom)
	rewrite.Rewrite{StripPathPrefix: "{svc.prefix}"}.Rewrite(r, repl)
	return version, from, r.URL.Path, nil
}

func TestMatchTraffic(t *testing.T) {
	reg := trafficRegistry(t, traffic.Policy{
		Split:   map[string]int{"v1": 90, "v2": 10},
		Aliases: map[string]string{"stable": "v1", "canary": "v2"},
	})
	m := MatchServiceVersion{registry: reg}
	for _, tc := range []struct {
		name, path     string
		header, cookie string
		contentType    string
		http1          bool
		version, from  string // "" for no match
		after          string
		status         int // of the error, if any
	}{
		{name: "path wins over all", path: "/users/v2/x", header: "v1", cookie: "v1", version: "v2", from: "path", after: "/x"},
		{name: "alias", path: "/users/stable/x", version: "v1", from: "alias", after: "/x"},
		{name: "alias wins over header", path: "/users/canary/x", header: "v1", version: "v2", from: "alias", after: "/x"},
		{name: "header", path: "/users/x", header: "v2", version: "v2", from: "header", after: "/x"},
		{name: "header names an alias", path: "/users/x", header: "canary", version: "v2", from: "header", after: "/x"},
		{name: "header wins over cookie", path: "/users/x", header: "v1", cookie: "v2", version: "v1", from: "header", after: "/x"},
		{name: "cookie", path: "/users/list/all", cookie: "v2", version: "v2", from: "cookie", after: "/list/all"},
		{name: "sticky cookie", path: "/users/x", cookie: traffic.StickyCookie(9500), version: "v2", from: "sticky", after: "/x"},
		{name: "sticky cookie low bucket", path: "/users/x", cookie: traffic.StickyCookie(3), version: "v1", from: "sticky", after: "/x"},
		{name: "service alone", path: "/users", header: "v2", version: "v2", from: "header", after: "/"},
		{name: "service and slash", path: "/users/", header: "v2", version: "v2", from: "header", after: "/"},
		{name: "odd segment", path: "/users/a%20b/y", header: "v2", version: "v2", from: "header", after: "/a b/y"},
		{name: "grpc keeps its path", path: "/users/Check", header: "v2", contentType: "application/grpc", version: "v2", from: "header", after: "/users/Check"},
		{name: "grpc ignores path versions", path: "/users/v1", header: "v2", contentType: "application/grpc+proto", version: "v2", from: "header", after: "/users/v1"},
		{name: "header names an unknown version", path: "/users/x", header: "v9", status: 404},
		{name: "other service has no policy", path: "/orders/x", status: 404},
		{name: "other service, one segment", path: "/orders"},
		{name: "grpc content type over HTTP/1 is not gRPC", path: "/users/v1/x", contentType: "application/grpc", http1: true, version: "v1", from: "path", after: "/x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRequest(t, http.MethodGet, tc.path)
			if tc.header != "" {
				r.Header.Set("X-Service-Version", tc.header)
			}
			if tc.cookie != "" {
				r.Header.Set("Cookie", "a=b; svc_version="+tc.cookie+"; c=d")
			}
			if tc.contentType != "" {
				r.Header.Set("Content-Type", tc.contentType)
				r.ProtoMajor = 2 // gRPC needs HTTP/2
			}
			if tc.http1 {
				r.ProtoMajor = 1
			}
			version, from, after, err := matchTraffic(t, m, r)
			if tc.status != 0 {
				if herr, ok := err.(caddyhttp.HandlerError); !ok || herr.StatusCode != tc.status {
					t.Fatalf("error %v, want status %d", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if version != tc.version || from != tc.from || (tc.version != "" && after != tc.after) {
				t.Errorf("version %q from %q, path %q; want %q from %q, path %q", version, from, after, tc.version, tc.from, tc.after)
			}
		})
	}
}

// A cookie the policy cannot use (a version that is gone, a bucket out of
// range, junk, a huge value) is ignored: the split chooses, and the
// client gets a new sticky cookie, instead of a 404 it would get for as
// long as it keeps the cookie. A header naming no version is still 404,
// and the 404's text quotes only a short excerpt of it.
func TestMatchTrafficUnusableCookie(t *testing.T) {
	reg := trafficRegistry(t, traffic.Policy{Split: map[string]int{"v1": 90, "v2": 10}})
	m := MatchServiceVersion{registry: reg}
	for _, cookie := range []string{"v9", "~99999", "~-1", "~", "garbage", "~12a", strings.Repeat("v", 10000)} {
		r, _ := newRequest(t, http.MethodGet, "/users/list")
		r.Header.Set("Cookie", "svc_version="+cookie)
		version, from, after, err := matchTraffic(t, m, r)
		if err != nil || from != "split" || after != "/list" {
			t.Errorf("cookie %.20q: %q from %q, path %q, %.200v; want a version from the split", cookie, version, from, after, err)
			continue
		}
		if _, ok := caddyhttp.GetVar(r.Context(), varSticky).(stickyCookie); !ok {
			t.Errorf("cookie %.20q: no new sticky cookie", cookie)
		}
	}

	r, _ := newRequest(t, http.MethodGet, "/users/list")
	r.Header.Set("X-Service-Version", "<script>"+strings.Repeat("x", 10000))
	_, _, _, err := matchTraffic(t, m, r)
	herr, ok := err.(caddyhttp.HandlerError)
	if !ok || herr.StatusCode != http.StatusNotFound {
		t.Fatalf("header naming no version: %v; want 404", err)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	msg, _ := repl.GetString(placeholderError)
	if len(msg) > 200 || strings.Contains(msg, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") {
		t.Errorf("the 404 text quotes %d bytes of the header: %.100q...", len(msg), msg)
	}
}

// A version the split names that has no host at all (its last instance
// left a store that forgets empty versions: etcd, ZooKeeper, Consul) is a
// version with no available host, not an unknown one: with a fallback
// its requests go there; without one they get 503, never 404.
func TestMatchTrafficSplitVersionGone(t *testing.T) {
	for _, fallback := range []string{"v1", ""} {
		t.Run("fallback "+fallback, func(t *testing.T) {
			r := registry.New(&memory.Backend{StorageKey: "service_registry/memory.json"}, registry.Options{})
			t.Cleanup(func() { r.Stop() })
			env := registry.BackendEnv{
				Seeds:   map[registry.ServiceKey][]registry.Endpoint{{Service: "users", Version: "v1"}: normalize(t, eps("127.0.0.1:1"))},
				Traffic: map[string]traffic.Policy{"users": {Split: map[string]int{"v1": 50, "v2": 50}, Fallback: fallback}},
				Storage: &certmagic.FileStorage{Path: t.TempDir()}, Logger: zap.NewNop(),
			}
			if err := r.Start(env, nil, nil); err != nil {
				t.Fatal(err)
			}
			m := MatchServiceVersion{registry: r}
			for _, c := range []struct{ cookie, header string }{
				{cookie: traffic.StickyCookie(9999)}, // v2's bucket
				{header: "v2"},
			} {
				req, _ := newRequest(t, http.MethodGet, "/users/list")
				if c.cookie != "" {
					req.Header.Set("Cookie", "svc_version="+c.cookie)
				}
				if c.header != "" {
					req.Header.Set("X-Service-Version", c.header)
				}
				version, from, after, err := matchTraffic(t, m, req)
				if err != nil {
					t.Fatalf("%+v: %v; want no error", c, err)
				}
				want, wantFrom := "v1", "fallback"
				if fallback == "" {
					want, wantFrom = "v2", map[bool]string{true: "sticky", false: "header"}[c.cookie != ""]
				}
				if version != want || from != wantFrom || after != "/list" {
					t.Errorf("%+v: %q from %q, path %q; want %q from %q, path /list", c, version, from, after, want, wantFrom)
				}
			}
		})
	}
}

// Over 10,000 requests that name no version, a 90/10 split lands within
// 2 points; each new client gets a sticky cookie for its bucket.
func TestMatchTrafficSplit(t *testing.T) {
	reg := trafficRegistry(t, traffic.Policy{Split: map[string]int{"v1": 90, "v2": 10}})
	m := MatchServiceVersion{registry: reg}
	count := map[string]int{}
	for range 10000 {
		r, _ := newRequest(t, http.MethodGet, "/users/list")
		version, from, _, err := matchTraffic(t, m, r)
		if err != nil || from != "split" {
			t.Fatalf("%q from %q, %v", version, from, err)
		}
		count[version]++
		c, ok := caddyhttp.GetVar(r.Context(), varSticky).(stickyCookie)
		if !ok {
			t.Fatal("no sticky cookie for a request the split decided")
		}
		if want := c.tr.Version(c.bucket); want != version {
			t.Fatalf("the sticky cookie's bucket %d is in %s, the request went to %s", c.bucket, want, version)
		}
	}
	if v2 := count["v2"]; v2 < 800 || v2 > 1200 {
		t.Errorf("90/10 over 10,000 requests: %v; want v2 within 800-1200", count)
	}
}

// A request the matcher sees twice keeps the version of its first draw.
func TestMatchTrafficTwice(t *testing.T) {
	reg := trafficRegistry(t, traffic.Policy{Split: map[string]int{"v1": 50, "v2": 50}})
	m := MatchServiceVersion{registry: reg}
	for range 200 {
		r, repl := newRequest(t, http.MethodGet, "/users/list")
		if ok, err := m.MatchWithError(r); !ok || err != nil {
			t.Fatal(ok, err)
		}
		first, _ := repl.GetString(placeholderVersion)
		for range 3 {
			if ok, err := m.MatchWithError(r); !ok || err != nil {
				t.Fatal(ok, err)
			}
		}
		if again, _ := repl.GetString(placeholderVersion); again != first {
			t.Fatalf("matched %s, then %s", first, again)
		}
	}
}

// Sticky by header or IP: the same key always gets the same version; a
// matcher restricted to a version matches only requests sent to it.
func TestMatchTrafficStickyKeys(t *testing.T) {
	for _, sticky := range []string{"header", "ip"} {
		p := traffic.Policy{Split: map[string]int{"v1": 50, "v2": 50}, Sticky: sticky}
		if sticky == "header" {
			p.StickyHeader = "X-User"
		}
		reg := trafficRegistry(t, p)
		m := MatchServiceVersion{registry: reg}
		seen := map[string]bool{}
		for i := range 100 {
			key := fmt.Sprintf("10.0.%d.%d", i/250, i%250)
			var first string
			for j := range 5 {
				r, _ := newRequest(t, http.MethodGet, "/users/x")
				r.Header.Set("X-User", key)
				r.RemoteAddr = key + ":1234"
				version, from, _, err := matchTraffic(t, m, r)
				if err != nil || from != "sticky" {
					t.Fatalf("sticky %s: %q from %q, %v", sticky, version, from, err)
				}
				if _, set := caddyhttp.GetVar(r.Context(), varSticky).(stickyCookie); set {
					t.Fatalf("sticky %s set a cookie", sticky)
				}
				if j == 0 {
					first = version
				} else if version != first {
					t.Fatalf("sticky %s: key %s went to %s, then %s", sticky, key, first, version)
				}
			}
			seen[first] = true
		}
		if !seen["v1"] || !seen["v2"] {
			t.Errorf("sticky %s: 100 keys all went to %v", sticky, seen)
		}
		only := MatchServiceVersion{registry: reg, Version: "v2"}
		r, _ := newRequest(t, http.MethodGet, "/users/x")
		r.Header.Set("X-Service-Version", "v1")
		if ok, err := only.MatchWithError(r); ok || err != nil {
			t.Errorf("a matcher for v2 matched a request sent to v1: %v, %v", ok, err)
		}
	}
}

// A fallback takes requests of a version with no available host, and
// only then.
func TestMatchTrafficFallback(t *testing.T) {
	reg := trafficRegistry(t, traffic.Policy{Split: map[string]int{"v2": 100}, Fallback: "v1"})
	m := MatchServiceVersion{registry: reg}
	r, _ := newRequest(t, http.MethodGet, "/users/x")
	if version, from, _, err := matchTraffic(t, m, r); err != nil || version != "v2" || from != "split" {
		t.Fatalf("%q from %q, %v; want v2 from split", version, from, err)
	}
	reg.Failure(registry.ServiceKey{Service: "users", Version: "v2"}, "127.0.0.1:2")
	r, _ = newRequest(t, http.MethodGet, "/users/x")
	if version, from, _, err := matchTraffic(t, m, r); err != nil || version != "v1" || from != "fallback" {
		t.Fatalf("with v2 out: %q from %q, %v; want v1 from fallback", version, from, err)
	}
}

func TestCookieValue(t *testing.T) {
	h := http.Header{"Cookie": {"a=1; svc_version=v2", `b="x"; svc=3`}}
	for name, want := range map[string]string{"a": "1", "svc_version": "v2", "b": "x", "svc": "3", "sv": "", "": ""} {
		if got := cookieValue(h, name); got != want {
			t.Errorf("cookie %q = %q, want %q", name, got, want)
		}
	}
}

// Choosing a version costs no allocation, whatever chooses it (the sticky
// cookie of a client's first request aside).
func TestMatchTrafficAllocs(t *testing.T) {
	reg := trafficRegistry(t, traffic.Policy{Split: map[string]int{"v1": 90, "v2": 10}, Aliases: map[string]string{"stable": "v1"}})
	m := MatchServiceVersion{registry: reg}
	for _, tc := range []struct{ path, header, cookie string }{
		{path: "/users/v1/x"},
		{path: "/users/stable/x"},
		{path: "/users/x", header: "v2"},
		{path: "/users/x", cookie: traffic.StickyCookie(42)},
	} {
		r, _ := newRequest(t, http.MethodGet, tc.path)
		if tc.header != "" {
			r.Header.Set("X-Service-Version", tc.header)
		}
		if tc.cookie != "" {
			r.Header.Set("Cookie", "svc_version="+tc.cookie)
		}
		if n := testing.AllocsPerRun(200, func() {
			delete(r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any), varName) // a new request each time
			if ok, err := m.MatchWithError(r); !ok || err != nil {
				t.Fatal(ok, err)
			}
		}); n != 0 {
			t.Errorf("%+v: %v allocations per match, want 0", tc, n)
		}
	}
}

func BenchmarkMatchTraffic(b *testing.B) {
	for _, tc := range []struct{ name, path, cookie string }{
		{"path", "/users/v1/list/of/things", ""},
		{"alias", "/users/stable/list/of/things", ""},
		{"sticky", "/users/list/of/things", "a=b; svc_version=" + traffic.StickyCookie(4242)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			reg := trafficRegistry(b, traffic.Policy{Split: map[string]int{"v1": 90, "v2": 10}, Aliases: map[string]string{"stable": "v1"}})
			m := MatchServiceVersion{registry: reg}
			r, _ := newRequest(b, http.MethodGet, tc.path)
			if tc.cookie != "" {
				r.Header.Set("Cookie", tc.cookie)
			}
			vars := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
			b.ReportAllocs()
			for b.Loop() {
				delete(vars, varName) // a new request each time
				if ok, _ := m.MatchWithError(r); !ok {
					b.Fatal("no match")
				}
			}
		})
	}
}

// A config's policy may not name versions the config does not seed, for a
// service it seeds; for one it does not seed, versions come later.
func TestCheckSeededVersions(t *testing.T) {
	seeds := map[registry.ServiceKey][]registry.Endpoint{{Service: "users", Version: "v1"}: nil}
	if err := checkSeededVersions("users", traffic.Policy{Split: map[string]int{"v1": 1, "v2": 1}}, seeds); err == nil || !strings.Contains(err.Error(), `unknown version "v2"`) {
		t.Errorf("a split naming an unseeded version of a seeded service: %v", err)
	}
	if err := checkSeededVersions("users", traffic.Policy{Split: map[string]int{"v1": 1}}, seeds); err != nil {
		t.Error(err)
	}
	if err := checkSeededVersions("orders", traffic.Policy{Split: map[string]int{"v7": 1}}, seeds); err != nil {
		t.Errorf("a service the config does not seed: %v", err)
	}
}

// BenchmarkChooseVersion measures, in ns, what choosing a version adds to
// a match, in a way a busy machine does not blur: batches of 200 matches
// of each kind run in turn, and each kind's fastest batch counts (other
// processes only ever add time to a batch). Metrics: ns per match of a
// path naming its version, and the extra ns of an alias, of the version
// header and of a sticky cookie (a client's bucket) over it.
func BenchmarkChooseVersion(b *testing.B) {
	kinds := [...]struct{ path, header, cookie string }{
		{"/users/v1/list/of/things", "", ""},
		{"/users/stable/list/of/things", "", ""},
		{"/users/list/of/things", "v2", ""},
		{"/users/list/of/things", "", "a=b; svc_version=" + traffic.StickyCookie(4242)},
	}
	reg := trafficRegistry(b, traffic.Policy{Split: map[string]int{"v1": 90, "v2": 10}, Aliases: map[string]string{"stable": "v1"}})
	m := MatchServiceVersion{registry: reg}
	var reqs [len(kinds)]*http.Request
	var vars [len(kinds)]map[string]any
	for k, kind := range kinds {
		reqs[k], _ = newRequest(b, http.MethodGet, kind.path)
		if kind.header != "" {
			reqs[k].Header.Set("X-Service-Version", kind.header)
		}
		if kind.cookie != "" {
			reqs[k].Header.Set("Cookie", kind.cookie)
		}
		vars[k] = reqs[k].Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	}
	const batch = 200
	var best [len(kinds)]time.Duration
	for k := range best {
		best[k] = time.Hour
	}
	for b.Loop() {
		for k := range kinds {
			r, v := reqs[k], vars[k]
			start := time.Now()
			for range batch {
				delete(v, varName) // a new request each time
				if ok, _ := m.MatchWithError(r); !ok {
					b.Fatal("no match")
				}
			}
			best[k] = min(best[k], time.Since(start))
		}
	}
	per := func(k int) float64 { return float64(best[k].Nanoseconds()) / batch }
	b.ReportMetric(per(0), "path-ns")
	b.ReportMetric(per(1)-per(0), "alias-extra-ns")
	b.ReportMetric(per(2)-per(0), "header-extra-ns")
	b.ReportMetric(per(3)-per(0), "sticky-extra-ns")
}
