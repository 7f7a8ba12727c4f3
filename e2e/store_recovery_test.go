package e2e

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
	"github.com/svcreg/caddy-svcreg/selfreg"
)

// register runs selfreg.Register with cfg until the test ends.
func register(t *testing.T, cfg selfreg.Config) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg.Drain = -1
	cfg.Logf = t.Logf
	go func() { done <- selfreg.Register(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("selfreg %s: %v", cfg.Address, err)
		}
	})
}

// An etcd frozen past the leases of the hosts that registered themselves
// comes back revoking them all; the hosts register again a moment later.
// Meanwhile the registry keeps the hosts it had (they still answer), so
// no request fails; then it routes exactly what etcd holds.
func TestEtcdFrozenPastLeases(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	for _, be := range []*backend{a, b} {
		register(t, selfreg.Config{Endpoints: []string{srv.Endpoint}, Service: "users", Version: "v1", Address: be.Addr, TTL: 2 * time.Second})
	}
	c := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	want := []string{"users v1 " + strings.Join(sortedAddrs([]*backend{a, b}), ",")}
	waitFor(t, 15*time.Second, "both hosts to be routed", func() bool { return slices.Equal(c.Services(), want) })

	run := sendLoad("http://"+c.HTTP+"/users/v1/x", sendGet, func(start time.Time, run *loadRun) {
		time.Sleep(300 * time.Millisecond)
		srv.Pause()
		time.Sleep(5 * time.Second) // past the 2s leases, and Caddy's 2s dial timeout
		srv.Resume()
		time.Sleep(3 * time.Second)
	})
	t.Logf("%d requests, %d failed", run.total.Load(), len(run.failed))
	for i, f := range run.failed {
		if i == 5 {
			break
		}
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
	if len(run.failed) > 0 {
		t.Errorf("%d of %d requests failed while etcd came back from a freeze; want 0", len(run.failed), run.total.Load())
	}
	waitFor(t, 10*time.Second, "the registry to hold what etcd holds", func() bool { return slices.Equal(c.Services(), want) })
}

// An etcd wiped and started again (within a second: faster than Caddy's
// reachability check) holds none of the hosts that registered
// themselves, until each sees its lease gone and registers again. Caddy
// lists everything again on its reconnection, and keeps the hosts it had
// meanwhile: no request fails.
func TestEtcdWipedSelfRegistered(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	for _, be := range []*backend{a, b} {
		register(t, selfreg.Config{Endpoints: []string{srv.Endpoint}, Service: "users", Version: "v1", Address: be.Addr, TTL: 3 * time.Second})
	}
	c := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	want := []string{"users v1 " + strings.Join(sortedAddrs([]*backend{a, b}), ",")}
	waitFor(t, 15*time.Second, "both hosts to be routed", func() bool { return slices.Equal(c.Services(), want) })

	run := sendLoad("http://"+c.HTTP+"/users/v1/x", sendGet, func(start time.Time, run *loadRun) {
		time.Sleep(300 * time.Millisecond)
		srv.Wipe()
		time.Sleep(4 * time.Second)
	})
	t.Logf("%d requests, %d failed", run.total.Load(), len(run.failed))
	for i, f := range run.failed {
		if i == 5 {
			break
		}
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
	if len(run.failed) > 0 {
		t.Errorf("%d of %d requests failed while etcd was wiped; want 0", len(run.failed), run.total.Load())
	}
	waitFor(t, 10*time.Second, "the registry to hold what etcd holds", func() bool { return slices.Equal(c.Services(), want) })
}

// A ZooKeeper frozen past the session timeout comes back expiring every
// session: Caddy's, which lists everything again in a new one, and those
// of the hosts that registered themselves, whose ephemeral nodes go until
// they register again a moment later. Caddy's list may come first; the
// registry keeps the hosts it had meanwhile, so no request fails.
func TestZooKeeperFrozenPastSessions(t *testing.T) {
	srv := zktest.Start(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	for _, be := range []*backend{a, b} {
		reg := exec.Command(selfregBin, "-zookeeper", srv.Addr, "-service", "users", "-version", "v1", "-address", be.Addr, "-ttl", "4s")
		if err := reg.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	}
	c := startCaddy(t, zkRegistry(srv.Addr), proxySite, caddyOpts{})
	want := []string{"users v1 " + strings.Join(sortedAddrs([]*backend{a, b}), ",")}
	waitFor(t, 15*time.Second, "both hosts to be routed", func() bool { return slices.Equal(c.Services(), want) })

	run := sendLoad("http://"+c.HTTP+"/users/v1/x", sendGet, func(start time.Time, run *loadRun) {
		time.Sleep(300 * time.Millisecond)
		srv.Pause()
		time.Sleep(7 * time.Second) // past the 4s sessions
		srv.Resume()
		time.Sleep(4 * time.Second)
	})
	t.Logf("%d requests, %d failed", run.total.Load(), len(run.failed))
	for i, f := range run.failed {
		if i == 5 {
			break
		}
		t.Errorf("request %d failed: %s", f.id, f.err)
	}
	if len(run.failed) > 0 {
		t.Errorf("%d of %d requests failed while ZooKeeper came back from a freeze; want 0", len(run.failed), run.total.Load())
	}
	waitFor(t, 10*time.Second, "the registry to hold what ZooKeeper holds", func() bool { return slices.Equal(c.Services(), want) })
}
