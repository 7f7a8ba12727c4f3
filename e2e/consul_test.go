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

	"github.com/hashicorp/consul/api"

	"github.com/svcreg/caddy-svcreg/internal/consultest"
)

// The Consul tests run Caddy against a real Consul agent
// (consultest.Start), except for a fault only the fake shows: one
// service's query answering 500.

// consulRegistry is the global service_registry block for a consul
// backend on the agent at address.
func consulRegistry(address string) string {
	return fmt.Sprintf(`service_registry {
		backend consul {
			address %s
			wait 5s
		}
	}`, address)
}

// consulHostPort splits b's address into its host and port.
func consulHostPort(t testing.TB, b *backend) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return host, p
}

// consulInstance is the registration of b, named for it, as an instance
// of service at version, with a TTL check that starts passing; check nil
// registers it without a check.
func consulInstance(t testing.TB, b *backend, service, version string, check *api.AgentServiceCheck) *api.AgentServiceRegistration {
	t.Helper()
	host, port := consulHostPort(t, b)
	return &api.AgentServiceRegistration{ID: b.name, Name: service, Address: host, Port: port,
		Tags: []string{"version=" + version}, Check: check}
}

// fakeInstance is b as an instance of the fake agent, at version.
func fakeInstance(t testing.TB, b *backend, version string) consultest.Instance {
	t.Helper()
	host, port := consulHostPort(t, b)
	return consultest.Instance{ID: b.name, Address: host, Port: port, Tags: []string{"version=" + version}}
}

func TestConsulRoutesAndFollows(t *testing.T) {
	agent := consultest.Start(t)
	one, two, three := startBackend(t, "one"), startBackend(t, "two"), startBackend(t, "three")
	passing := consultest.TTL(api.HealthPassing)
	agent.Register(consulInstance(t, one, "users", "v1", passing))
	c := startCaddy(t, consulRegistry(agent.Addr), roundRobinSite, caddyOpts{})
	waitFor(t, 10*time.Second, "routing to the instance registered in Consul", func() bool { return routesTo(c, "/users/v1/x", "one") })

	// A new instance, and a new version, are routed.
	agent.Register(consulInstance(t, two, "users", "v1", passing))
	agent.Register(consulInstance(t, three, "users", "v2", passing))
	waitFor(t, 5*time.Second, "the new version to be routed", func() bool { return routesTo(c, "/users/v2/x", "three") })
	waitFor(t, 5*time.Second, "the new instance to get requests", func() bool { return routesTo(c, "/users/v1/x", "two") })

	// An instance whose check fails leaves rotation.
	agent.SetStatus("one", api.HealthCritical)
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
	agent.SetStatus("three", api.HealthCritical)
	waitFor(t, 5*time.Second, "a version without a passing instance to answer 503", func() bool {
		status, _, hdr := c.Get("/users/v2/x")
		return status == http.StatusServiceUnavailable && hdr.Get("Retry-After") != ""
	})
	agent.Deregister("three")
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
	agent := consultest.StartLater(t)
	late := startBackend(t, "late")
	c := startCaddy(t, consulRegistry(agent.Addr), proxySite, caddyOpts{})
	status, body, hdr := c.Get("/users/v1/x")
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("before the first sync: %d %q Retry-After %q; want 503 with Retry-After", status, body, hdr.Get("Retry-After"))
	}
	agent.Restart()
	agent.Register(consulInstance(t, late, "users", "v1", consultest.TTL(api.HealthPassing)))
	waitFor(t, 20*time.Second, "routing once Consul is up", func() bool { return routesTo(c, "/users/v1/x", "late") })
}

// TestConsulLostUnderLoad kills the agent, then freezes it, under load:
// no request fails, since routing keeps the last snapshot; once the
// agent is back, changes are routed again.
func TestConsulLostUnderLoad(t *testing.T) {
	agent := consultest.Start(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	// no check: the restarted agent registers a again, passing
	agent.Register(consulInstance(t, a, "users", "v1", nil))
	c := startCaddy(t, consulRegistry(agent.Addr), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "routing to a", func() bool { return routesTo(c, "/users/v1/x", "a") })

	runLoad(t, "http://"+c.HTTP+"/users/v1/x", 8, 3*time.Second,
		step{500 * time.Millisecond, agent.Kill}).noneFailed(t)
	agent.Restart()
	agent.Register(consulInstance(t, b, "users", "v1", nil))
	waitFor(t, 20*time.Second, "b, registered once Consul is back", func() bool { return routesTo(c, "/users/v1/x", "b") })

	runLoad(t, "http://"+c.HTTP+"/users/v1/x", 8, 3*time.Second,
		step{500 * time.Millisecond, agent.Pause},
		step{2500 * time.Millisecond, agent.Resume}).noneFailed(t)
	agent.Deregister("b")
	waitFor(t, 20*time.Second, "b deregistered once Consul goes on", func() bool {
		for range 4 {
			if !routesTo(c, "/users/v1/x", "a") {
				return false
			}
		}
		return true
	})
}

// TestConsulReloadToAnotherAgent reloads Caddy's config onto another
// Consul agent: it routes what that one holds.
func TestConsulReloadToAnotherAgent(t *testing.T) {
	first, second := consultest.Start(t), consultest.Start(t)
	one, two := startBackend(t, "one"), startBackend(t, "two")
	first.Register(consulInstance(t, one, "users", "v1", nil))
	second.Register(consulInstance(t, two, "users", "v1", nil))
	second.Register(consulInstance(t, one, "orders", "v1", nil))
	c := startCaddy(t, consulRegistry(first.Addr), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "routing to the first agent's instance", func() bool { return routesTo(c, "/users/v1/x", "one") })
	c.Reload(consulRegistry(second.Addr), proxySite)
	waitFor(t, 5*time.Second, "routing to the second agent's instances", func() bool {
		return routesTo(c, "/users/v1/x", "two") && routesTo(c, "/orders/v1/x", "one")
	})
}

// TestConsulOneServiceFailing has Consul answer 500 to the query of one
// service (on the fake: an agent cannot be made to): the other service
// routes without a failed request, and follows its changes; the failing
// one is unknown until read, and keeps what it had once read.
func TestConsulOneServiceFailing(t *testing.T) {
	fake := consultest.StartFake(t)
	u1, u2, o1 := startBackend(t, "u1"), startBackend(t, "u2"), startBackend(t, "o1")
	fake.Register("users", fakeInstance(t, u1, "v1"))
	fake.Register("orders", fakeInstance(t, o1, "v1"))
	refused := consultest.Fault{Status: 500, Body: "rpc error making call: boom"}
	fake.Fail("/v1/health/service/orders", refused)
	c := startCaddy(t, consulRegistry(fake.Addr), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "users to route while orders fails", func() bool { return routesTo(c, "/users/v1/x", "u1") })
	if status, _, _ := c.Get("/orders/v1/x"); status != http.StatusNotFound {
		t.Errorf("orders, never read: %d, want 404", status)
	}

	runLoad(t, "http://"+c.HTTP+"/users/v1/x", 8, 2*time.Second,
		step{500 * time.Millisecond, func() { fake.Register("users", fakeInstance(t, u2, "v1")) }}).noneFailed(t)
	waitFor(t, 5*time.Second, "users' new instance, while orders fails", func() bool { return routesTo(c, "/users/v1/x", "u2") })

	fake.Clear("/v1/health/service/orders")
	waitFor(t, 10*time.Second, "orders once it can be read", func() bool { return routesTo(c, "/orders/v1/x", "o1") })
	fake.Fail("/v1/health/service/orders", refused)
	runLoad(t, "http://"+c.HTTP+"/orders/v1/x", 8, 2*time.Second,
		step{500 * time.Millisecond, func() { fake.Register("users", fakeInstance(t, u1, "v1")) }}).noneFailed(t)
	if n := strings.Count(c.Log(), "consul could not read a service"); n != 2 {
		t.Errorf("two stretches of failure of orders logged %d times, want twice:\n%s", n, c.Log())
	}
}
