package consultest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestAgent(t *testing.T) {
	a := Start(t)
	a.Register(&api.AgentServiceRegistration{ID: "u1", Name: "users", Port: 9001, Check: TTL(api.HealthPassing)})
	c := a.Client()
	entries := waitEntries(t, c, "users", 1)
	if got := entries[0].Checks.AggregatedStatus(); got != api.HealthPassing {
		t.Errorf("a TTL check registered passing: %s", got)
	}
	a.SetStatus("u1", api.HealthCritical)
	deadline := time.Now().Add(10 * time.Second)
	for waitEntries(t, c, "users", 1)[0].Checks.AggregatedStatus() != api.HealthCritical {
		if time.Now().After(deadline) {
			t.Fatal("the check did not turn critical in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Killed and restarted on the same address: the agent registers its
	// service again.
	a.Kill()
	if _, _, err := c.Catalog().Services(nil); err == nil {
		t.Fatal("the killed agent answers")
	}
	a.Restart()
	waitEntries(t, c, "users", 1)
	a.Deregister("u1")
	waitEntries(t, c, "users", 0)
}

// waitEntries waits until Consul holds n instances of service, and
// returns them.
func waitEntries(t *testing.T, c *api.Client, service string, n int) []*api.ServiceEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _, err := c.Health().Service(service, "", false, nil)
		if err == nil && len(entries) == n {
			return entries
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul holds %d instances of %s (%v), want %d", len(entries), service, err, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFake(t *testing.T) {
	f := StartFake(t)
	c, err := api.NewClient(&api.Config{Address: f.Addr})
	if err != nil {
		t.Fatal(err)
	}
	_, meta, err := c.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}

	// A blocking query answers once its index moves.
	got := make(chan uint64, 1)
	go func() {
		_, m, err := c.Catalog().Services(&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		got <- m.LastIndex
	}()
	f.Register("users", Instance{ID: "u1", Port: 9001, Status: api.HealthCritical})
	if index := <-got; index <= meta.LastIndex {
		t.Errorf("after a registration: index %d, want above %d", index, meta.LastIndex)
	}

	// The filter of the checks that do not pass.
	checks, _, err := c.Health().State(api.HealthAny, &api.QueryOptions{Filter: `Status != "passing"`})
	if err != nil || len(checks) != 1 || checks[0].ServiceName != "users" {
		t.Errorf("checks that do not pass: %v %v, want users' one", checks, err)
	}

	// Faults: a status, then a hang, until cleared.
	f.Fail("/v1/health/service/users", Fault{Status: 500, Body: "boom"})
	var status api.StatusError
	if _, _, err := c.Health().Service("users", "", false, nil); !errors.As(err, &status) || status.Code != 500 {
		t.Errorf("a failing query: %v, want 500", err)
	}
	f.Fail("/v1/health/service/users", Fault{Hang: true})
	answered := make(chan error, 1)
	go func() {
		_, _, err := c.Health().Service("users", "", false, nil)
		answered <- err
	}()
	select {
	case err := <-answered:
		t.Fatalf("a hanging query answered: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	f.Clear("/v1/health/service/users")
	if err := <-answered; err != nil {
		t.Errorf("a hanging query once cleared: %v", err)
	}
	if paths := len(slices.DeleteFunc(f.Requests(), func(r Request) bool { return r.Path != "/v1/health/service/users" })); paths != 2 {
		t.Errorf("%d requests of users seen, want 2", paths)
	}
}
