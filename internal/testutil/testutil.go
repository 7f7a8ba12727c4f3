// Package testutil holds the helpers that the tests of several packages
// share. (The registry package's own tests keep theirs: they cannot
// import a package that imports registry.)
package testutil

import (
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry"
)

// Endpoints returns endpoints of weight 1 at the given addresses.
func Endpoints(addrs ...string) []registry.Endpoint {
	out := make([]registry.Endpoint, len(addrs))
	for i, a := range addrs {
		out[i] = registry.Endpoint{Address: a, Weight: 1}
	}
	return out
}

// Addresses returns the addresses of svc's endpoints, in its (sorted) order.
func Addresses(svc *registry.Service) []string {
	out := []string{}
	for _, ep := range svc.Endpoints {
		out = append(out, ep.Address)
	}
	return out
}

// Must fails the test at once on an error.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Eventually polls cond until it holds, for up to timeout, and fails the
// test if it never does.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
