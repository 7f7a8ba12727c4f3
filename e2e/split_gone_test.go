package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
	"github.com/svcreg/caddy-svcreg/selfreg"
)

// splitTraffic adds a 50/50 split of users between v1 and v2, with v1 as
// the fallback, to a global service_registry block.
func splitTraffic(registryBlock string) string {
	return strings.TrimSuffix(strings.TrimSpace(registryBlock), "}") + `
		traffic users {
			split v1 50 v2 50
			fallback v1
		}
	}`
}

// checkSplitFallsBack sends requests that name no version through c while
// leave makes v2's only host leave the store, and asserts that none got
// anything but 200: once v2 has no host, the split's share of it goes to
// the fallback, v1, instead of getting 404 (unknown version).
func checkSplitFallsBack(t *testing.T, c *caddy, v1 *backend, leave func()) {
	t.Helper()
	waitFor(t, 15*time.Second, "both versions to be routed", func() bool {
		return routesTo(c, "/users/v1/x", v1.name) && c.Services() != nil && len(c.Services()) == 2
	})
	run := sendLoad("http://"+c.HTTP+"/users/list", sendGet, func(start time.Time, run *loadRun) {
		time.Sleep(500 * time.Millisecond)
		leave()
		waitFor(t, 10*time.Second, "v2 to leave the registry", func() bool { return len(c.Services()) == 1 })
		time.Sleep(500 * time.Millisecond) // requests after v2 left
	})
	t.Logf("%d requests, %d failed", run.total.Load(), len(run.failed))
	for i, f := range run.failed {
		if i == 5 {
			break
		}
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
	if len(run.failed) > 0 {
		t.Errorf("%d of %d requests failed; want 0: v2's share must fall back to v1", len(run.failed), run.total.Load())
	}
}

// etcd: v2's only instance is registered by selfreg under a lease, and
// deregisters (the lease is revoked, the key goes, the version with it).
func TestSplitVersionLeavesEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	v1, v2 := startBackend(t, "one"), startBackend(t, "two")
	put(t, srv.Client(t), "/svcreg/users/v1/"+v1.Addr, "{}")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- selfreg.Register(ctx, selfreg.Config{
			Endpoints: []string{srv.Endpoint}, Service: "users", Version: "v2", Address: v2.Addr,
			Drain: -1, Logf: func(string, ...any) {},
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	c := startCaddy(t, splitTraffic(etcdRegistry(srv.Endpoint)), proxySite, caddyOpts{})
	checkSplitFallsBack(t, c, v1, cancel)
}

// ZooKeeper: v2's only instance is an ephemeral Curator node, deleted.
func TestSplitVersionLeavesZooKeeper(t *testing.T) {
	srv := zktest.Start(t)
	v1, v2 := startBackend(t, "one"), startBackend(t, "two")
	conn := srv.Conn(t)
	curatorInstance(t, conn, "users", "v1", "one", v1.Addr, 0)
	curatorInstance(t, conn, "users", "v2", "two", v2.Addr, zk.FlagEphemeral)
	c := startCaddy(t, splitTraffic(zkRegistry(srv.Addr)), proxySite, caddyOpts{})
	checkSplitFallsBack(t, c, v1, func() {
		if err := conn.Delete("/services/users/two", -1); err != nil {
			t.Error(err)
		}
	})
}

// Without a fallback, a split version whose last host left the store
// answers 503 with Retry-After and says which version has none, not 404.
func TestSplitVersionWithoutHostIs503(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	v1, v2 := startBackend(t, "one"), startBackend(t, "two")
	put(t, cli, "/svcreg/users/v1/"+v1.Addr, "{}")
	put(t, cli, "/svcreg/users/v2/"+v2.Addr, "{}")
	c := startCaddy(t, strings.Replace(splitTraffic(etcdRegistry(srv.Endpoint)), "fallback v1", "", 1), proxySite, caddyOpts{})
	waitFor(t, 15*time.Second, "v2 to be routed", func() bool { return routesTo(c, "/users/v2/x", "two") })
	if _, err := cli.Delete(context.Background(), "/svcreg/users/v2/"+v2.Addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "v2 to leave the registry", func() bool { return len(c.Services()) == 1 })
	// the admin API (and so the CLI and the status page) says the policy
	// points at a version with no host
	status, body := c.AdminDo(http.MethodGet, "/service_registry/traffic/users", "", "")
	var policy struct {
		NoHost []string `json:"no_host"`
	}
	if err := json.Unmarshal([]byte(body), &policy); err != nil || status != http.StatusOK || !slices.Equal(policy.NoHost, []string{"v2"}) {
		t.Errorf("GET /service_registry/traffic/users: %d %s; want no_host [v2]", status, body)
	}
	out := cliOK(t, c, "traffic", "users")
	if !strings.Contains(out, "NO HOST") || !strings.HasSuffix(strings.Join(strings.Fields(out), " "), "v2 config") {
		t.Errorf("caddy service-registry traffic users:\n%s\nwant the NO HOST column to name v2", out)
	}
	seen := map[int]int{}
	for range 40 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+c.HTTP+"/users/list", nil)
		resp, body := doResponse(t, http.DefaultClient, req)
		seen[resp.StatusCode]++
		if resp.StatusCode == http.StatusServiceUnavailable {
			if want := `no available host for service "users" version "v2"`; strings.TrimSpace(body) != want || resp.Header.Get("Retry-After") != "1" {
				t.Errorf("503 %q, Retry-After %q; want %q and Retry-After 1", body, resp.Header.Get("Retry-After"), want)
			}
		}
	}
	if seen[http.StatusOK] == 0 || seen[http.StatusServiceUnavailable] == 0 || len(seen) != 2 {
		t.Errorf("statuses %v; want 200s (v1) and 503s (v2, no host), nothing else", seen)
	}
}
