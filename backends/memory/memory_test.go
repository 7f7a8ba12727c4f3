package memory

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// start starts a registry on a memory backend saving to dir, with seeds.
func start(t *testing.T, dir string, seeds map[registry.ServiceKey][]registry.Endpoint) *registry.Registry {
	t.Helper()
	r := registry.New(&Backend{StorageKey: "service_registry/memory.json"}, registry.Options{})
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	must(t, r.Start(env(dir, seeds), nil, nil))
	return r
}

// env is what a config with these seeds and file storage in dir hands
// its backend.
func env(dir string, seeds map[registry.ServiceKey][]registry.Endpoint) registry.BackendEnv {
	return registry.BackendEnv{Seeds: seeds, Storage: &certmagic.FileStorage{Path: dir}, Logger: zap.NewNop()}
}

func addresses(r *registry.Registry, key registry.ServiceKey) ([]string, error) {
	svc, err := r.Lookup(key)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, ep := range svc.Endpoints {
		out = append(out, ep.Address)
	}
	return out, nil
}

func del(r *registry.Registry, key registry.ServiceKey, address string) error {
	_, err := r.Delete(context.Background(), key, address)
	return err
}

var (
	eps  = testutil.Endpoints
	must = testutil.Must
)

func TestSeedsAndSavedChanges(t *testing.T) {
	ctx := context.Background()
	users, orders := registry.ServiceKey{Service: "users", Version: "v1"}, registry.ServiceKey{Service: "orders", Version: "v1"}
	empty := registry.ServiceKey{Service: "empty", Version: "v1"}
	dir := t.TempDir()
	seeds := map[registry.ServiceKey][]registry.Endpoint{
		users: eps("127.0.0.1:1", "127.0.0.1:2"),
		empty: {},
	}

	// First run: add one, delete a seed, add and delete another.
	r := start(t, dir, seeds)
	must(t, r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:3", Weight: 4}))
	maint := registry.ServiceKey{Service: "maint", Version: "v1"}
	must(t, r.Add(ctx, maint, registry.Endpoint{Address: "127.0.0.1:6", Weight: registry.Drained}))
	must(t, del(r, users, "127.0.0.1:1"))
	must(t, r.Add(ctx, orders, registry.Endpoint{Address: "127.0.0.1:7"}))
	must(t, r.Add(ctx, orders, registry.Endpoint{Address: "127.0.0.1:8"}))
	must(t, del(r, orders, "127.0.0.1:8"))
	if err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9", TTL: registry.Duration(5e9)}); !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "ttl needs the etcd backend") {
		t.Errorf("adding with a ttl: %v, want a refusal naming etcd", err)
	}

	// A restart: a new registry on the same storage with the same seeds.
	r2 := start(t, dir, seeds)
	for _, tc := range []struct {
		key  registry.ServiceKey
		want []string
	}{
		{users, []string{"127.0.0.1:2", "127.0.0.1:3"}},
		{orders, []string{"127.0.0.1:7"}},
		{maint, []string{"127.0.0.1:6"}},
		{empty, []string{}},
	} {
		got, err := addresses(r2, tc.key)
		if err != nil {
			t.Fatalf("%s after restart: %v", tc.key, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s after restart = %v, want %v", tc.key, got, tc.want)
		}
	}
	if svc, _ := r2.Lookup(users); svc.Endpoint("127.0.0.1:3").Weight != 4 {
		t.Errorf("saved weight lost")
	}
	if svc, _ := r2.Lookup(maint); svc.Endpoint("127.0.0.1:6").Weight != registry.Drained {
		t.Errorf("saved weight 0 (drained) lost: %d", svc.Endpoint("127.0.0.1:6").Weight)
	}

	// A reload with other seeds: the deleted seed stays deleted, the API
	// addition stays, a seed dropped from the config goes.
	must(t, r2.Start(env(dir, map[registry.ServiceKey][]registry.Endpoint{users: eps("127.0.0.1:1", "127.0.0.1:5")}), nil, nil))
	if got, _ := addresses(r2, users); !slices.Equal(got, []string{"127.0.0.1:3", "127.0.0.1:5"}) {
		t.Errorf("after reseed = %v", got)
	}
	if _, err := r2.Lookup(empty); !errors.Is(err, registry.ErrUnknownService) {
		t.Errorf("version dropped from the config is still known: %v", err)
	}

	// Adding the deleted seed through the API brings it back.
	must(t, r2.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:1"}))
	if got, _ := addresses(r2, users); !slices.Equal(got, []string{"127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:5"}) {
		t.Errorf("after re-adding a deleted seed = %v", got)
	}

	// Deleting the last endpoint of an API-only version forgets it.
	must(t, del(r2, orders, "127.0.0.1:7"))
	if _, err := r2.Lookup(orders); !errors.Is(err, registry.ErrUnknownService) {
		t.Errorf("empty API-only version still known: %v", err)
	}
}

func TestFailedSaveChangesNothing(t *testing.T) {
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	dir := t.TempDir()
	r := start(t, dir, map[registry.ServiceKey][]registry.Endpoint{users: eps("127.0.0.1:1")})

	// Make the storage unwritable: its directory becomes a file.
	storeDir := filepath.Join(dir, "service_registry")
	must(t, os.RemoveAll(storeDir))
	must(t, os.WriteFile(storeDir, []byte("not a directory"), 0o600))

	err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:2"})
	if !errors.Is(err, registry.ErrBackendUnavailable) || !strings.Contains(err.Error(), "storage key") {
		t.Fatalf("Add with broken storage: %v, want ErrBackendUnavailable naming the storage key", err)
	}
	if err := del(r, users, "127.0.0.1:1"); err == nil {
		t.Fatalf("Delete with broken storage succeeded")
	}
	if got, _ := addresses(r, users); !slices.Equal(got, []string{"127.0.0.1:1"}) {
		t.Errorf("registry changed although saving failed: %v", got)
	}
}

func TestCorruptStorage(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "service_registry"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "service_registry", "memory.json"), []byte(`{"changes":[{"service":"a/b","version":"v1","address":"x:1"}]}`), 0o600))
	backend := &Backend{StorageKey: "service_registry/memory.json"}
	table := registry.NewFeed()
	err := backend.Start(table, env(dir, nil))
	if err == nil || !strings.Contains(err.Error(), "service name") {
		t.Fatalf("Start with a bad saved record: %v, want an error naming it", err)
	}
	if table.Snapshot().Synced() {
		t.Errorf("table published although loading failed")
	}
}

// Two instances on one storage, as a Caddy cluster shares it: changes made
// through both at once are all kept, and each instance routes the other's
// within a poll.
func TestSharedStorage(t *testing.T) {
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	dir := t.TempDir()
	var regs []*registry.Registry
	for range 2 {
		r := registry.New(&Backend{StorageKey: "service_registry/memory.json", PollInterval: caddy.Duration(100 * time.Millisecond)}, registry.Options{})
		t.Cleanup(func() { must(t, r.Stop()) })
		must(t, r.Start(env(dir, nil), nil, nil))
		regs = append(regs, r)
	}
	var want []string
	var wg sync.WaitGroup
	for i := range 40 {
		addr := fmt.Sprintf("127.0.0.1:%d", 1000+i)
		want = append(want, addr)
		wg.Go(func() {
			if err := regs[i%2].Add(ctx, users, registry.Endpoint{Address: addr}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	slices.Sort(want)
	for i, r := range regs {
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, _ := addresses(r, users)
			slices.Sort(got)
			if slices.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %d has %d of the %d endpoints added through both", i, len(got), len(want))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A delete through one is seen by the other.
	must(t, del(regs[0], users, want[0]))
	deadline := time.Now().Add(5 * time.Second)
	for got, _ := addresses(regs[1], users); slices.Contains(got, want[0]); got, _ = addresses(regs[1], users) {
		if time.Now().After(deadline) {
			t.Fatal("the other instance still routes to an endpoint deleted through the first")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Traffic policies: the config's is the seed; one set through the
// registry replaces it, is saved, seen by another instance on the same
// storage and after a restart; deleting it brings the config's back.
func TestTrafficPolicies(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	seeds := map[registry.ServiceKey][]registry.Endpoint{
		{Service: "users", Version: "v1"}: eps("127.0.0.1:1"),
		{Service: "users", Version: "v2"}: eps("127.0.0.1:2"),
	}
	seedPolicy := map[string]traffic.Policy{"users": {Split: map[string]int{"v1": 90, "v2": 10}}}
	startWith := func() *registry.Registry {
		r := registry.New(&Backend{StorageKey: "service_registry/memory.json", PollInterval: caddy.Duration(100 * time.Millisecond)}, registry.Options{})
		t.Cleanup(func() { must(t, r.Stop()) })
		e := env(dir, seeds)
		e.Traffic = seedPolicy
		must(t, r.Start(e, nil, nil))
		return r
	}
	split := func(r *registry.Registry) map[string]int {
		if tr := r.Snapshot().Traffic("users"); tr != nil {
			return tr.Policy().Split
		}
		return nil
	}
	a, b := startWith(), startWith()
	if got := split(a); got["v2"] != 10 {
		t.Fatalf("seeded policy: %v", got)
	}
	err := a.PutTraffic(ctx, "users", traffic.Policy{Split: map[string]int{"v1": 50, "v3": 50}})
	if !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), `unknown version "v3"`) {
		t.Fatalf("a policy naming v3: %v; want an invalid-input error naming v3", err)
	}
	must(t, a.PutTraffic(ctx, "users", traffic.Policy{Split: map[string]int{"v1": 50, "v2": 50}}))
	if got := split(a); got["v2"] != 50 {
		t.Fatalf("after the PUT: %v", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for split(b)["v2"] != 50 {
		if time.Now().After(deadline) {
			t.Fatal("the other instance on the same storage did not pick up the policy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := split(startWith()); got["v2"] != 50 {
		t.Errorf("after a restart: %v; want the saved policy", got)
	}
	must(t, b.DeleteTraffic(ctx, "users"))
	if got := split(b); got["v2"] != 10 {
		t.Errorf("after the DELETE: %v; want the config's back", got)
	}
	if err := b.DeleteTraffic(ctx, "users"); !errors.Is(err, registry.ErrNoTrafficPolicy) {
		t.Errorf("a second DELETE: %v; want ErrNoTrafficPolicy", err)
	}
	// endpoints changes keep the policies, and the other way round
	must(t, a.Add(ctx, registry.ServiceKey{Service: "users", Version: "v2"}, registry.Endpoint{Address: "127.0.0.1:3"}))
	if got := split(a); got["v2"] != 10 {
		t.Errorf("after an add: %v", got)
	}
}
