package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// healthRegistry is a service_registry block for users v1 on the given
// backends with the given health_check body.
func healthRegistry(hc string, backends ...*backend) string {
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.Addr)
	}
	return fmt.Sprintf(`service_registry {
		service users v1 %s
		health_check {
			%s
		}
	}`, strings.Join(addrs, " "), hc)
}

// endpointState returns the admin API's view of one endpoint.
func endpointState(t testing.TB, c *caddy, addr string) map[string]any {
	t.Helper()
	status, body := c.AdminDo("GET", "/service_registry/services/users/v1", "", "")
	if status != http.StatusOK {
		t.Fatalf("listing: %d %s", status, body)
	}
	var svc struct{ Endpoints []map[string]any }
	if err := jsonUnmarshal(body, &svc); err != nil {
		t.Fatal(err)
	}
	for _, ep := range svc.Endpoints {
		if ep["address"] == addr {
			return ep
		}
	}
	return nil
}

// trafficSplit sends n sequential requests and counts them per backend name.
func trafficSplit(t testing.TB, c *caddy, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		status, body, _ := c.Get("/users/v1/x")
		if status != 200 {
			t.Fatalf("request failed: %d %q", status, body)
		}
		got[strings.Fields(body)[0]]++
	}
	return got
}

func TestActiveHealthChecks(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	const interval, fall, rise = 100 * time.Millisecond, 2, 3
	// round_robin: each host's share of a few sequential requests shows
	// whether it is in rotation (peak_ewma's follows latencies too).
	c := startCaddy(t, healthRegistry(fmt.Sprintf("path /healthz\n\t\t\tinterval %v\n\t\t\ttimeout 500ms\n\t\t\tfall %d\n\t\t\trise %d", interval, fall, rise), a, b), roundRobinSite, caddyOpts{})

	if split := trafficSplit(t, c, 20); split["a"] == 0 || split["b"] == 0 {
		t.Fatalf("both healthy, traffic went %v", split)
	}

	// b's health path answers 503: after fall failed checks it gets no traffic.
	b.health.Store(503)
	began := time.Now()
	waitFor(t, 20*interval*fall, "b to fail its checks", func() bool {
		ep := endpointState(t, c, b.Addr)
		return ep["healthy"] == false && ep["out_of_rotation"] == "probe"
	})
	t.Logf("out of rotation %v after its health path began to fail (fall %d x interval %v)", time.Since(began).Round(time.Millisecond), fall, interval)
	if split := trafficSplit(t, c, 20); split["b"] != 0 {
		t.Errorf("b failing its checks still got traffic: %v", split)
	}

	// b answers 200 again: back after rise passing checks.
	b.health.Store(0)
	began = time.Now()
	waitFor(t, 20*interval*rise, "b to rejoin", func() bool { return endpointState(t, c, b.Addr)["healthy"] == true })
	t.Logf("back in rotation %v after its health path recovered (rise %d x interval %v)", time.Since(began).Round(time.Millisecond), rise, interval)
	if split := trafficSplit(t, c, 20); split["b"] == 0 {
		t.Errorf("b passing its checks again gets no traffic: %v", split)
	}
}

func TestSlowStart(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	// round_robin: its schedule shows the weight's ramp in a share of
	// sequential requests (peak_ewma's shares follow latencies too).
	c := startCaddy(t, healthRegistry("path /healthz\n\t\t\tinterval 50ms\n\t\t\tfall 1\n\t\t\trise 1\n\t\t\tslow_start 4s", a, b), roundRobinSite, caddyOpts{})
	b.health.Store(503)
	waitFor(t, 5*time.Second, "b to fail its checks", func() bool { return endpointState(t, c, b.Addr)["healthy"] == false })
	b.health.Store(0)
	waitFor(t, 5*time.Second, "b to rejoin", func() bool { return endpointState(t, c, b.Addr)["healthy"] == true })

	// Its share ramps from about 10% of its weight to all of it over 4 s.
	if endpointState(t, c, b.Addr)["slow_start_until"] == nil {
		t.Fatal("b rejoined without a slow start")
	}
	early := trafficSplit(t, c, 100)
	if endpointState(t, c, b.Addr)["slow_start_until"] == nil {
		t.Fatal("the first 100 requests outlasted the 4 s slow start; the machine is too busy to measure the ramp")
	}
	waitFor(t, 10*time.Second, "the slow start to end", func() bool { return endpointState(t, c, b.Addr)["slow_start_until"] == nil })
	late := trafficSplit(t, c, 100)
	t.Logf("b's share: %d%% right after rejoining, %d%% after the slow start", early["b"], late["b"])
	if early["b"] >= 35 || late["b"] < 35 || early["b"] >= late["b"] {
		t.Errorf("slow start did not ramp: b got %d of 100 right after rejoining and %d of 100 later", early["b"], late["b"])
	}
}

func TestDrainOnRemoval(t *testing.T) {
	stay, leave := startBackend(t, "stay"), startBackend(t, "leave")
	c := startCaddy(t, healthRegistry("drain_timeout 10s", stay, leave), roundRobinSite, caddyOpts{})

	// A long request on the endpoint that is about to go.
	leave.delay = 1500 * time.Millisecond
	long := make(chan string, 1)
	for i := 0; ; i++ {
		// round robin: the second request of two goes to the other host
		go func() { _, body, _ := c.Get("/users/v1/long"); long <- body }()
		waitFor(t, 5*time.Second, "a request in flight", func() bool {
			return endpointState(t, c, leave.Addr)["in_flight"].(float64) > 0 || len(long) > 0
		})
		if endpointState(t, c, leave.Addr)["in_flight"].(float64) > 0 {
			break
		}
		<-long
		if i > 4 {
			t.Fatal("could not get a request in flight on the leaving endpoint")
		}
	}

	deleted := make(chan string, 1)
	go func() {
		_, body := c.AdminDo("DELETE", "/service_registry/services/users/v1/"+leave.Addr, "", "")
		deleted <- body
	}()
	waitFor(t, 5*time.Second, "the endpoint to drain", func() bool {
		ep := endpointState(t, c, leave.Addr)
		return ep != nil && ep["out_of_rotation"] == "draining"
	})
	// New requests go elsewhere while it drains.
	before := leave.arrived.Load()
	if split := trafficSplit(t, c, 10); split["stay"] != 10 {
		t.Errorf("requests during the drain went %v", split)
	}
	if got := <-long; got != "leave GET /long" {
		t.Errorf("the request in flight got %q, want it completed by the leaving endpoint", got)
	}
	body := <-deleted
	if !strings.Contains(body, `"drained": true`) {
		t.Errorf("DELETE answered %s, want drained", body)
	}
	if leave.arrived.Load() != before {
		t.Errorf("the draining endpoint got %d new requests", leave.arrived.Load()-before)
	}
	if endpointState(t, c, leave.Addr) != nil {
		t.Errorf("the endpoint is still registered after its drain")
	}
}

func TestDrainTimeout(t *testing.T) {
	stay, slow := startBackend(t, "stay"), startBackend(t, "slow")
	slow.delay = 3 * time.Second
	c := startCaddy(t, healthRegistry("drain_timeout 300ms", stay, slow), roundRobinSite, caddyOpts{})
	inFlight := make(chan struct{})
	go func() {
		defer close(inFlight)
		for range 2 { // round robin: one of the two goes to the slow host
			if resp, err := http.Get("http://" + c.HTTP + "/users/v1/x"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()
	defer func() { <-inFlight }()
	waitFor(t, 5*time.Second, "a request in flight", func() bool {
		return endpointState(t, c, slow.Addr)["in_flight"].(float64) > 0
	})
	status, body := c.AdminDo("DELETE", "/service_registry/services/users/v1/"+slow.Addr, "", "")
	if status != 200 || !strings.Contains(body, `"drained": false`) || !strings.Contains(body, `"in_flight": 1`) {
		t.Errorf("DELETE with a request outlasting the drain timeout: %d %s; want drained false", status, body)
	}
}

// TestEjectionLimit fails 4 of 5 hosts. Hosts that cut requests off
// (failed requests) leave rotation within max_ejected_percent; hosts that
// cannot be connected to all leave, whatever it says.
func TestEjectionLimit(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(*backend)
		why  string
		want int
	}{
		{"requests cut off", func(b *backend) { b.reset.Store(true) }, "passive", 2}, // 50% of 5, rounded down
		{"connections refused", func(b *backend) { b.Kill() }, "unreachable", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alive := startBackend(t, "alive")
			var dead []*backend
			for i := range 4 {
				b := startBackend(t, fmt.Sprintf("dead%d", i))
				tc.fail(b)
				dead = append(dead, b)
			}
			c := startCaddy(t, healthRegistry("max_ejected_percent 50", append([]*backend{alive}, dead...)...), proxySite, caddyOpts{})
			// Requests until every failing host has failed one (balancing
			// avoids them, so that takes more than a few).
			tried := func() bool {
				for _, b := range dead {
					if endpointState(t, c, b.Addr)["failures"].(float64) == 0 {
						return false
					}
				}
				return true
			}
			for i := 0; !tried(); i++ {
				if i == 500 {
					t.Fatal("500 requests and not every failing host was tried")
				}
				if status, body, _ := c.Get("/users/v1/x"); status != 200 || !strings.HasPrefix(body, "alive ") {
					t.Fatalf("with 4 of 5 hosts failing: %d %q", status, body)
				}
			}
			out := 0
			for _, b := range dead {
				if ep := endpointState(t, c, b.Addr); ep["out_of_rotation"] == tc.why {
					out++
				}
			}
			if out != tc.want {
				t.Errorf("%d of 5 endpoints out of rotation (%s), want %d", out, tc.why, tc.want)
			}
		})
	}
}

var metricLine = regexp.MustCompile(`(?m)^(caddy_service_registry_\w+)\{([^}]*)\} (\S+)$`)

// metrics reads Caddy's /metrics and returns the service registry's series.
func metrics(t testing.TB, c *caddy) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + c.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, m := range metricLine.FindAllStringSubmatch(string(b), -1) {
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatal(err)
		}
		out[m[1]+"{"+m[2]+"}"] = v
	}
	return out
}

func TestMetrics(t *testing.T) {
	up := startBackend(t, "up")
	down := startBackend(t, "down")
	down.Kill()
	c := startCaddy(t, healthRegistry("", up, down), roundRobinSite, caddyOpts{})
	for range 10 {
		if status, _, _ := c.Get("/users/v1/x"); status != 200 {
			t.Fatal("request failed")
		}
	}
	m := metrics(t, c)
	upLabels := fmt.Sprintf(`service="users",upstream="%s",version="v1"`, up.Addr)
	downLabels := fmt.Sprintf(`service="users",upstream="%s",version="v1"`, down.Addr)
	for _, check := range []struct {
		series string
		ok     func(float64) bool
		want   string
	}{
		{"caddy_service_registry_tries_total{" + upLabels + "}", func(v float64) bool { return v >= 10 }, ">= 10"},
		{"caddy_service_registry_tries_total{" + downLabels + "}", func(v float64) bool { return v >= 1 }, ">= 1"},
		{`caddy_service_registry_requests_total{code_class="2xx",service="users",version="v1"}`, func(v float64) bool { return v == 10 }, "10: requests, not tries"},
		{`caddy_service_registry_request_duration_seconds_count{code_class="2xx",service="users",version="v1"}`, func(v float64) bool { return v == 10 }, "10"},
		{`caddy_service_registry_request_duration_seconds_bucket{code_class="2xx",service="users",version="v1",le="+Inf"}`, func(v float64) bool { return v == 10 }, "10"},
		{`caddy_service_registry_request_duration_seconds_bucket{code_class="2xx",service="users",version="v1",le="0.005"}`, func(v float64) bool { return v <= 10 }, "at most 10"},
		{"caddy_service_registry_upstreams_weight{" + upLabels + "}", func(v float64) bool { return v == 1 }, "1"},
		{"caddy_service_registry_failures_total{" + downLabels + "}", func(v float64) bool { return v >= 1 }, ">= 1"},
		{"caddy_service_registry_ejections_total{" + downLabels + "}", func(v float64) bool { return v == 1 }, "1"},
		{`caddy_service_registry_retries_total{service="users",version="v1"}`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"caddy_service_registry_upstreams_healthy{" + upLabels + "}", func(v float64) bool { return v == 1 }, "1"},
		{"caddy_service_registry_upstreams_healthy{" + downLabels + "}", func(v float64) bool { return v == 0 }, "0"},
		{`caddy_service_registry_hedges_total{service="users",version="v1"}`, func(v float64) bool { return v >= 0 }, "present"},
		{`caddy_service_registry_hedges_won_total{service="users",version="v1"}`, func(v float64) bool { return v >= 0 }, "present"},
	} {
		v, ok := m[check.series]
		if !ok || !check.ok(v) {
			t.Errorf("%s = %v (present %v), want %s", check.series, v, ok, check.want)
		}
	}
	before := m["caddy_service_registry_tries_total{"+upLabels+"}"]
	for range 5 {
		c.Get("/users/v1/x")
	}
	if after := metrics(t, c)["caddy_service_registry_tries_total{"+upLabels+"}"]; after != before+5 {
		t.Errorf("tries_total went from %v to %v after 5 requests", before, after)
	}

	// the code class is the client's: 3 answers of 404 are 4xx; a request
	// naming an unknown version makes no series (client input)
	up.status.Store(http.StatusNotFound)
	for range 3 {
		c.Get("/users/v1/x")
	}
	up.status.Store(0)
	c.Get("/users/v9/x")
	m = metrics(t, c)
	for series, want := range map[string]float64{
		`caddy_service_registry_requests_total{code_class="2xx",service="users",version="v1"}`:                            15,
		`caddy_service_registry_requests_total{code_class="4xx",service="users",version="v1"}`:                            3,
		`caddy_service_registry_request_duration_seconds_count{code_class="4xx",service="users",version="v1"}`:            3,
		`caddy_service_registry_request_duration_seconds_bucket{code_class="4xx",service="users",version="v1",le="+Inf"}`: 3,
	} {
		if got := m[series]; got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for series := range m {
		if strings.Contains(series, `version="v9"`) {
			t.Errorf("a request naming an unknown version made the series %s", series)
		}
	}

	// Every metric the Grafana dashboard queries is in the scrape (a
	// request chosen by a split makes the version routing series).
	if status, body := c.AdminDo(http.MethodPut, "/service_registry/traffic/users", "application/json", `{"split":{"v1":100}}`); status != http.StatusOK {
		t.Fatalf("PUT traffic: %d %s", status, body)
	}
	if status, _, _ := c.Get("/users/x"); status != http.StatusOK {
		t.Fatalf("GET /users/x by the split: %d", status)
	}
	scraped := map[string]bool{}
	for series := range metrics(t, c) {
		name, _, _ := strings.Cut(series, "{")
		scraped[name] = true
	}
	raw, err := os.ReadFile(filepath.Join("..", "examples", "grafana", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dashboard struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dashboard); err != nil || len(dashboard.Panels) == 0 {
		t.Fatalf("examples/grafana/dashboard.json: %v, %d panels", err, len(dashboard.Panels))
	}
	used := 0
	for _, p := range dashboard.Panels {
		for _, target := range p.Targets {
			for _, name := range regexp.MustCompile(`caddy_service_registry_\w+`).FindAllString(target.Expr, -1) {
				used++
				if !scraped[name] {
					t.Errorf("dashboard panel %q queries %s, which Caddy's /metrics does not have", p.Title, name)
				}
			}
		}
	}
	if used == 0 {
		t.Error("the dashboard queries no metric of the plugin")
	}
}

func TestOneProberAcrossReloads(t *testing.T) {
	b := startBackend(t, "b")
	const interval = 100 * time.Millisecond
	global := healthRegistry(fmt.Sprintf("path /healthz\n\t\t\tinterval %v", interval), b)
	c := startCaddy(t, global, proxySite, caddyOpts{})
	rate := func() float64 {
		start := b.probes.Load()
		time.Sleep(2 * time.Second)
		return float64(b.probes.Load()-start) / 2
	}
	before := rate()
	// Reloads (several sites using the registry, too) must not add probers.
	for range 3 {
		c.Reload(global, fmt.Sprintf(`{http} {
	service_proxy
}

http://127.0.0.1:%d {
	service_proxy
}`, freePort(t)))
	}
	after := rate()
	t.Logf("health checks per second: %.1f before the reloads, %.1f after (interval %v)", before, after, interval)
	if before < 5 || after > 1.5*before {
		t.Errorf("health checks per second went from %.1f to %.1f: more than one prober per endpoint", before, after)
	}
}

// jsonUnmarshal decodes an admin API answer.
func jsonUnmarshal(body string, v any) error { return json.Unmarshal([]byte(body), v) }
