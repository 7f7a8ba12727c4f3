package registry

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// testBackend keeps endpoints in memory only: the seeds with Add and
// Delete on top, as a backend without a store would.
type testBackend struct {
	mu      sync.Mutex
	feed    *Feed
	seeds   map[ServiceKey][]Endpoint
	changes map[ServiceKey]map[string]Change
	stopped bool
}

func (b *testBackend) Start(feed *Feed, env BackendEnv) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.feed, b.changes = feed, map[ServiceKey]map[string]Change{}
	b.seeds = env.Seeds
	b.feed.Configure(env)
	b.feed.Publish(b.changes, false)
	return nil
}

func (b *testBackend) Reconfigure(env BackendEnv) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seeds = env.Seeds
	b.feed.Configure(env)
	b.feed.Publish(b.changes, false)
	return nil
}

func (b *testBackend) Add(_ context.Context, key ServiceKey, ep Endpoint) error {
	return b.apply(key, Change{Endpoint: ep})
}

func (b *testBackend) Delete(_ context.Context, key ServiceKey, address string) error {
	if err := b.CheckDelete(key, address); err != nil {
		return err
	}
	return b.apply(key, Change{Endpoint: Endpoint{Address: address}, Deleted: true})
}

func (b *testBackend) CheckDelete(key ServiceKey, address string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	eps, known := b.feed.Merged(key, b.changes[key])
	switch {
	case !known:
		return fmt.Errorf("deleting %s from %s: %w", address, key, ErrUnknownVersion)
	case !slices.ContainsFunc(eps, func(ep Endpoint) bool { return ep.Address == address }):
		return fmt.Errorf("deleting %s from %s: %w", address, key, ErrUnknownEndpoint)
	}
	return nil
}

func (b *testBackend) apply(key ServiceKey, c Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changes[key] == nil {
		b.changes[key] = map[string]Change{}
	}
	b.changes[key][c.Address] = c
	b.feed.PublishKey(key, b.changes[key], false)
	return nil
}

func (b *testBackend) Stop() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopped = true
	return nil
}

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// startRegistry starts a registry with seeds on a testBackend and stops it
// when the test ends.
func startRegistry(t testing.TB, seeds map[ServiceKey][]Endpoint, opts Options) *Registry {
	t.Helper()
	r := New(new(testBackend), opts)
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := r.Start(BackendEnv{Seeds: normalized(t, seeds)}, nil, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// normalized returns seeds with every endpoint normalized.
func normalized(t testing.TB, seeds map[ServiceKey][]Endpoint) map[ServiceKey][]Endpoint {
	t.Helper()
	out := make(map[ServiceKey][]Endpoint, len(seeds))
	for key, eps := range seeds {
		out[key] = []Endpoint{}
		for _, ep := range eps {
			n, err := ep.Normalize()
			if err != nil {
				t.Fatal(err)
			}
			out[key] = append(out[key], n)
		}
	}
	return out
}

func eps(addrs ...string) []Endpoint {
	out := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		out[i] = Endpoint{Address: a, Weight: 1}
	}
	return out
}

func addresses(svc *Service) []string {
	out := []string{}
	for _, ep := range svc.Endpoints {
		out = append(out, ep.Address)
	}
	return out
}

// del deletes an endpoint and forgets how the drain went.
func del(r *Registry, ctx context.Context, key ServiceKey, address string) error {
	_, err := r.Delete(ctx, key, address)
	return err
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds, for up to timeout.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder collects events as "name host reason".
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) emit(name string, data map[string]any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, name+" "+data["host"].(string)+" "+data["reason"].(string))
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}
