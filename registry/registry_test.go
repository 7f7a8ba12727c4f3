package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRegistryOperations(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		op      func(r *Registry) error
		wantErr error  // matched with errors.Is
		errText string // substring of the error
		want    []string
	}{
		{name: "add", op: func(r *Registry) error { return r.Add(ctx, users, Endpoint{Address: "127.0.0.1:9092"}) }, want: []string{"127.0.0.1:9091", "127.0.0.1:9092"}},
		{name: "add twice is harmless", op: func(r *Registry) error { return r.Add(ctx, users, Endpoint{Address: "http://127.0.0.1:9091"}) }, want: []string{"127.0.0.1:9091"}},
		{name: "add to a new service", op: func(r *Registry) error {
			if err := r.Add(ctx, ServiceKey{"orders", "v2"}, Endpoint{Address: "127.0.0.1:9093"}); err != nil {
				return err
			}
			if svc, err := r.Lookup(ServiceKey{"orders", "v2"}); err != nil || !slices.Equal(addresses(svc), []string{"127.0.0.1:9093"}) {
				return fmt.Errorf("orders v2 after adding: %v, %v", svc, err)
			}
			return nil
		}, want: []string{"127.0.0.1:9091"}},
		{name: "delete", op: func(r *Registry) error { return del(r, ctx, users, "127.0.0.1:9091") }, want: nil},
		{name: "delete unknown endpoint", op: func(r *Registry) error { return del(r, ctx, users, "127.0.0.1:9999") }, wantErr: ErrUnknownEndpoint, errText: "127.0.0.1:9999", want: []string{"127.0.0.1:9091"}},
		{name: "delete from unknown version", op: func(r *Registry) error { return del(r, ctx, ServiceKey{"users", "v9"}, "127.0.0.1:9091") }, wantErr: ErrUnknownVersion, want: []string{"127.0.0.1:9091"}},
		{name: "bad service name", op: func(r *Registry) error {
			return r.Add(ctx, ServiceKey{"us/ers", "v1"}, Endpoint{Address: "127.0.0.1:1"})
		}, wantErr: ErrInvalid, errText: "service name", want: []string{"127.0.0.1:9091"}},
		{name: "bad version name", op: func(r *Registry) error { return r.Add(ctx, ServiceKey{"users", ""}, Endpoint{Address: "127.0.0.1:1"}) }, wantErr: ErrInvalid, errText: "version name", want: []string{"127.0.0.1:9091"}},
		{name: "bad address", op: func(r *Registry) error { return r.Add(ctx, users, Endpoint{Address: "127.0.0.1"}) }, wantErr: ErrInvalid, errText: "address", want: []string{"127.0.0.1:9091"}},
		{name: "bad weight", op: func(r *Registry) error { return r.Add(ctx, users, Endpoint{Address: "127.0.0.1:1", Weight: 1000}) }, wantErr: ErrInvalid, errText: "weight", want: []string{"127.0.0.1:9091"}},
		{name: "bad delete address", op: func(r *Registry) error { return del(r, ctx, users, "127.0.0.1") }, wantErr: ErrInvalid, errText: "address", want: []string{"127.0.0.1:9091"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRegistry(t, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:9091")}, Options{})
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

func TestRegistryNotSynced(t *testing.T) {
	r := New(new(testBackend), Options{})
	if _, err := r.Lookup(ServiceKey{"users", "v1"}); !errors.Is(err, ErrNotSynced) {
		t.Errorf("before Start: %v, want ErrNotSynced", err)
	}
	if _, err := r.Delete(context.Background(), ServiceKey{"users", "v1"}, "127.0.0.1:1"); !errors.Is(err, ErrNotSynced) {
		t.Errorf("deleting before Start: %v, want ErrNotSynced", err)
	}
	must(t, r.Stop())
	if err := r.Start(BackendEnv{}, nil, nil); err == nil {
		t.Error("a stopped registry started again")
	}
}

func TestRegistryFailure(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	clock := newFakeClock()
	r := startRegistry(t, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:1", "127.0.0.1:2")}, Options{Now: clock.Now})
	r.Failure(users, "127.0.0.1:1")
	r.Failure(users, "127.0.0.1:1")
	r.Failure(users, "127.0.0.1:99")           // unknown endpoint: ignored
	r.Failure(ServiceKey{"nope", "v1"}, "x:1") // unknown service: ignored
	svc, _ := r.Lookup(users)
	st := svc.Endpoint("127.0.0.1:1").Stats()
	if st.Available || st.OutOfRotation != "passive" || st.Fails != 2 || st.Failures != 2 || st.Ejections != 1 ||
		!st.LastFailure.Equal(clock.Now()) || !st.NextCheck.Equal(clock.Now().Add(probeBackoffMin)) {
		t.Errorf("failed endpoint: %+v; want out of rotation (passive) with 2 failures, 1 ejection, checked again after %v", st, probeBackoffMin)
	}
	if st := svc.Endpoint("127.0.0.1:2").Stats(); !st.Available || st.Fails != 0 {
		t.Errorf("other endpoint affected: %+v", st)
	}
}

// TestRegistryConcurrent runs writers, readers and failure reports at once
// (meant for -race). Every writer owns its addresses and checks that each
// of its own changes is visible to its very next Lookup; every reader
// checks that each snapshot it sees is well formed and never changes
// afterwards.
func TestRegistryConcurrent(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	r := startRegistry(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1")}, Options{})
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

// TestAddStopsDrain checks that an endpoint added again while a removal
// drains it goes back into rotation: the add wins.
func TestAddStopsDrain(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	r := startRegistry(t, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:9091")}, Options{})
	ep := r.endpoint(users, "127.0.0.1:9091")
	ep.health.setOut(outDraining, true) // as Delete does before it waits
	if ep.Stats().Available || ep.Pickable(true) {
		t.Fatal("a draining endpoint takes requests")
	}
	must(t, r.Add(context.Background(), users, Endpoint{Address: "127.0.0.1:9091"}))
	if !r.endpoint(users, "127.0.0.1:9091").Stats().Available {
		t.Error("an endpoint added again during its drain stays out of rotation")
	}
}

// inFlight is a settable count of requests in flight.
type inFlight struct{ n atomic.Int64 }

func (c *inFlight) NumRequests() int { return int(c.n.Load()) }

// TestDrain removes endpoints with requests in flight, on a fake clock:
// the drain waits for them to finish, or gives up at the drain timeout
// (by the registry's clock) and says how many were left.
func TestDrain(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	for _, tc := range []struct {
		name    string
		finish  bool // the requests finish; otherwise the clock runs past the timeout
		drained bool
		left    int
	}{
		{name: "requests finish", finish: true, drained: true, left: 0},
		{name: "timeout", finish: false, drained: false, left: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			r := startRegistry(t, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:1", "127.0.0.1:2")}, Options{Now: clock.Now})
			policy, err := NewHealthPolicy([]HealthCheck{{DrainTimeout: Duration(10 * time.Second)}})
			must(t, err)
			must(t, r.Start(BackendEnv{Seeds: normalized(t, map[ServiceKey][]Endpoint{users: eps("127.0.0.1:1", "127.0.0.1:2")})}, policy, nil))
			ep := r.endpoint(users, "127.0.0.1:1")
			counter := new(inFlight)
			counter.n.Store(2)
			ep.CountInFlight(counter)

			type result struct {
				d   Drain
				err error
			}
			done := make(chan result, 1)
			go func() {
				d, err := r.Delete(context.Background(), users, "127.0.0.1:1")
				done <- result{d, err}
			}()
			eventually(t, 10*time.Second, "the drain to begin", func() bool { return ep.Stats().OutOfRotation == "draining" })
			if ep.Pickable(true) {
				t.Error("a draining endpoint is pickable, even in panic mode")
			}
			select {
			case res := <-done:
				t.Fatalf("Delete returned while requests were in flight and the clock stood still: %+v", res)
			case <-time.After(50 * time.Millisecond):
			}
			if tc.finish {
				clock.Advance(3 * time.Second)
				counter.n.Store(0)
			} else {
				clock.Advance(10 * time.Second)
			}
			res := <-done
			must(t, res.err)
			wantWaited := 3 * time.Second
			if !tc.finish {
				wantWaited = 10 * time.Second
			}
			if res.d.Drained != tc.drained || res.d.InFlight != tc.left || res.d.Waited != wantWaited {
				t.Errorf("drain = %+v, want drained %v, %d left, waited %v", res.d, tc.drained, tc.left, wantWaited)
			}
			if svc, _ := r.Lookup(users); svc.Endpoint("127.0.0.1:1") != nil {
				t.Error("the endpoint is still registered after its removal")
			}
		})
	}
}

// TestStopEndsProbes checks that a probe in progress (one that would hang)
// ends when the registry stops, before Stop returns, and that Stop stops
// the backend.
func TestStopEndsProbes(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	probing := make(chan struct{})
	var probeEnded atomic.Bool
	backend := new(testBackend)
	r := New(backend, Options{probe: func(ctx context.Context, _ probeJob) error {
		close(probing)
		<-ctx.Done()
		probeEnded.Store(true)
		return ctx.Err()
	}})
	must(t, r.Start(BackendEnv{Seeds: normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:9")})}, nil, nil))
	r.Failure(key, "127.0.0.1:9")
	select {
	case <-probing:
	case <-time.After(10 * time.Second):
		t.Fatal("the checker never probed the failed endpoint")
	}
	must(t, r.Stop())
	if !probeEnded.Load() {
		t.Error("Stop returned while a probe was still running")
	}
	if !backend.stopped {
		t.Error("Stop did not stop the backend")
	}
	must(t, r.Stop()) // a second Stop does nothing
}
