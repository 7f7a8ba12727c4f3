package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/svcreg/caddy-svcreg/backends/consul/consulstore"
	"github.com/svcreg/caddy-svcreg/internal/consultest"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// The tests run against a real Consul agent (consultest.Start), except
// those of faults that only the fake shows (faults_test.go).

var (
	users  = registry.ServiceKey{Service: "users", Version: "v1"}
	users2 = registry.ServiceKey{Service: "users", Version: "v2"}
	orders = registry.ServiceKey{Service: "orders", Version: "v1"}
)

// node is the name of the test agent's node.
const node = "svcreg-test"

// provision provisions c on the Consul agent at address (wait 2s unless
// set).
func provision(t testing.TB, c *Backend, address string) {
	t.Helper()
	if c.Address == "" {
		c.Address = address
	}
	if c.Wait == 0 {
		c.Wait = caddy.Duration(2 * time.Second)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	testutil.Must(t, c.Provision(ctx))
	testutil.Must(t, c.Validate())
}

// start provisions and starts c on the agent at address with env (and a
// log observer) and returns its table and its log. c stops when the test
// ends.
func start(t testing.TB, c *Backend, address string, env registry.BackendEnv) (*registry.Feed, *observer.ObservedLogs) {
	t.Helper()
	provision(t, c, address)
	core, logs := observer.New(zap.DebugLevel)
	env.Logger = zap.New(core)
	table := registry.NewFeed()
	testutil.Must(t, c.Start(table, env))
	t.Cleanup(func() { testutil.Must(t, c.Stop()) })
	return table, logs
}

// tableHas returns the sorted addresses of key in the table, nil for an
// unknown key.
func tableHas(tbl interface{ Snapshot() *registry.Snapshot }, key registry.ServiceKey) []string {
	svc, err := tbl.Snapshot().Lookup(key.Service, key.Version)
	if err != nil {
		return nil
	}
	return testutil.Addresses(svc)
}

// tableState returns "unknown" for an unknown key, else the sorted
// addresses of key in the table, joined by commas ("" for none).
func tableState(tbl interface{ Snapshot() *registry.Snapshot }, key registry.ServiceKey) string {
	svc, err := tbl.Snapshot().Lookup(key.Service, key.Version)
	if err != nil {
		return "unknown"
	}
	return strings.Join(testutil.Addresses(svc), ",")
}

// warnedAbout returns the sorted values of field in the entries of logs
// with message msg.
func warnedAbout(logs *observer.ObservedLogs, msg, field string) []string {
	var out []string
	for _, e := range logs.FilterMessage(msg).All() {
		out = append(out, fmt.Sprint(e.ContextMap()[field]))
	}
	sort.Strings(out)
	return out
}

// instance returns the registration of an instance of service at the
// node's address (127.0.0.1) and port, with the tag version=version and
// a TTL check that starts with status.
func instance(id, service string, port int, version, status string) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{ID: id, Name: service, Port: port, Tags: []string{"version=" + version},
		Check: consultest.TTL(status)}
}

func TestConsulSync(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(instance("u1", "users", 9001, "v1", api.HealthPassing))
	agent.Register(&api.AgentServiceRegistration{ID: "u2", Name: "users", Address: "127.0.0.2", Port: 9002,
		Tags: []string{"primary", "version=v1"}, Weights: &api.AgentWeights{Passing: 3, Warning: 1}, Check: consultest.TTL(api.HealthPassing)})
	agent.Register(&api.AgentServiceRegistration{ID: "u3", Name: "users", Address: "127.0.0.3", Port: 9003,
		Tags: []string{"version=v2"}, Check: consultest.TTL(api.HealthPassing)})
	// skipped, with one warning each
	agent.Register(&api.AgentServiceRegistration{ID: "no-version", Name: "users", Port: 9004, Tags: []string{"v1"}})
	agent.Register(instance("bad-version", "users", 9005, "v/1", api.HealthPassing))
	agent.Register(instance("no-port", "users", 0, "v1", api.HealthPassing))
	agent.Register(instance("bad-name", "us$ers", 9006, "v1", api.HealthPassing))
	// not passing from the start: left out, no warning
	agent.Register(instance("sick", "users", 9007, "v1", api.HealthCritical))

	tbl, logs := start(t, &Backend{}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tbl.Snapshot().Synced() })
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9001", "127.0.0.2:9002"}) {
		t.Errorf("users v1 after the first sync: %v", got)
	}
	if got := tableHas(tbl, users2); !slices.Equal(got, []string{"127.0.0.3:9003"}) {
		t.Errorf("users v2 after the first sync: %v", got)
	}
	svc, err := tbl.Snapshot().Lookup("users", "v1")
	testutil.Must(t, err)
	if w := svc.Endpoint("127.0.0.2:9002").Weight; w != 3 {
		t.Errorf("weight from Service.Weights.Passing: %d, want 3", w)
	}
	if w := svc.Endpoint("127.0.0.1:9001").Weight; w != 1 {
		t.Errorf("weight without Service.Weights: %d, want 1", w)
	}
	var names []string
	for _, s := range tbl.Snapshot().Services() {
		names = append(names, s.Name+" "+s.Version)
	}
	if !slices.Equal(names, []string{"users v1", "users v2"}) {
		t.Errorf("services in the table: %q, want users v1 and v2 (not consul itself, nor the bad name)", names)
	}

	steps := []struct {
		name string
		do   func()
		key  registry.ServiceKey
		want string // see tableState
	}{
		{"a new instance", func() { agent.Register(instance("u4", "users", 9008, "v1", api.HealthPassing)) }, users,
			"127.0.0.1:9001,127.0.0.1:9008,127.0.0.2:9002"},
		{"an instance turns critical", func() { agent.SetStatus("u1", api.HealthCritical) }, users,
			"127.0.0.1:9008,127.0.0.2:9002"},
		{"warning is not passing", func() { agent.SetStatus("u2", api.HealthWarning) }, users,
			"127.0.0.1:9008"},
		{"passing again", func() { agent.SetStatus("u1", api.HealthPassing) }, users,
			"127.0.0.1:9001,127.0.0.1:9008"},
		// a check of the node, not of a service
		{"the node in maintenance", func() { agent.Maintenance(true) }, users, ""},
		{"the node out of maintenance", func() { agent.Maintenance(false) }, users,
			"127.0.0.1:9001,127.0.0.1:9008"},
		// no check changes: only the catalog says something changed
		{"an instance registered again on another port", func() { agent.Register(instance("u4", "users", 9009, "v1", api.HealthPassing)) }, users,
			"127.0.0.1:9001,127.0.0.1:9009"},
		{"an instance deregistered", func() { agent.Deregister("u4") }, users,
			"127.0.0.1:9001"},
		{"a new service", func() { agent.Register(instance("o1", "orders", 9010, "v1", api.HealthPassing)) }, orders,
			"127.0.0.1:9010"},
		// known, no available host: 503
		{"every instance of a version critical", func() { agent.SetStatus("u3", api.HealthCritical) }, users2, ""},
		{"a version's last instance deregistered", func() { agent.Deregister("u3") }, users2, "unknown"},
		{"a service deregistered", func() { agent.Deregister("o1") }, orders, "unknown"},
	}
	for _, step := range steps {
		step.do()
		testutil.Eventually(t, 10*time.Second, step.name+" to show", func() bool {
			return tableState(tbl, step.key) == step.want
		})
	}
	if _, err := tbl.Snapshot().Lookup("users", "v2"); !errors.Is(err, registry.ErrUnknownVersion) {
		t.Errorf("users v2 once its last instance left: %v, want ErrUnknownVersion", err)
	}
	if _, err := tbl.Snapshot().Lookup("orders", "v1"); !errors.Is(err, registry.ErrUnknownService) {
		t.Errorf("orders once deregistered: %v, want ErrUnknownService", err)
	}

	// Each bad instance was warned about once, though users was read
	// again at every step.
	want := []string{node + "/bad-version", node + "/no-port", node + "/no-version"}
	if got := warnedAbout(logs, "skipping consul instance", "instance"); !slices.Equal(got, want) {
		t.Errorf("warned about instances %q, want once each about %q", got, want)
	}
	if got := warnedAbout(logs, "skipping consul service", "service"); !slices.Equal(got, []string{"us$ers"}) {
		t.Errorf("warned about services %q, want once about us$ers", got)
	}
	if n := logs.FilterMessage("consul registry synced").Len(); n != 1 {
		t.Errorf("the first sync was logged %d times, want once", n)
	}
	if n := logs.FilterLevelExact(zap.ErrorLevel).Len(); n != 0 {
		t.Errorf("%d errors logged, though Consul answered throughout: %v", n, logs.FilterLevelExact(zap.ErrorLevel).All())
	}
}

func TestConsulVersionFromMeta(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(&api.AgentServiceRegistration{ID: "a", Name: "users", Port: 9001, Tags: []string{"release/v1"}, Meta: map[string]string{"api": "v2"}})
	agent.Register(&api.AgentServiceRegistration{ID: "b", Name: "users", Port: 9002, Tags: []string{"release/v1"}})
	tbl, _ := start(t, &Backend{VersionTag: "release/", VersionMeta: "api"}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "both instances", func() bool {
		return tableState(tbl, users) != "unknown" && tableState(tbl, users2) != "unknown"
	})
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9002"}) {
		t.Errorf("users v1 (from the tag): %v", got)
	}
	if got := tableHas(tbl, users2); !slices.Equal(got, []string{"127.0.0.1:9001"}) {
		t.Errorf("users v2 (from the metadata, over the tag): %v", got)
	}
}

func TestConsulServicesFilter(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	agent.Register(instance("o", "orders", 9002, "v1", api.HealthPassing))
	tbl, _ := start(t, &Backend{Services: []string{"users", "payments"}}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "users", func() bool { return tableState(tbl, users) == "127.0.0.1:9001" })
	if got := tableState(tbl, orders); got != "unknown" {
		t.Errorf("orders, not listed: %q, want unknown", got)
	}
	// a listed service registered later is followed
	agent.Register(instance("p", "payments", 9003, "v1", api.HealthPassing))
	testutil.Eventually(t, 10*time.Second, "a listed service registered later", func() bool {
		return tableState(tbl, registry.ServiceKey{Service: "payments", Version: "v1"}) == "127.0.0.1:9003"
	})
	if got := tableState(tbl, orders); got != "unknown" {
		t.Errorf("orders, not listed: %q, want unknown", got)
	}
}

func TestConsulUnreachableAtStart(t *testing.T) {
	agent := consultest.StartLater(t) // ports reserved, nothing serving
	seeds := map[registry.ServiceKey][]registry.Endpoint{users: testutil.Endpoints("127.0.0.1:9100")}
	tbl, logs := start(t, &Backend{}, agent.Addr, registry.BackendEnv{Seeds: seeds}) // returns at once
	if _, err := tbl.Snapshot().Lookup("users", "v1"); !errors.Is(err, registry.ErrNotSynced) {
		t.Fatalf("before the first sync: %v, want registry.ErrNotSynced (503)", err)
	}
	testutil.Eventually(t, 10*time.Second, "the unreachable state to be logged", func() bool {
		return logs.FilterMessageSnippet("503 until the first sync").Len() > 0
	})

	agent.Restart()
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	testutil.Eventually(t, 20*time.Second, "the first sync once Consul is up", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001", "127.0.0.1:9100"})
	})
	if n := logs.FilterMessageSnippet("consul unreachable").Len(); n != 1 {
		t.Errorf("the unreachable state was logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("consul reachable again").Len(); n != 1 {
		t.Errorf("coming back was logged %d times, want once", n)
	}
}

// TestConsulKilledAndRestarted kills the agent: routing keeps the last
// snapshot. The agent comes back with its catalog rebuilt from scratch
// (dev mode keeps it in memory), at lower indexes, from the services
// registered through it, which it registers again; the backend routes
// what it holds then, and follows its changes.
func TestConsulKilledAndRestarted(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	agent.Register(instance("o", "orders", 9003, "v1", api.HealthPassing))
	tbl, logs := start(t, &Backend{}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool {
		return len(tableHas(tbl, users)) == 1 && len(tableHas(tbl, orders)) == 1
	})

	agent.Kill()
	testutil.Eventually(t, 10*time.Second, "losing Consul to be logged", func() bool {
		return logs.FilterMessageSnippet("routing keeps the last snapshot").Len() > 0
	})
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9001"}) || !tbl.Snapshot().Synced() {
		t.Fatalf("without Consul the last snapshot must stay: %v (synced %v)", got, tbl.Snapshot().Synced())
	}

	// The agent registers a again, with its TTL check critical until
	// the service reports (as a real agent does after a restart).
	agent.Restart()
	agent.Register(instance("b", "users", 9002, "v1", api.HealthPassing))
	agent.Deregister("o")
	testutil.Eventually(t, 20*time.Second, "what the restarted agent holds", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9002" && tableHas(tbl, orders) == nil
	})
	agent.SetStatus("a", api.HealthPassing)
	testutil.Eventually(t, 10*time.Second, "a's check passing again", func() bool {
		return tableState(tbl, users) == "127.0.0.1:9001,127.0.0.1:9002"
	})
	testutil.Eventually(t, 10*time.Second, "coming back to be logged", func() bool {
		return logs.FilterMessageSnippet("consul reachable again").Len() > 0
	})
	if n := logs.FilterMessageSnippet("consul unreachable").Len(); n != 1 {
		t.Errorf("losing Consul was logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("consul reachable again").Len(); n != 1 {
		t.Errorf("coming back was logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("could not read a service").Len(); n != 0 {
		t.Errorf("reads of services logged as failing %d times; Consul being away is logged once, as unreachable", n)
	}
}

// TestConsulFrozen freezes the agent (SIGSTOP): its blocking queries
// just wait (a minute, by default), but the reachability check sees it
// within seconds, and logs it once; routing keeps the last snapshot.
// Once it goes on, changes are followed.
func TestConsulFrozen(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	tbl, logs := start(t, &Backend{}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return len(tableHas(tbl, users)) == 1 })

	agent.Pause()
	testutil.Eventually(t, 20*time.Second, "a frozen Consul to be logged", func() bool {
		return logs.FilterMessageSnippet("routing keeps the last snapshot").Len() > 0
	})
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9001"}) {
		t.Fatalf("while Consul is frozen the last snapshot must stay: %v", got)
	}
	agent.Resume()
	agent.Register(instance("b", "users", 9002, "v1", api.HealthPassing))
	testutil.Eventually(t, 20*time.Second, "a change once Consul goes on", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001", "127.0.0.1:9002"})
	})
	if n := logs.FilterMessageSnippet("consul unreachable").Len(); n != 1 {
		t.Errorf("the freeze was logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("consul reachable again").Len(); n != 1 {
		t.Errorf("coming back was logged %d times, want once", n)
	}
}

// TestConsulCutOff cuts the backend off the agent (a partition):
// routing keeps the last snapshot; once mended, what changed meanwhile
// is read.
func TestConsulCutOff(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	proxy := testutil.NewProxy(t, agent.Addr)
	tbl, logs := start(t, &Backend{}, proxy.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return tableState(tbl, users) == "127.0.0.1:9001" })

	proxy.Cut()
	testutil.Eventually(t, 10*time.Second, "losing Consul to be logged", func() bool {
		return logs.FilterMessageSnippet("routing keeps the last snapshot").Len() > 0
	})
	agent.Register(instance("b", "users", 9002, "v1", api.HealthPassing))
	agent.SetStatus("a", api.HealthCritical)
	if got := tableState(tbl, users); got != "127.0.0.1:9001" {
		t.Fatalf("cut off, the last snapshot must stay: %q", got)
	}
	proxy.Mend()
	testutil.Eventually(t, 10*time.Second, "what changed while cut off", func() bool { return tableState(tbl, users) == "127.0.0.1:9002" })
	testutil.Eventually(t, 10*time.Second, "coming back to be logged", func() bool {
		return logs.FilterMessageSnippet("consul reachable again").Len() > 0
	})
	if n := logs.FilterMessageSnippet("consul unreachable").Len(); n != 1 {
		t.Errorf("the cut was logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("could not read a service").Len(); n != 0 {
		t.Errorf("reads of services logged as failing %d times; Consul out of reach is logged once, as unreachable", n)
	}
}

func TestConsulTokenAndDatacenter(t *testing.T) {
	const secret = "s3cret-Consul-t0ken"
	t.Setenv("SVCREG_TEST_CONSUL_TOKEN", secret)
	agent := consultest.StartACL(t, secret)
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	tbl, logs := start(t, &Backend{Token: "{env.SVCREG_TEST_CONSUL_TOKEN}", Datacenter: "dc1"}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync with the token", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001"})
	})
	checkNoSecret(t, logs, secret)

	// A token Consul refuses: not synced, said once, and never shown.
	const wrong = "wrong-Consul-t0ken"
	refused, refusedLogs := start(t, &Backend{Token: wrong}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the refusal to be logged", func() bool {
		return refusedLogs.FilterMessageSnippet("consul unreachable").Len() > 0
	})
	if refused.Snapshot().Synced() {
		t.Error("synced although Consul refused the token")
	}
	entry := refusedLogs.FilterMessageSnippet("consul unreachable").All()[0]
	if reason := fmt.Sprint(entry.ContextMap()["error"]); !strings.Contains(reason, "403") {
		t.Errorf("the log does not say why: %q", reason)
	}
	checkNoSecret(t, refusedLogs, wrong)

	// The datacenter is sent: Consul knows no other.
	other, otherLogs := start(t, &Backend{Token: secret, Datacenter: "dc2"}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "an unknown datacenter to be logged", func() bool {
		return otherLogs.FilterMessageSnippet("consul unreachable").Len() > 0
	})
	entry = otherLogs.FilterMessageSnippet("consul unreachable").All()[0]
	if reason := fmt.Sprint(entry.ContextMap()["error"]); !strings.Contains(reason, "datacenter") || other.Snapshot().Synced() {
		t.Errorf("datacenter dc2: synced %v, logged %q; want not synced, and the log saying no such datacenter", other.Snapshot().Synced(), reason)
	}

	// A token placeholder that expands to nothing is a config error.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := (&Backend{Token: "{env.SVCREG_TEST_CONSUL_UNSET_TOKEN}"}).Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), `token "{env.SVCREG_TEST_CONSUL_UNSET_TOKEN}" is empty once expanded`) {
		t.Errorf("an empty token: %v", err)
	}
}

// checkNoSecret fails if any log entry shows secret.
func checkNoSecret(t *testing.T, logs *observer.ObservedLogs, secret string) {
	t.Helper()
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), secret) {
			t.Errorf("the token shows in the log: %s %v", e.Message, e.ContextMap())
		}
	}
}

func TestConsulReadOnlyWithSeedsAndTraffic(t *testing.T) {
	agent := consultest.Start(t)
	agent.Register(instance("a", "users", 9001, "v1", api.HealthPassing))
	agent.Register(instance("b", "users", 9002, "v2", api.HealthPassing))
	c := &Backend{}
	provision(t, c, agent.Addr)
	r := registry.New(c, registry.Options{})
	t.Cleanup(func() { testutil.Must(t, r.Stop()) })
	policy := traffic.Policy{Split: map[string]int{"v1": 90, "v2": 10}}
	seeds := map[registry.ServiceKey][]registry.Endpoint{users: testutil.Endpoints("127.0.0.1:9100")}
	testutil.Must(t, r.Start(registry.BackendEnv{Seeds: seeds, Traffic: map[string]traffic.Policy{"users": policy}, Logger: zap.NewNop()}, nil, nil))
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	if got := tableHas(r, users); !slices.Equal(got, []string{"127.0.0.1:9001", "127.0.0.1:9100"}) {
		t.Errorf("seeds merged with Consul's: %v", got)
	}
	if r.Snapshot().Traffic("users") == nil {
		t.Error("the config's traffic policy does not apply")
	}

	ctx := context.Background()
	err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9003"})
	if !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("adding through the registry: %v, want ErrInvalid saying the backend is read-only", err)
	}
	svc, err := r.Lookup(users)
	testutil.Must(t, err)
	ep := svc.Endpoint("127.0.0.1:9001")
	if _, err := r.Delete(ctx, users, "127.0.0.1:9001"); !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("deleting through the registry: %v, want ErrInvalid saying the backend is read-only", err)
	}
	if !ep.Stats().Available || !slices.Contains(tableHas(r, users), "127.0.0.1:9001") {
		t.Error("a refused delete took the endpoint out")
	}
	if err := r.PutTraffic(ctx, "users", policy); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("storing a traffic policy: %v, want ErrInvalid", err)
	}

	// A later config's seeds and policies replace these.
	seeds2 := map[registry.ServiceKey][]registry.Endpoint{{Service: "users", Version: "v3"}: testutil.Endpoints("127.0.0.1:9200")}
	testutil.Must(t, r.Start(registry.BackendEnv{Seeds: seeds2, Logger: zap.NewNop()}, nil, nil))
	if got := tableHas(r, users); !slices.Equal(got, []string{"127.0.0.1:9001"}) {
		t.Errorf("users v1 after a reconfigure: %v", got)
	}
	if got := tableHas(r, registry.ServiceKey{Service: "users", Version: "v3"}); !slices.Equal(got, []string{"127.0.0.1:9200"}) {
		t.Errorf("the new config's seed: %v", got)
	}
	if r.Snapshot().Traffic("users") != nil {
		t.Error("the old config's traffic policy stays")
	}
}

// backendGoroutines returns the stacks of goroutines of the backend and
// of HTTP client connections.
func backendGoroutines() []string {
	var buf strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	var out []string
	for g := range strings.SplitSeq(buf.String(), "\n\n") {
		if strings.Contains(g, "backends/consul/consulstore.(*Store)") || strings.Contains(g, "net/http.(*persistConn)") {
			out = append(out, g)
		}
	}
	return out
}

func TestConsulStopEndsEverything(t *testing.T) {
	agent := consultest.Start(t)
	for i := range 5 {
		agent.Register(instance(fmt.Sprintf("a%d", i), fmt.Sprintf("svc%d", i), 9001+i, "v1", api.HealthPassing))
	}
	// queries held far longer than the test: Stop must end them
	c := &Backend{Wait: caddy.Duration(10 * time.Minute)}
	tbl, _ := start(t, c, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 10*time.Second, "the first sync", func() bool { return len(tbl.Snapshot().Services()) == 5 })
	if n := len(backendGoroutines()); n < 2+consulstore.Readers {
		t.Fatalf("%d goroutines before Stop, fewer than the two watches and the readers:\n%s", n, strings.Join(backendGoroutines(), "\n\n"))
	}
	stopped := make(chan error, 1)
	go func() { stopped <- c.Stop() }()
	select {
	case err := <-stopped:
		testutil.Must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return while blocking queries were held")
	}
	testutil.Eventually(t, 10*time.Second, "no goroutine of the backend, nor connection, left", func() bool {
		return len(backendGoroutines()) == 0
	})
	if !tbl.Snapshot().Synced() || len(tbl.Snapshot().Services()) != 5 {
		t.Error("Stop changed the table")
	}
}

func TestConsulProvision(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	for _, tc := range []struct {
		name string
		b    *Backend
		err  string
	}{
		{"defaults", &Backend{}, ""},
		{"host:port", &Backend{Address: "consul.internal:8500"}, ""},
		{"http URL", &Backend{Address: "http://127.0.0.1:8500"}, ""},
		{"https URL", &Backend{Address: "https://consul.example:8501"}, ""},
		{"no port", &Backend{Address: "consul.internal"}, `address "consul.internal": want host:port`},
		{"other scheme", &Backend{Address: "ftp://consul.internal:21"}, "want host:port or an http:// or https:// URL"},
		{"credentials in the URL", &Backend{Address: "http://root:pa55word@consul.internal:8500"}, "credentials in the URL are not supported"},
		{"empty address placeholder", &Backend{Address: "{env.SVCREG_TEST_CONSUL_UNSET}"}, `address "{env.SVCREG_TEST_CONSUL_UNSET}" is empty once expanded`},
		{"empty datacenter placeholder", &Backend{Datacenter: "{env.SVCREG_TEST_CONSUL_UNSET}"}, "datacenter"},
		{"short wait", &Backend{Wait: caddy.Duration(500 * time.Millisecond)}, "wait 500ms: want a duration from 1s to 10m"},
		{"long wait", &Backend{Wait: caddy.Duration(11 * time.Minute)}, "wait 11m0s: want a duration from 1s to 10m"},
		{"bad service", &Backend{Services: []string{"users", "or/ders"}}, `services: invalid service name "or/ders"`},
		{"service twice", &Backend{Services: []string{"users", "users"}}, `services: "users" listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.b
			address := b.Address
			err := b.Provision(ctx)
			if err == nil {
				err = b.Validate()
			}
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if b.VersionTag != "version=" || b.Wait != caddy.Duration(time.Minute) || (address == "" && b.Address != "127.0.0.1:8500") {
					t.Errorf("defaults not set: version_tag %q, wait %v, address %q", b.VersionTag, time.Duration(b.Wait), b.Address)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "consul backend: ") {
				t.Errorf("error %v, want one from the consul backend containing %q", err, tc.err)
			}
		})
	}

	// Settings as read decide whether two configs share a registry.
	a, b, other := &Backend{Token: "x"}, &Backend{Token: "x"}, &Backend{Token: "y"}
	for _, be := range []*Backend{a, b, other} {
		testutil.Must(t, be.Provision(ctx))
	}
	if a.Fingerprint() != b.Fingerprint() || a.Fingerprint() == other.Fingerprint() {
		t.Error("the fingerprint does not follow the token")
	}
}

// TestConsulRestartedAgentChecksNotRunYet restarts the agent of a host
// whose HTTP check passes: the agent marks the check critical, with no
// output, until it has run it again (once within its interval), though
// the host never stopped answering. The host stays routed meanwhile.
func TestConsulRestartedAgentChecksNotRunYet(t *testing.T) {
	host := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(host.Close)
	port := host.Listener.Addr().(*net.TCPAddr).Port
	agent := consultest.Start(t)
	agent.Register(&api.AgentServiceRegistration{ID: "h", Name: "users", Address: "127.0.0.1", Port: port,
		Tags: []string{"version=v1"}, Check: &api.AgentServiceCheck{HTTP: host.URL, Interval: "10s"}})
	// With the recovery grace a registry has by default: the restarted
	// agent's catalog starts empty (-dev), and the agent registers its
	// services again a moment later.
	c := &Backend{}
	provision(t, c, agent.Addr)
	reg := registry.New(c, registry.Options{})
	testutil.Must(t, reg.Start(registry.BackendEnv{}, nil, nil))
	t.Cleanup(func() { testutil.Must(t, reg.Stop()) })
	tbl := reg
	want := fmt.Sprintf("127.0.0.1:%d", port)
	testutil.Eventually(t, 20*time.Second, "the first check to pass", func() bool { return tableState(tbl, users) == want })

	// The agent runs the check again at a random time within its
	// interval of its start: restart it until the check has stayed not
	// run past the recovery grace (2 s), which alone would keep the host
	// routed until then.
	const pastGrace = 3 * time.Second
	longest := time.Duration(0)
	for try := 0; try < 8 && longest < pastGrace; try++ {
		agent.Kill()
		agent.Restart()
		var notRunSince time.Time
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if got := tableState(tbl, users); got != want {
				t.Fatalf("routing %q while the restarted agent had not run the check yet, want %q", got, want)
			}
			checks, _, err := agent.Client().Health().Checks("users", nil)
			if err == nil && len(checks) == 1 {
				if checks[0].Status == api.HealthPassing {
					break
				}
				if checks[0].Output == "" {
					if notRunSince.IsZero() {
						notRunSince = time.Now()
					}
					longest = max(longest, time.Since(notRunSince))
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if longest < pastGrace {
		t.Fatalf("in 8 restarts the agent never left the check unrun past the recovery grace (at most %v): the case was not tested", longest)
	}
	if got := tableState(tbl, users); got != want {
		t.Errorf("after the check passed again: %q, want %q", got, want)
	}
}

// TestConsulHTTPCheckFails: a host whose HTTP check runs and fails is
// dropped at once.
func TestConsulHTTPCheckFails(t *testing.T) {
	good := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(good.Close)
	bad := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	badPort := bad.Listener.Addr().(*net.TCPAddr).Port
	port := good.Listener.Addr().(*net.TCPAddr).Port
	agent := consultest.Start(t)
	agent.Register(&api.AgentServiceRegistration{ID: "g", Name: "users", Address: "127.0.0.1", Port: port,
		Tags: []string{"version=v1"}, Check: &api.AgentServiceCheck{HTTP: good.URL, Interval: "1s"}})
	agent.Register(&api.AgentServiceRegistration{ID: "b", Name: "users", Address: "127.0.0.1", Port: badPort,
		Tags: []string{"version=v1"}, Check: &api.AgentServiceCheck{HTTP: bad.URL, Interval: "1s"}})
	tbl, _ := start(t, &Backend{}, agent.Addr, registry.BackendEnv{RecoveryGrace: -1})
	both := fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", min(port, badPort), max(port, badPort))
	testutil.Eventually(t, 20*time.Second, "both checks to pass", func() bool { return tableState(tbl, users) == both })
	bad.Close()
	testutil.Eventually(t, 20*time.Second, "a check that ran and failed to take its host out", func() bool {
		return tableState(tbl, users) == fmt.Sprintf("127.0.0.1:%d", port)
	})

}
