package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// startEtcdBackend starts an etcd backend on endpoint with the given seeds
// and returns it with its table and its log.
func startEtcdBackend(t testing.TB, endpoint string, seeds map[registry.ServiceKey][]registry.Endpoint) (*Backend, *registry.Feed, *observer.ObservedLogs) {
	t.Helper()
	return startEtcdBackendWith(t, &Backend{Endpoints: []string{endpoint}}, seeds)
}

// startEtcdBackendWith starts e (2s dial timeout unless set).
func startEtcdBackendWith(t testing.TB, e *Backend, seeds map[registry.ServiceKey][]registry.Endpoint) (*Backend, *registry.Feed, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	provision(t, e)
	table := registry.NewFeed()
	if err := e.Start(table, registry.BackendEnv{Seeds: seeds, Logger: zap.New(core)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Error(err)
		}
	})
	return e, table, logs
}

// provision provisions e (2s dial timeout unless set).
func provision(t testing.TB, e *Backend) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if e.DialTimeout == 0 {
		e.DialTimeout = caddy.Duration(2 * time.Second)
	}
	if err := e.Provision(ctx); err != nil {
		t.Fatal(err)
	}
}

// startRegistry starts a registry on e (wrapped in a spyBackend), with
// the given seeds, and waits for its first sync.
func startRegistry(t testing.TB, e *Backend, seeds map[registry.ServiceKey][]registry.Endpoint) (*registry.Registry, *spyBackend) {
	t.Helper()
	provision(t, e)
	spy := &spyBackend{Backend: e}
	r := registry.New(spy, registry.Options{})
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := r.Start(registry.BackendEnv{Seeds: seeds, Logger: zap.NewNop()}, nil, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	return r, spy
}

// tableHas returns the sorted addresses of key in the table ("" entries
// for an unknown key).
func tableHas(tbl interface{ Snapshot() *registry.Snapshot }, key registry.ServiceKey) []string {
	svc, err := tbl.Snapshot().Lookup(key.Service, key.Version)
	if err != nil {
		return nil
	}
	return addresses(svc)
}

func TestEtcdWatchPropagation(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}

	// Present before the backend starts: listed by the initial Get, with
	// junk beside it that must be skipped with a warning.
	for k, v := range map[string]string{
		"/svcreg/users/v1/127.0.0.1:9091":  `{}`,
		"/svcreg/users/v1/127.0.0.1:9092":  ``,
		"/svcreg/bad/key":                  `{}`,
		"/svcreg/users/v1/127.0.0.1:09093": `{}`,
		"/svcreg/users/v1/not-an-address":  `{}`,
		"/svcreg/users/v1/127.0.0.1:9094":  `{"weight":`,
		"/svcreg/users/v1/127.0.0.1:9095":  `{"weight":1000}`,
		"/svcreg/us$ers/v1/127.0.0.1:9096": `{}`,
		"/other/users/v1/127.0.0.1:9097":   `{}`,
	} {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	_, tbl, logs := startEtcdBackend(t, srv.Endpoint, nil)
	eventually(t, 10*time.Second, "the first sync", func() bool { return tbl.Snapshot().Synced() })
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9091", "127.0.0.1:9092"}) {
		t.Errorf("after the initial list: %v", got)
	}
	skipped := logs.FilterMessage("skipping etcd key").All()
	var keys []string
	for _, entry := range skipped {
		keys = append(keys, entry.ContextMap()["key"].(string))
	}
	sort.Strings(keys)
	want := []string{"/svcreg/bad/key", "/svcreg/us$ers/v1/127.0.0.1:9096", "/svcreg/users/v1/127.0.0.1:09093", "/svcreg/users/v1/127.0.0.1:9094", "/svcreg/users/v1/127.0.0.1:9095", "/svcreg/users/v1/not-an-address"}
	if !slices.Equal(keys, want) {
		t.Errorf("warned about %q, want one warning for each of %q", keys, want)
	}

	// Changes arrive through the watch.
	for _, step := range []struct {
		name string
		do   func() error
		want []string
	}{
		{"put", func() error { _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9098", `{"weight":3}`); return err }, []string{"127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9098"}},
		{"delete", func() error { _, err := cli.Delete(ctx, "/svcreg/users/v1/127.0.0.1:9091"); return err }, []string{"127.0.0.1:9092", "127.0.0.1:9098"}},
		{"rewritten with a bad value", func() error { _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9092", `nope`); return err }, []string{"127.0.0.1:9098"}},
		{"junk does not disturb", func() error { _, err := cli.Put(ctx, "/svcreg/junk", `x`); return err }, []string{"127.0.0.1:9098"}},
		{"delete the rest", func() error { _, err := cli.Delete(ctx, "/svcreg/users/", clientv3.WithPrefix()); return err }, nil},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, step.name+" to show", func() bool { return slices.Equal(tableHas(tbl, users), step.want) })
	}
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9099", `{"weight":3}`); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a weighted endpoint", func() bool {
		svc, err := tbl.Snapshot().Lookup("users", "v1")
		return err == nil && len(svc.Endpoints) == 1 && svc.Endpoints[0].Weight == 3
	})
}

func TestEtcdAdminWritesAndLeases(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	seeds := map[registry.ServiceKey][]registry.Endpoint{users: eps("127.0.0.1:9001")}
	e := &Backend{Endpoints: []string{srv.Endpoint}}
	r, spy := startRegistry(t, e, seeds)
	tbl := r

	// Add: in etcd, and in the table as soon as Add returns.
	must(t, r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9002", Weight: 2, Metadata: map[string]string{"zone": "a"}}))
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9001", "127.0.0.1:9002"}) {
		t.Fatalf("right after Add: %v", got)
	}
	resp, err := cli.Get(ctx, "/svcreg/users/v1/127.0.0.1:9002")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"weight":2,"metadata":{"zone":"a"}}` {
		t.Fatalf("etcd holds %v (%v)", resp.Kvs, err)
	}

	// A seed lives in the config, not in etcd: deleting it is refused
	// before it is drained (out of rotation) for nothing.
	svc, err := r.Lookup(users)
	must(t, err)
	seed := svc.Endpoint("127.0.0.1:9001")
	drainedSeed := false
	spy.onDelete = func(registry.ServiceKey, string) {
		drainedSeed = drainedSeed || seed.Stats().OutOfRotation == "draining"
	}
	if err := del(r, ctx, users, "127.0.0.1:9001"); !errors.Is(err, registry.ErrSeeded) {
		t.Errorf("deleting a seed: %v, want ErrSeeded", err)
	}
	if drainedSeed || !seed.Stats().Available {
		t.Errorf("a refused delete drained the seed (out of rotation while refused: %v, available after: %v)", drainedSeed, seed.Stats().Available)
	}

	// Add with a TTL: bound to a lease this backend keeps alive.
	must(t, r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9003", TTL: registry.Duration(2 * time.Second)}))
	resp, err = cli.Get(ctx, "/svcreg/users/v1/127.0.0.1:9003")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("leased endpoint in etcd: %v (%v)", resp.Kvs, err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	time.Sleep(3 * time.Second) // longer than the TTL: only the keepalive keeps it
	if got := tableHas(tbl, users); !slices.Contains(got, "127.0.0.1:9003") {
		t.Fatalf("the leased endpoint expired although this Caddy keeps its lease alive: %v", got)
	}

	// Re-adding it without a TTL detaches it from the lease, which is revoked.
	must(t, r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9003"}))
	ttl, err := cli.TimeToLive(ctx, lease)
	if err != nil || ttl.TTL != -1 {
		t.Errorf("the old lease is still alive: %+v (%v)", ttl, err)
	}

	// Delete: gone from etcd and the table when Delete returns.
	must(t, del(r, ctx, users, "127.0.0.1:9002"))
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9001", "127.0.0.1:9003"}) {
		t.Fatalf("right after Delete: %v", got)
	}

	// A leased endpoint disappears TTL after its keeper stops.
	must(t, r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9004", TTL: registry.Duration(time.Second)}))
	_, watched, _ := startEtcdBackend(t, srv.Endpoint, nil)
	eventually(t, 10*time.Second, "a second instance to see the leased endpoint", func() bool {
		return slices.Contains(tableHas(watched, users), "127.0.0.1:9004")
	})
	must(t, e.Stop()) // the cleanup's second Stop is a no-op
	eventually(t, 10*time.Second, "the leased endpoint to expire", func() bool {
		return !slices.Contains(tableHas(watched, users), "127.0.0.1:9004")
	})
	if got := tableHas(watched, users); !slices.Contains(got, "127.0.0.1:9003") {
		t.Errorf("an endpoint without a lease went too: %v", got)
	}
}

func TestEtcdUnreachableAtStart(t *testing.T) {
	srv := etcdtest.StartLater(t) // ports reserved, etcd not running
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	begin := time.Now()
	_, tbl, logs := startEtcdBackend(t, srv.Endpoint, map[registry.ServiceKey][]registry.Endpoint{users: eps("127.0.0.1:9001")})
	if d := time.Since(begin); d > time.Second {
		t.Errorf("Start waited %v for an unreachable etcd", d)
	}
	if _, err := tbl.Snapshot().Lookup("users", "v1"); !errors.Is(err, registry.ErrNotSynced) {
		t.Fatalf("before the first sync: %v, want registry.ErrNotSynced (503)", err)
	}
	eventually(t, 10*time.Second, "the unreachable state to be logged", func() bool {
		return logs.FilterMessageSnippet("etcd unreachable").Len() > 0
	})

	srv.Restart()
	cli := srv.Client(t)
	if _, err := cli.Put(context.Background(), "/svcreg/users/v1/127.0.0.1:9002", "{}"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the first sync after etcd came up", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001", "127.0.0.1:9002"})
	})
	if n := logs.FilterMessageSnippet("etcd unreachable").Len(); n != 1 {
		t.Errorf("the unreachable state was logged %d times, want once", n)
	}
	if logs.FilterMessageSnippet("etcd reachable").Len() != 1 {
		t.Errorf("coming back was not logged once")
	}
}

func TestEtcdLostAndBack(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9001", "{}"); err != nil {
		t.Fatal(err)
	}
	_, tbl, logs := startEtcdBackend(t, srv.Endpoint, nil)
	eventually(t, 10*time.Second, "the first sync", func() bool { return len(tableHas(tbl, users)) == 1 })

	srv.Kill()
	eventually(t, 10*time.Second, "losing etcd to be logged", func() bool {
		return logs.FilterMessageSnippet("etcd unreachable").Len() > 0
	})
	if got := tableHas(tbl, users); !slices.Equal(got, []string{"127.0.0.1:9001"}) || !tbl.Snapshot().Synced() {
		t.Fatalf("without etcd the last snapshot must stay: %v", got)
	}

	srv.Restart()
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9002", "{}"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "a change made after etcd came back", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001", "127.0.0.1:9002"})
	})
	if logs.FilterMessageSnippet("went back in time").Len() != 0 {
		t.Errorf("an etcd restarted with its data was taken for one that went back in time: %v", logs.All())
	}
}

func TestEtcdCompactionRelists(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	users, orders := registry.ServiceKey{Service: "users", Version: "v1"}, registry.ServiceKey{Service: "orders", Version: "v1"}
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9001", "{}"); err != nil {
		t.Fatal(err)
	}
	proxy := testutil.NewProxy(t, srv.Endpoint)
	_, tbl, logs := startEtcdBackend(t, proxy.Addr, nil)
	eventually(t, 10*time.Second, "the first sync", func() bool { return len(tableHas(tbl, users)) == 1 })

	// While the backend is cut off, change things and compact history
	// past the revision its watch stands at.
	proxy.Cut()
	cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9002", "{}")
	cli.Delete(ctx, "/svcreg/users/v1/127.0.0.1:9001")
	cli.Put(ctx, "/svcreg/orders/v1/127.0.0.1:9003", "{}")
	resp, err := cli.Put(ctx, "/svcreg/orders/v1/127.0.0.1:9004", "{}")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	proxy.Mend()

	eventually(t, 30*time.Second, "the snapshot to match etcd after a re-list", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9002"}) &&
			slices.Equal(tableHas(tbl, orders), []string{"127.0.0.1:9003", "127.0.0.1:9004"})
	})
	// Listed again after the reconnection or after the compacted watch,
	// whichever came first; a compacted history is not a rewritten one.
	if logs.FilterMessageSnippet("went back in time").Len() != 0 {
		t.Errorf("a compaction was taken for etcd going back in time: %v", logs.All())
	}
}

// BenchmarkEtcdPropagation measures how long a put to etcd takes to reach
// the snapshot that routing reads, and reports p50 and p99.
func BenchmarkEtcdPropagation(b *testing.B) {
	srv := etcdtest.Start(b)
	cli := srv.Client(b)
	_, tbl, _ := startEtcdBackend(b, srv.Endpoint, nil)
	eventually(b, 10*time.Second, "the first sync", func() bool { return tbl.Snapshot().Synced() })
	ctx := context.Background()
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+i%50000)
		key := registry.ServiceKey{Service: "bench", Version: fmt.Sprintf("v%d", i)}
		start := time.Now()
		if _, err := cli.Put(ctx, "/svcreg/bench/"+key.Version+"/"+addr, "{}"); err != nil {
			b.Fatal(err)
		}
		for len(tableHas(tbl, key)) == 0 {
			if time.Since(start) > 10*time.Second {
				b.Fatal("a put never reached the snapshot")
			}
			time.Sleep(50 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func TestEtcdTLS(t *testing.T) {
	files := etcdtest.WriteTLSFiles(t, t.TempDir())
	srv := etcdtest.StartTLS(t, files)
	if _, err := srv.Client(t).Put(context.Background(), "/svcreg/users/v1/127.0.0.1:9001", "{}"); err != nil {
		t.Fatal(err)
	}
	users := registry.ServiceKey{Service: "users", Version: "v1"}

	// With the CA and a client certificate, the backend syncs.
	_, tbl, _ := startEtcdBackendWith(t, &Backend{Endpoints: []string{srv.Endpoint},
		TLS: &TLS{CA: files.CA, Cert: files.ClientCert, Key: files.ClientKey}}, nil)
	eventually(t, 15*time.Second, "a sync over TLS", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001"})
	})

	// Without the client certificate etcd refuses it: no sync, and the log
	// says why.
	_, noCert, logs := startEtcdBackendWith(t, &Backend{Endpoints: []string{srv.Endpoint},
		TLS: &TLS{CA: files.CA}}, nil)
	eventually(t, 15*time.Second, "the refusal to be logged", func() bool {
		return logs.FilterMessageSnippet("etcd unreachable").Len() > 0
	})
	if noCert.Snapshot().Synced() {
		t.Error("synced without a client certificate")
	}

	// Half a client certificate is refused at provision time.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	half := &Backend{TLS: &TLS{Cert: files.ClientCert}}
	if err := half.Provision(ctx); err == nil || !strings.Contains(err.Error(), "both cert and key") {
		t.Errorf("a cert without its key: %v", err)
	}
}

func TestEtcdAuthAndSecrets(t *testing.T) {
	srv := etcdtest.Start(t)
	root := srv.Client(t)
	ctx := context.Background()
	const password = "s3cret-Passw0rd"
	for _, step := range []func() error{
		func() error { _, err := root.RoleAdd(ctx, "root"); return err },
		func() error { _, err := root.UserAdd(ctx, "root", password); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		must(t, step())
	}
	authed, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Username: "root", Password: password, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	must(t, err)
	defer authed.Close()
	_, err = authed.Put(ctx, "/svcreg/users/v1/127.0.0.1:9001", "{}")
	must(t, err)
	users := registry.ServiceKey{Service: "users", Version: "v1"}

	// Endpoint and password from placeholders.
	t.Setenv("SVCREG_TEST_ETCD", srv.Endpoint)
	t.Setenv("SVCREG_TEST_ETCD_PASSWORD", password)
	_, tbl, goodLogs := startEtcdBackendWith(t, &Backend{Endpoints: []string{"{env.SVCREG_TEST_ETCD}"},
		Username: "root", Password: "{env.SVCREG_TEST_ETCD_PASSWORD}"}, nil)
	eventually(t, 15*time.Second, "a sync with a user and password", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001"})
	})
	r, _ := startRegistry(t, &Backend{Endpoints: []string{"{env.SVCREG_TEST_ETCD}"},
		Username: "root", Password: "{env.SVCREG_TEST_ETCD_PASSWORD}"}, nil)
	must(t, r.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9002"}))

	// A wrong password while etcd is up: the client cannot be created, so
	// the backend (and the config that holds it) does not start, with an
	// error that says why and does not show the password.
	const wrong = "wrong-Passw0rd-value"
	bad := &Backend{Endpoints: []string{srv.Endpoint}, Username: "root", Password: wrong, DialTimeout: caddy.Duration(5 * time.Second)}
	pctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	must(t, bad.Provision(pctx))
	startErr := bad.Start(registry.NewFeed(), registry.BackendEnv{Logger: zap.NewNop()})
	if startErr == nil {
		bad.Stop()
		t.Fatal("started with a wrong password")
	}
	if !strings.Contains(startErr.Error(), "authentication failed") {
		t.Errorf("wrong password: %v, want it to say authentication failed", startErr)
	}
	if strings.Contains(startErr.Error(), wrong) {
		t.Errorf("the error shows the password: %v", startErr)
	}
	for _, entry := range goodLogs.All() {
		text := entry.Message
		for k, v := range entry.ContextMap() {
			text += " " + k + "=" + fmt.Sprint(v)
		}
		if strings.Contains(text, password) {
			t.Errorf("a log entry shows the password: %s", text)
		}
	}
}

// spyBackend is an etcd backend that reports every Delete before doing it.
type spyBackend struct {
	*Backend
	onDelete func(key registry.ServiceKey, address string)
}

func (s *spyBackend) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	if s.onDelete != nil {
		s.onDelete(key, address)
	}
	return s.Backend.Delete(ctx, key, address)
}

var (
	eps        = testutil.Endpoints
	addresses  = testutil.Addresses
	must       = testutil.Must
	eventually = testutil.Eventually
)

func del(r *registry.Registry, ctx context.Context, key registry.ServiceKey, address string) error {
	_, err := r.Delete(ctx, key, address)
	return err
}

// TestProvisionPrefix checks the prefix a backend watches: the default,
// a slash added, a placeholder expanded, and one that expands to nothing
// refused (it would have watched the whole keyspace).
func TestProvisionPrefix(t *testing.T) {
	t.Setenv("SVCREG_TEST_PREFIX", "/team/")
	for _, tc := range []struct {
		prefix, want, wantErr string
	}{
		{"", "/svcreg/", ""},
		{"/reg", "/reg/", ""},
		{"{env.SVCREG_TEST_PREFIX}", "/team/", ""},
		{"{env.SVCREG_TEST_UNSET_PREFIX}", "", "empty once expanded"},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		e := &Backend{Prefix: tc.prefix}
		err := e.Provision(ctx)
		cancel()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("prefix %q: %v, want an error saying %q", tc.prefix, err, tc.wantErr)
			}
			continue
		}
		if err != nil || e.Prefix != tc.want {
			t.Errorf("prefix %q: %q, %v; want %q", tc.prefix, e.Prefix, err, tc.want)
		}
	}
}

// A lease lost in etcd (expired while etcd was out of reach, or revoked
// by someone) takes its endpoint with it: the backend that added it
// registers it again under a new lease and says so. An endpoint deleted
// in etcd by someone else stays deleted, and its lease is let go.
func TestEtcdLostLeaseRegranted(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	e, tbl, logs := startEtcdBackend(t, srv.Endpoint, nil)
	eventually(t, 10*time.Second, "the first sync", func() bool { return tbl.Snapshot().Synced() })
	const key = "/svcreg/users/v1/127.0.0.1:9005"
	leaseOf := func() clientv3.LeaseID {
		resp, err := cli.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			return 0
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}

	must(t, e.Add(ctx, users, registry.Endpoint{Address: "127.0.0.1:9005", TTL: registry.Duration(2 * time.Second)}))
	first := leaseOf()
	if first == 0 {
		t.Fatal("the endpoint is not in etcd under a lease")
	}
	if _, err := cli.Revoke(ctx, first); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the endpoint to be registered again under a new lease", func() bool {
		id := leaseOf()
		return id != 0 && id != first && slices.Contains(tableHas(tbl, users), "127.0.0.1:9005")
	})
	if logs.FilterMessageSnippet("lease lost").Len() == 0 {
		t.Error("losing the lease was not logged")
	}
	time.Sleep(3 * time.Second) // longer than the TTL: the new lease is kept alive
	if leaseOf() == 0 {
		t.Fatal("the new lease was not kept alive")
	}

	// Deleted by someone else: it stays deleted, and the lease goes.
	second := leaseOf()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the lease of an endpoint deleted elsewhere to be let go", func() bool {
		ttl, err := cli.TimeToLive(ctx, second)
		return err == nil && ttl.TTL == -1
	})
	time.Sleep(500 * time.Millisecond)
	if leaseOf() != 0 || slices.Contains(tableHas(tbl, users), "127.0.0.1:9005") {
		t.Error("an endpoint deleted in etcd came back")
	}
}

// Traffic policies live at <prefix>@traffic/<service>: listed at start
// (a bad one skipped with a warning), written by PutTraffic, followed
// through the watch, removed by DeleteTraffic.
func TestEtcdTrafficPolicies(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	for k, v := range map[string]string{
		"/svcreg/users/v1/127.0.0.1:9091": `{}`,
		"/svcreg/users/v2/127.0.0.1:9092": `{}`,
		"/svcreg/@traffic/users":          `{"split":{"v1":90,"v2":10}}`,
		"/svcreg/@traffic/orders":         `{"split":{"v1":90},"bogus":1}`,
		"/svcreg/@traffic/bad$name":       `{}`,
	} {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := startRegistry(t, &Backend{Endpoints: []string{srv.Endpoint}}, nil)
	split := func() map[string]int {
		if tr := r.Snapshot().Traffic("users"); tr != nil {
			return tr.Policy().Split
		}
		return nil
	}
	if got := split(); got["v2"] != 10 {
		t.Fatalf("listed policy: %v", got)
	}
	if tr := r.Snapshot().Traffic("orders"); tr != nil {
		t.Errorf("a policy with an unknown field was used: %+v", tr.Policy())
	}
	must(t, r.PutTraffic(ctx, "users", traffic.Policy{Split: map[string]int{"v1": 50, "v2": 50}, Aliases: map[string]string{"stable": "v1"}}))
	if got := split(); got["v2"] != 50 {
		t.Errorf("right after PutTraffic: %v", got)
	}
	resp, err := cli.Get(ctx, "/svcreg/@traffic/users")
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"v2":50`) {
		t.Fatalf("the stored policy: %v, %v", resp, err)
	}
	if _, err := cli.Put(ctx, "/svcreg/@traffic/users", `{"split":{"v2":100}}`); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a policy written to etcd", func() bool { return split()["v2"] == 100 })
	if _, err := cli.Put(ctx, "/svcreg/@traffic/users", `nope`); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a policy rewritten with a bad value to go", func() bool { return split() == nil })
	must(t, r.PutTraffic(ctx, "users", traffic.Policy{Split: map[string]int{"v1": 100}}))
	must(t, r.DeleteTraffic(ctx, "users"))
	if split() != nil {
		t.Error("the policy is still used after DeleteTraffic")
	}
	if err := r.DeleteTraffic(ctx, "users"); !errors.Is(err, registry.ErrNoTrafficPolicy) {
		t.Errorf("a second DeleteTraffic: %v; want ErrNoTrafficPolicy", err)
	}
}

// An etcd that other programs write to, wiped and started again with the
// same configuration (so the same cluster ID and raft term): by the time
// the backend reconnects, the others' writes have taken the new etcd's
// revision past every revision the backend applied, so no header looks
// like going back in time. The backend must still list everything again:
// the endpoint put after the wipe is routed, the one only the old etcd
// held is not.
func TestEtcdWipedWhileOthersWrite(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	fill := func(cli *clientv3.Client, n int) {
		t.Helper()
		for i := range n {
			if _, err := cli.Put(ctx, fmt.Sprintf("/other/program/%d", i), "x"); err != nil {
				t.Fatal(err)
			}
		}
	}
	cli := srv.Client(t)
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9001", "{}"); err != nil {
		t.Fatal(err)
	}
	fill(cli, 100)
	_, tbl, logs := startEtcdBackend(t, srv.Endpoint, nil)
	eventually(t, 10*time.Second, "the first sync", func() bool { return len(tableHas(tbl, users)) == 1 })

	srv.Wipe()
	cli = srv.Client(t)
	fill(cli, 300) // the new etcd's revision passes the old one's
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9002", "{}"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the registry to be what the new etcd holds", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9002"})
	})
	if n := logs.FilterMessageSnippet("went back in time").Len(); n != 1 {
		t.Errorf(`"went back in time" logged %d times; want once: %v`, n, logs.All())
	}
}

// An etcd wiped and started again while nothing else writes to it: its
// revision starts again low, which the backend's reachability check sees
// even when the connection it reads from never broke for long.
func TestEtcdWipedRevisionBelowSeen(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	cli := srv.Client(t)
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/other/program/%d", i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9001", "{}"); err != nil {
		t.Fatal(err)
	}
	_, tbl, logs := startEtcdBackend(t, srv.Endpoint, nil)
	eventually(t, 10*time.Second, "the first sync", func() bool { return len(tableHas(tbl, users)) == 1 })

	srv.Wipe()
	if _, err := srv.Client(t).Put(ctx, "/svcreg/users/v1/127.0.0.1:9002", "{}"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the registry to be what the new etcd holds", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9002"})
	})
	if n := logs.FilterMessageSnippet("went back in time").Len(); n != 1 {
		t.Errorf(`"went back in time" logged %d times; want once: %v`, n, logs.All())
	}
}

// An etcd restored from an older snapshot (etcdctl snapshot restore, same
// name, URLs and token: the same cluster) holds what it held then, at a
// revision below the one the backend has seen: the backend lists it
// again and routes what it holds.
func TestEtcdRestoredFromOlderSnapshot(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	cli := srv.Client(t)
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9001", "{}"); err != nil {
		t.Fatal(err)
	}
	backup := srv.Snapshot()
	_, tbl, logs := startEtcdBackend(t, srv.Endpoint, nil)
	if _, err := cli.Put(ctx, "/svcreg/users/v1/127.0.0.1:9002", "{}"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "/svcreg/users/v1/127.0.0.1:9001"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the backend to follow etcd", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9002"})
	})

	srv.Restore(backup)
	eventually(t, 10*time.Second, "the registry to be what the restored etcd holds", func() bool {
		return slices.Equal(tableHas(tbl, users), []string{"127.0.0.1:9001"})
	})
	if n := logs.FilterMessageSnippet("went back in time").Len(); n != 1 {
		t.Errorf(`"went back in time" logged %d times; want once: %v`, n, logs.All())
	}
}
