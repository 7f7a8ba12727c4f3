package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
)

// etcdRegistry is the global service_registry block for an etcd backend.
func etcdRegistry(endpoint string) string {
	return fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			dial_timeout 2s
		}
	}`, endpoint)
}

const proxySite = `{http} {
	service_proxy
}`

// roundRobinSite is service_proxy with round_robin balancing, for tests
// that need each host tried in turn (the default, peak_ewma, seldom sends
// to a host that has not answered yet).
const roundRobinSite = `{http} {
	service_proxy {
		lb_policy round_robin
	}
}`

func put(t testing.TB, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}

// routesTo reports whether a GET of path through c reaches the backend
// named name.
func routesTo(c *caddy, path, name string) bool {
	resp, err := http.Get("http://" + c.HTTP + path)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return err == nil && resp.StatusCode == 200 && strings.HasPrefix(string(body), name+" ")
}

func TestEtcdSharedByTwoInstances(t *testing.T) {
	srv := etcdtest.Start(t)
	a := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	b := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	one, two := startBackend(t, "one"), startBackend(t, "two")

	// Added through instance A: A routes it as soon as the API answers,
	// B as soon as its watch delivers it.
	if status, body := a.AdminDo("POST", "/service_registry/services/users/v1", "", `{"address":"`+one.Addr+`"}`); status != http.StatusCreated {
		t.Fatalf("add through A: %d %s", status, body)
	}
	if !routesTo(a, "/users/v1/x", "one") {
		t.Fatal("A does not route what its own admin API just added")
	}
	waitFor(t, 5*time.Second, "B to route what A added", func() bool { return routesTo(b, "/users/v1/x", "one") })

	// Deleted through B: gone from A too.
	if status, body := b.AdminDo("DELETE", "/service_registry/services/users/v1/"+one.Addr, "", ""); status != http.StatusOK {
		t.Fatalf("delete through B: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, "A to stop routing what B deleted", func() bool {
		status, _, _ := a.Get("/users/v1/x")
		return status == http.StatusNotFound
	})

	// Added through A with a TTL: A keeps the lease alive; once A stops,
	// the endpoint leaves B's registry TTL later.
	if status, body := a.AdminDo("POST", "/service_registry/services/users/v2", "", `{"address":"`+two.Addr+`","ttl":"2s"}`); status != http.StatusCreated {
		t.Fatalf("add with a ttl: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, "B to route the leased endpoint", func() bool { return routesTo(b, "/users/v2/x", "two") })
	time.Sleep(3 * time.Second) // past the TTL: only A's keepalive holds it
	if !routesTo(b, "/users/v2/x", "two") {
		t.Fatal("the leased endpoint expired while A was keeping it alive")
	}
	a.Stop()
	waitFor(t, 10*time.Second, "the leased endpoint to leave B once A stopped", func() bool {
		status, _, _ := b.Get("/users/v2/x")
		return status == http.StatusNotFound
	})
}

// killedUnderLoad sends GETs to users v1 through c, SIGKILLs the
// self-registration program reg and its backend b together a second in,
// and asserts that no request failed.
func killedUnderLoad(t *testing.T, c *caddy, reg *exec.Cmd, b *backend) {
	t.Helper()
	run := sendLoad("http://"+c.HTTP+"/users/v1/x", sendGet, func(time.Time, *loadRun) {
		time.Sleep(time.Second)
		_ = reg.Process.Signal(syscall.SIGKILL)
		b.Kill()
		time.Sleep(4 * time.Second)
	})
	t.Logf("%d requests while a self-registered backend died, %d failed", run.total.Load(), len(run.failed))
	for _, f := range run.failed {
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
}

// runSelfreg runs the self-registration program; it is killed when the test
// ends if still running.
func runSelfreg(t *testing.T, etcd, service, version, address, ttl string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(selfregBin, "-etcd", etcd, "-service", service, "-version", version, "-address", address, "-ttl", ttl)
	var out testutil.Log
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("selfreg %s (pid %d) printed:\n%s", address, cmd.Process.Pid, out.String())
		}
	})
	return cmd
}

func TestEtcdSelfRegistration(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	steady, leaving, polite := startBackend(t, "steady"), startBackend(t, "leaving"), startBackend(t, "polite")
	put(t, cli, "/svcreg/users/v1/"+steady.Addr, "{}")
	dying := runSelfreg(t, srv.Endpoint, "users", "v1", leaving.Addr, "2s")
	c := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "the self-registered backend to get traffic", func() bool { return routesTo(c, "/users/v1/x", "leaving") })

	// The backend and its registration die together (SIGKILL) under load:
	// no request fails, and the key expires.
	killedUnderLoad(t, c, dying, leaving)
	waitFor(t, 10*time.Second, "the dead backend's key to expire from the registry", func() bool {
		return !slices.ContainsFunc(c.Services(), func(s string) bool { return strings.Contains(s, leaving.Addr) })
	})

	// An address given with http:// is registered in canonical form, so
	// Caddy routes to it; a clean stop deregisters at once, long before
	// the TTL.
	politeReg := runSelfreg(t, srv.Endpoint, "users", "v1", "http://"+polite.Addr, "60s")
	waitFor(t, 10*time.Second, "the polite backend to register", func() bool {
		return slices.ContainsFunc(c.Services(), func(s string) bool { return strings.Contains(s, polite.Addr) })
	})
	_ = politeReg.Process.Signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, "a SIGTERM to deregister at once", func() bool {
		return !slices.ContainsFunc(c.Services(), func(s string) bool { return strings.Contains(s, polite.Addr) })
	})
}

func TestEtcdLostDuringLoad(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	backends := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	for _, b := range backends {
		put(t, cli, "/svcreg/users/v1/"+b.Addr, "{}")
	}
	c := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "the first sync", func() bool { return len(c.Services()) == 1 })

	var total, failed atomic.Int64
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: loadClients}}
	var wg sync.WaitGroup
	for range loadClients {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				status, err := sendGet(client, "http://"+c.HTTP+"/users/v1/x", 0)
				total.Add(1)
				if err != nil || status != 200 {
					failed.Add(1)
				}
			}
		})
	}
	time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
	srv.Kill()
	time.Sleep(time.Until(start.Add(3 * time.Second)))
	srv.Restart()
	wg.Wait()
	t.Logf("%d requests while etcd was killed and restarted, %d failed", total.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed although every backend stayed up", failed.Load(), total.Load())
	}

	// A change made after the restart is routed.
	fresh := startBackend(t, "fresh")
	put(t, srv.Client(t), "/svcreg/users/v2/"+fresh.Addr, "{}")
	waitFor(t, 20*time.Second, "a change made after etcd came back to be routed", func() bool { return routesTo(c, "/users/v2/x", "fresh") })
}

func TestEtcdUnreachableWhenCaddyStarts(t *testing.T) {
	srv := etcdtest.StartLater(t)
	c := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	status, body, hdr := c.Get("/users/v1/x")
	want := `no available host for service "users" version "v1" (the registry has not loaded its backend yet)`
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "1" || strings.TrimSpace(body) != want {
		t.Fatalf("before the first sync: %d %q Retry-After %q; want 503 %q with Retry-After", status, body, hdr.Get("Retry-After"), want)
	}
	srv.Restart()
	b := startBackend(t, "late")
	put(t, srv.Client(t), "/svcreg/users/v1/"+b.Addr, "{}")
	waitFor(t, 20*time.Second, "routing once etcd is up", func() bool { return routesTo(c, "/users/v1/x", "late") })
}

// enableEtcdAuth makes etcd require the user root with password.
func enableEtcdAuth(t *testing.T, root *clientv3.Client, password string) {
	t.Helper()
	ctx := context.Background()
	for _, step := range []func() error{
		func() error { _, err := root.RoleAdd(ctx, "root"); return err },
		func() error { _, err := root.UserAdd(ctx, "root", password); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEtcdWrongPasswordKeepsConfig reloads a running Caddy onto an etcd
// that refuses its password: the reload fails and says why without
// showing the password, and the running config keeps routing.
func TestEtcdWrongPasswordKeepsConfig(t *testing.T) {
	srv := etcdtest.Start(t)
	root := srv.Client(t)
	enableEtcdAuth(t, root, "right-Passw0rd")
	a := startBackend(t, "a")
	memory := fmt.Sprintf("service_registry {\n\t\tservice users v1 %s\n\t}", a.Addr)
	c := startCaddy(t, memory, proxySite, caddyOpts{})
	if !routesTo(c, "/users/v1/x", "a") {
		t.Fatal("the first config does not route")
	}
	const wrong = "wrong-Passw0rd-value"
	out, err := c.TryReload(fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			username root
			password %s
			dial_timeout 2s
		}
	}`, srv.Endpoint, wrong), proxySite)
	if err == nil {
		t.Fatalf("the reload with a wrong password succeeded:\n%s", out)
	}
	if !strings.Contains(out, "authentication failed") {
		t.Errorf("the reload's error does not say why:\n%s", out)
	}
	if strings.Contains(out, wrong) || strings.Contains(c.Log(), wrong) {
		t.Error("the password shows in the reload's output or Caddy's log")
	}
	if !routesTo(c, "/users/v1/x", "a") {
		t.Error("the running config stopped routing after a refused reload")
	}

	// A password placeholder that expands to nothing (the variable is
	// not set where Caddy runs) is refused too, before etcd is asked.
	out, err = c.TryReload(fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			username root
			password {env.SVCREG_TEST_UNSET_PASSWORD}
		}
	}`, srv.Endpoint), proxySite)
	if err == nil || !strings.Contains(out, "password") || !strings.Contains(out, "empty") {
		t.Errorf("the reload with an empty password: %v\n%s\nwant an error saying the password is empty", err, out)
	}
	if !routesTo(c, "/users/v1/x", "a") {
		t.Error("the running config stopped routing after a refused reload")
	}
}
