package svcreg

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
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
	p, err := newHealthPolicy([]HealthCheck{
		{Path: "/healthz", Interval: caddy.Duration(time.Second), Fall: 3},
		{Service: "users", Path: "/status", SlowStart: caddy.Duration(10 * time.Second)},
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
		h := p.forService(tc.key)
		if h.Path != tc.path || h.Fall != tc.fall || time.Duration(h.SlowStart) != tc.slowStart || time.Duration(h.Interval) != tc.interval ||
			h.MaxEjectedPercent != tc.maxEjectedPct || time.Duration(h.DrainTimeout) != tc.drainTimeout ||
			h.status.min != tc.statusMinMaxWant[0] || h.status.max != tc.statusMinMaxWant[1] || !h.active() {
			t.Errorf("%s: %+v", tc.key, *h)
		}
	}
	if none, _ := newHealthPolicy(nil); none.forService(ServiceKey{"a", "b"}).active() {
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
		{"twice", []HealthCheck{{Service: "a"}, {Service: "a"}}, "configured twice"},
		{"bad override", []HealthCheck{{Service: "a", Rise: -1}}, "rise and fall"},
	} {
		if _, err := newHealthPolicy(tc.entries); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestSlowStartShare(t *testing.T) {
	h := new(endpointHealth)
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

// TestHealthEvents checks the events a passive failure and the recovery
// emit: Caddy's events app gets "unhealthy" and then "healthy".
func TestHealthEvents(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	key := ServiceKey{"users", "v1"}
	r := newTestRegistry(t, t.TempDir(), map[ServiceKey][]Endpoint{key: eps(ln.Addr().String(), "127.0.0.1:1")})
	var mu sync.Mutex
	var got []string
	r.health.configure(nil, nil, func(name string, data map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, name+" "+data["host"].(string)+" "+data["reason"].(string))
	})
	r.Failure(key, ln.Addr().String())
	want := []string{"unhealthy " + ln.Addr().String() + " passive", "healthy " + ln.Addr().String() + " passive"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("events %q, want %q", got, want)
	}
	svc, _ := r.Lookup(key)
	if !svc.Endpoint(ln.Addr().String()).Available() {
		t.Error("the endpoint that answers again is not back")
	}
}

// TestEjectionLimitEvents checks that an endpoint the ejection limit puts
// back is announced: with two dead endpoints and the default 50%, the
// second failure puts the first back in ("healthy", reason "limit").
func TestEjectionLimitEvents(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	a, b := "127.0.0.1:1", "127.0.0.1:2"
	r := newTestRegistry(t, t.TempDir(), map[ServiceKey][]Endpoint{key: eps(a, b)})
	var mu sync.Mutex
	var got []string
	r.health.configure(nil, nil, func(name string, data map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, name+" "+data["host"].(string)+" "+data["reason"].(string))
	})
	waitEvents := func(n int) []string {
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			out := slices.Clone(got)
			mu.Unlock()
			if len(out) >= n || time.Now().After(deadline) {
				return out
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	r.Failure(key, a)
	waitEvents(1)
	r.Failure(key, b)
	events := waitEvents(3)
	want := []string{"unhealthy " + a + " passive", "healthy " + a + " limit", "unhealthy " + b + " passive"}
	if strings.Join(events, "; ") != strings.Join(want, "; ") {
		t.Errorf("events %q, want %q", events, want)
	}
	svc, _ := r.Lookup(key)
	if !svc.Endpoint(a).Available() || svc.Endpoint(b).Available() {
		t.Errorf("available: %s %v, %s %v; want the first back, the second out",
			a, svc.Endpoint(a).Available(), b, svc.Endpoint(b).Available())
	}
}
