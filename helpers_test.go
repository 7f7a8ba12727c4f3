package svcreg

import (
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
func newTestRegistry(t testing.TB, seeds map[registry.ServiceKey][]registry.Endpoint, checks ...registry.HealthCheck) *registry.Local {
	t.Helper()
	return newTestRegistryWith(t, registry.Options{}, seeds, checks...)
}

// newTestRegistryWith is newTestRegistry with opts (a fake clock, say).
func newTestRegistryWith(t testing.TB, opts registry.Options, seeds map[registry.ServiceKey][]registry.Endpoint, checks ...registry.HealthCheck) *registry.Local {
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
