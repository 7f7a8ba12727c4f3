package e2e

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Gray failures: hosts that hang, black-hole, answer 5xx or are slow, with
// service_proxy's defaults. Each test sends GETs from keep-alive clients
// that never retry, and asserts that none failed.

// grayRun is what a load run saw.
type grayRun struct {
	total, failed atomic.Int64
	mu            sync.Mutex
	failures      []string
	maxLatency    time.Duration
}

// step is something a test does to its backends at a moment of a run.
type step struct {
	at time.Duration
	do func()
}

// clientTimeout is how long a load client waits for an answer: longer
// than a try's deadline and a retry, shorter than the faults.
const clientTimeout = 5 * time.Second

// runLoad sends GETs to url from clients keep-alive clients for d,
// running each step at its moment.
func runLoad(t *testing.T, url string, clients int, d time.Duration, steps ...step) *grayRun {
	t.Helper()
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true},
		Timeout:   clientTimeout,
	}
	defer client.CloseIdleConnections()
	run := new(grayRun)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				t0 := time.Now()
				status, err := sendGet(client, url, 0)
				took := time.Since(t0)
				run.total.Add(1)
				run.mu.Lock()
				run.maxLatency = max(run.maxLatency, took)
				if err != nil || status != http.StatusOK {
					run.failed.Add(1)
					if len(run.failures) < 10 {
						run.failures = append(run.failures, fmt.Sprintf("at %v: status %d, %v", t0.Sub(start).Round(time.Millisecond), status, err))
					}
				}
				run.mu.Unlock()
			}
		})
	}
	for _, s := range steps {
		time.Sleep(time.Until(start.Add(s.at)))
		s.do()
	}
	wg.Wait()
	t.Logf("%d GETs, %d failed, max latency %v", run.total.Load(), run.failed.Load(), run.maxLatency.Round(time.Millisecond))
	return run
}

// noneFailed asserts that a run lost no request.
func (run *grayRun) noneFailed(t *testing.T) {
	t.Helper()
	if n := run.failed.Load(); n != 0 {
		t.Errorf("%d of %d GETs failed; the first: %v", n, run.total.Load(), run.failures)
	}
}

// grayCaddy starts three backends and a Caddy with service_proxy's
// defaults in front of them, plus extra addresses registered beside them.
func grayCaddy(t *testing.T, extra ...string) (*caddy, []*backend) {
	t.Helper()
	bs := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	addrs := []string{bs[0].Addr, bs[1].Addr, bs[2].Addr}
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
	}`, strings.Join(append(addrs, extra...), " ")), proxySite, caddyOpts{})
	return c, bs
}

// TestGrayHungHost hangs one of three hosts under load (requests and
// health checks get no answer, as with SIGSTOP) for longer than a client
// waits, and lets it go: no GET fails, the host leaves rotation, and it
// serves again once it answers.
func TestGrayHungHost(t *testing.T) {
	c, bs := grayCaddy(t)
	hung := bs[1]
	var servedBefore int64
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, clientTimeout+2500*time.Millisecond,
		step{500 * time.Millisecond, func() { hung.hang.Store(true) }},
		step{clientTimeout + 1500*time.Millisecond, func() {
			if ep := endpointState(t, c, hung.Addr); ep["healthy"] != false {
				t.Errorf("the hung host is still in rotation: %v", ep)
			}
			servedBefore = hung.served.Load()
			hung.hang.Store(false)
		}},
	)
	run.noneFailed(t)
	if hung.served.Load() == servedBefore {
		t.Error("the host served nothing after it answered again")
	}
}

// TestGrayBlackHole registers, beside three hosts, an address that accepts
// connections and never reads from them: no GET fails.
func TestGrayBlackHole(t *testing.T) {
	hole := blackHole(t)
	c, _ := grayCaddy(t, hole)
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second)
	run.noneFailed(t)
	if ep := endpointState(t, c, hole); ep["healthy"] != false {
		t.Errorf("the black hole is in rotation: %v", ep)
	}
}

// blackHole returns the address of a listener that accepts connections
// and holds them, never reading, until the test ends.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return ln.Addr().String()
}

// TestGray503 makes one of three hosts answer 503 to everything: its GETs
// are retried on the others, none fails, and it leaves rotation until it
// answers again.
func TestGray503(t *testing.T) {
	c, bs := grayCaddy(t)
	failing := bs[2]
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second,
		step{500 * time.Millisecond, func() { failing.status.Store(http.StatusServiceUnavailable) }},
		step{2000 * time.Millisecond, func() {
			if ep := endpointState(t, c, failing.Addr); ep["healthy"] != false || ep["failures"].(float64) < 3 {
				t.Errorf("the host answering 503 is in rotation, or its 503s were not counted: %v", ep)
			}
			failing.status.Store(0)
		}},
	)
	run.noneFailed(t)
	waitFor(t, 5*time.Second, "the host to rejoin once it answers 200", func() bool {
		return endpointState(t, c, failing.Addr)["healthy"] == true
	})
}

// TestGrayFrozenHostStaysOut checks that a host that accepts connections
// but answers nothing is not put back by its checks: a TCP connect would
// succeed, an HTTP check does not.
func TestGrayFrozenHostStaysOut(t *testing.T) {
	c, bs := grayCaddy(t)
	frozen := bs[0]
	frozen.hang.Store(true)
	// Requests until one has landed on the frozen host and failed over
	// (peak_ewma sends a host that has not answered yet few requests, so
	// a fixed number of them may all miss it).
	waitFor(t, 10*time.Second, "the frozen host to leave rotation", func() bool {
		c.Get("/users/v1/x")
		return endpointState(t, c, frozen.Addr)["healthy"] == false
	})
	// Over 2 s (several re-checks, 250-500 ms apart) it stays out.
	probes := frozen.probes.Load()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if ep := endpointState(t, c, frozen.Addr); ep["healthy"] != false {
			t.Fatalf("the frozen host was put back in rotation: %v", ep)
		}
	}
	frozen.hang.Store(false)
	if frozen.probes.Load() == probes {
		t.Error("the frozen host was not checked while it was out")
	}
	began := time.Now()
	waitFor(t, 5*time.Second, "the host to rejoin once it answers", func() bool {
		return endpointState(t, c, frozen.Addr)["healthy"] == true
	})
	t.Logf("back in rotation %v after it answered again", time.Since(began).Round(time.Millisecond))
}

// TestGraySlowHost makes one of three hosts 300 ms slower than the
// others: it gets a small share of the requests, and none fails.
func TestGraySlowHost(t *testing.T) {
	c, bs := grayCaddy(t)
	slow := bs[1]
	slow.slow.Store(int64(300 * time.Millisecond))
	before := []int64{bs[0].served.Load(), bs[1].served.Load(), bs[2].served.Load()}
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second)
	run.noneFailed(t)
	var served []int64
	var total int64
	for i, b := range bs {
		served = append(served, b.served.Load()-before[i])
		total += served[i]
	}
	t.Logf("served: %v", served)
	if share := float64(served[1]) / float64(total); share > 0.05 || total == 0 {
		t.Errorf("the slow host served %d of %d requests (%.1f%%), want under 5%%", served[1], total, 100*share)
	}
	if slices.Min([]int64{served[0], served[2]}) == 0 {
		t.Error("a fast host served nothing")
	}
}

// TestGrayPOSTTimeoutCounts sends POSTs to a host that hangs: each gets
// 504 after the try's deadline (a POST is not retried), and each counts as
// a failure of the host, which leaves rotation at the first (and is tried
// anyway, being the only one).
func TestGrayPOSTTimeoutCounts(t *testing.T) {
	hung := startBackend(t, "hung")
	hung.hang.Store(true)
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
	}`, hung.Addr), `{http} {
	service_proxy {
		transport service_http {
			try_timeout 300ms
		}
	}
}`, caddyOpts{})
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range 3 {
		status, err := sendPost(client, "http://"+c.HTTP+"/users/v1/x", i+1)
		if err != nil || status != http.StatusGatewayTimeout {
			t.Fatalf("POST %d to a hung host: %d, %v; want 504", i+1, status, err)
		}
	}
	ep := endpointState(t, c, hung.Addr)
	if ep["failures"].(float64) != 3 || ep["healthy"] != false {
		t.Errorf("after 3 POSTs timed out: %v; want 3 failures and out of rotation", ep)
	}
}

// Hedged tries: once the version's latency is known (20 answers), a GET
// whose host has not answered within its p99 (at least 50 ms) is also sent
// to another host, and the first answer wins.

// hedgeCounts returns the hedged tries of users v1 that were sent, and
// those that answered first, from the admin API.
func hedgeCounts(t *testing.T, c *caddy) (sent, won float64) {
	t.Helper()
	status, body := c.AdminDo("GET", "/service_registry/services/users/v1", "", "")
	if status != http.StatusOK {
		t.Fatalf("listing: %d %s", status, body)
	}
	var svc struct {
		Hedges    *float64 `json:"hedges"`
		HedgesWon *float64 `json:"hedges_won"`
	}
	if err := jsonUnmarshal(body, &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Hedges == nil || svc.HedgesWon == nil {
		t.Fatalf("the listing does not count hedges: %s", body)
	}
	return *svc.Hedges, *svc.HedgesWon
}

// TestGrayHedgedFrozenHost freezes one of three hosts under load once the
// version's latency is known: the GETs waiting on it are answered by their
// hedged tries on the others, none fails, and the host leaves rotation.
func TestGrayHedgedFrozenHost(t *testing.T) {
	c, bs := grayCaddy(t)
	frozen := bs[1]
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second,
		step{time.Second, func() { frozen.hang.Store(true) }},
		step{2500 * time.Millisecond, func() {
			if ep := endpointState(t, c, frozen.Addr); ep["healthy"] != false {
				t.Errorf("the frozen host is still in rotation: %v", ep)
			}
			frozen.hang.Store(false)
		}},
	)
	run.noneFailed(t)
	if sent, won := hedgeCounts(t, c); won == 0 {
		t.Errorf("%v hedged tries, none answered first; want the frozen host's GETs answered by their hedges", sent)
	}
}

// TestGrayHedgedLoneRequest freezes one of three hosts of a version that
// gets one request at a time: the GET that meets it, alone on that host,
// is answered by its hedge, and the host, which answered nobody while its
// peer answered that very request, is reported silent: out of rotation as
// unreachable (a try cut at its deadline would leave it out as passive).
func TestGrayHedgedLoneRequest(t *testing.T) {
	c, bs := grayCaddy(t)
	for range 30 { // the version's latency becomes known
		if status, body, _ := c.Get("/users/v1/x"); status != http.StatusOK {
			t.Fatalf("GET before the fault: %d %q", status, body)
		}
	}
	frozen := bs[0]
	frozen.hang.Store(true)
	defer frozen.hang.Store(false)
	waitFor(t, 15*time.Second, "the frozen host to be reported silent", func() bool {
		if status, body, _ := c.Get("/users/v1/x"); status != http.StatusOK {
			t.Fatalf("GET with a frozen host: %d %q", status, body)
		}
		return endpointState(t, c, frozen.Addr)["out_of_rotation"] == "unreachable"
	})
	if _, won := hedgeCounts(t, c); won == 0 {
		t.Error("no hedged try answered first")
	}
}

// TestGrayHedgedBlackHole adds, under load, an address that accepts
// connections and never reads from them beside three hosts (round robin,
// so that it gets its share at once): none fails, hedges answer the GETs
// it took, and it leaves rotation.
func TestGrayHedgedBlackHole(t *testing.T) {
	hole := blackHole(t)
	bs := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s %s %s
	}`, bs[0].Addr, bs[1].Addr, bs[2].Addr), roundRobinSite, caddyOpts{})
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second,
		step{time.Second, func() {
			if status, body := c.AdminDo("POST", "/service_registry/services/users/v1", "application/json", `{"address":"`+hole+`"}`); status/100 != 2 {
				t.Errorf("adding the black hole: %d %s", status, body)
			}
		}},
	)
	run.noneFailed(t)
	if ep := endpointState(t, c, hole); ep["healthy"] != false {
		t.Errorf("the black hole is in rotation: %v", ep)
	}
	if sent, won := hedgeCounts(t, c); won == 0 {
		t.Errorf("%v hedged tries, none answered first", sent)
	}
}

// TestGrayHedgedSlowHost makes one of three hosts 1 s slower under load:
// none fails, and hedges answer GETs it took.
func TestGrayHedgedSlowHost(t *testing.T) {
	c, bs := grayCaddy(t)
	slow := bs[1]
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second,
		step{time.Second, func() { slow.slow.Store(int64(time.Second)) }})
	run.noneFailed(t)
	if sent, won := hedgeCounts(t, c); won == 0 {
		t.Errorf("%v hedged tries, none answered first", sent)
	}
}

// TestGrayHedgeOff freezes one of three hosts under load with `hedge off`:
// no hedged try is sent, and none fails all the same (the silence check
// and retries).
func TestGrayHedgeOff(t *testing.T) {
	bs := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s %s %s
	}`, bs[0].Addr, bs[1].Addr, bs[2].Addr), `{http} {
	service_proxy {
		transport service_http {
			hedge off
		}
	}
}`, caddyOpts{})
	run := runLoad(t, "http://"+c.HTTP+"/users/v1/x", 16, 3*time.Second,
		step{time.Second, func() { bs[1].hang.Store(true) }},
		step{2500 * time.Millisecond, func() { bs[1].hang.Store(false) }})
	run.noneFailed(t)
	if sent, _ := hedgeCounts(t, c); sent != 0 {
		t.Errorf("%v hedged tries with hedge off", sent)
	}
}
