package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
	"github.com/svcreg/caddy-svcreg/selfreg"
)

// Timeline of a rolling deploy: the load runs deployFirst before the
// first host goes, the hosts go one after another deployGap apart, and
// the load goes on deployAfter after the last one is back.
const (
	deployFirst = 800 * time.Millisecond
	deployGap   = 700 * time.Millisecond
	deployAfter = 800 * time.Millisecond
)

// How a rolling deploy takes a host down.
const (
	graceful       = iota // Shutdown, as a Go service does on SIGTERM, then Start at once
	drained               // removed through the admin API (which drains it) first, then as graceful, then added again
	killed                // killed abruptly, and started again 200 ms later
	selfregistered        // registered in etcd by selfreg: deregistered (and drained), then as graceful, then registered again
)

// runDeploy starts three backends (speaking h2c besides HTTP/1 if h2c)
// and a Caddy with service_proxy defaults (over h2c to the hosts if h2c),
// sends POSTs made by send, with bodies of 1 to 100 KiB, and takes every
// backend down and up again in turn, as how says.
func runDeploy(t *testing.T, h2c bool, how int, send func(*http.Client, string, int) (int, error)) (*loadRun, []*backend, []kill) {
	return runDeployWith(t, h2c, "", how, send)
}

// runDeployWith is runDeploy with more options of service_proxy's
// transport (a line of service_http options, "" for none).
func runDeployWith(t *testing.T, h2c bool, transport string, how int, send func(*http.Client, string, int) (int, error)) (*loadRun, []*backend, []kill) {
	backends := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")}
	for _, b := range backends {
		b.delay = time.Millisecond // so that requests are in flight when one goes
		b.h2c = h2c
		b.Start()
	}
	proxy := "service_proxy"
	if h2c {
		proxy = `service_proxy {
		transport http {
			versions h2c
		}
	}`
	}
	if transport != "" {
		proxy = "service_proxy {\n\t\ttransport service_http {\n\t\t\t" + transport + "\n\t\t}\n\t}"
	}
	registry := fmt.Sprintf(`service_registry {
		service users v1 %s %s %s
	}`, backends[0].Addr, backends[1].Addr, backends[2].Addr)
	var etcd *etcdtest.Server
	if how == selfregistered {
		etcd = etcdtest.Start(t)
		registry = etcdRegistry(etcd.Endpoint)
	}
	c := startCaddy(t, registry, "{http} {\n\t"+proxy+"\n}", caddyOpts{})
	url := "http://" + c.HTTP + "/users/v1/work"
	deregister := make([]func(), len(backends))
	if how == selfregistered {
		for i, b := range backends {
			deregister[i] = selfRegister(t, etcd.Endpoint, b.Addr)
		}
		waitListed(t, c, 3)
	}

	var kills []kill
	served := make([]int64, len(backends))
	run := sendLoad(url, send, func(start time.Time, run *loadRun) {
		time.Sleep(deployFirst)
		for i, b := range backends {
			if i > 0 {
				time.Sleep(deployGap)
			}
			served[i] = b.served.Load()
			switch how {
			case drained:
				if code, body := c.AdminDo(http.MethodDelete, "/service_registry/services/users/v1/"+b.Addr, "", ""); code != http.StatusOK {
					t.Errorf("removing %s: %d %s", b.Addr, code, body)
				}
				b.Shutdown()
			case graceful:
				b.Shutdown()
			case killed:
				begin, end := b.Kill()
				kills = append(kills, kill{b, begin, end})
				time.Sleep(200 * time.Millisecond)
			case selfregistered:
				deregister[i]() // returns a drain after the key is gone
				b.Shutdown()
			}
			b.Start()
			if how == selfregistered {
				deregister[i] = selfRegister(t, etcd.Endpoint, b.Addr)
			}
			if how == drained {
				if code, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v1", "application/json", `{"address":"`+b.Addr+`"}`); code != http.StatusCreated {
					t.Errorf("adding %s: %d %s", b.Addr, code, body)
				}
			}
		}
		time.Sleep(deployAfter)
	})
	t.Logf("%d POSTs, %d failed, max latency %v", run.total.Load(), len(run.failed), run.maxLatency)
	for i, b := range backends {
		if served[i] == 0 {
			t.Errorf("backend %s served nothing before it went: the test restarted an idle host", b.name)
		}
		if b.FirstRequestAfterStart() < 0 {
			t.Errorf("backend %s served nothing after it came back", b.name)
		}
	}
	if run.total.Load() < 300 {
		t.Errorf("only %d POSTs: the load did not run", run.total.Load())
	}
	return run, backends, kills
}

// selfRegister registers addr as users v1 in etcd with selfreg's
// defaults, as a Go service embedding it does, and returns the function
// that stops the registration: it returns when selfreg.Register has.
func selfRegister(t *testing.T, etcd, addr string) (deregister func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- selfreg.Register(ctx, selfreg.Config{
			Endpoints: []string{etcd}, Service: "users", Version: "v1", Address: addr,
			Logf: func(string, ...any) {},
		})
	}()
	stopped := false
	deregister = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("selfreg %s: %v", addr, err)
		}
	}
	t.Cleanup(deregister)
	return deregister
}

// waitListed waits until Caddy lists n endpoints of users v1.
func waitListed(t *testing.T, c *caddy, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := c.AdminDo(http.MethodGet, "/service_registry/services/users/v1", "", "")
		if got := strings.Count(body, `"address"`); got == n {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("caddy lists %d endpoints of users v1, want %d: %s", got, n, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newBackend is a backend to be started by the caller.
func newBackend(t *testing.T, name string) *backend {
	b := &backend{t: t, name: name, Addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), posts: map[int]int{}}
	t.Cleanup(func() { b.Kill() })
	return b
}

// checkNoneFailed asserts that no POST failed, none ran twice and none
// got a wrong body.
func checkNoneFailed(t *testing.T, run *loadRun, backends []*backend) {
	t.Helper()
	checkPosts(t, backends)
	for _, f := range run.failed {
		t.Errorf("POST %d failed: %s", f.id, f.err)
	}
}

// Over h2c, a host's GOAWAY says which streams it did not process: those
// are sent again, with their whole body, on another connection.
func TestDeployGracefulPOSTh2c(t *testing.T) {
	run, backends, _ := runDeploy(t, true, graceful, sendPost)
	checkNoneFailed(t, run, backends)
}

// Over HTTP/1, a POST marked idempotent is sent again after its host
// closed the connection without an answer. Hedging is off: a hedged try
// runs a POST marked idempotent on a second host whenever the first is
// slow to answer, as its key allows; what this test counts is that a
// resend after a closed connection runs it once.
func TestDeployGracefulIdempotentPOST(t *testing.T) {
	run, backends, _ := runDeployWith(t, false, "hedge off", graceful, sendIdempotentPost)
	checkNoneFailed(t, run, backends)
}

// Over HTTP/1, a host taken out of the registry before it stops (as
// selfreg does on shutdown) gets no request while it closes.
func TestDeployDrainedPOST(t *testing.T) {
	run, backends, _ := runDeploy(t, false, drained, sendPost)
	checkNoneFailed(t, run, backends)
}

// Over HTTP/1, hosts that register themselves with selfreg, restarted in
// turn as a Go service embedding it stops (deregister, wait selfreg's
// drain, shut the server down) and starts: nothing fails.
func TestDeploySelfRegisteredPOST(t *testing.T) {
	run, backends, _ := runDeploy(t, false, selfregistered, sendPost)
	checkNoneFailed(t, run, backends)
}

// Over HTTP/1, a host that stops without leaving the registry first
// closes its idle keep-alive connections; a POST written on one just
// before, and not yet read, is reset, and nothing tells that apart from a
// host that read it and died: it is answered 502, never sent twice.
// Every POST that failed was executed nowhere, and a POST sent on a
// connection the host had already closed went to another (the check
// before writing).
func TestDeployGracefulPOST(t *testing.T) {
	run, backends, _ := runDeploy(t, false, graceful, sendPost)
	received := checkPosts(t, backends)
	for _, f := range run.failed {
		if received[f.id] != 0 {
			t.Errorf("POST %d failed (%s) though a host executed it", f.id, f.err)
		}
	}
}

// Hosts killed in turn: only POSTs in flight on a killed host may fail;
// none runs twice or gets a wrong body.
func TestDeployKilledPOST(t *testing.T) {
	run, backends, kills := runDeploy(t, false, killed, sendPost)
	checkFailedInFlight(t, run.failed, checkPosts(t, backends), kills)
}

func TestDeployKilledPOSTh2c(t *testing.T) {
	run, backends, kills := runDeploy(t, true, killed, sendPost)
	checkFailedInFlight(t, run.failed, checkPosts(t, backends), kills)
}

// sendIdempotentPost sends POST id marked idempotent by the client.
func sendIdempotentPost(client *http.Client, url string, id int) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(postBody(id)))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Req-Id", strconv.Itoa(id))
	req.Header.Set("Idempotency-Key", "post-"+strconv.Itoa(id))
	return statusOf(client.Do(req))
}
