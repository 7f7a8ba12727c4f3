package registry

import (
	"container/heap"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Passive health: an endpoint that fails a request leaves rotation at once.
// The checker then probes it, first after probeBackoffMin and then with a
// doubling backoff capped at probeBackoffMax; rise passing checks put it
// back. A restarted host is therefore back in rotation within about
// probeBackoffMax of answering again, instead of after a fixed lockout, and
// no live request is spent finding that out.
const (
	probeBackoffMin = 250 * time.Millisecond
	probeBackoffMax = 500 * time.Millisecond
)

// maxConcurrentProbes bounds the checks in flight at once.
const maxConcurrentProbes = 16

// EventFunc receives the registry's events: "healthy" and "unhealthy",
// with data host, service, version and reason ("probe", "passive", or
// "limit" for an endpoint the ejection limit put back).
type EventFunc func(name string, data map[string]any)

// checker runs every check of a registry: the active checks of the
// services that have them, and the checks that bring passively failed
// endpoints back. One goroutine schedules (run); a bounded pool probes.
// Everything the scheduler decides is in methods that take the time, so
// that tests drive it with a fake clock.
type checker struct {
	table  *table
	now    func() time.Time
	probe  probeFunc
	logger atomic.Pointer[zap.Logger]
	policy atomic.Pointer[HealthPolicy]
	events atomic.Pointer[EventFunc]

	wake chan struct{}

	mu       sync.Mutex                       // guards failed, released; limits ejections per service
	failed   []*probeTarget                   // taken out after a failed request
	released []*probeTarget                   // put back by the ejection limit
	targets  map[*endpointHealth]*probeTarget // owned by the scheduler
	queue    probeQueue                       // owned by the scheduler
	seen     *Snapshot                        // owned by the scheduler
	seenFor  *HealthPolicy                    // owned by the scheduler
}

// probeTarget is an endpoint the checker looks after.
type probeTarget struct {
	key     ServiceKey
	address string
	health  *endpointHealth
	next    time.Time
	backoff time.Duration // while passively ejected: the current re-check delay
	passes  int           // checks passed in a row
	fails   int           // checks failed in a row
	running bool
	index   int // in the queue; -1 when not queued
}

// probeQueue orders targets by their next check.
type probeQueue []*probeTarget

func (q probeQueue) Len() int           { return len(q) }
func (q probeQueue) Less(i, j int) bool { return q[i].next.Before(q[j].next) }
func (q probeQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i]; q[i].index = i; q[j].index = j }
func (q *probeQueue) Push(x any)        { t := x.(*probeTarget); t.index = len(*q); *q = append(*q, t) }
func (q *probeQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	*q = old[:len(old)-1]
	t.index = -1
	return t
}

func newChecker(table *table, now func() time.Time, probe probeFunc, logger *zap.Logger) *checker {
	c := &checker{
		table:   table,
		now:     now,
		probe:   probe,
		wake:    make(chan struct{}, 1),
		targets: map[*endpointHealth]*probeTarget{},
	}
	c.logger.Store(logger)
	policy, _ := NewHealthPolicy(nil)
	c.policy.Store(policy)
	c.events.Store(new(EventFunc))
	return c
}

// configure takes the health configuration, logger and events of the
// config that started last; nil leaves one as it is.
func (c *checker) configure(policy *HealthPolicy, logger *zap.Logger, events EventFunc) {
	if logger != nil {
		c.logger.Store(logger)
	}
	if policy != nil {
		c.policy.Store(policy)
	}
	if events != nil {
		c.events.Store(&events)
	}
	c.poke()
}

func (c *checker) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *checker) emit(name string, t *probeTarget, reason string) {
	if emit := *c.events.Load(); emit != nil {
		emit(name, map[string]any{"host": t.address, "service": t.key.Service, "version": t.key.Version, "reason": reason})
	}
}

// report applies the outcome of one try to ep of svc at t. It is called
// on the request path: no I/O, no blocking beyond a short lock when the
// endpoint leaves rotation.
func (c *checker) report(svc *Service, ep *Endpoint, o Outcome, latency time.Duration, t time.Time) {
	h := ep.health
	now := t.UnixNano()
	if o == Answered || o == GatewayError {
		h.lastReply.Store(now)
		svc.stats.lastReply.Store(now)
	}
	if o == Answered {
		if h.fails.Load() != 0 {
			h.fails.Store(0)
		}
		if h.gatewayErrs.Load() != 0 {
			h.gatewayErrs.Store(0)
		}
		h.ewma.observe(latency, now)
		svc.stats.latency.observe(latency, now)
		return
	}
	if o == Overtaken {
		h.ewma.observe(latency, now) // at least this slow
		return
	}
	h.fails.Add(1)
	h.lastFailure.Store(now)
	h.failures.Add(1)
	switch o {
	case GatewayError:
		if n := h.gatewayErrs.Add(1); n >= int64(c.policy.Load().of(svc.Key()).EjectAfter) {
			c.eject(svc, ep, outPassive, t)
		}
	case TimedOut:
		// At least this slow: picked less at once, and out until it
		// answers a check (soon, if this was a fluke).
		h.ewma.observe(latency, now)
		if svc.stats.latency.learning(now) {
			// A service with no latency yet, slower than its first
			// deadlines: this is the best guess of how slow it is.
			svc.stats.latency.observe(latency, now)
		}
		c.eject(svc, ep, outPassive, t)
	case Silent:
		h.ewma.observe(latency, now)
		c.eject(svc, ep, outUnreachable, t)
	case Unreachable:
		c.eject(svc, ep, outUnreachable, t)
	default:
		c.eject(svc, ep, outPassive, t)
	}
}

// eject takes ep of svc out of rotation for reason: outPassive (failed
// requests), within the service's ejection limit, or outUnreachable (no
// connection), which the limit does not bound: a host that cannot be
// reached serves nobody in rotation.
func (c *checker) eject(svc *Service, ep *Endpoint, reason uint32, t time.Time) {
	h := ep.health
	if h.out(outPassive | outUnreachable | outDraining) {
		return
	}
	// at least one may always go, whatever the percentage
	limit := max(1, len(svc.Endpoints)*c.policy.Load().of(svc.Key()).MaxEjectedPercent/100)

	c.mu.Lock()
	defer c.mu.Unlock()
	if h.out(outPassive | outUnreachable) {
		return
	}
	if reason == outUnreachable {
		limit = len(svc.Endpoints) + 1
	}
	ejected, oldest := 0, (*Endpoint)(nil)
	for _, other := range svc.Endpoints {
		if other.health.out(outPassive) {
			ejected++
			if oldest == nil || other.health.lastFailure.Load() < oldest.health.lastFailure.Load() {
				oldest = other
			}
		}
	}
	if ejected >= limit {
		// Over the limit (ejected >= 1, so oldest is set): the least
		// recently failed one goes back in.
		oldest.health.setOut(outPassive, false)
		oldest.health.nextProbe.Store(0)
		c.released = append(c.released, &probeTarget{key: svc.Key(), address: oldest.Address, health: oldest.health})
	}
	h.setOut(reason, true)
	h.nextProbe.Store(t.Add(probeBackoffMin).UnixNano())
	h.ejections.Add(1)
	c.failed = append(c.failed, &probeTarget{key: svc.Key(), address: ep.Address, health: h})
	c.poke()
}

// probeResult is the outcome of one check.
type probeResult struct {
	t   *probeTarget
	err error
}

// run schedules checks until ctx is done, probing on a bounded pool.
func (c *checker) run(ctx context.Context) {
	jobs := make(chan *probeTarget)
	results := make(chan probeResult)
	var workers sync.WaitGroup
	for range maxConcurrentProbes {
		workers.Go(func() {
			for t := range jobs {
				err := c.check(ctx, t)
				select {
				case results <- probeResult{t, err}:
				case <-ctx.Done():
				}
			}
		})
	}
	defer func() {
		close(jobs)
		workers.Wait()
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := c.now()
		c.reconcile(now)
		// hand out every due check the pool can take now
		for t := c.due(now); t != nil; t = c.due(now) {
			select {
			case jobs <- t:
				continue
			case r := <-results:
				c.done(r, c.now())
			case <-ctx.Done():
				return
			}
			t.running = false // the pool is busy: try again later
			heap.Push(&c.queue, t)
			break
		}
		wait := time.Hour
		if c.queue.Len() > 0 {
			wait = max(c.queue[0].next.Sub(c.now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case r := <-results:
			c.done(r, c.now())
		case <-c.wake:
		case <-timer.C:
		}
	}
}

// due takes the next target whose check is due at now off the queue and
// marks it running, or returns nil.
func (c *checker) due(now time.Time) *probeTarget {
	if c.queue.Len() == 0 || c.queue[0].next.After(now) {
		return nil
	}
	t := heap.Pop(&c.queue).(*probeTarget)
	t.running = true
	return t
}

// check runs the probe for t, turning a panic into a failed check.
func (c *checker) check(ctx context.Context, t *probeTarget) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("health check panicked: %v", p)
			c.logger.Load().Error("health check panicked", zap.String("service", t.key.Service),
				zap.String("version", t.key.Version), zap.String("upstream", t.address), zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	return c.probe(ctx, probeJob{Key: t.key, Address: t.address, Check: c.policy.Load().of(t.key), TLS: t.health.tls.Load()})
}

// reconcile brings the targets in line with the snapshot, the policy and
// the endpoints that failed requests.
func (c *checker) reconcile(now time.Time) {
	c.mu.Lock()
	failed, released := c.failed, c.released
	c.failed, c.released = nil, nil
	c.mu.Unlock()
	policy := c.policy.Load()

	snap := c.table.Snapshot()
	if (snap != c.seen || policy != c.seenFor) && (policy.anyActive || len(c.targets) > 0) {
		c.seen, c.seenFor = snap, policy
		live := map[*endpointHealth]bool{}
		for _, svc := range snap.Services() {
			hc := policy.of(svc.Key())
			for _, ep := range svc.Endpoints {
				live[ep.health] = true
				if _, ok := c.targets[ep.health]; !ok && hc.active() {
					// first check at a random point of the interval, so that
					// checks spread out
					c.add(&probeTarget{key: svc.Key(), address: ep.Address, health: ep.health,
						next: now.Add(time.Duration(rand.Int64N(int64(hc.Interval))))})
				}
			}
		}
		for h, t := range c.targets {
			if !live[h] {
				c.remove(t)
			}
		}
	}
	for _, r := range released {
		t, ok := c.targets[r.health]
		if !ok || t.backoff == 0 || r.health.out(outPassive) {
			continue // not out, or taken out again since
		}
		t.backoff, t.passes = 0, 0
		if !policy.of(t.key).active() {
			c.remove(t)
		}
		if r.health.available() {
			c.emit("healthy", t, "limit")
		}
		if ce := c.logger.Load().Check(zapcore.InfoLevel, "endpoint back in rotation: too many of its service were out"); ce != nil {
			ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address))
		}
	}
	for _, f := range failed {
		if !f.health.out(outPassive | outUnreachable) {
			continue // put back by the ejection limit already
		}
		t, ok := c.targets[f.health]
		if !ok {
			if !inSnapshot(snap, f) {
				continue // removed since it failed
			}
			t = f
			c.add(t)
		}
		if t.backoff == 0 {
			why, msg := "passive", "endpoint failed requests; out of rotation until it answers"
			if f.health.out(outUnreachable) {
				why, msg = "unreachable", "endpoint cannot be reached; out of rotation until it answers"
			}
			c.emit("unhealthy", t, why)
			if ce := c.logger.Load().Check(zapcore.WarnLevel, msg); ce != nil {
				ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address))
			}
		}
		t.backoff, t.passes = probeBackoffMin, 0
		c.reschedule(t, now.Add(probeBackoffMin))
	}
}

func (c *checker) add(t *probeTarget) {
	t.index = -1
	c.targets[t.health] = t
	heap.Push(&c.queue, t)
}

func (c *checker) remove(t *probeTarget) {
	delete(c.targets, t.health)
	if t.index >= 0 {
		heap.Remove(&c.queue, t.index)
	}
}

func (c *checker) reschedule(t *probeTarget, next time.Time) {
	t.next = next
	if t.index >= 0 {
		heap.Fix(&c.queue, t.index)
	} else if !t.running {
		heap.Push(&c.queue, t)
	}
}

// done applies the result of a check that ended at now.
func (c *checker) done(r probeResult, now time.Time) {
	t := r.t
	t.running = false
	if c.targets[t.health] != t {
		return // removed (or replaced) while being checked
	}
	hc := c.policy.Load().of(t.key)
	h := t.health
	h.checked.Store(true)
	ok := r.err == nil
	if ok {
		t.passes, t.fails = t.passes+1, 0
	} else {
		t.passes, t.fails = 0, t.fails+1
	}
	rise := 1
	if hc.active() {
		rise = hc.Rise
	}

	if h.out(outPassive | outUnreachable) {
		// passively failed: re-checked on a short backoff until it passes
		if ok && t.passes >= rise {
			why := "passive"
			if h.out(outUnreachable) {
				why = "unreachable"
			}
			h.setOut(outPassive|outUnreachable, false)
			h.fails.Store(0)
			h.gatewayErrs.Store(0)
			h.nextProbe.Store(0)
			t.backoff = 0
			c.rejoined(t, hc, why, now)
		} else {
			if !ok {
				t.backoff = min(2*t.backoff, probeBackoffMax)
			}
			h.nextProbe.Store(now.Add(t.backoff).UnixNano())
			c.reschedule(t, now.Add(t.backoff))
			return
		}
	} else {
		t.backoff = 0
	}

	if hc.active() {
		switch {
		case !ok && t.fails >= hc.Fall && !h.out(outProbe):
			h.setOut(outProbe, true)
			c.emit("unhealthy", t, "probe")
			if ce := c.logger.Load().Check(zapcore.WarnLevel, "endpoint failed its health checks; out of rotation"); ce != nil {
				ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address),
					zap.Int("fall", hc.Fall), zap.Error(r.err))
			}
		case ok && t.passes >= hc.Rise && h.out(outProbe):
			h.setOut(outProbe, false)
			c.rejoined(t, hc, "probe", now)
		}
		c.reschedule(t, now.Add(time.Duration(hc.Interval)))
		return
	}
	c.remove(t) // no active checks: nothing more to do until it fails again
}

// rejoined puts an endpoint back, ramping it up if slow start is on.
func (c *checker) rejoined(t *probeTarget, hc *HealthCheck, why string, now time.Time) {
	h := t.health
	if hc.SlowStart > 0 {
		h.rampStart.Store(now.UnixNano())
		h.rampEnd.Store(now.Add(time.Duration(hc.SlowStart)).UnixNano())
	}
	if h.available() {
		c.emit("healthy", t, why)
	}
	if ce := c.logger.Load().Check(zapcore.InfoLevel, "endpoint answers again; back in rotation"); ce != nil {
		ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address), zap.String("was_out", why))
	}
}

// inSnapshot reports whether t's endpoint is still registered in snap.
func inSnapshot(snap *Snapshot, t *probeTarget) bool {
	svc, err := snap.Lookup(t.key.Service, t.key.Version)
	if err != nil {
		return false
	}
	ep := svc.Endpoint(t.address)
	return ep != nil && ep.health == t.health
}

// Interface guards
var _ heap.Interface = (*probeQueue)(nil)
