package svcreg

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/balance"
)

var balances = []string{"round_robin", "random", "least_conn", "p2c", "peak_ewma"}

// proxyTry is one request going through the upstream source and the
// policy the way reverse_proxy drives them: GetUpstreams, then Select, and
// again after each failed try.
type proxyTry struct {
	t      testing.TB
	source *UpstreamSource
	policy *FailoverSelection
	r      *http.Request
	w      *httptest.ResponseRecorder
	tries  int
}

func newProxyTry(t testing.TB, reg *registry.Registry, balance string, key registry.ServiceKey) *proxyTry {
	t.Helper()
	r, _ := newRequest(t, http.MethodGet, "/"+key.Service+"/"+key.Version+"/x")
	caddyhttp.SetVar(r.Context(), varName, key.Service)
	caddyhttp.SetVar(r.Context(), varVersion, key.Version)
	return &proxyTry{
		t:      t,
		source: &UpstreamSource{registry: reg},
		policy: failoverPolicy(t, balance, reg),
		r:      r,
		w:      httptest.NewRecorder(),
	}
}

// next returns the address of the next try, or "" when Select gives none.
func (p *proxyTry) next() string {
	p.t.Helper()
	if p.tries > 0 {
		must(p.t, p.source.ResetCache(p.r)) // what reverse_proxy does before a retry
	}
	p.tries++
	pool, err := p.source.GetUpstreams(p.r)
	if err != nil {
		p.t.Fatal(err)
	}
	for _, u := range pool {
		if u.Host == nil {
			u.Host = new(reverseproxy.Host) // what reverse_proxy's provisionUpstream does
		}
	}
	u := p.policy.Select(pool, p.r, p.w)
	if u == nil {
		return ""
	}
	return u.Dial
}

// failoverPolicy returns a provisioned service_failover policy on reg.
func failoverPolicy(t testing.TB, name string, reg *registry.Registry) *FailoverSelection {
	t.Helper()
	b, err := balance.Parse(name)
	if err != nil {
		t.Fatal(err)
	}
	return &FailoverSelection{Balance: name, balance: b, registry: reg}
}

// allEjections lets every endpoint leave rotation for failed requests.
var allEjections = registry.HealthCheck{MaxEjectedPercent: 100}

func hostList(n int) []registry.Endpoint {
	out := make([]registry.Endpoint, n)
	for i := range out {
		out[i] = registry.Endpoint{Address: fmt.Sprintf("127.0.0.1:%d", 9001+i), Weight: 1}
	}
	return out
}

func TestFailoverTriesEveryHostOnce(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	for _, balance := range balances {
		t.Run(balance, func(t *testing.T) {
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(5)})
			try := newProxyTry(t, reg, balance, key)
			seen := map[string]bool{}
			var tried []string
			for range 5 {
				addr := try.next()
				if addr == "" || seen[addr] {
					t.Fatalf("try %d: got %q after %v; want a host not tried yet", len(tried)+1, addr, tried)
				}
				seen[addr] = true
				tried = append(tried, addr)
			}
			if addr := try.next(); addr != "" {
				t.Fatalf("after every host failed: got %q, want none", addr)
			}
			// Every try failed, so every host was reported; the default
			// ejection limit (50%) keeps 2 of 5 out: the two that failed
			// last.
			svc, _ := reg.Lookup(key)
			var out []string
			for _, ep := range svc.Endpoints {
				if ep.Stats().Fails != 1 {
					t.Errorf("%s: %d failures reported, want 1", ep.Address, ep.Stats().Fails)
				}
				if !ep.Stats().Available {
					out = append(out, ep.Address)
				}
			}
			want := slices.Sorted(slices.Values(tried[3:]))
			if !slices.Equal(out, want) {
				t.Errorf("out of rotation: %v; want the last two tried, %v (tried %v)", out, want, tried)
			}
		})
	}
}

func TestFailoverSkipsFailedHosts(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	for _, balance := range balances {
		t.Run(balance, func(t *testing.T) {
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(3)}, allEjections)
			reg.Failure(key, "127.0.0.1:9001")
			reg.Failure(key, "127.0.0.1:9003")
			for i := range 50 {
				if addr := newProxyTry(t, reg, balance, key).next(); addr != "127.0.0.1:9002" {
					t.Fatalf("request %d went to %q; want the only host in rotation", i, addr)
				}
			}
		})
	}
}

func TestFailoverPanicMode(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	for _, balance := range balances {
		t.Run(balance, func(t *testing.T) {
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(3)}, allEjections)
			for _, ep := range hostList(3) {
				reg.Failure(key, ep.Address)
			}
			try := newProxyTry(t, reg, balance, key)
			seen := map[string]bool{}
			for range 3 {
				addr := try.next()
				if addr == "" || seen[addr] {
					t.Fatalf("with every host out of rotation: got %q after %v; want each host tried once", addr, seen)
				}
				seen[addr] = true
			}
		})
	}
}

func TestFailoverBalances(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	weighted := []registry.Endpoint{{Address: "127.0.0.1:9001", Weight: 3}, {Address: "127.0.0.1:9002", Weight: 1}, {Address: "127.0.0.1:9003", Weight: 1}}
	for _, tc := range []struct {
		balance string
		eps     []registry.Endpoint
		n       int
		want    map[string]int // exact counts, or nil to just require every host
	}{
		{"round_robin", hostList(3), 300, map[string]int{"127.0.0.1:9001": 100, "127.0.0.1:9002": 100, "127.0.0.1:9003": 100}},
		{"round_robin", weighted, 500, map[string]int{"127.0.0.1:9001": 300, "127.0.0.1:9002": 100, "127.0.0.1:9003": 100}},
		{"random", hostList(3), 300, nil},
		{"least_conn", hostList(3), 300, nil},
		{"p2c", hostList(3), 300, nil},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.balance, len(tc.eps)), func(t *testing.T) {
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: tc.eps})
			got := map[string]int{}
			for range tc.n {
				got[newProxyTry(t, reg, tc.balance, key).next()]++
			}
			if tc.want != nil {
				for addr, n := range tc.want {
					if got[addr] != n {
						t.Errorf("%s got %d of %d requests, want %d (all: %v)", addr, got[addr], tc.n, n, got)
					}
				}
				return
			}
			for _, ep := range tc.eps {
				if got[ep.Address] < tc.n/10 {
					t.Errorf("%s got %d of %d requests: not balanced (%v)", ep.Address, got[ep.Address], tc.n, got)
				}
			}
		})
	}
}

func TestFailoverNoAvailableHost(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: {}})
	try := newProxyTry(t, reg, "round_robin", key)
	if addr := try.next(); addr != "" {
		t.Fatalf("empty version: got %q", addr)
	}
	if ra := try.w.Header().Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1", ra)
	}
	repl := try.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if msg, _ := repl.GetString(placeholderError); msg != `no available host for service "users" version "v1"` {
		t.Errorf("{svc.error} = %q", msg)
	}
	// A host shows up before the next try: it is used, and the response
	// no longer says to retry later.
	if err := reg.Add(context.Background(), key, hostList(1)[0]); err != nil {
		t.Fatal(err)
	}
	if addr := try.next(); addr != "127.0.0.1:9001" {
		t.Fatalf("after a host was added: got %q", addr)
	}
	if ra := try.w.Header().Get("Retry-After"); ra != "" {
		t.Errorf("Retry-After still set on a try that has a host: %q", ra)
	}
}

func TestFailoverRetryOnAnswerIsNoFailure(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(2)})
	try := newProxyTry(t, reg, "round_robin", key)
	first := try.next()
	// The host answered, and lb_retry_match asked for a retry on its
	// answer: reverse_proxy has set the status placeholder.
	try.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Set(statusPlaceholder, 503)
	second := try.next()
	if second == "" || second == first {
		t.Fatalf("retry after an answer: got %q after %q", second, first)
	}
	svc, _ := reg.Lookup(key)
	if ep := svc.Endpoint(first); !ep.Stats().Available || ep.Stats().Fails != 0 {
		t.Errorf("a host that answered was counted as failed")
	}
	// A try that failed without an answer is still reported.
	if try.next() != "" {
		t.Fatal("a third host out of two")
	}
	if ep := svc.Endpoint(second); ep.Stats().Available {
		t.Errorf("a host that failed was not reported")
	}
}

func TestFailoverNewProxyLoopStartsAfresh(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(2)})
	try := newProxyTry(t, reg, "round_robin", key)
	first := try.next()
	// The same request goes through reverse_proxy again (say, from a
	// handle_response route): no ResetCache, so it is a new loop.
	try.tries = 0
	seen := map[string]bool{}
	for range 2 {
		addr := try.next()
		if addr == "" || seen[addr] {
			t.Fatalf("second loop: got %q after %v; want both hosts", addr, seen)
		}
		seen[addr] = true
	}
	svc, _ := reg.Lookup(key)
	if ep := svc.Endpoint(first); !ep.Stats().Available {
		t.Errorf("the first loop's successful host was reported as failed")
	}
}

func TestFailoverRetryAfterClearedWhenSynced(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg, fed := newHandFed(t) // not synced until it publishes
	try := newProxyTry(t, reg, "round_robin", key)
	repl := try.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set(placeholderName, "users") // as the matcher does
	if addr := try.next(); addr != "" {
		t.Fatalf("unsynced registry: got %q", addr)
	}
	if try.w.Header().Get("Retry-After") != "1" {
		t.Fatalf("unsynced registry: no Retry-After")
	}
	if msg, _ := repl.GetString(placeholderError); msg == "" {
		t.Errorf("unsynced registry: no {svc.error}")
	}
	fed.publish(map[registry.ServiceKey][]registry.Endpoint{key: normalize(t, hostList(1))})
	if addr := try.next(); addr != "127.0.0.1:9001" {
		t.Fatalf("after the sync: got %q", addr)
	}
	if ra := try.w.Header().Get("Retry-After"); ra != "" {
		t.Errorf("Retry-After left on a try that has a host: %q", ra)
	}
}

func TestFailoverRegistryChangesBetweenTries(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(2)}, allEjections)
	try := newProxyTry(t, reg, "round_robin", key)
	first := try.next()
	// A third host is added while the first try is failing.
	if err := reg.Add(context.Background(), key, hostList(3)[2]); err != nil {
		t.Fatal(err)
	}
	second := try.next()
	third := try.next()
	if second == first || third == first || second == third || second == "" || third == "" {
		t.Fatalf("tries %q, %q, %q: want three different hosts", first, second, third)
	}
	svc, _ := reg.Lookup(key)
	if ep := svc.Endpoint(first); ep.Stats().Available {
		t.Errorf("the first host's failure was lost when the registry changed")
	}
}

func TestFailoverStaticPool(t *testing.T) {
	pool := reverseproxy.UpstreamPool{{Dial: "a:1"}, {Dial: "b:1"}, {Dial: "c:1"}}
	for _, u := range pool {
		u.Host = new(reverseproxy.Host)
	}
	for _, balance := range balances {
		t.Run(balance, func(t *testing.T) {
			p := failoverPolicy(t, balance, nil)
			r, _ := newRequest(t, http.MethodGet, "/x")
			seen := map[string]bool{}
			for range 3 {
				u := p.Select(pool, r, httptest.NewRecorder())
				if u == nil || seen[u.Dial] {
					t.Fatalf("static pool: got %v after %v", u, seen)
				}
				seen[u.Dial] = true
			}
			if u := p.Select(pool, r, httptest.NewRecorder()); u != nil {
				t.Fatalf("static pool, all tried: got %s", u.Dial)
			}
		})
	}
}

// BenchmarkSelect measures one first try among 10 hosts, beside Caddy's
// own round_robin, random and least_conn on the same pool in the same run.
func BenchmarkSelect(b *testing.B) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(b, map[registry.ServiceKey][]registry.Endpoint{key: hostList(10)})
	for _, balance := range balances {
		b.Run("service_failover_"+balance, func(b *testing.B) {
			try := newProxyTry(b, reg, balance, key)
			pool, _ := try.source.GetUpstreams(try.r)
			for _, u := range pool {
				u.Host = new(reverseproxy.Host)
			}
			a := caddyhttp.GetVar(try.r.Context(), attemptVar).(*attempt)
			b.ReportAllocs()
			for b.Loop() {
				a.tried[0], a.last = 0, -1 // a new request
				if try.policy.Select(pool, try.r, try.w) == nil {
					b.Fatal("no host")
				}
			}
		})
	}
	for _, caddyPolicy := range []struct {
		name   string
		policy reverseproxy.Selector
	}{
		{"caddy_round_robin", new(reverseproxy.RoundRobinSelection)},
		{"caddy_random", reverseproxy.RandomSelection{}},
		{"caddy_least_conn", reverseproxy.LeastConnSelection{}},
	} {
		b.Run(caddyPolicy.name, func(b *testing.B) {
			pool := make(reverseproxy.UpstreamPool, 10)
			for i := range pool {
				pool[i] = &reverseproxy.Upstream{Dial: fmt.Sprintf("127.0.0.1:%d", 9001+i), Host: new(reverseproxy.Host)}
			}
			r, _ := newRequest(b, http.MethodGet, "/users/v1/x")
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				if caddyPolicy.policy.Select(pool, r, w) == nil {
					b.Fatal("no host")
				}
			}
		})
	}
}

// BenchmarkUpstreamsAndSelect measures a request's first try as
// reverse_proxy runs it: GetUpstreams (fresh upstreams for 5 hosts) and
// Select.
func BenchmarkUpstreamsAndSelect(b *testing.B) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(b, map[registry.ServiceKey][]registry.Endpoint{key: hostList(5)})
	try := newProxyTry(b, reg, "round_robin", key)
	host := new(reverseproxy.Host)
	b.ReportAllocs()
	for b.Loop() {
		caddyhttp.SetVar(try.r.Context(), attemptVar, nil) // a new request
		pool, err := try.source.GetUpstreams(try.r)
		if err != nil {
			b.Fatal(err)
		}
		for _, u := range pool {
			u.Host = host
		}
		if try.policy.Select(pool, try.r, try.w) == nil {
			b.Fatal("no host")
		}
	}
}

// BenchmarkRegistryScale measures a registry of 10,000 services of 5
// endpoints each: Lookup and a first try's Select on it, and the heap the
// registry takes (B/registry).
func BenchmarkRegistryScale(b *testing.B) {
	all := map[registry.ServiceKey][]registry.Endpoint{}
	for i := range 10000 {
		all[registry.ServiceKey{Service: fmt.Sprintf("s%d", i), Version: "v1"}] = []registry.Endpoint{
			{Address: fmt.Sprintf("10.0.%d.1:80", i%250), Weight: 1}, {Address: fmt.Sprintf("10.0.%d.2:80", i%250), Weight: 1},
			{Address: fmt.Sprintf("10.0.%d.3:80", i%250), Weight: 1}, {Address: fmt.Sprintf("10.0.%d.4:80", i%250), Weight: 1},
			{Address: fmt.Sprintf("10.0.%d.5:80", i%250), Weight: 1},
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	reg, fed := newHandFed(b)
	fed.publish(all)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc - before.HeapAlloc)
	keys := make([]registry.ServiceKey, 1024)
	for i := range keys {
		keys[i] = registry.ServiceKey{Service: fmt.Sprintf("s%d", i*9), Version: "v1"}
	}

	b.Run("lookup", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := reg.Lookup(keys[i%len(keys)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(heap, "B/registry")
	})
	b.Run("select", func(b *testing.B) {
		try := newProxyTry(b, reg, "round_robin", keys[7])
		pool, _ := try.source.GetUpstreams(try.r)
		for _, u := range pool {
			u.Host = new(reverseproxy.Host)
		}
		a := caddyhttp.GetVar(try.r.Context(), attemptVar).(*attempt)
		b.ReportAllocs()
		for b.Loop() {
			a.tried[0], a.last = 0, -1
			if try.policy.Select(pool, try.r, try.w) == nil {
				b.Fatal("no host")
			}
		}
	})
}

// TestSelectAllocs checks that Select, on the request path, allocates
// nothing: on a first try and on a retry after a failure.
func TestSelectAllocs(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(10)}, allEjections)
	for _, balance := range balances {
		try := newProxyTry(t, reg, balance, key)
		pool, _ := try.source.GetUpstreams(try.r)
		for _, u := range pool {
			u.Host = new(reverseproxy.Host)
		}
		a := caddyhttp.GetVar(try.r.Context(), attemptVar).(*attempt)
		if n := testing.AllocsPerRun(100, func() {
			a.tried[0], a.last = 0, -1 // a new request
			if try.policy.Select(pool, try.r, try.w) == nil {
				t.Fatal("no host")
			}
		}); n != 0 {
			t.Errorf("%s: a first try allocates %v times", balance, n)
		}
		if n := testing.AllocsPerRun(100, func() {
			a.tried[0], a.last = 0, -1
			try.policy.Select(pool, try.r, try.w)
			if try.policy.Select(pool, try.r, try.w) == nil { // a retry: the first try failed
				t.Fatal("no host")
			}
		}); n != 0 {
			t.Errorf("%s: a first try and a retry allocate %v times", balance, n)
		}
	}
}

// countingLookups counts the registry's Lookup calls.
type countingLookups struct {
	tryRegistry
	n int
}

func (c *countingLookups) Lookup(key registry.ServiceKey) (*registry.Service, error) {
	c.n++
	return c.tryRegistry.Lookup(key)
}

// The upstream source starts a request's first try on the service version
// the matcher found, without looking it up again; a retry looks it up in
// the current snapshot.
func TestUpstreamsFromMatcher(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(2)})
	r, _ := newRequest(t, http.MethodGet, "/users/v1/x")
	if ok, err := (MatchServiceVersion{registry: reg}).MatchWithError(r); !ok || err != nil {
		t.Fatalf("match: %v, %v", ok, err)
	}
	matched, _ := caddyhttp.GetVar(r.Context(), attemptVar).(*registry.Service)
	if matched == nil || matched.Key() != key {
		t.Fatalf("the matcher handed on %v", matched)
	}
	counter := &countingLookups{tryRegistry: reg}
	source := &UpstreamSource{registry: counter}
	pool, err := source.GetUpstreams(r)
	must(t, err)
	a, _ := caddyhttp.GetVar(r.Context(), attemptVar).(*attempt)
	if len(pool) != 2 || a == nil || a.svc != matched || counter.n != 0 {
		t.Fatalf("first try: %d hosts, attempt on the matcher's service %v, %d lookups; want 2, true, 0", len(pool), a != nil && a.svc == matched, counter.n)
	}
	must(t, source.ResetCache(r))
	if _, err := source.GetUpstreams(r); err != nil || counter.n != 1 {
		t.Errorf("retry: %v, %d lookups; want 1", err, counter.n)
	}
}

// A service_failover policy with no registry (not provisioned by the app)
// still fails over a pool the upstream source took from the registry,
// and reports the failed try to nobody.
func TestFailoverWithoutRegistry(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: hostList(2)}, allEjections)
	try := newProxyTry(t, reg, "round_robin", key)
	try.policy = failoverPolicy(t, "round_robin", nil)
	first, second := try.next(), try.next()
	if first == "" || second == "" || first == second {
		t.Fatalf("tries %q, %q: want two different hosts", first, second)
	}
	svc, _ := reg.Lookup(key)
	if !svc.Endpoint(first).Stats().Available {
		t.Errorf("the failed try was reported to a registry the policy does not have")
	}
}
