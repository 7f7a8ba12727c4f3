package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		in       string
		min, max int
		ok       bool
	}{
		{"200", 200, 200, true}, {"2xx", 200, 299, true}, {"5xx", 500, 599, true},
		{"200-399", 200, 399, true}, {"6xx", 0, 0, false}, {"99", 0, 0, false},
		{"300-200", 0, 0, false}, {"abc", 0, 0, false}, {"", 0, 0, false}, {"200-700", 0, 0, false},
	} {
		r, err := parseStatus(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (r.min != tc.min || r.max != tc.max)) {
			t.Errorf("parseStatus(%q) = %+v, %v", tc.in, r, err)
		}
	}
}

func TestHealthPolicy(t *testing.T) {
	p, err := NewHealthPolicy([]HealthCheck{
		{Path: "/healthz", Interval: Duration(time.Second), Fall: 3},
		{Service: "users", Path: "/status", SlowStart: Duration(10 * time.Second)},
		{Service: "users", Version: "v2", Fall: 5},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key              ServiceKey
		path             string
		fall             int
		slowStart        time.Duration
		interval         time.Duration
		maxEjectedPct    int
		drainTimeout     time.Duration
		statusMinMaxWant [2]int
	}{
		{ServiceKey{"orders", "v1"}, "/healthz", 3, 0, time.Second, 50, 30 * time.Second, [2]int{200, 299}},
		{ServiceKey{"users", "v1"}, "/status", 3, 10 * time.Second, time.Second, 50, 30 * time.Second, [2]int{200, 299}},
		{ServiceKey{"users", "v2"}, "/status", 5, 10 * time.Second, time.Second, 50, 30 * time.Second, [2]int{200, 299}},
	} {
		h := p.of(tc.key)
		if h.Path != tc.path || h.Fall != tc.fall || time.Duration(h.SlowStart) != tc.slowStart || time.Duration(h.Interval) != tc.interval ||
			h.MaxEjectedPercent != tc.maxEjectedPct || time.Duration(h.DrainTimeout) != tc.drainTimeout ||
			h.status.min != tc.statusMinMaxWant[0] || h.status.max != tc.statusMinMaxWant[1] || !h.active() {
			t.Errorf("%s: %+v", tc.key, *h)
		}
	}
	if none, _ := NewHealthPolicy(nil); none.of(ServiceKey{"a", "b"}).active() {
		t.Error("active checks on without a path or port")
	}

	for _, tc := range []struct {
		name    string
		entries []HealthCheck
		want    string
	}{
		{"relative path", []HealthCheck{{Path: "healthz"}}, "must start with /"},
		{"bad status", []HealthCheck{{Status: "20x"}}, "invalid status"},
		{"bad body", []HealthCheck{{Body: "("}}, "body"},
		{"bad percent", []HealthCheck{{MaxEjectedPercent: 101}}, "max_ejected_percent"},
		{"bad port", []HealthCheck{{Port: 70000}}, "port"},
		{"version without service", []HealthCheck{{Version: "v1"}}, "a version needs a service"},
		{"bad service name", []HealthCheck{{Service: "a b"}}, "invalid service name"},
		{"twice", []HealthCheck{{Service: "a"}, {Service: "a"}}, "configured twice"},
		{"bad override", []HealthCheck{{Service: "a", Rise: -1}}, "rise and fall"},
		{"missing CA", []HealthCheck{{Path: "/", TLS: &HealthCheckTLS{CA: "/nonexistent/ca.pem"}}}, "reading CA file"},
	} {
		if _, err := NewHealthPolicy(tc.entries); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestSlowStartShare(t *testing.T) {
	h := newEndpointHealth(time.Now)
	if got := h.rampShare(123); got != 1 {
		t.Errorf("without slow start: %v", got)
	}
	h.rampStart.Store(1000)
	h.rampEnd.Store(2000)
	for _, tc := range []struct {
		at   int64
		want float64
	}{{1000, 0.1}, {1050, 0.1}, {1500, 0.5}, {1900, 0.9}, {2000, 1}, {5000, 1}} {
		if got := h.rampShare(tc.at); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("share at %d = %v, want %v", tc.at, got, tc.want)
		}
	}
	if end := h.rampEnd.Load(); end != 0 {
		t.Errorf("ramp still on after its end: rampEnd = %d", end)
	}
}

// machine is the health checker of a table, driven by hand on a fake
// clock: no goroutine, no probe; the test decides every check's outcome.
type machine struct {
	t      *testing.T
	clock  *fakeClock
	table  *table
	c      *checker
	events *recorder
}

func newMachine(t *testing.T, seeds map[ServiceKey][]Endpoint, checks ...HealthCheck) *machine {
	t.Helper()
	clock := newFakeClock()
	tbl := newTable(clock.Now)
	tbl.replace(normalized(t, seeds))
	m := &machine{t: t, clock: clock, table: tbl, events: new(recorder)}
	m.c = newChecker(tbl, clock.Now, func(context.Context, probeJob) error {
		t.Error("the machine's checker probed on its own")
		return nil
	}, zap.NewNop())
	policy, err := NewHealthPolicy(checks)
	must(t, err)
	m.c.configure(policy, nil, m.events.emit)
	return m
}

func (m *machine) endpoint(key ServiceKey, addr string) *Endpoint {
	svc, err := m.table.Snapshot().Lookup(key.Service, key.Version)
	must(m.t, err)
	return svc.Endpoint(addr)
}

func (m *machine) fail(key ServiceKey, addr string) {
	svc, err := m.table.Snapshot().Lookup(key.Service, key.Version)
	must(m.t, err)
	m.c.report(svc, svc.Endpoint(addr), Failed, 0, m.clock.Now())
	m.c.reconcile(m.clock.Now()) // the scheduler, woken by the failure
}

// due reconciles and returns the addresses of the checks due now.
func (m *machine) due() []*probeTarget {
	now := m.clock.Now()
	m.c.reconcile(now)
	var out []*probeTarget
	for t := m.c.due(now); t != nil; t = m.c.due(now) {
		out = append(out, t)
	}
	return out
}

// check runs the check of addr, which must be due now, with the given outcome.
func (m *machine) check(addr string, ok bool) {
	m.t.Helper()
	due := m.due()
	if len(due) != 1 || due[0].address != addr {
		m.t.Fatalf("%d checks due at %v, want exactly the one of %s", len(due), m.clock.Now(), addr)
	}
	var err error
	if !ok {
		err = errors.New("check failed")
	}
	m.c.done(probeResult{due[0], err}, m.clock.Now())
}

// idle checks that no check is due now.
func (m *machine) idle() {
	m.t.Helper()
	if due := m.due(); len(due) > 0 {
		m.t.Fatalf("%d checks due at %v (%s first), want none", len(due), m.clock.Now(), due[0].address)
	}
}

// TestPassiveRecheckBackoff follows an endpoint that failed a request:
// out at once, checked after 250 ms, then every 500 ms at most while its
// checks fail, and back in at its first passing check, with no check
// after that (no active checks).
func TestPassiveRecheckBackoff(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	a := "127.0.0.1:1"
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(a, "127.0.0.1:2")})
	ep := m.endpoint(key, a)
	m.fail(key, a)
	if ep.Stats().Available {
		t.Fatal("an endpoint that failed a request is still in rotation")
	}
	m.idle()
	m.clock.Advance(probeBackoffMin - time.Millisecond)
	m.idle()
	m.clock.Advance(time.Millisecond)
	m.check(a, false)
	if next := ep.Stats().NextCheck; !next.Equal(m.clock.Now().Add(probeBackoffMax)) {
		t.Errorf("next check at %v, want %v later", next, probeBackoffMax)
	}
	m.clock.Advance(probeBackoffMax - time.Millisecond)
	m.idle()
	m.clock.Advance(time.Millisecond)
	m.check(a, false) // the backoff stays at its cap
	m.clock.Advance(probeBackoffMax)
	m.check(a, true)
	if st := ep.Stats(); !st.Available || st.Fails != 0 || !st.NextCheck.IsZero() {
		t.Errorf("after a passing check: %+v; want back in rotation, failures reset", st)
	}
	m.clock.Advance(time.Hour)
	m.idle()
	if got, want := m.events.events(), []string{"unhealthy " + a + " passive", "healthy " + a + " passive"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

// TestActiveRiseAndFall runs active checks with fall 2 and rise 3: two
// failed checks in a row take the endpoint out, three passing ones in a
// row put it back, and a single failure in between resets the count.
func TestActiveRiseAndFall(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	a := "127.0.0.1:1"
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(a)}, HealthCheck{Path: "/healthz", Interval: Duration(time.Second), Fall: 2, Rise: 3})
	ep := m.endpoint(key, a)
	m.idle()                     // the first check comes at a random point of the interval
	m.clock.Advance(time.Second) // ... within it
	step := func(ok, wantAvailable bool) {
		t.Helper()
		m.check(a, ok)
		if ep.Stats().Available != wantAvailable {
			t.Fatalf("after a check that passed=%v: available %v, want %v", ok, ep.Stats().Available, wantAvailable)
		}
		m.clock.Advance(time.Second)
	}
	step(false, true)
	step(true, true)
	step(false, true)
	step(false, false) // fall 2
	if got := ep.Stats().OutOfRotation; got != "probe" {
		t.Errorf("out of rotation for %q, want probe", got)
	}
	step(true, false)
	step(true, false)
	step(false, false)
	step(true, false)
	step(true, false)
	step(true, true) // rise 3
	if got, want := m.events.events(), []string{"unhealthy " + a + " probe", "healthy " + a + " probe"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

// TestEjectionLimit fails one endpoint after another: with the default
// 50% of 4 endpoints, the third failure puts the least recently failed one
// back; with 100% every one may go, and the first failure is never
// refused, even of a single endpoint at 1%.
func TestEjectionLimit(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	hosts := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"}
	for _, tc := range []struct {
		name    string
		percent int
		n       int
		fail    []string
		out     []string
		events  []string
	}{
		{"default 50%", 0, 4, hosts[:3], hosts[1:3], []string{
			"unhealthy 127.0.0.1:1 passive", "unhealthy 127.0.0.1:2 passive", "healthy 127.0.0.1:1 limit", "unhealthy 127.0.0.1:3 passive"}},
		{"100%", 100, 4, hosts, hosts, nil},
		{"one of one at 1%", 1, 1, hosts[:1], hosts[:1], nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(hosts[:tc.n]...)}, HealthCheck{MaxEjectedPercent: tc.percent})
			for _, h := range tc.fail {
				m.fail(key, h)
				m.due()
				m.clock.Advance(time.Millisecond)
			}
			var out []string
			for _, h := range hosts[:tc.n] {
				if !m.endpoint(key, h).Stats().Available {
					out = append(out, h)
				}
			}
			if !slices.Equal(out, tc.out) {
				t.Errorf("out of rotation: %v, want %v", out, tc.out)
			}
			if tc.events != nil {
				if got := m.events.events(); !slices.Equal(got, tc.events) {
					t.Errorf("events %q, want %q", got, tc.events)
				}
			}
		})
	}
}

// TestSlowStartAfterRejoin brings a failed endpoint back with slow start
// 10s: its share of picks starts at a tenth and grows with the clock, and
// the ramp ends after 10s.
func TestSlowStartAfterRejoin(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	a := "127.0.0.1:1"
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(a, "127.0.0.1:2")}, HealthCheck{SlowStart: Duration(10 * time.Second)})
	ep := m.endpoint(key, a)
	m.fail(key, a)
	m.clock.Advance(probeBackoffMin)
	m.check(a, true)
	back := m.clock.Now()
	if until := ep.Stats().SlowStartUntil; !until.Equal(back.Add(10 * time.Second)) {
		t.Errorf("slow start until %v, want 10s after it came back", until)
	}
	share := func() float64 {
		n := 0
		for range 20000 {
			if ep.Pickable(false) {
				n++
			}
		}
		return float64(n) / 20000
	}
	for _, tc := range []struct {
		after  time.Duration
		lo, hi float64
	}{{0, 0.08, 0.12}, {5 * time.Second, 0.47, 0.53}, {9 * time.Second, 0.87, 0.93}, {10 * time.Second, 1, 1}} {
		m.clock.Advance(back.Add(tc.after).Sub(m.clock.Now()))
		if got := share(); got < tc.lo || got > tc.hi {
			t.Errorf("%v after rejoining: picked %.3f of the time, want %.2f to %.2f", tc.after, got, tc.lo, tc.hi)
		}
	}
	if !ep.Stats().SlowStartUntil.IsZero() {
		t.Error("slow start still shown after its end")
	}
	if !ep.Pickable(true) {
		t.Error("panic mode ignores health, but skipped a ramping endpoint")
	}
}

// TestRemovedWhileOut forgets the check of an endpoint removed from the
// registry while it was out of rotation.
func TestRemovedWhileOut(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	a := "127.0.0.1:1"
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(a, "127.0.0.1:2")})
	m.fail(key, a)
	m.due()
	m.table.set(key, normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:2")})[key])
	m.clock.Advance(time.Hour)
	m.idle()
}

// TestHealthEvents runs a real registry, real clock and real HTTP checks:
// a passive failure and the recovery emit "unhealthy" and then "healthy".
func TestHealthEvents(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler()) // a 404 answers
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	key := ServiceKey{"users", "v1"}
	r := startRegistry(t, map[ServiceKey][]Endpoint{key: eps(addr, "127.0.0.1:1")}, Options{})
	events := new(recorder)
	must(t, r.Start(BackendEnv{Seeds: normalized(t, map[ServiceKey][]Endpoint{key: eps(addr, "127.0.0.1:1")})}, nil, events.emit))
	r.Failure(key, addr)
	want := []string{"unhealthy " + addr + " passive", "healthy " + addr + " passive"}
	eventually(t, 10*time.Second, "two events", func() bool { return len(events.events()) >= 2 })
	if got := events.events(); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if !r.endpoint(key, addr).Stats().Available {
		t.Error("the endpoint that answers again is not back")
	}
}
