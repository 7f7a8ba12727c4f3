package registry

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	tbl := newTable(time.Now)
	if _, err := tbl.Snapshot().Lookup("users", "v1"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("new table: Lookup error = %v, want ErrNotSynced", err)
	}
	tbl.replace(map[ServiceKey][]Endpoint{users: eps("b:1", "a:1")})

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
	first, second := new(int), new(int)
	if svc.Attachment() != nil || svc.Attach(first) != first || svc.Attach(second) != first || svc.Attachment() != first {
		t.Errorf("attach: the first value attached does not stay")
	}
	if err := svc.Unavailable(); !errors.Is(err, ErrNoAvailableHost) || err.Error() != `no available host for service "users" version "v1"` {
		t.Errorf("unavailable = %v", err)
	}
	if _, err := tbl.Snapshot().Lookup("users", "v2"); !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("unknown version: %v", err)
	}
	if _, err := tbl.Snapshot().Lookup("orders", "v1"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("unknown service: %v", err)
	}

	// Health and the attachment survive a write that keeps the endpoint.
	a := svc.Endpoint("a:1")
	a.health.setOut(outPassive, true)
	tbl.set(users, eps("a:1", "b:1"))
	if same, _ := tbl.Snapshot().Lookup("users", "v1"); same != svc {
		t.Errorf("setting the same endpoints published a new Service")
	}
	tbl.set(users, []Endpoint{{Address: "a:1", Weight: 5}, {Address: "c:1", Weight: 1}})
	svc2, _ := tbl.Snapshot().Lookup("users", "v1")
	if got := addresses(svc2); !slices.Equal(got, []string{"a:1", "c:1"}) {
		t.Errorf("after Set: %v", got)
	}
	if a2 := svc2.Endpoint("a:1"); a2.Weight != 5 || a2.Stats().Available {
		t.Errorf("reweighted endpoint: weight %d available %v; want 5 and the old (ejected) health", a2.Weight, a2.Stats().Available)
	}
	if svc2.Attachment() != first {
		t.Errorf("attachment after a rewrite = %v, want the one attached before", svc2.Attachment())
	}
	// The old Service a reader may still hold is unchanged.
	if got := addresses(svc); !slices.Equal(got, []string{"a:1", "b:1"}) {
		t.Errorf("old snapshot changed under its reader: %v", got)
	}

	// A known version with no endpoints, then removal.
	tbl.set(users, nil)
	if svc3, err := tbl.Snapshot().Lookup("users", "v1"); err != nil || len(svc3.Endpoints) != 0 {
		t.Errorf("empty version: %v, %v", svc3, err)
	}
	tbl.remove(users)
	if _, err := tbl.Snapshot().Lookup("users", "v1"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("after Remove: %v", err)
	}
}

func TestFeedPublish(t *testing.T) {
	users, orders, empty, gone := ServiceKey{"users", "v1"}, ServiceKey{"orders", "v1"}, ServiceKey{"empty", "v1"}, ServiceKey{"gone", "v1"}
	seeds := map[ServiceKey][]Endpoint{
		users: eps("a:1", "b:1"),
		empty: {},
	}
	changes := map[ServiceKey]map[string]Change{
		users:  {"a:1": {Endpoint: Endpoint{Address: "a:1", Weight: 3}}, "b:1": {Endpoint: Endpoint{Address: "b:1"}, Deleted: true}, "c:1": {Endpoint: Endpoint{Address: "c:1", Weight: 1}}},
		orders: {"d:1": {Endpoint: Endpoint{Address: "d:1", Weight: 1}}},
		gone:   {"e:1": {Endpoint: Endpoint{Address: "e:1"}, Deleted: true}},
	}
	publish := func(listed bool) map[ServiceKey][]string {
		feed := NewFeed()
		feed.Configure(BackendEnv{Seeds: seeds})
		feed.Publish(changes, listed)
		got := map[ServiceKey][]string{}
		for _, svc := range feed.Snapshot().Services() {
			got[svc.Key()] = []string{}
			for _, ep := range svc.Endpoints {
				got[svc.Key()] = append(got[svc.Key()], fmt.Sprintf("%s/%d", ep.Address, ep.Weight))
			}
		}
		return got
	}
	want := map[ServiceKey][]string{
		users:  {"a:1/3", "c:1/1"}, // a reweighted, b deleted, c added
		orders: {"d:1/1"},          // only added
		empty:  {},                 // seeded with no endpoints: known
	}
	if got := publish(false); !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("Publish = %v, want %v (gone: only a deletion, so unknown)", got, want)
	}
	// A store that lists its versions (Consul) makes each one it
	// holds known, even with no endpoint.
	want[gone] = []string{}
	if got := publish(true); !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("Publish listed = %v, want %v (gone: listed, so known)", got, want)
	}
}

func BenchmarkLookup(b *testing.B) {
	tbl := newTable(time.Now)
	all := map[ServiceKey][]Endpoint{}
	for i := range 1000 {
		all[ServiceKey{fmt.Sprintf("svc%d", i), "v1"}] = eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
	}
	tbl.replace(all)
	r := &Registry{table: tbl}
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

// TestLookupAllocs checks that Lookup, on the request path, allocates
// nothing.
func TestLookupAllocs(t *testing.T) {
	tbl := newTable(time.Now)
	tbl.replace(map[ServiceKey][]Endpoint{{"users", "v1"}: eps("127.0.0.1:1", "127.0.0.1:2")})
	r := &Registry{table: tbl}
	key := ServiceKey{"users", "v1"}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := r.Lookup(key); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Lookup allocates %v times", n)
	}
}
