package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-zookeeper/zk"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
	"github.com/svcreg/caddy-svcreg/registry"
)

var users = registry.ServiceKey{Service: "users", Version: "v1"}

// startRegistry starts a registry on b with seeds; it does not wait for
// the first sync.
func startRegistry(t *testing.T, b *Backend, seeds map[registry.ServiceKey][]registry.Endpoint) (*registry.Registry, *observer.ObservedLogs) {
	t.Helper()
	if b.SessionTimeout == 0 {
		b.SessionTimeout = caddy.Duration(4 * time.Second)
	}
	if err := b.setup(nil); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	r := registry.New(b, registry.Options{})
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := r.Start(registry.BackendEnv{Seeds: seeds, Logger: zap.New(core)}, nil, nil); err != nil {
		t.Fatal(err)
	}
	return r, logs
}

// has returns the sorted addresses of key.
func has(r *registry.Registry, key registry.ServiceKey) []string {
	svc, err := r.Lookup(key)
	if err != nil {
		return nil
	}
	var out []string
	for _, ep := range svc.Endpoints {
		out = append(out, ep.Address)
	}
	slices.Sort(out)
	return out
}

// curator writes an instance node as Curator's ServiceDiscovery does.
func curator(t *testing.T, conn *zk.Conn, service, id, address string, port int, payload string, flags int32) string {
	t.Helper()
	for _, p := range []string{"/services", "/services/" + service} {
		if _, err := conn.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			t.Fatal(err)
		}
	}
	p := "/services/" + service + "/" + id
	data := fmt.Sprintf(`{"name":%q,"id":%q,"address":%q,"port":%d,"sslPort":null,"payload":%s,"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true}]}}`,
		service, id, address, port, payload)
	if _, err := conn.Create(p, []byte(data), flags, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	return p
}

// JVM services registered through Curator are routed: their nodes are
// listed and followed through watches; a node that is not an instance is
// skipped with one warning; ephemeral nodes go with their session.
func TestZooKeeperCuratorLayout(t *testing.T) {
	srv := zktest.Start(t)
	jvm := srv.Conn(t)
	payload := `{"@class":"com.example.InstanceDetails","version":"v1"}`
	curator(t, jvm, "users", "0b4f8a8e-1d1e-4a3c-9a57-5f5f8d8c2b01", "127.0.0.1", 9091, payload, zk.FlagEphemeral)
	curator(t, jvm, "users", "5d0e3c1a-77aa-4f0b-8d57-0c3a5b8a9e02", "127.0.0.1", 9092, `{"version":"v1","weight":3,"zone":"a"}`, 0)
	curator(t, jvm, "users", "no-version", "127.0.0.1", 9093, `{"x":1}`, 0)
	curator(t, jvm, "users", "bad-json", "127.0.0.1", 9094, `[1`, 0)
	if _, err := jvm.Create("/services/@traffic", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}

	r, logs := startRegistry(t, &Backend{Servers: []string{srv.Addr}}, nil)
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	if got := has(r, users); !slices.Equal(got, []string{"127.0.0.1:9091", "127.0.0.1:9092"}) {
		t.Fatalf("after the first listing: %v", got)
	}
	svc, _ := r.Lookup(users)
	if ep := svc.Endpoint("127.0.0.1:9092"); ep.Weight != 3 || ep.Metadata["zone"] != "a" {
		t.Errorf("weight and metadata from the payload: %+v", ep)
	}
	var skipped []string
	for _, e := range logs.FilterMessage("skipping zookeeper node").All() {
		skipped = append(skipped, e.ContextMap()["node"].(string))
	}
	slices.Sort(skipped)
	if !slices.Equal(skipped, []string{"/services/users/bad-json", "/services/users/no-version"}) {
		t.Errorf("warned about %v", skipped)
	}

	// through the watches
	p := curator(t, jvm, "users", "c3", "127.0.0.1", 9095, `{"version":"v1"}`, 0)
	testutil.Eventually(t, 5*time.Second, "a new instance", func() bool { return slices.Contains(has(r, users), "127.0.0.1:9095") })
	curator(t, jvm, "orders", "o1", "127.0.0.1", 9096, `{"version":"v2"}`, 0)
	testutil.Eventually(t, 5*time.Second, "a new service", func() bool {
		return slices.Equal(has(r, registry.ServiceKey{Service: "orders", Version: "v2"}), []string{"127.0.0.1:9096"})
	})
	if _, err := jvm.Set(p, []byte(`{"name":"users","id":"c3","address":"127.0.0.1","port":9095,"payload":{"version":"v1","weight":7}}`), -1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "a changed weight", func() bool {
		svc, err := r.Lookup(users)
		return err == nil && svc.Endpoint("127.0.0.1:9095") != nil && svc.Endpoint("127.0.0.1:9095").Weight == 7
	})
	if err := jvm.Delete(p, -1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "a deleted instance to go", func() bool { return !slices.Contains(has(r, users), "127.0.0.1:9095") })
	// the JVM service's session ends: its ephemeral instance goes
	jvm.Close()
	testutil.Eventually(t, 10*time.Second, "the ephemeral instance to go with its session", func() bool {
		return slices.Equal(has(r, users), []string{"127.0.0.1:9092"})
	})
}

// Admin-API writes go to ZooKeeper in Curator's layout: a ttl makes the
// node ephemeral, of this instance's session; deleting a seed is refused.
func TestZooKeeperAdminWrites(t *testing.T) {
	srv := zktest.Start(t)
	check := srv.Conn(t)
	ctx := context.Background()
	seeds := map[registry.ServiceKey][]registry.Endpoint{users: {{Address: "127.0.0.1:9001", Weight: 1}}}
	b := &Backend{Servers: []string{srv.Addr}}
	r, _ := startRegistry(t, b, seeds)
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })

	if err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9002", Weight: 2}); err != nil {
		t.Fatal(err)
	}
	if got := has(r, users); !slices.Equal(got, []string{"127.0.0.1:9001", "127.0.0.1:9002"}) {
		t.Errorf("right after Add: %v", got)
	}
	data, stat, err := check.Get("/services/users/v1@127.0.0.1:9002")
	if err != nil || stat.EphemeralOwner != 0 {
		t.Fatalf("the persistent node: %v, owner %v", err, stat)
	}
	if key, ep, err := b.layout.Decode("/services/users/v1@127.0.0.1:9002", data); err != nil || key != users || ep.Weight != 2 {
		t.Errorf("the node reads back as %v %+v %v", key, ep, err)
	}
	if err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9003", TTL: registry.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if _, stat, err := check.Get("/services/users/v1@127.0.0.1:9003"); err != nil || stat.EphemeralOwner != b.conn().SessionID() {
		t.Errorf("the node added with a ttl: %v; want an ephemeral node of the backend's session", err)
	}
	if _, err := r.Delete(ctx, users, "127.0.0.1:9001"); !errors.Is(err, registry.ErrSeeded) {
		t.Errorf("deleting a seed: %v; want ErrSeeded", err)
	}
	if _, err := r.Delete(ctx, users, "127.0.0.1:9009"); !errors.Is(err, registry.ErrUnknownEndpoint) {
		t.Errorf("deleting an unknown endpoint: %v", err)
	}
	if _, err := r.Delete(ctx, users, "127.0.0.1:9002"); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := check.Exists("/services/users/v1@127.0.0.1:9002"); ok || slices.Contains(has(r, users), "127.0.0.1:9002") {
		t.Error("a deleted endpoint is still in ZooKeeper or routed")
	}
	// another instance sees this one's ephemeral node until it stops
	other, _ := startRegistry(t, &Backend{Servers: []string{srv.Addr}}, nil)
	testutil.Eventually(t, 15*time.Second, "the other instance to see the ephemeral node", func() bool {
		return slices.Contains(has(other, users), "127.0.0.1:9003")
	})
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the ephemeral node to go with its instance", func() bool {
		return !slices.Contains(has(other, users), "127.0.0.1:9003")
	})
}

// Unreachable at start: not synced (503) until ZooKeeper answers; lost:
// the last snapshot stays; back: listed again, with what changed meanwhile.
func TestZooKeeperFaults(t *testing.T) {
	srv := zktest.Start(t)
	srv.Stop()
	r, logs := startRegistry(t, &Backend{Servers: []string{srv.Addr}}, nil)
	time.Sleep(500 * time.Millisecond)
	if r.Snapshot().Synced() {
		t.Fatal("synced with no ZooKeeper")
	}
	if _, err := r.Lookup(users); !errors.Is(err, registry.ErrNotSynced) {
		t.Errorf("lookup before the first sync: %v", err)
	}
	srv.Restart()
	testutil.Eventually(t, 20*time.Second, "the first sync once ZooKeeper is up", func() bool { return r.Snapshot().Synced() })
	jvm := srv.Conn(t)
	curator(t, jvm, "users", "a", "127.0.0.1", 9091, `{"version":"v1"}`, 0)
	testutil.Eventually(t, 5*time.Second, "an instance", func() bool { return slices.Equal(has(r, users), []string{"127.0.0.1:9091"}) })

	srv.Stop()
	time.Sleep(time.Second)
	if got := has(r, users); !slices.Equal(got, []string{"127.0.0.1:9091"}) || !r.Snapshot().Synced() {
		t.Fatalf("with ZooKeeper gone: %v, synced %v; want the last snapshot", got, r.Snapshot().Synced())
	}
	if err := r.Add(context.Background(), users, registry.Endpoint{Address: "127.0.0.1:9099"}); !errors.Is(err, registry.ErrBackendUnavailable) && !errors.Is(err, registry.ErrOutcomeUnknown) {
		t.Errorf("an add with ZooKeeper gone: %v", err)
	}
	srv.Restart()
	jvm2 := srv.Conn(t)
	curator(t, jvm2, "users", "b", "127.0.0.1", 9092, `{"version":"v1"}`, 0)
	testutil.Eventually(t, 20*time.Second, "the change made while away", func() bool {
		return slices.Equal(has(r, users), []string{"127.0.0.1:9091", "127.0.0.1:9092"})
	})
	if n := len(logs.FilterMessage("zookeeper unreachable; routing keeps the last snapshot and retries").All()); n != 1 {
		t.Errorf("the loss was logged %d times, want once", n)
	}
}

// A session that expires (this Caddy cut off from ZooKeeper for longer
// than the session timeout) is replaced: everything is listed again, and
// this instance's ephemeral nodes are created again in the new session.
func TestZooKeeperSessionExpiry(t *testing.T) {
	srv := zktest.Start(t)
	check := srv.Conn(t)
	proxy := testutil.NewProxy(t, srv.Addr)
	b := &Backend{Servers: []string{proxy.Addr}, SessionTimeout: caddy.Duration(2 * time.Second)}
	r, _ := startRegistry(t, b, nil)
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	if err := r.Add(context.Background(), users, registry.Endpoint{Address: "127.0.0.1:9003", TTL: registry.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	first := b.conn().SessionID()
	proxy.Cut()
	testutil.Eventually(t, 30*time.Second, "ZooKeeper to expire the session and drop its node", func() bool {
		ok, _, err := check.Exists("/services/users/v1@127.0.0.1:9003")
		return err == nil && !ok
	})
	if got := has(r, users); !slices.Equal(got, []string{"127.0.0.1:9003"}) {
		t.Errorf("while cut off: %v; want the last snapshot", got)
	}
	proxy.Mend()
	testutil.Eventually(t, 30*time.Second, "a new session", func() bool { return b.conn().SessionID() != first && b.conn().State() == zk.StateHasSession })
	testutil.Eventually(t, 15*time.Second, "the ephemeral node back in the new session", func() bool {
		_, stat, err := check.Get("/services/users/v1@127.0.0.1:9003")
		return err == nil && stat.EphemeralOwner == b.conn().SessionID()
	})
	testutil.Eventually(t, 5*time.Second, "the endpoint routed", func() bool { return slices.Equal(has(r, users), []string{"127.0.0.1:9003"}) })
}

// A ZooKeeper wiped and started again (replaced, or restored from an
// older snapshot) has gone back in time: it refuses the session of a
// client that has seen a newer zxid, for as long as its own zxid is lower.
// The backend notices, starts a fresh client and lists everything again:
// what only the old ZooKeeper held goes, what the new one holds comes, and
// this instance's ephemeral nodes are created again. It says so once.
func TestZooKeeperWipedIsListedAgain(t *testing.T) {
	srv := zktest.Start(t)
	jvm := srv.Conn(t)
	curator(t, jvm, "users", "old", "127.0.0.1", 9091, `{"version":"v1"}`, 0)
	filler := registry.ServiceKey{Service: "filler", Version: "v1"}
	for i := range 40 { // a zxid well above the wiped ZooKeeper's, which the backend reads
		curator(t, jvm, "filler", fmt.Sprintf("f%d", i), "127.0.0.1", 10000+i, `{"version":"v1"}`, 0)
	}
	jvm.Close() // it has seen that zxid too
	b := &Backend{Servers: []string{srv.Addr}}
	r, logs := startRegistry(t, b, nil)
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return len(has(r, filler)) == 40 })
	ctx := context.Background()
	if err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9003", TTL: registry.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}

	srv.Wipe()
	fresh := srv.Conn(t)
	curator(t, fresh, "users", "new", "127.0.0.1", 9092, `{"version":"v1"}`, 0)
	testutil.Eventually(t, 20*time.Second, "the registry to be what the wiped ZooKeeper holds", func() bool {
		return slices.Equal(has(r, users), []string{"127.0.0.1:9003", "127.0.0.1:9092"}) && len(has(r, filler)) == 0
	})
	testutil.Eventually(t, 5*time.Second, "this instance's ephemeral node in the wiped ZooKeeper", func() bool {
		_, stat, err := fresh.Get("/services/users/v1@127.0.0.1:9003")
		return err == nil && stat.EphemeralOwner != 0 && stat.EphemeralOwner == sessionOf(b)
	})
	if err := r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9004"}); err != nil {
		t.Errorf("an add once listed again: %v", err)
	}
	if ok, _, err := fresh.Exists("/services/users/v1@127.0.0.1:9004"); !ok || err != nil {
		t.Errorf("the add is not in the wiped ZooKeeper: %v", err)
	}
	if n := len(logs.FilterMessageSnippet("went back in time").All()); n != 1 {
		t.Errorf("going back in time was logged %d times, want once", n)
	}
}

// A backend that replaces another (a reload changing its settings) takes
// over the ephemeral nodes the other keeps before the other's session
// closes: each becomes a node of the new session in one transaction, and
// neither this instance nor another one watching ever routes without it.
func TestZooKeeperHandOver(t *testing.T) {
	srv := zktest.Start(t)
	check := srv.Conn(t)
	prev := &Backend{Servers: []string{srv.Addr}}
	prevR, _ := startRegistry(t, prev, nil)
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return prevR.Snapshot().Synced() })
	if err := prevR.Add(context.Background(), users, registry.Endpoint{Address: "127.0.0.1:9003", TTL: registry.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	next := &Backend{Servers: []string{srv.Addr}, SessionTimeout: caddy.Duration(5 * time.Second)}
	nextR, _ := startRegistry(t, next, nil)
	other, _ := startRegistry(t, &Backend{Servers: []string{srv.Addr}}, nil)
	for _, r := range []*registry.Registry{nextR, other} {
		testutil.Eventually(t, 15*time.Second, "the ephemeral node listed", func() bool { return slices.Equal(has(r, users), []string{"127.0.0.1:9003"}) })
	}

	var gaps atomic.Int64
	stop := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, r := range []*registry.Registry{nextR, other} {
				if !slices.Contains(has(r, users), "127.0.0.1:9003") {
					gaps.Add(1)
				}
			}
			runtime.Gosched()
		}
	})
	prevR.HandOver(nextR)
	const node = "/services/users/v1@127.0.0.1:9003"
	if _, stat, err := check.Get(node); err != nil || stat.EphemeralOwner != sessionOf(next) {
		t.Errorf("once HandOver returned, the node is %+v (%v); want it of the new backend's session %x", stat, err, sessionOf(next))
	}
	if err := prevR.Stop(); err != nil {
		t.Fatal(err)
	}
	// A node written after the old session closed: once it is routed,
	// whatever the close did has been seen (a client sees changes in
	// order).
	curator(t, check, "users", "marker", "127.0.0.1", 9009, `{"version":"v1"}`, 0)
	for _, r := range []*registry.Registry{nextR, other} {
		testutil.Eventually(t, 10*time.Second, "the node written after the handover", func() bool { return slices.Contains(has(r, users), "127.0.0.1:9009") })
	}
	close(stop)
	sampling.Wait()
	if n := gaps.Load(); n != 0 {
		t.Errorf("the endpoint was not routed %d times during the handover", n)
	}
	for _, r := range []*registry.Registry{nextR, other} {
		if got := has(r, users); !slices.Equal(got, []string{"127.0.0.1:9003", "127.0.0.1:9009"}) {
			t.Errorf("after the handover: %v", got)
		}
	}
	if _, stat, err := check.Get(node); err != nil || stat.EphemeralOwner != sessionOf(next) {
		t.Errorf("after the old backend stopped, the node is %+v (%v); want it of the new backend's session", stat, err)
	}
}

// With version_level, the version is a level of the path.
func TestZooKeeperVersionLevel(t *testing.T) {
	srv := zktest.Start(t)
	jvm := srv.Conn(t)
	for _, p := range []string{"/reg", "/reg/users", "/reg/users/v2"} {
		if _, err := jvm.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := jvm.Create("/reg/users/v2/i1", []byte(`{"name":"users","id":"i1","address":"127.0.0.1","port":9091}`), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	r, _ := startRegistry(t, &Backend{Servers: []string{srv.Addr}, BasePath: "/reg", VersionLevel: true}, nil)
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	v2 := registry.ServiceKey{Service: "users", Version: "v2"}
	if got := has(r, v2); !slices.Equal(got, []string{"127.0.0.1:9091"}) {
		t.Fatalf("users v2: %v", got)
	}
	if err := r.Add(context.Background(), registry.ServiceKey{Service: "users", Version: "v3"}, registry.Endpoint{Address: "127.0.0.1:9092"}); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := jvm.Exists("/reg/users/v3/127.0.0.1:9092"); !ok || err != nil {
		t.Errorf("an add with version_level wrote no /reg/users/v3/127.0.0.1:9092: %v", err)
	}
}

// BenchmarkZooKeeperPropagation measures a write to ZooKeeper until the
// backend's snapshot holds it: each iteration creates an instance node of
// a new version and waits for it.
func BenchmarkZooKeeperPropagation(b *testing.B) {
	srv := zktest.Start(b)
	jvm := srv.Conn(b)
	r, _ := startBenchRegistry(b, srv.Addr)
	for _, p := range []string{"/services", "/services/bench"} {
		if _, err := jvm.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			b.Fatal(err)
		}
	}
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		key := registry.ServiceKey{Service: "bench", Version: fmt.Sprintf("v%d", i)}
		data := fmt.Sprintf(`{"name":"bench","id":"i%d","address":"127.0.0.1","port":%d,"payload":{"version":%q}}`, i, 10000+i%50000, key.Version)
		start := time.Now()
		if _, err := jvm.Create(fmt.Sprintf("/services/bench/i%d", i), []byte(data), 0, zk.WorldACL(zk.PermAll)); err != nil {
			b.Fatal(err)
		}
		for len(has(r, key)) == 0 {
			if time.Since(start) > 10*time.Second {
				b.Fatal("a write never reached the snapshot")
			}
			time.Sleep(50 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkZooKeeperScale creates 10,000 instance nodes (1,000 services
// of 10) and measures how long a backend takes to list them all (with a
// watch on each), the heap they take, and how long 1,000 more take to
// arrive through the watches.
func BenchmarkZooKeeperScale(b *testing.B) {
	srv := zktest.Start(b)
	jvm := srv.Conn(b)
	create := func(from, to int) {
		var ops []any
		flush := func() {
			if len(ops) > 0 {
				if _, err := jvm.Multi(ops...); err != nil {
					b.Fatal(err)
				}
				ops = ops[:0]
			}
		}
		for i := from; i < to; i++ {
			svc := fmt.Sprintf("s%d", i/10)
			if i%10 == 0 {
				ops = append(ops, &zk.CreateRequest{Path: "/services/" + svc, Acl: zk.WorldACL(zk.PermAll)})
			}
			data := fmt.Sprintf(`{"name":%q,"id":"i%d","address":"127.0.0.1","port":%d,"payload":{"version":"v1"}}`, svc, i, 10000+i%50000)
			ops = append(ops, &zk.CreateRequest{Path: fmt.Sprintf("/services/%s/i%d", svc, i), Data: []byte(data), Acl: zk.WorldACL(zk.PermAll)})
			if len(ops) >= 200 {
				flush()
			}
		}
		flush()
	}
	if _, err := jvm.Create("/services", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		b.Fatal(err)
	}
	create(0, 10000)
	count := func(r *registry.Registry) int {
		n := 0
		for _, svc := range r.Snapshot().Services() {
			n += len(svc.Endpoints)
		}
		return n
	}
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		r, _ := startBenchRegistry(b, srv.Addr)
		for !r.Snapshot().Synced() || count(r) < 10000 {
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("listed %d of 10,000 nodes in 2 minutes", count(r))
			}
			time.Sleep(time.Millisecond)
		}
		listed := time.Since(start)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		start = time.Now()
		create(10000, 11000)
		for count(r) < 11000 {
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("%d of 1,000 new nodes arrived in 2 minutes", count(r)-10000)
			}
			time.Sleep(time.Millisecond)
		}
		b.ReportMetric(listed.Seconds(), "list-10k-s")
		b.ReportMetric(time.Since(start).Seconds(), "watch-1k-s")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/1e6, "heap-MB")
		b.StopTimer()
		if err := r.Stop(); err != nil {
			b.Fatal(err)
		}
		var ops []any
		for i := 10000; i < 11000; i++ {
			ops = append(ops, &zk.DeleteRequest{Path: fmt.Sprintf("/services/s%d/i%d", i/10, i), Version: -1})
		}
		for i := 1000; i < 1100; i++ {
			ops = append(ops, &zk.DeleteRequest{Path: fmt.Sprintf("/services/s%d", i), Version: -1})
		}
		if _, err := jvm.Multi(ops...); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// startBenchRegistry starts a registry on a ZooKeeper backend, stopped
// when the benchmark ends, and waits for its first sync.
func startBenchRegistry(b *testing.B, addr string) (*registry.Registry, *Backend) {
	b.Helper()
	be := &Backend{Servers: []string{addr}, SessionTimeout: caddy.Duration(10 * time.Second)}
	if err := be.setup(nil); err != nil {
		b.Fatal(err)
	}
	r := registry.New(be, registry.Options{})
	b.Cleanup(func() { _ = r.Stop() })
	if err := r.Start(registry.BackendEnv{Logger: zap.NewNop()}, nil, nil); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !r.Snapshot().Synced() {
		if time.Now().After(deadline) {
			b.Fatal("no first sync")
		}
		time.Sleep(time.Millisecond)
	}
	return r, be
}

// sessionOf returns the session of b's current connection.
func sessionOf(b *Backend) int64 { return b.conn().SessionID() }

// No goroutine outlives Stop: the sync loop, the writes and
// go-zookeeper's own.
func TestZooKeeperStopLeavesNoGoroutine(t *testing.T) {
	srv := zktest.Start(t)
	before := runtime.NumGoroutine()
	b := &Backend{Servers: []string{srv.Addr}, SessionTimeout: caddy.Duration(4 * time.Second)}
	if err := b.setup(nil); err != nil {
		t.Fatal(err)
	}
	r := registry.New(b, registry.Options{})
	if err := r.Start(registry.BackendEnv{Logger: zap.NewNop()}, nil, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	if err := r.Add(context.Background(), users, registry.Endpoint{Address: "127.0.0.1:9001", TTL: registry.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
