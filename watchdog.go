package svcreg

import (
	"sync"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/h1"
	"github.com/svcreg/caddy-svcreg/registry"
)

// silenceCheck ends a try early when its host has answered nothing for a
// while (after) though its service's other hosts answered.
type silenceCheck struct {
	svc   *registry.Service
	ep    *registry.Endpoint
	begin time.Time
	after time.Duration // 0: no check
}

// Why a watchdog ended a try.
const (
	notCut      = iota
	cutDeadline // the try's deadline passed
	cutSilent   // the host went silent
	cutHedged   // its hedge answered first
)

// watchdog cancels a try that gets no response header in time, or whose
// host goes silent. Watchdogs are pooled with their timer: every request
// would otherwise allocate one, its timer and its callback.
type watchdog struct {
	clock    clock         // time.Now and time.AfterFunc, or a test's
	pool     *sync.Pool    // where stop puts it back; nil: nowhere
	timer    timer         // calls fire; made once, Reset for each try
	abort    func()        // ends the try; nil: nothing to end yet
	silence  silenceCheck  // checked every silence.after; after 0: none
	deadline time.Duration // 0: none
	plan     hedgePlan     // the hedge to send; after 0: none (any more)
	begin    time.Time     // the try's start, when a hedge is planned
	first    time.Duration // the first check after a planned hedge; 0: none
	hedged   *hedge        // the hedge sent

	mu   sync.Mutex // guards everything below, and orders fire and stop
	done bool       // the try has its answer, or failed
	cut  int        // why the watchdog ended the try; notCut: it did not
}

// watchdogs is filled in init: a watchdog's callback may send a hedge,
// which takes a watchdog of its own.
var watchdogs sync.Pool

func newWatchdog() any {
	w := newWatchdogOn(realClock{})
	w.pool = &watchdogs
	return w
}

// newWatchdogOn returns a watchdog that keeps time with c.
func newWatchdogOn(c clock) *watchdog {
	w := &watchdog{clock: c}
	w.timer = c.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// clock is a watchdog's time: the real one, or a test's, which moves only
// when the test says, so that the silence check is tested without waits.
type clock interface {
	Now() time.Time
	// AfterFunc calls f, in its own goroutine, once d has passed.
	AfterFunc(d time.Duration, f func()) timer
}

// timer is what a watchdog does with AfterFunc's timer, as with a
// *time.Timer.
type timer interface {
	Reset(d time.Duration) bool
	Stop() bool
}

// realClock is the time package's clock.
type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) timer { return time.AfterFunc(d, f) }

func (w *watchdog) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return
	}
	now := w.clock.Now()
	if p := &w.plan; p.after > 0 {
		p.after = 0
		w.hedged = p.launch(w, now)
		if w.first > 0 {
			w.timer.Reset(max(w.first-now.Sub(w.begin), 0))
		}
		return
	}
	if s := &w.silence; s.after > 0 {
		if !s.svc.Silent(s.ep, now.Add(-s.after), 2) {
			// not silent: check again, up to the deadline
			next := s.after
			if w.deadline > 0 {
				left := w.deadline - now.Sub(s.begin)
				if left <= next {
					s.after = 0 // the deadline comes first
					next = max(left, 0)
				}
			}
			w.timer.Reset(next)
			return
		}
		w.cut = cutSilent
	} else {
		w.cut = cutDeadline
	}
	if w.abort != nil {
		w.abort()
	}
}

// start arms the watchdog for a try: it fires first after first (0:
// never), or sends plan's hedge before that.
func (w *watchdog) start(abort func(), s silenceCheck, deadline, first time.Duration, plan hedgePlan) {
	w.mu.Lock() // fire may run before Reset returns
	w.abort, w.silence, w.deadline, w.done, w.cut = abort, s, deadline, false, notCut
	w.plan, w.hedged, w.first = plan, nil, 0
	if plan.after > 0 {
		w.begin, w.first, first = w.clock.Now(), first, plan.after
	}
	w.timer.Reset(first)
	w.mu.Unlock()
}

// cutFor ends the try for why, unless it has ended.
func (w *watchdog) cutFor(why int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.cut != notCut {
		return
	}
	w.cut = why
	if w.abort != nil {
		w.abort()
	}
}

// Watch makes abort what the watchdog ends, and ends it at once if the
// watchdog has fired already.
func (w *watchdog) Watch(abort func()) {
	w.mu.Lock()
	w.abort = abort
	fired := w.cut != notCut
	w.mu.Unlock()
	if fired {
		abort()
	}
}

// Fired reports whether the watchdog has ended the try.
func (w *watchdog) Fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cut != notCut
}

// Detach leaves the try's connection alone from now on, and reports
// whether the watchdog had not ended it already.
func (w *watchdog) Detach() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.abort = nil
	return w.cut == notCut
}

// stop ends the watchdog, says whether, and why, it ended the try, and
// which hedge it sent, and puts it back in the pool unless its callback
// has started (a callback that started may still be running: that
// watchdog is left to the GC), or it sent a hedge (which holds it).
func (w *watchdog) stop() (int, *hedge) {
	w.mu.Lock()
	w.done = true
	cut, h := w.cut, w.hedged
	stopped := w.timer.Stop()
	w.abort, w.silence, w.plan, w.hedged = nil, silenceCheck{}, hedgePlan{}, nil
	w.mu.Unlock()
	if stopped && h == nil && w.pool != nil {
		w.pool.Put(w)
	}
	return cut, h
}

// Interface guards
var _ h1.Watchdog = (*watchdog)(nil)
