package svcreg

import (
	"context"
	"errors"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/memory"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
)

// newTestRegistry returns a started registry on a memory backend (saving
// to a temporary directory) with seeds and health checks, stopped when the
// test ends.
func newTestRegistry(t testing.TB, seeds map[registry.ServiceKey][]registry.Endpoint, checks ...registry.HealthCheck) *registry.Registry {
	t.Helper()
	return newTestRegistryWith(t, registry.Options{}, seeds, checks...)
}

// newTestRegistryWith is newTestRegistry with opts (a fake clock, say).
func newTestRegistryWith(t testing.TB, opts registry.Options, seeds map[registry.ServiceKey][]registry.Endpoint, checks ...registry.HealthCheck) *registry.Registry {
	t.Helper()
	policy, err := registry.NewHealthPolicy(checks)
	if err != nil {
		t.Fatal(err)
	}
	normalized := make(map[registry.ServiceKey][]registry.Endpoint, len(seeds))
	for key, eps := range seeds {
		normalized[key] = normalize(t, eps)
	}
	r := registry.New(&memory.Backend{StorageKey: "service_registry/memory.json"}, opts)
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	env := registry.BackendEnv{Seeds: normalized, Storage: &certmagic.FileStorage{Path: t.TempDir()}, Logger: zap.NewNop()}
	if err := r.Start(env, policy, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// normalize returns eps normalized, as seeds are.
func normalize(t testing.TB, eps []registry.Endpoint) []registry.Endpoint {
	t.Helper()
	out := []registry.Endpoint{}
	for _, ep := range eps {
		n, err := ep.Normalize()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

var (
	eps       = testutil.Endpoints
	addresses = testutil.Addresses
	must      = testutil.Must
)

// handFed is a backend with no store: it publishes what a test hands it
// (publish), and until then leaves its registry not synced.
type handFed struct{ feed *registry.Feed }

func (h *handFed) Start(feed *registry.Feed, env registry.BackendEnv) error {
	h.feed = feed
	feed.Configure(env)
	return nil
}

func (h *handFed) Reconfigure(env registry.BackendEnv) error {
	h.feed.Configure(env)
	return nil
}

func (h *handFed) Add(context.Context, registry.ServiceKey, registry.Endpoint) error {
	return errors.New("a hand-fed registry takes no Add")
}

func (h *handFed) Delete(context.Context, registry.ServiceKey, string) error {
	return errors.New("a hand-fed registry takes no Delete")
}

func (h *handFed) Stop() error { return nil }

// publish publishes all, as a store holding it would, and marks the
// registry synced.
func (h *handFed) publish(all map[registry.ServiceKey][]registry.Endpoint) {
	stored := make(map[registry.ServiceKey]map[string]registry.Change, len(all))
	for key, eps := range all {
		stored[key] = make(map[string]registry.Change, len(eps))
		for _, ep := range eps {
			stored[key][ep.Address] = registry.Change{Endpoint: ep}
		}
	}
	h.feed.Publish(stored, true)
}

// newHandFed returns a started registry on a handFed backend, stopped when
// the test ends.
func newHandFed(t testing.TB) (*registry.Registry, *handFed) {
	t.Helper()
	h := &handFed{}
	r := registry.New(h, registry.Options{})
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := r.Start(registry.BackendEnv{Logger: zap.NewNop()}, nil, nil); err != nil {
		t.Fatal(err)
	}
	return r, h
}
