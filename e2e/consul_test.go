package e2e

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/consultest"
)

// consulRegistry is the global service_registry block for a consul
// backend on the fake agent at address.
func consulRegistry(address string) string {
	return fmt.Sprintf(`service_registry {
		backend consul {
			address %s
			wait 5s
		}
	}`, address)
}

// consulInstance is a passing instance of b at version, as a Consul
// agent would list it.
func consulInstance(t testing.TB, b *backend, version string) consultest.Instance {
	t.Helper()
	host, port, err := net.SplitHostPort(b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return consultest.Instance{ID: b.name, Address: host, Port: p, Tags: []string{"version=" + version}}
}

func TestConsulRoutesAndFollows(t *testing.T) {
	fake := consultest.Start(t)
	one, two, three := startBackend(t, "one"), startBackend(t, "two"), startBackend(t, "three")
	fake.Register("users", consulInstance(t, one, "v1"))
	c := startCaddy(t, consulRegistry(fake.Addr), roundRobinSite, caddyOpts{})
	waitFor(t, 10*time.Second, "routing to the instance registered in Consul", func() bool { return routesTo(c, "/users/v1/x", "one") })

	// A new instance, and a new version, are routed.
	fake.Register("users", consulInstance(t, two, "v1"))
	fake.Register("users", consulInstance(t, three, "v2"))
	waitFor(t, 5*time.Second, "the new version to be routed", func() bool { return routesTo(c, "/users/v2/x", "three") })
	waitFor(t, 5*time.Second, "the new instance to get requests", func() bool { return routesTo(c, "/users/v1/x", "two") })

	// An instance whose check fails leaves rotation.
	fake.SetStatus("users", "one", "critical")
	waitFor(t, 5*time.Second, "the critical instance to leave", func() bool {
		return !slices.ContainsFunc(c.Services(), func(s string) bool {
			return slices.Contains(strings.Split(s[strings.LastIndex(s, " ")+1:], ","), one.Addr)
		})
	})
	for range 10 {
		if !routesTo(c, "/users/v1/x", "two") {
			t.Fatal("v1 requests do not all go to the instance left")
		}
	}
	// A version none of whose instances passes has no available host
	// (503); once none is registered, it is unknown (404).
	fake.SetStatus("users", "three", "critical")
	waitFor(t, 5*time.Second, "a version without a passing instance to answer 503", func() bool {
		status, _, hdr := c.Get("/users/v2/x")
		return status == http.StatusServiceUnavailable && hdr.Get("Retry-After") != ""
	})
	fake.Deregister("users", "three")
	waitFor(t, 5*time.Second, "the deregistered version to be unknown", func() bool {
		status, _, _ := c.Get("/users/v2/x")
		return status == http.StatusNotFound
	})

	// Consul is the source of truth: the admin API does not write.
	status, body := c.AdminDo("POST", "/service_registry/services/users/v1", "application/json", `{"address":"`+one.Addr+`"}`)
	if status != http.StatusBadRequest || !strings.Contains(body, "read-only") {
		t.Errorf("adding through the admin API: %d %s, want 400 saying the backend is read-only", status, body)
	}
	status, body = c.AdminDo("DELETE", "/service_registry/services/users/v1/"+two.Addr, "", "")
	if status != http.StatusBadRequest || !strings.Contains(body, "read-only") || !routesTo(c, "/users/v1/x", "two") {
		t.Errorf("deleting through the admin API: %d %s, want 400 saying the backend is read-only, and no change", status, body)
	}
}

func TestConsulUnreachableWhenCaddyStarts(t *testing.T) {
	fake := consultest.StartLater(t)
	late := startBackend(t, "late")
	fake.Register("users", consulInstance(t, late, "v1"))
	c := startCaddy(t, consulRegistry(fake.Addr), proxySite, caddyOpts{})
	status, body, hdr := c.Get("/users/v1/x")
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("before the first sync: %d %q Retry-After %q; want 503 with Retry-After", status, body, hdr.Get("Retry-After"))
	}
	fake.Serve()
	waitFor(t, 20*time.Second, "routing once Consul is up", func() bool { return routesTo(c, "/users/v1/x", "late") })
}
