package consul

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"

	"github.com/svcreg/caddy-svcreg/internal/consultest"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
)

// Faults a real agent cannot be made to show, on the fake: a service
// whose query answers 500, a query that hangs, the index going backwards
// on connections that stay open.

// tagged returns a passing instance of the fake at 127.0.0.1:port with
// the tag version=version.
func tagged(id string, port int, version string) consultest.Instance {
	return consultest.Instance{ID: id, Port: port, Tags: []string{"version=" + version}}
}

// refused is how the fake answers a query Consul cannot serve.
var refused = consultest.Fault{Status: 500, Body: "rpc error making call: boom"}

// TestConsulOneServiceRefused has Consul answer 500 to the query of one
// service, orders: users routes all along, and follows its changes;
// orders is unknown until it is read, and keeps what it had once read.
// Each stretch of failure is logged once, and its end.
func TestConsulOneServiceRefused(t *testing.T) {
	fake := consultest.StartFake(t)
	fake.Register("users", tagged("u1", 9001, "v1"))
	fake.Register("orders", tagged("o1", 9002, "v1"))
	fake.Fail("/v1/health/service/orders", refused)
	tbl, logs := start(t, &Backend{}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync, though orders cannot be read", func() bool { return tbl.Snapshot().Synced() })
	if got := tableState(tbl, users); got != "127.0.0.1:9001" {
		t.Errorf("users after the first sync: %q", got)
	}
	if got := tableState(tbl, orders); got != "unknown" {
		t.Errorf("orders, never read: %q, want unknown", got)
	}
	fake.Register("users", tagged("u2", 9003, "v1"))
	testutil.Eventually(t, 10*time.Second, "a change of users while orders fails", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9003"
	})
	if got := warnedAbout(logs, "consul could not read a service; it stays unknown (404) until read, again with backoff (other services failing the same way are only counted)", "service"); !slices.Equal(got, []string{"orders"}) {
		t.Errorf("warned about %q, want once about orders", got)
	}

	fake.Clear("/v1/health/service/orders")
	testutil.Eventually(t, 10*time.Second, "orders once readable", func() bool { return tableState(tbl, orders) == "127.0.0.1:9002" })
	testutil.Eventually(t, 10*time.Second, "the end of the failure to be logged", func() bool {
		return logs.FilterMessage("consul services readable again").Len() == 1
	})

	// Read once, it keeps what it had while its query fails again, even
	// as its checks change.
	fake.Fail("/v1/health/service/orders", refused)
	fake.SetStatus("orders", "o1", api.HealthCritical)
	fake.Register("users", tagged("u3", 9004, "v1"))
	testutil.Eventually(t, 10*time.Second, "a change of users while orders fails again", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9003,127.0.0.1:9004"
	})
	testutil.Eventually(t, 10*time.Second, "the second failure to be logged", func() bool {
		return logs.FilterMessageSnippet("it keeps the endpoints last read").Len() == 1
	})
	if got := tableState(tbl, orders); got != "127.0.0.1:9002" {
		t.Errorf("orders while its query fails: %q, want what was last read", got)
	}
	if n := logs.FilterMessageSnippet("consul could not read a service").Len(); n != 2 {
		t.Errorf("two stretches of failure logged %d times, want twice", n)
	}
	entry := logs.FilterMessageSnippet("it keeps the endpoints last read").All()[0]
	if why := fmt.Sprint(entry.ContextMap()["error"]); !strings.Contains(why, "500") || !strings.Contains(why, "boom") {
		t.Errorf("the log does not say why: %q", why)
	}
	if n := logs.FilterMessageSnippet("consul unreachable").Len(); n != 0 {
		t.Errorf("Consul logged unreachable %d times, though it answered throughout", n)
	}
}

// TestConsulManyServicesRefused has Consul refuse the queries of many
// services the same way (as one without a leader does): one warning, and
// one line when they are all read again.
func TestConsulManyServicesRefused(t *testing.T) {
	fake := consultest.StartFake(t)
	const n = 20
	for i := range n {
		fake.Register(fmt.Sprintf("svc%d", i), tagged("a", 9001+i, "v1"))
		fake.Fail(fmt.Sprintf("/v1/health/service/svc%d", i), refused)
	}
	tbl, logs := start(t, &Backend{}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tbl.Snapshot().Synced() })
	for i := range n {
		fake.Clear(fmt.Sprintf("/v1/health/service/svc%d", i))
	}
	testutil.Eventually(t, 20*time.Second, "every service read", func() bool { return len(tbl.Snapshot().Services()) == n })
	testutil.Eventually(t, 10*time.Second, "the end of the failures to be logged", func() bool {
		return logs.FilterMessage("consul services readable again").Len() > 0
	})
	if got := logs.FilterMessageSnippet("consul could not read a service").Len(); got != 1 {
		t.Errorf("%d services failing the same way were logged %d times, want once", n, got)
	}
	ended := logs.FilterMessage("consul services readable again").All()
	if len(ended) != 1 || ended[0].ContextMap()["services"] != int64(n) {
		t.Errorf("the end of the failures logged as %v, want once, counting %d services", ended, n)
	}
}

// TestConsulHangingRead has the query of one service hang: the registry
// syncs once it times out, the other services route, and it is read
// once its query answers.
func TestConsulHangingRead(t *testing.T) {
	timeout := consulReadTimeout
	consulReadTimeout = 500 * time.Millisecond
	t.Cleanup(func() { consulReadTimeout = timeout })
	fake := consultest.StartFake(t)
	fake.Register("users", tagged("u1", 9001, "v1"))
	fake.Register("orders", tagged("o1", 9002, "v1"))
	fake.Fail("/v1/health/service/orders", consultest.Fault{Hang: true})
	tbl, logs := start(t, &Backend{}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tbl.Snapshot().Synced() })
	if got := tableState(tbl, users); got != "127.0.0.1:9001" {
		t.Errorf("users: %q", got)
	}
	fake.Register("users", tagged("u2", 9003, "v1"))
	testutil.Eventually(t, 10*time.Second, "a change of users while orders hangs", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9003"
	})
	entries := logs.FilterMessageSnippet("consul could not read a service").All()
	if len(entries) != 1 || entries[0].ContextMap()["service"] != "orders" || entries[0].ContextMap()["error"] != "no answer in 500ms" {
		t.Errorf("the hanging query logged as %v, want once, naming orders and the timeout", entries)
	}
	fake.Clear("/v1/health/service/orders")
	testutil.Eventually(t, 10*time.Second, "orders once its query answers", func() bool { return tableState(tbl, orders) == "127.0.0.1:9002" })
}

// TestConsulChecksRefused has Consul refuse the query of the health
// checks: changes to the catalog are still followed, the refusal is
// logged once, and once it answers, health changes are followed again.
func TestConsulChecksRefused(t *testing.T) {
	fake := consultest.StartFake(t)
	fake.Register("users", tagged("u1", 9001, "v1"))
	fake.Fail("/v1/health/state/any", refused)
	tbl, logs := start(t, &Backend{}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tableState(tbl, users) == "127.0.0.1:9001" })
	fake.Register("users", tagged("u2", 9002, "v1"))
	testutil.Eventually(t, 10*time.Second, "a new instance, by the catalog", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9002"
	})
	fake.Clear("/v1/health/state/any")
	testutil.Eventually(t, 10*time.Second, "the checks' query answering again to be logged", func() bool {
		return logs.FilterMessage("consul's health checks readable again").Len() == 1
	})
	fake.SetStatus("users", "u1", api.HealthCritical)
	testutil.Eventually(t, 10*time.Second, "a check turning critical", func() bool { return tableState(tbl, users) == "127.0.0.1:9002" })
	if n := logs.FilterMessageSnippet("consul refused the query of its health checks").Len(); n != 1 {
		t.Errorf("the refusal was logged %d times, want once", n)
	}
}

// TestConsulQueries checks the queries sent: blocking ones (with an
// index and a wait) on the catalog and on the checks that do not pass,
// and one read of a service, without an index, when it changes; none of
// a service not listed in services.
func TestConsulQueries(t *testing.T) {
	fake := consultest.StartFake(t)
	fake.Register("users", tagged("u1", 9001, "v1"))
	fake.Register("users", tagged("u2", 9002, "v1"))
	fake.Register("orders", tagged("o1", 9003, "v1"))
	tbl, _ := start(t, &Backend{Services: []string{"users"}}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9002" })
	before := len(fake.Requests())
	fake.SetStatus("users", "u1", api.HealthCritical)
	testutil.Eventually(t, 10*time.Second, "a check turning critical", func() bool { return tableState(tbl, users) == "127.0.0.1:9002" })

	// a query follows an answer no sooner than 100 ms after it was sent
	testutil.Eventually(t, 10*time.Second, "blocking queries (with an index and a wait) on the catalog and the checks", func() bool {
		blocking := map[string]bool{}
		for _, r := range fake.Requests() {
			blocking[r.Path] = blocking[r.Path] || r.Index != "" && r.Wait != ""
		}
		return blocking["/v1/catalog/services"] && blocking["/v1/health/state/any"]
	})
	blocking := map[string]bool{}
	for _, r := range fake.Requests() {
		switch {
		case r.Path == "/v1/health/state/any" && r.Filter != `Status != "passing"`:
			t.Errorf("the checks queried with filter %q", r.Filter)
		case r.Path == "/v1/health/service/users" && r.Index != "":
			t.Errorf("users read with a blocking query (index %s)", r.Index)
		case r.Path == "/v1/health/service/orders" || r.Path == "/v1/health/service/consul":
			t.Errorf("a service not listed was read: %s", r.Path)
		}
		if r.Index != "" && r.Wait != "" {
			blocking[r.Path] = true
		}
	}
	if !blocking["/v1/catalog/services"] || !blocking["/v1/health/state/any"] {
		t.Errorf("blocking queries (with an index and a wait) sent to %v, want the catalog and the checks", blocking)
	}
	var reads []string
	for _, r := range fake.Requests()[before:] {
		if strings.HasPrefix(r.Path, "/v1/health/service/") {
			reads = append(reads, r.Path)
		}
	}
	if !slices.Equal(reads, []string{"/v1/health/service/users"}) {
		t.Errorf("a check of users turning critical read %q, want users once", reads)
	}
}

func TestConsulIndexBackwards(t *testing.T) {
	srv := consultest.StartFake(t)
	srv.Register("users", tagged("a", 9001, "v1"))
	srv.Register("users", tagged("b", 9002, "v1"))
	srv.Register("orders", tagged("o", 9003, "v1"))
	// The queries held when the index goes back expire after the wait.
	tbl, logs := start(t, &Backend{Wait: caddy.Duration(time.Second)}, srv.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool {
		return len(tableHas(tbl, users)) == 2 && len(tableHas(tbl, orders)) == 1
	})

	// Consul wiped (or another cluster): the same connections now answer
	// with lower indexes, for data without a, b nor orders.
	srv.Reset()
	srv.Register("users", tagged("c", 9009, "v1"))
	testutil.Eventually(t, 20*time.Second, "everything read again, nothing stale", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9009"}) && tableHas(tbl, orders) == nil
	})
	testutil.Eventually(t, 10*time.Second, "the catalog's index going backwards to be noticed", func() bool {
		return logs.FilterMessageSnippet("index went backwards").Len() > 0
	})
	testutil.Eventually(t, 10*time.Second, "the check that Consul answers to run after the reset", func() bool {
		reqs := srv.Requests()
		return slices.ContainsFunc(reqs[len(reqs)/2:], func(r consultest.Request) bool { return r.Path == "/v1/status/leader" })
	})
	if n := logs.FilterMessageSnippet("consul unreachable").Len(); n != 0 {
		t.Errorf("logged unreachable %d times, though Consul answered throughout", n)
	}

	// Changes after the reset are followed as usual.
	srv.Register("users", tagged("d", 9010, "v1"))
	testutil.Eventually(t, 10*time.Second, "a change after the reset", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9009", "127.0.0.1:9010"})
	})
}

// TestConsulCheckNotRunYet: an instance that passed and whose HTTP check
// turns critical with no output (the agent has not run it since it
// restarted) is kept for 10 s, then dropped; one whose check
// ran and failed is dropped at once, and a new one whose check has not
// run is not routed.
func TestConsulCheckNotRunYet(t *testing.T) {
	fake := consultest.StartFake(t)
	ok := "HTTP GET http://127.0.0.1/: 200 OK"
	fake.Register("users", consultest.Instance{ID: "u1", Port: 9001, Tags: []string{"version=v1"}, CheckType: "http", Output: ok})
	fake.Register("users", consultest.Instance{ID: "u2", Port: 9002, Tags: []string{"version=v1"}, CheckType: "http", Output: ok})
	tbl, _ := start(t, &Backend{}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9002" })

	fake.SetCheck("users", "u1", api.HealthCritical, "")
	fake.Register("users", consultest.Instance{ID: "u3", Port: 9003, Tags: []string{"version=v1"}, CheckType: "http", Status: api.HealthCritical})
	fake.SetCheck("users", "u2", api.HealthCritical, "HTTP GET http://127.0.0.1/: dial tcp: connection refused")
	testutil.Eventually(t, 10*time.Second, "u2, whose check failed, to leave while u1 is kept", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001"
	})
	testutil.Eventually(t, 20*time.Second, "u1 to leave when its check has not run for too long", func() bool {
		return tableState(tbl, users) == ""
	})
}

// TestConsulCheckFlipsBetweenAnswers has a check fail and pass again
// between two answers of the query of the checks, while a read of its
// service (after a change of the catalog) saw it failing: the two
// answers show the same checks failing (none), yet the service must be
// read again, or its instance stays out of rotation until its service
// next changes.
func TestConsulCheckFlipsBetweenAnswers(t *testing.T) {
	fake := consultest.StartFake(t)
	fake.Register("users", tagged("u1", 9001, "v1"))
	fake.Register("users", tagged("u2", 9002, "v1"))
	tbl, _ := start(t, &Backend{}, fake.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9002" })

	// Hold the next query of the checks: wake the one waiting now with
	// a change, and wait for the next to arrive.
	fake.Fail("/v1/health/state/any", consultest.Fault{Hang: true})
	sent := len(fake.Requests())
	fake.Register("other", tagged("o1", 9100, "v1"))
	testutil.Eventually(t, 10*time.Second, "the next query of the checks to be held", func() bool {
		return slices.ContainsFunc(fake.Requests()[sent:], func(r consultest.Request) bool { return r.Path == "/v1/health/state/any" })
	})

	fake.SetStatus("users", "u1", api.HealthCritical)
	fake.Register("users", tagged("u3", 9003, "v1")) // the catalog changes: users is read again
	testutil.Eventually(t, 10*time.Second, "a read of users to see u1 failing", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9002,127.0.0.1:9003"
	})
	fake.SetStatus("users", "u1", api.HealthPassing)
	fake.Clear("/v1/health/state/any")
	testutil.Eventually(t, 10*time.Second, "u1 back once its check passes again", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"
	})
}
