package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
)

// A ZooKeeper wiped and started again (replaced, or restored from an
// older snapshot) has gone back in time: it refuses the session of a
// client that has seen a newer zxid. Under GET load, Caddy starts a fresh
// client and routes what the new ZooKeeper holds, once the registry's
// 2 s recovery grace (which keeps what the old one held meanwhile) is
// over; from then on no request reaches a host only the old one held; the
// selfreg program registers again; no request fails; an admin write
// answers what it did. The test logs how long Caddy took to route the new
// ZooKeeper's hosts, and waits for that far longer than it takes, so that
// a busy machine does not fail it. (Caddy reaches ZooKeeper through a
// proxy, cut while the new one is filled, so that what it lists first is
// what the test put there, not an empty store.)
func TestZooKeeperWipedIsListedAgain(t *testing.T) {
	srv := zktest.Start(t)
	proxy := testutil.NewProxy(t, srv.Addr)
	jvm := srv.Conn(t)
	old, fresh, self, api := startBackend(t, "old"), startBackend(t, "fresh"), startBackend(t, "selfreg"), startBackend(t, "api")
	curatorInstance(t, jvm, "users", "v1", "old", old.Addr, 0)
	for i := range 40 { // a zxid well above the new ZooKeeper's, which Caddy and selfreg see
		curatorInstance(t, jvm, "filler", "v1", fmt.Sprint("f", i), fmt.Sprint("127.0.0.1:", 10000+i), 0)
	}
	jvm.Close() // it has seen that zxid too
	reg := exec.Command(selfregBin, "-zookeeper", srv.Addr, "-service", "users", "-version", "v1", "-address", self.Addr, "-ttl", "4s")
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	c := startCaddy(t, zkRegistry(proxy.Addr), proxySite, caddyOpts{})
	users := func(addrs ...string) string { slices.Sort(addrs); return "users v1 " + strings.Join(addrs, ",") }
	waitFor(t, 15*time.Second, "the first sync", func() bool { return slices.Contains(c.Services(), users(old.Addr, self.Addr)) })

	var listedAgain atomic.Int64 // when Caddy routed what the new ZooKeeper holds, in Unix ns
	var stale atomic.Int64       // requests sent after that and answered by a host only the old one held
	send := func(client *http.Client, url string, _ int) (int, error) {
		sent := time.Now().UnixNano()
		resp, err := client.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		if at := listedAgain.Load(); at != 0 && sent > at && strings.HasPrefix(string(body), "old ") {
			stale.Add(1)
		}
		return resp.StatusCode, nil
	}
	var took time.Duration
	run := sendLoad("http://"+c.HTTP+"/users/v1/x", send, func(time.Time, *loadRun) {
		time.Sleep(500 * time.Millisecond)
		proxy.Cut()
		srv.Stop()
		waitFor(t, 10*time.Second, "Caddy to notice ZooKeeper is gone", func() bool { return strings.Contains(c.Log(), "zookeeper unreachable") })
		if status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v2", "application/json", `{"address":"`+api.Addr+`"}`); status != http.StatusServiceUnavailable {
			t.Errorf("an add with ZooKeeper down: %d %s; want 503", status, body)
		}
		srv.Wipe()
		curatorInstance(t, srv.Conn(t), "users", "v1", "fresh", fresh.Addr, 0)
		proxy.Mend()
		back := time.Now()
		want := users(fresh.Addr, self.Addr)
		waitFor(t, 20*time.Second, "Caddy to route what the wiped ZooKeeper holds", func() bool { return slices.Equal(c.Services(), []string{want}) })
		listedAgain.Store(time.Now().UnixNano())
		took = time.Since(back)
		time.Sleep(time.Second) // load on the new snapshot
	})
	t.Logf("%d requests, %d failed; Caddy routed what the wiped ZooKeeper holds %v after it could reach it", run.total.Load(), len(run.failed), took)
	for _, f := range run.failed {
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
	if n := stale.Load(); n != 0 {
		t.Errorf("%d requests sent after Caddy listed the wiped ZooKeeper reached the host only the old one held", n)
	}
	if n := strings.Count(c.Log(), "went back in time"); n != 1 {
		t.Errorf("Caddy logged going back in time %d times, want once", n)
	}
	// the add refused while ZooKeeper was down was not applied
	if ok, _, err := srv.Conn(t).Exists("/services/users/v2@" + api.Addr); ok || err != nil {
		t.Errorf("the add answered 503 is in ZooKeeper (%v)", err)
	}
	if status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v2", "application/json", `{"address":"`+api.Addr+`"}`); status != http.StatusCreated {
		t.Errorf("an add once listed again: %d %s; want 201", status, body)
	}
	waitFor(t, 5*time.Second, "the add routed", func() bool { return routesTo(c, "/users/v2/x", "api") })
}

// Reloads that change the ZooKeeper backend's settings hand over from the
// old backend to the new under GET load: an endpoint added through this
// Caddy with a ttl (an ephemeral node of the old backend's session) is
// taken over by the new backend's session before the old one closes, and
// no request fails (none gets a 404 for its service).
func TestZooKeeperReloadHandsOver(t *testing.T) {
	srv := zktest.Start(t)
	withTimeout := func(d string) string {
		return fmt.Sprintf(`service_registry {
		backend zookeeper {
			servers %s
			session_timeout %s
		}
	}`, srv.Addr, d)
	}
	c := startCaddy(t, withTimeout("4s"), proxySite, caddyOpts{})
	waitFor(t, 15*time.Second, "the first sync", func() bool {
		_, body := c.AdminDo(http.MethodGet, "/service_registry/services", "", "")
		return strings.Contains(body, `"synced": true`)
	})
	leased := startBackend(t, "leased")
	if status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v1", "application/json",
		`{"address":"`+leased.Addr+`","ttl":"2s"}`); status != http.StatusCreated {
		t.Fatalf("adding an endpoint with a ttl: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, "the endpoint routed", func() bool { return routesTo(c, "/users/v1/x", "leased") })

	run := sendLoad("http://"+c.HTTP+"/users/v1/x", sendGet, func(time.Time, *loadRun) {
		for i := range 6 {
			c.Reload(withTimeout([]string{"5s", "4s"}[i%2]), proxySite)
			time.Sleep(200 * time.Millisecond)
		}
	})
	t.Logf("%d requests across 6 reloads, %d failed", run.total.Load(), len(run.failed))
	for _, f := range run.failed {
		// Caddy's own reload of its HTTP server may reset a client
		// connection (its listener handover, with any config, registry or
		// not): that shows as no status. Every answer must be a 200.
		if strings.HasPrefix(f.err, "status 0,") {
			t.Logf("request %d: %s (a connection reset by Caddy's HTTP server reload)", f.id, f.err)
			continue
		}
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
	_, stat, err := srv.Conn(t).Get("/services/users/v1@" + leased.Addr)
	if err != nil || stat.EphemeralOwner == 0 {
		t.Fatalf("the endpoint added with a ttl is not an ephemeral node after the reloads: %+v, %v", stat, err)
	}
	if got, want := c.Services(), []string{"users v1 " + leased.Addr}; !slices.Equal(got, want) {
		t.Errorf("after the reloads: %q, want %q", got, want)
	}
}
