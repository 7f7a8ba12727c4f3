package svcreg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMemoryBackendSeedsAndSavedChanges(t *testing.T) {
	ctx := context.Background()
	users, orders := ServiceKey{"users", "v1"}, ServiceKey{"orders", "v1"}
	dir := t.TempDir()
	seeds := map[ServiceKey][]Endpoint{
		users:                             eps("127.0.0.1:1", "127.0.0.1:2"),
		{Service: "empty", Version: "v1"}: {},
	}

	// First run: add one, delete a seed, add and delete another.
	r := newTestRegistry(t, dir, seeds)
	must(t, r.Add(ctx, users, Endpoint{Address: "127.0.0.1:3", Weight: 4}))
	must(t, del(r, ctx, users, "127.0.0.1:1"))
	must(t, r.Add(ctx, orders, Endpoint{Address: "127.0.0.1:7"}))
	must(t, r.Add(ctx, orders, Endpoint{Address: "127.0.0.1:8"}))
	must(t, del(r, ctx, orders, "127.0.0.1:8"))

	// A restart: a new registry on the same storage with the same seeds.
	r2 := newTestRegistry(t, dir, seeds)
	for _, tc := range []struct {
		key  ServiceKey
		want []string
	}{
		{users, []string{"127.0.0.1:2", "127.0.0.1:3"}},
		{orders, []string{"127.0.0.1:7"}},
		{ServiceKey{"empty", "v1"}, []string{}},
	} {
		svc, err := r2.Lookup(tc.key)
		if err != nil {
			t.Fatalf("%s after restart: %v", tc.key, err)
		}
		if got := addresses(svc); !slices.Equal(got, tc.want) {
			t.Errorf("%s after restart = %v, want %v", tc.key, got, tc.want)
		}
	}
	if svc, _ := r2.Lookup(users); svc.Endpoint("127.0.0.1:3").Weight != 4 {
		t.Errorf("saved weight lost")
	}

	// A reload with other seeds: the deleted seed stays deleted, the API
	// addition stays, a seed dropped from the config goes.
	must(t, r2.start(testEnv(dir, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:1", "127.0.0.1:5")}), nil, nil))
	svc, _ := r2.Lookup(users)
	if got := addresses(svc); !slices.Equal(got, []string{"127.0.0.1:3", "127.0.0.1:5"}) {
		t.Errorf("after reseed = %v", got)
	}
	if _, err := r2.Lookup(ServiceKey{"empty", "v1"}); !errors.Is(err, ErrUnknownService) {
		t.Errorf("version dropped from the config is still known: %v", err)
	}

	// Adding the deleted seed through the API brings it back.
	must(t, r2.Add(ctx, users, Endpoint{Address: "127.0.0.1:1"}))
	svc, _ = r2.Lookup(users)
	if got := addresses(svc); !slices.Equal(got, []string{"127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:5"}) {
		t.Errorf("after re-adding a deleted seed = %v", got)
	}

	// Deleting the last endpoint of an API-only version forgets it.
	must(t, del(r2, ctx, orders, "127.0.0.1:7"))
	if _, err := r2.Lookup(orders); !errors.Is(err, ErrUnknownService) {
		t.Errorf("empty API-only version still known: %v", err)
	}
}

func TestMemoryBackendFailedSaveChangesNothing(t *testing.T) {
	ctx := context.Background()
	users := ServiceKey{"users", "v1"}
	dir := t.TempDir()
	r := newTestRegistry(t, dir, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:1")})

	// Make the storage unwritable: its directory becomes a file.
	storeDir := filepath.Join(dir, "service_registry")
	must(t, os.RemoveAll(storeDir))
	must(t, os.WriteFile(storeDir, []byte("not a directory"), 0o600))

	err := r.Add(ctx, users, Endpoint{Address: "127.0.0.1:2"})
	if err == nil || !strings.Contains(err.Error(), "saving endpoints") {
		t.Fatalf("Add with broken storage: %v, want a saving error", err)
	}
	err = del(r, ctx, users, "127.0.0.1:1")
	if err == nil {
		t.Fatalf("Delete with broken storage succeeded")
	}
	svc, _ := r.Lookup(users)
	if got := addresses(svc); !slices.Equal(got, []string{"127.0.0.1:1"}) {
		t.Errorf("registry changed although saving failed: %v", got)
	}
}

func TestMemoryBackendCorruptStorage(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "service_registry"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "service_registry", "memory.json"), []byte(`{"changes":[{"service":"a/b","version":"v1","address":"x:1"}]}`), 0o600))
	backend := &MemoryBackend{StorageKey: "service_registry/memory.json"}
	table := NewTable()
	err := backend.Start(table, testEnv(dir, nil))
	if err == nil || !strings.Contains(err.Error(), "service name") {
		t.Fatalf("Start with a bad saved record: %v, want an error naming it", err)
	}
	if table.Snapshot().Synced() {
		t.Errorf("table published although loading failed")
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
