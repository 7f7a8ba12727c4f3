package svcreg

import (
	"context"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry"
)

// TestRetryBudget spends a budget: it starts full (burst), each request
// adds a share of a retry, and the floor adds some every second.
func TestRetryBudget(t *testing.T) {
	c := budgetRule{ratio: 0.5, perSecond: 10, burst: 5}
	var b retryBudget
	now := time.Unix(0, 1e18)
	n := 0
	for b.withdraw(c, now) {
		n++
	}
	if n != 5 {
		t.Errorf("a new budget allowed %d retries, want its burst of 5", n)
	}
	for range 4 {
		b.deposit(c)
	}
	first, second, third := b.withdraw(c, now), b.withdraw(c, now), b.withdraw(c, now)
	if !first || !second || third {
		t.Error("4 requests at 0.5 did not allow exactly 2 retries")
	}
	now = now.Add(300 * time.Millisecond)
	n = 0
	for b.withdraw(c, now) {
		n++
	}
	if n != 3 {
		t.Errorf("0.3s of a 10/s floor allowed %d retries, want 3", n)
	}
}

// TestServiceStateKeptWhileRegistered: a version's counters and budget
// stay while it stays registered, whatever its endpoints do, and go with
// it.
func TestServiceStateKeptWhileRegistered(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, nil)
	ctx := context.Background()
	lookup := func() *registry.Service {
		t.Helper()
		svc, err := reg.Lookup(key)
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	if err := reg.Add(ctx, key, registry.Endpoint{Address: "127.0.0.1:9001"}); err != nil {
		t.Fatal(err)
	}
	first := lookup()
	if c := countsOf(first); c.retries != 0 {
		t.Fatalf("a new version counts %d retries", c.retries)
	}
	stateOf(first).retries.Add(1)
	if err := reg.Add(ctx, key, registry.Endpoint{Address: "127.0.0.1:9002"}); err != nil {
		t.Fatal(err)
	}
	second := lookup()
	if second == first {
		t.Fatal("adding an endpoint kept the same Service")
	}
	if c := countsOf(second); c.retries != 1 {
		t.Errorf("after an endpoint was added the version counts %d retries, want the 1 counted before", c.retries)
	}
	for _, addr := range []string{"127.0.0.1:9001", "127.0.0.1:9002"} {
		if _, err := reg.Delete(ctx, key, addr); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Lookup(key); err == nil {
		t.Fatal("the version is still registered with no endpoint")
	}
	if err := reg.Add(ctx, key, registry.Endpoint{Address: "127.0.0.1:9001"}); err != nil {
		t.Fatal(err)
	}
	if c := countsOf(lookup()); c.retries != 0 {
		t.Errorf("registered again, the version counts %d retries from before its removal, want 0", c.retries)
	}
}
