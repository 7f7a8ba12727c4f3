package e2e

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Timeline of a failover run: a backend is killed at killAt, started
// again at restartAt, and the load stops at loadFor.
const (
	loadClients = 16
	killAt      = 1200 * time.Millisecond
	restartAt   = 2400 * time.Millisecond
	loadFor     = 4500 * time.Millisecond
)

// failedRequest is a request the load generator did not get a 200 for.
type failedRequest struct {
	id         int
	start, end time.Time
	err        string
}

type loadRun struct {
	total            atomic.Int64
	mu               sync.Mutex
	failed           []failedRequest
	maxLatency       time.Duration
	killed, killDone time.Time // the kill began, ended
	restarted        time.Time
	servedBeforeKill int64 // by the backend that is killed
}

// runFailover starts three backends and a Caddy with service_proxy
// defaults, sends load with the given request function from
// loadClients keep-alive clients, kills the second backend abruptly at
// killAt and starts it again on the same port at restartAt.
func runFailover(t *testing.T, send func(client *http.Client, url string, id int) (int, error)) (*loadRun, []*backend) {
	backends := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	for _, b := range backends {
		b.delay = time.Millisecond // so that requests are in flight when one dies
	}
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s %s %s
	}`, backends[0].Addr, backends[1].Addr, backends[2].Addr), `{http} {
	service_proxy
}`, caddyOpts{})
	url := "http://" + c.HTTP + "/users/v1/work"
	run := sendLoad(url, send, func(start time.Time, run *loadRun) {
		time.Sleep(time.Until(start.Add(killAt)))
		run.servedBeforeKill = backends[1].served.Load()
		run.killed, run.killDone = backends[1].Kill()
		time.Sleep(time.Until(start.Add(restartAt)))
		backends[1].Start()
		run.restarted = time.Now()
		time.Sleep(time.Until(start.Add(loadFor)))
	})

	t.Logf("%d requests, %d failed, max latency %v; restarted backend served its first request %v after it came back",
		run.total.Load(), len(run.failed), run.maxLatency, backends[1].FirstRequestAfterStart())
	return run, backends
}

// sendLoad sends requests made by send to url from loadClients
// keep-alive clients, which never retry, until during returns.
func sendLoad(url string, send func(client *http.Client, url string, id int) (int, error), during func(start time.Time, run *loadRun)) *loadRun {
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: loadClients, DisableCompression: true},
		Timeout:   10 * time.Second,
	}
	defer client.CloseIdleConnections()

	run := new(loadRun)
	var ids atomic.Int64
	var stop atomic.Bool
	start := time.Now()
	var wg sync.WaitGroup
	for range loadClients {
		wg.Go(func() {
			for !stop.Load() {
				id := int(ids.Add(1))
				t0 := time.Now()
				status, err := send(client, url, id)
				t1 := time.Now()
				run.total.Add(1)
				run.mu.Lock()
				run.maxLatency = max(run.maxLatency, t1.Sub(t0))
				if err != nil || status != http.StatusOK {
					run.failed = append(run.failed, failedRequest{id: id, start: t0, end: t1, err: fmt.Sprintf("status %d, %v", status, err)})
				}
				run.mu.Unlock()
			}
		})
	}
	during(start, run)
	stop.Store(true)
	wg.Wait()
	return run
}

func sendGet(client *http.Client, url string, _ int) (int, error) {
	return statusOf(client.Get(url))
}

// statusOf reads a response whole and returns its status; a response cut
// short is an error.
func statusOf(resp *http.Response, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// checkRestarted asserts that the killed backend took traffic before it
// died and again within 2 s of coming back.
func checkRestarted(t *testing.T, run *loadRun, b *backend) {
	t.Helper()
	if run.servedBeforeKill == 0 {
		t.Errorf("the killed backend served nothing before it died: the test killed an idle host")
	}
	back := b.FirstRequestAfterStart()
	if back < 0 || back > 2*time.Second {
		t.Errorf("the restarted backend served its first request %v after it came back; want within 2s", back)
	}
}

func TestFailoverUnderLoadGET(t *testing.T) {
	run, backends := runFailover(t, sendGet)
	for _, f := range run.failed {
		t.Errorf("GET %d failed: %s", f.id, f.err)
	}
	if run.total.Load() < 500 {
		t.Errorf("only %d requests in %v: the load did not run", run.total.Load(), loadFor)
	}
	checkRestarted(t, run, backends[1])
}

func TestFailoverUnderLoadPOST(t *testing.T) {
	run, backends := runFailover(t, sendPost)
	received := checkPosts(t, backends)
	checkFailedInFlight(t, run.failed, received, []kill{{backends[1], run.killed, run.killDone}})
	if len(run.failed) > loadClients {
		t.Errorf("%d POSTs failed; at most %d can be in flight at once", len(run.failed), loadClients)
	}
	if run.total.Load() < 300 {
		t.Errorf("only %d requests in %v: the load did not run", run.total.Load(), loadFor)
	}
	checkRestarted(t, run, backends[1])
}

// checkPosts asserts that no backend got a wrong body and that no POST
// was executed twice, and returns how many times each POST id was
// received.
func checkPosts(t *testing.T, backends []*backend) map[int]int {
	t.Helper()
	received := map[int]int{} // POST id -> times any backend received it
	for _, b := range backends {
		b.mu.Lock()
		for id, n := range b.posts {
			received[id] += n
		}
		for _, bad := range b.badBodies {
			t.Errorf("backend %s got a wrong body: %s", b.name, bad)
		}
		b.mu.Unlock()
	}
	for id, n := range received {
		if n > 1 {
			t.Errorf("POST %d was executed %d times", id, n)
		}
	}
	return received
}

// kill is a backend killed abruptly between begin and end.
type kill struct {
	b          *backend
	begin, end time.Time
}

// checkFailedInFlight asserts that every failed request was in flight on
// a killed backend: it started before the kill was over, ended after it
// began, and no live backend executed it.
func checkFailedInFlight(t *testing.T, failed []failedRequest, received map[int]int, kills []kill) {
	t.Helper()
	for _, f := range failed {
		ok := false
		for _, k := range kills {
			k.b.mu.Lock()
			onKilled := k.b.posts[f.id]
			k.b.mu.Unlock()
			if f.start.Before(k.end) && !f.end.Before(k.begin) && received[f.id] == onKilled {
				ok = true
			}
		}
		if !ok {
			t.Errorf("request %d failed (%s) but was not in flight on a killed backend (started %v, ended %v after the first kill began)",
				f.id, f.err, f.start.Sub(kills[0].begin), f.end.Sub(kills[0].begin))
		}
	}
}

// TestBalancingAvoidsASlowHost sends concurrent load to three hosts, one
// of them slow: least_conn and p2c, which look at the requests in flight,
// give it a much smaller share than round_robin, which does not.
func TestBalancingAvoidsASlowHost(t *testing.T) {
	fast1, fast2, slow := startBackend(t, "fast1"), startBackend(t, "fast2"), startBackend(t, "slow")
	slow.delay = 200 * time.Millisecond
	share := map[string]float64{}
	for _, policy := range []string{"round_robin", "least_conn", "p2c"} {
		c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s %s %s
	}`, fast1.Addr, fast2.Addr, slow.Addr), fmt.Sprintf(`{http} {
	service_proxy {
		lb_policy %s
	}
}`, policy), caddyOpts{})
		before := []int64{fast1.served.Load(), fast2.served.Load(), slow.served.Load()}
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
		deadline := time.Now().Add(1500 * time.Millisecond)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					if status, err := sendGet(client, "http://"+c.HTTP+"/users/v1/x", 0); err != nil || status != 200 {
						t.Errorf("%s: status %d, %v", policy, status, err)
						return
					}
				}
			})
		}
		wg.Wait()
		client.CloseIdleConnections()
		f1, f2, s := fast1.served.Load()-before[0], fast2.served.Load()-before[1], slow.served.Load()-before[2]
		share[policy] = float64(s) / float64(f1+f2+s)
		t.Logf("%s: fast %d + %d, slow %d (%.1f%%)", policy, f1, f2, s, 100*share[policy])
		c.Stop()
	}
	for _, policy := range []string{"least_conn", "p2c"} {
		if share[policy] > share["round_robin"]/2 {
			t.Errorf("%s gave the slow host %.1f%% of the requests; round_robin gave it %.1f%%, want at most half of that",
				policy, 100*share[policy], 100*share["round_robin"])
		}
	}
}
