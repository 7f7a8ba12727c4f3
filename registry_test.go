package svcreg

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"users", true},
		{"v1", true},
		{"Users_2.beta-1", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{".", false},
		{"..", false},
		{"...", false},
		{".hidden", true},
		{"a/b", false},
		{"a b", false},
		{"ünï", false},
		{"a%2Fb", false},
		{"a\x00b", false},
	} {
		t.Run(fmt.Sprintf("%q", tc.name), func(t *testing.T) {
			if got := validName(tc.name); got != tc.ok {
				t.Errorf("validName(%q) = %v, want %v", tc.name, got, tc.ok)
			}
		})
	}
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "127.0.0.1:9091", want: "127.0.0.1:9091"},
		{in: "http://127.0.0.1:9091", want: "127.0.0.1:9091"},
		{in: "HTTP://Backend.Local:80", want: "backend.local:80"},
		{in: "[::1]:9091", want: "[::1]:9091"},
		{in: "[::ffff:127.0.0.1]:9091", want: "127.0.0.1:9091"},
		{in: "localhost:08080", want: "localhost:8080"},
		{in: "my_host.internal:1", want: "my_host.internal:1"},
		{in: "host:65535", want: "host:65535"},
		{in: "", wantErr: "want host:port"},
		{in: "127.0.0.1", wantErr: "want host:port"},
		{in: "127.0.0.1:0", wantErr: "port must be"},
		{in: "127.0.0.1:65536", wantErr: "port must be"},
		{in: "127.0.0.1:http", wantErr: "port must be"},
		{in: "127.0.0.1:-1", wantErr: "port must be"},
		{in: ":9091", wantErr: "bad host name"},
		{in: "https://127.0.0.1:9091", wantErr: "transport http { tls }"},
		{in: "ftp://127.0.0.1:21", wantErr: "unsupported scheme"},
		{in: "127.0.0.1:9091/path", wantErr: "want host:port"},
		{in: "user@127.0.0.1:9091", wantErr: "want host:port"},
		{in: "a b:80", wantErr: "want host:port"},
		{in: "-bad.host:80", wantErr: "bad host name"},
		{in: "bad..host:80", wantErr: "bad host name"},
		{in: "[fe80::1%eth0]:80", wantErr: "zones"},
		{in: "::1:80", wantErr: "want host:port"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseAddress(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseAddress(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not match ErrInvalid", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestEndpointWeight(t *testing.T) {
	for _, tc := range []struct {
		weight, want int
		ok           bool
	}{
		{0, 1, true}, {1, 1, true}, {100, 100, true}, {101, 0, false}, {-1, 0, false},
	} {
		ep, err := Endpoint{Address: "127.0.0.1:1", Weight: tc.weight}.normalize()
		if (err == nil) != tc.ok || (tc.ok && ep.Weight != tc.want) {
			t.Errorf("weight %d: got %+v, %v", tc.weight, ep, err)
		}
	}
}

func TestWeightedSchedule(t *testing.T) {
	eps := []*Endpoint{{Address: "a", Weight: 3}, {Address: "b", Weight: 1}, {Address: "c", Weight: 1}}
	sched := weightedSchedule(eps)
	if want := []int32{0, 1, 0, 2, 0}; !slices.Equal(sched, want) {
		t.Errorf("schedule = %v, want %v (smooth weighted round robin)", sched, want)
	}
	if s := weightedSchedule([]*Endpoint{{Weight: 2}, {Weight: 2}}); s != nil {
		t.Errorf("equal weights: schedule = %v, want nil", s)
	}
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

func TestTable(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	tbl := NewTable()
	if _, err := tbl.Snapshot().Lookup("users", "v1"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("new table: Lookup error = %v, want ErrNotSynced", err)
	}
	tbl.Replace(map[ServiceKey][]Endpoint{users: eps("b:1", "a:1")})

	svc, err := tbl.Snapshot().Lookup("users", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(svc); !slices.Equal(got, []string{"a:1", "b:1"}) {
		t.Errorf("endpoints = %v, want sorted [a:1 b:1]", got)
	}
	if svc.Prefix != "/users/v1" {
		t.Errorf("prefix = %q", svc.Prefix)
	}
	if _, err := tbl.Snapshot().Lookup("users", "v2"); !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("unknown version: %v", err)
	}
	if _, err := tbl.Snapshot().Lookup("orders", "v1"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("unknown service: %v", err)
	}

	// Health survives a write that keeps the endpoint.
	a := svc.Endpoint("a:1")
	a.health.ejected.Store(true)
	tbl.Set(users, eps("a:1", "b:1"))
	if same, _ := tbl.Snapshot().Lookup("users", "v1"); same != svc {
		t.Errorf("setting the same endpoints published a new Service")
	}
	tbl.Set(users, []Endpoint{{Address: "a:1", Weight: 5}, {Address: "c:1", Weight: 1}})
	svc2, _ := tbl.Snapshot().Lookup("users", "v1")
	if got := addresses(svc2); !slices.Equal(got, []string{"a:1", "c:1"}) {
		t.Errorf("after Set: %v", got)
	}
	if a2 := svc2.Endpoint("a:1"); a2.Weight != 5 || a2.Available() {
		t.Errorf("reweighted endpoint: weight %d available %v; want 5 and the old (ejected) health", a2.Weight, a2.Available())
	}
	// The old Service a reader may still hold is unchanged.
	if got := addresses(svc); !slices.Equal(got, []string{"a:1", "b:1"}) {
		t.Errorf("old snapshot changed under its reader: %v", got)
	}

	// A known version with no endpoints, then removal.
	tbl.Set(users, nil)
	if svc3, err := tbl.Snapshot().Lookup("users", "v1"); err != nil || len(svc3.Endpoints) != 0 {
		t.Errorf("empty version: %v, %v", svc3, err)
	}
	tbl.Remove(users)
	if _, err := tbl.Snapshot().Lookup("users", "v1"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("after Remove: %v", err)
	}
}

// newTestRegistry returns a registry on a memory backend saving to dir.
func newTestRegistry(t testing.TB, dir string, seeds map[ServiceKey][]Endpoint) *registry {
	t.Helper()
	r := newRegistry(&MemoryBackend{StorageKey: "service_registry/memory.json"}, zap.NewNop())
	t.Cleanup(func() {
		if err := r.Destruct(); err != nil {
			t.Error(err)
		}
	})
	if err := r.start(testEnv(dir, seeds), nil, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// testEnv is what a config with these seeds and file storage in dir hands
// its backend.
func testEnv(dir string, seeds map[ServiceKey][]Endpoint) BackendEnv {
	return BackendEnv{Seeds: seeds, Storage: &certmagic.FileStorage{Path: dir}, Logger: zap.NewNop()}
}

func TestRegistryOperations(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		op      func(r *registry) error
		wantErr error  // matched with errors.Is
		errText string // substring of the error
		want    []string
	}{
		{name: "add", op: func(r *registry) error { return r.Add(ctx, users, Endpoint{Address: "127.0.0.1:9092"}) }, want: []string{"127.0.0.1:9091", "127.0.0.1:9092"}},
		{name: "add twice is harmless", op: func(r *registry) error { return r.Add(ctx, users, Endpoint{Address: "http://127.0.0.1:9091"}) }, want: []string{"127.0.0.1:9091"}},
		{name: "add to a new service", op: func(r *registry) error {
			if err := r.Add(ctx, ServiceKey{"orders", "v2"}, Endpoint{Address: "127.0.0.1:9093"}); err != nil {
				return err
			}
			if svc, err := r.Lookup(ServiceKey{"orders", "v2"}); err != nil || !slices.Equal(addresses(svc), []string{"127.0.0.1:9093"}) {
				return fmt.Errorf("orders v2 after adding: %v, %v", svc, err)
			}
			return nil
		}, want: []string{"127.0.0.1:9091"}},
		{name: "delete", op: func(r *registry) error { return del(r, ctx, users, "127.0.0.1:9091") }, wantErr: nil, want: nil},
		{name: "delete unknown endpoint", op: func(r *registry) error { return del(r, ctx, users, "127.0.0.1:9999") }, wantErr: ErrUnknownEndpoint, errText: "127.0.0.1:9999", want: []string{"127.0.0.1:9091"}},
		{name: "delete from unknown version", op: func(r *registry) error { return del(r, ctx, ServiceKey{"users", "v9"}, "127.0.0.1:9091") }, wantErr: ErrUnknownVersion, want: []string{"127.0.0.1:9091"}},
		{name: "bad service name", op: func(r *registry) error {
			return r.Add(ctx, ServiceKey{"us/ers", "v1"}, Endpoint{Address: "127.0.0.1:1"})
		}, wantErr: ErrInvalid, errText: "service name", want: []string{"127.0.0.1:9091"}},
		{name: "bad version name", op: func(r *registry) error { return r.Add(ctx, ServiceKey{"users", ""}, Endpoint{Address: "127.0.0.1:1"}) }, wantErr: ErrInvalid, errText: "version name", want: []string{"127.0.0.1:9091"}},
		{name: "bad address", op: func(r *registry) error { return r.Add(ctx, users, Endpoint{Address: "127.0.0.1"}) }, wantErr: ErrInvalid, errText: "address", want: []string{"127.0.0.1:9091"}},
		{name: "bad weight", op: func(r *registry) error { return r.Add(ctx, users, Endpoint{Address: "127.0.0.1:1", Weight: 1000}) }, wantErr: ErrInvalid, errText: "weight", want: []string{"127.0.0.1:9091"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRegistry(t, t.TempDir(), map[ServiceKey][]Endpoint{users: eps("127.0.0.1:9091")})
			err := tc.op(r)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			case tc.errText != "" && !strings.Contains(err.Error(), tc.errText):
				t.Fatalf("error %q does not name %q", err, tc.errText)
			}
			svc, err := r.Lookup(users)
			if tc.want == nil {
				// users v1 was seeded, so it stays known even when empty
				if err != nil || len(svc.Endpoints) != 0 {
					t.Fatalf("Lookup = %v, %v; want the seeded version with no endpoints", svc, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := addresses(svc); !slices.Equal(got, tc.want) {
				t.Errorf("endpoints = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRegistryFailure(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	r := newTestRegistry(t, t.TempDir(), map[ServiceKey][]Endpoint{users: eps("127.0.0.1:1", "127.0.0.1:2")})
	r.Failure(users, "127.0.0.1:1")
	r.Failure(users, "127.0.0.1:1")
	r.Failure(users, "127.0.0.1:99")           // unknown endpoint: ignored
	r.Failure(ServiceKey{"nope", "v1"}, "x:1") // unknown service: ignored
	svc, _ := r.Lookup(users)
	if ep := svc.Endpoint("127.0.0.1:1"); ep.Available() || ep.Fails() != 2 || ep.LastFailure().IsZero() {
		t.Errorf("failed endpoint: available %v fails %d last %v; want out of rotation with 2 failures", ep.Available(), ep.Fails(), ep.LastFailure())
	}
	if ep := svc.Endpoint("127.0.0.1:2"); !ep.Available() || ep.Fails() != 0 {
		t.Errorf("other endpoint affected: available %v fails %d", ep.Available(), ep.Fails())
	}
}

// TestRegistryConcurrent runs writers, readers and failure reports at once
// (meant for -race). Every writer owns its addresses and checks that each
// of its own changes is visible to its very next Lookup; every reader
// checks that each snapshot it sees is well formed and never changes
// afterwards.
func TestRegistryConcurrent(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	r := newTestRegistry(t, t.TempDir(), map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1")})
	ctx := context.Background()
	const writers, readers, rounds = 4, 4, 40

	var wg sync.WaitGroup
	errs := make(chan error, writers+readers)
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for i := range rounds {
				addr := fmt.Sprintf("127.0.0.1:%d", 10000+w*100+i%7)
				if err := r.Add(ctx, key, Endpoint{Address: addr}); err != nil {
					errs <- err
					return
				}
				svc, err := r.Lookup(key)
				if err != nil || svc.Endpoint(addr) == nil {
					errs <- fmt.Errorf("writer %d: %s missing right after Add (%v)", w, addr, err)
					return
				}
				r.Failure(key, addr)
				if i%2 == 1 {
					if err := del(r, ctx, key, addr); err != nil {
						errs <- err
						return
					}
					if svc, _ := r.Lookup(key); svc.Endpoint(addr) != nil {
						errs <- fmt.Errorf("writer %d: %s still there right after Delete", w, addr)
						return
					}
				}
			}
		})
	}
	var readerWG sync.WaitGroup
	for range readers {
		readerWG.Go(func() {
			type seen struct {
				svc   *Service
				addrs []string
			}
			var held []seen
			for {
				select {
				case <-stop:
					for _, s := range held {
						if got := addresses(s.svc); !slices.Equal(got, s.addrs) {
							errs <- fmt.Errorf("a snapshot changed under its reader: %v became %v", s.addrs, got)
							return
						}
					}
					return
				default:
				}
				svc, err := r.Lookup(key)
				if err != nil {
					errs <- err
					return
				}
				addrs := addresses(svc)
				if !slices.IsSorted(addrs) || len(slices.Compact(slices.Clone(addrs))) != len(addrs) {
					errs <- fmt.Errorf("inconsistent snapshot: %v", addrs)
					return
				}
				for _, ep := range svc.Endpoints {
					if ep.health == nil || ep.Weight != 1 {
						errs <- fmt.Errorf("inconsistent endpoint %+v", ep)
						return
					}
				}
				if svc.Prefix != "/users/v1" {
					errs <- fmt.Errorf("bad prefix %q", svc.Prefix)
					return
				}
				if len(held) < 200 {
					held = append(held, seen{svc, addrs})
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readerWG.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkLookup(b *testing.B) {
	tbl := NewTable()
	all := map[ServiceKey][]Endpoint{}
	for i := range 1000 {
		all[ServiceKey{fmt.Sprintf("svc%d", i), "v1"}] = eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
	}
	tbl.Replace(all)
	r := &registry{table: tbl}
	key := ServiceKey{"svc500", "v1"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			svc, err := r.Lookup(key)
			if err != nil || len(svc.Endpoints) != 3 {
				b.Fatal("bad lookup")
			}
		}
	})
}

// del deletes an endpoint and forgets how the drain went.
func del(r Registry, ctx context.Context, key ServiceKey, address string) error {
	_, err := r.Delete(ctx, key, address)
	return err
}

// BenchmarkRegistryScale measures a registry of 10,000 services of 5
// endpoints each: Lookup and a first try's Select on it, and the heap the
// registry takes (B/registry).
func BenchmarkRegistryScale(b *testing.B) {
	all := map[ServiceKey][]Endpoint{}
	for i := range 10000 {
		all[ServiceKey{fmt.Sprintf("s%d", i), "v1"}] = []Endpoint{
			{Address: fmt.Sprintf("10.0.%d.1:80", i%250), Weight: 1}, {Address: fmt.Sprintf("10.0.%d.2:80", i%250), Weight: 1},
			{Address: fmt.Sprintf("10.0.%d.3:80", i%250), Weight: 1}, {Address: fmt.Sprintf("10.0.%d.4:80", i%250), Weight: 1},
			{Address: fmt.Sprintf("10.0.%d.5:80", i%250), Weight: 1},
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tbl := NewTable()
	tbl.Replace(all)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc - before.HeapAlloc)
	reg := &registry{table: tbl}
	keys := make([]ServiceKey, 1024)
	for i := range keys {
		keys[i] = ServiceKey{fmt.Sprintf("s%d", i*9), "v1"}
	}

	b.Run("lookup", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := reg.Lookup(keys[i%len(keys)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(heap, "B/registry")
	})
	b.Run("select", func(b *testing.B) {
		try := newProxyTry(b, reg, balanceRoundRobin, keys[7])
		pool, _ := try.source.GetUpstreams(try.r)
		for _, u := range pool {
			u.Host = new(reverseproxy.Host)
		}
		a := caddyhttp.GetVar(try.r.Context(), attemptVar).(*attempt)
		b.ReportAllocs()
		for b.Loop() {
			a.tried[0], a.last = 0, -1
			if try.policy.Select(pool, try.r, try.w) == nil {
				b.Fatal("no host")
			}
		}
	})
}

// TestAddStopsDrain checks that an endpoint added again while a removal
// drains it goes back into rotation: the add wins.
func TestAddStopsDrain(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	r := newTestRegistry(t, t.TempDir(), map[ServiceKey][]Endpoint{users: eps("127.0.0.1:9091")})
	ep := r.endpoint(users, "127.0.0.1:9091")
	ep.health.draining.Store(true) // as Delete does before it waits
	if ep.Available() {
		t.Fatal("a draining endpoint is available")
	}
	must(t, r.Add(context.Background(), users, Endpoint{Address: "127.0.0.1:9091"}))
	if !r.endpoint(users, "127.0.0.1:9091").Available() {
		t.Error("an endpoint added again during its drain stays out of rotation")
	}
}
