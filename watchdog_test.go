package svcreg

import (
	"sync"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry"
)

// fakeClock is a clock that moves only when Advance is called, which runs
// the callbacks that are due then, in order, on the caller's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c      *fakeClock
	f      func()
	when   time.Time
	active bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) timer {
	t := &fakeTimer{c: c, f: f}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	t.Reset(d)
	return t
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.when, t.active = t.c.now.Add(d), true
	return was
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

// Advance moves the clock by d, firing every timer due on the way at its
// own time.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, t := range c.timers {
			if t.active && !t.when.After(end) && (next == nil || t.when.Before(next.when)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		c.now, next.active = next.when, false
		c.mu.Unlock()
		next.f()
	}
}

// fixedInFlight is a fixed count of requests in flight to an endpoint.
type fixedInFlight int

func (n fixedInFlight) NumRequests() int { return int(n) }

// TestWatchdogSilence drives a try's watchdog with a fake clock: a host
// with requests piling up that answers nothing while its peer answers is
// cut at the first silence check; a host with a single long request in
// flight is left alone, its peer answering all along, until the try's
// deadline.
func TestWatchdogSilence(t *testing.T) {
	const after, deadline = 100 * time.Millisecond, time.Second
	for _, tc := range []struct {
		name     string
		inFlight fixedInFlight
		advance  time.Duration // before the check
		wantCut  int
	}{
		{"silent host with requests piling up", 2, after, cutSilent},
		{"one long request", 1, deadline - time.Millisecond, notCut},
		{"one long request at its deadline", 1, deadline, cutDeadline},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			key := registry.ServiceKey{Service: "users", Version: "v1"}
			reg := newTestRegistryWith(t, registry.Options{Now: clock.Now},
				map[registry.ServiceKey][]registry.Endpoint{key: eps("127.0.0.1:9001", "127.0.0.1:9002")})
			svc, err := reg.Lookup(key)
			must(t, err)
			quiet, peer := svc.Endpoints[0], svc.Endpoints[1]
			quiet.CountInFlight(tc.inFlight)
			peer.CountInFlight(fixedInFlight(1))

			w := newWatchdogOn(clock)
			aborted := 0
			begin := clock.Now()
			w.start(func() { aborted++ }, silenceCheck{svc: svc, ep: quiet, begin: begin, after: after}, deadline, after, hedgePlan{})
			// the peer answers every 10 ms
			for clock.Now().Sub(begin) < tc.advance {
				clock.Advance(min(10*time.Millisecond, tc.advance-clock.Now().Sub(begin)))
				reg.Report(svc, peer, registry.Answered, 5*time.Millisecond)
			}
			fired := w.Fired()
			cut, _ := w.stop()
			if cut != tc.wantCut || fired != (tc.wantCut != notCut) {
				t.Errorf("after %v: cut %d (fired %v), want %d", tc.advance, cut, fired, tc.wantCut)
			}
			if want := min(1, tc.wantCut); aborted != want {
				t.Errorf("try ended %d times, want %d", aborted, want)
			}
		})
	}
}
