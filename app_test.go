package svcreg

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func poolSize() int {
	n := 0
	registries.Range(func(_, _ any) bool { n++; return true })
	return n
}

// TestAppLifecycle loads real configs into Caddy in this process: the
// registry survives a reload with the same backend settings, is replaced
// when they change, and nothing of it outlives caddy.Stop.
func TestAppLifecycle(t *testing.T) {
	dir := t.TempDir()
	config := func(storageKey, seed string) []byte {
		return []byte(fmt.Sprintf(`{
			"admin": {"disabled": true},
			"storage": {"module": "file_system", "root": %q},
			"apps": {"service_registry": {
				"backend": {"backend": "memory", "storage_key": %q},
				"services": [{"name": "users", "version": "v1", "endpoints": [{"address": %q}]}]
			}}
		}`, dir, storageKey, seed))
	}
	running := func() *App {
		app := current.Load()
		if app == nil {
			t.Fatal("no running service_registry app")
		}
		return app
	}

	if err := caddy.Load(config("a.json", "127.0.0.1:1"), true); err != nil {
		t.Fatal(err)
	}
	first := running().registry
	if err := first.Add(context.Background(), ServiceKey{"users", "v1"}, Endpoint{Address: "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	first.Failure(ServiceKey{"users", "v1"}, "127.0.0.1:9") // keeps the prober busy

	// Reload with a new seed: same registry, admin addition and health kept.
	if err := caddy.Load(config("a.json", "127.0.0.1:2"), true); err != nil {
		t.Fatal(err)
	}
	if got := running().registry; got != first {
		t.Fatal("a reload with the same backend settings replaced the registry")
	}
	svc, err := first.Lookup(ServiceKey{"users", "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(addresses(svc), ","); got != "127.0.0.1:2,127.0.0.1:9" {
		t.Errorf("after reload: %s, want the new seed and the admin addition", got)
	}
	if svc.Endpoint("127.0.0.1:9").Available() {
		t.Errorf("health was lost across the reload")
	}
	if n := poolSize(); n != 1 {
		t.Errorf("%d registries in the pool after a reload, want 1", n)
	}

	// Other backend settings: a new registry; the old one is destroyed.
	if err := caddy.Load(config("b.json", "127.0.0.1:3"), true); err != nil {
		t.Fatal(err)
	}
	if running().registry == first {
		t.Error("changing the backend settings kept the old registry")
	}
	if n := poolSize(); n != 1 {
		t.Errorf("%d registries in the pool, want 1 (the old one destroyed)", n)
	}

	// A config that fails to start (its http app cannot listen) hands the
	// registry and the admin API back to the running config. Apps start in
	// random order, so try a few times: sometimes the registry started first.
	second := running().registry
	running2 := running()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for range 8 {
		failing := strings.Replace(string(config("b.json", "127.0.0.1:5")), `"apps": {`,
			fmt.Sprintf(`"apps": {"http": {"servers": {"s": {"listen": [%q]}}},`, busy.Addr().String()), 1)
		if err := caddy.Load([]byte(failing), true); err == nil {
			t.Fatal("a config whose server cannot listen loaded")
		}
		if running() != running2 {
			t.Fatal("after a failed start the admin API does not serve the running config's app")
		}
		if svc, _ := second.Lookup(ServiceKey{"users", "v1"}); strings.Join(addresses(svc), ",") != "127.0.0.1:3" {
			t.Fatalf("a config that failed to start left its seeds in the registry: %v", addresses(svc))
		}
	}

	// A config that fails to provision changes nothing either.
	bad := strings.Replace(string(config("b.json", "127.0.0.1:4")), `"name": "users"`, `"name": "us/ers"`, 1)
	if err := caddy.Load([]byte(bad), true); err == nil || !strings.Contains(err.Error(), "service name") {
		t.Fatalf("loading a bad config: %v", err)
	}
	if svc, _ := second.Lookup(ServiceKey{"users", "v1"}); strings.Join(addresses(svc), ",") != "127.0.0.1:3" {
		t.Errorf("a config that failed to load changed the registry: %v", addresses(svc))
	}

	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := poolSize(); n != 0 {
		t.Errorf("%d registries left after caddy.Stop", n)
	}
	if current.Load() != nil {
		t.Error("the admin API still sees an app after caddy.Stop")
	}
	for _, r := range []*registry{first, second} {
		ended := make(chan struct{})
		go func() { r.done.Wait(); close(ended) }()
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Error("a registry's goroutines outlived caddy.Stop")
		}
	}
}

// TestRegistryDestructEndsProbes checks that a probe in progress (a dial
// that would hang) ends when the registry is destroyed, before Destruct
// returns.
func TestRegistryDestructEndsProbes(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	r := newRegistry(&MemoryBackend{StorageKey: "k.json"}, zap.NewNop())
	dialing := make(chan struct{})
	var dialEnded atomic.Bool
	r.health.dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		close(dialing)
		<-ctx.Done()
		dialEnded.Store(true)
		return nil, ctx.Err()
	}
	if err := r.start(testEnv(t.TempDir(), map[ServiceKey][]Endpoint{key: eps("127.0.0.1:9")}), nil, nil); err != nil {
		t.Fatal(err)
	}
	r.Failure(key, "127.0.0.1:9")
	select {
	case <-dialing:
	case <-time.After(10 * time.Second):
		t.Fatal("the prober never probed the failed endpoint")
	}
	if err := r.Destruct(); err != nil {
		t.Fatal(err)
	}
	if !dialEnded.Load() {
		t.Error("Destruct returned while a probe was still running")
	}
}
