package svcreg

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Passive health: an endpoint that fails a request leaves rotation at once.
// The prober then checks it, first after probeBackoffMin and then with a
// doubling backoff capped at probeBackoffMax, with the service's active
// check if it has one and a TCP connect otherwise; rise passing checks put
// it back. A restarted host is therefore back in rotation within about
// probeBackoffMax of answering again, instead of after a fixed lockout, and
// no live request is spent finding that out.
var (
	probeBackoffMin = 250 * time.Millisecond
	probeBackoffMax = 500 * time.Millisecond
	dialTimeout     = time.Second // of a passive check without an active one
)

// maxConcurrentProbes bounds the checks in flight at once.
const maxConcurrentProbes = 16

// HealthCheck configures the health of registry endpoints. The entry
// without service is the default; an entry naming a service (and perhaps a
// version) overrides the fields it sets for that service.
//
// Active checks probe every endpoint at Interval once Path or Port is set;
// they are off otherwise. The other knobs (slow start, the ejection limit,
// the drain timeout) apply with or without active checks.
type HealthCheck struct {
	// Service limits this entry to one service. Default: every service.
	Service string `json:"service,omitempty"`
	// Version limits this entry to one version of Service.
	Version string `json:"version,omitempty"`

	// Path is the HTTP path that active checks GET, such as /healthz.
	// Setting Path or Port turns active checks on.
	Path string `json:"path,omitempty"`
	// Port is probed instead of the endpoint's own port. Default: the
	// endpoint's port.
	Port int `json:"port,omitempty"`
	// Interval between two checks of one endpoint. Default: 5s.
	Interval caddy.Duration `json:"interval,omitempty"`
	// Timeout of one check. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Status is the expected status: a code (200), a class (2xx) or a
	// range (200-399). Default: 2xx.
	Status string `json:"status,omitempty"`
	// Body is a regular expression the response body must match.
	// Default: any body.
	Body string `json:"body,omitempty"`
	// Rise is how many checks in a row must pass for a failed endpoint to
	// rejoin. Default: 1.
	Rise int `json:"rise,omitempty"`
	// Fall is how many active checks in a row must fail for an endpoint to
	// leave rotation. Default: 2.
	Fall int `json:"fall,omitempty"`

	// SlowStart ramps a rejoining endpoint's share of requests up from
	// almost nothing to its full weight over this long. Default: off.
	SlowStart caddy.Duration `json:"slow_start,omitempty"`
	// MaxEjectedPercent caps the share of a service version's endpoints
	// out of rotation for failed requests (passive) at once, from 1 to 100
	// (one endpoint may always go); beyond it the least recently failed
	// ones stay in. Default: 50.
	MaxEjectedPercent int `json:"max_ejected_percent,omitempty"`
	// DrainTimeout bounds how long removing an endpoint through the admin
	// API waits for its requests in flight. Default: 30s.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`

	status statusRange
	body   *regexp.Regexp
}

// statusRange is an inclusive range of status codes.
type statusRange struct{ min, max int }

func parseStatus(s string) (statusRange, error) {
	switch {
	case len(s) == 3 && strings.HasSuffix(s, "xx") && s[0] >= '1' && s[0] <= '5':
		c := int(s[0]-'0') * 100
		return statusRange{c, c + 99}, nil
	case strings.Contains(s, "-"):
		lo, hi, _ := strings.Cut(s, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && a >= 100 && b <= 599 && a <= b {
			return statusRange{a, b}, nil
		}
	default:
		if c, err := strconv.Atoi(s); err == nil && c >= 100 && c <= 599 {
			return statusRange{c, c}, nil
		}
	}
	return statusRange{}, fmt.Errorf("invalid status %q: want a code (200), a class (2xx) or a range (200-399)", s)
}

// active reports whether active checks are on.
func (h *HealthCheck) active() bool { return h.Path != "" || h.Port != 0 }

// merge returns h with the fields override sets.
func (h HealthCheck) merge(o HealthCheck) HealthCheck {
	if o.Path != "" {
		h.Path = o.Path
	}
	if o.Port != 0 {
		h.Port = o.Port
	}
	if o.Interval != 0 {
		h.Interval = o.Interval
	}
	if o.Timeout != 0 {
		h.Timeout = o.Timeout
	}
	if o.Status != "" {
		h.Status = o.Status
	}
	if o.Body != "" {
		h.Body = o.Body
	}
	if o.Rise != 0 {
		h.Rise = o.Rise
	}
	if o.Fall != 0 {
		h.Fall = o.Fall
	}
	if o.SlowStart != 0 {
		h.SlowStart = o.SlowStart
	}
	if o.MaxEjectedPercent != 0 {
		h.MaxEjectedPercent = o.MaxEjectedPercent
	}
	if o.DrainTimeout != 0 {
		h.DrainTimeout = o.DrainTimeout
	}
	return h
}

// finish fills in defaults and checks h.
func (h *HealthCheck) finish() error {
	if h.Interval == 0 {
		h.Interval = caddy.Duration(5 * time.Second)
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(2 * time.Second)
	}
	if h.Status == "" {
		h.Status = "2xx"
	}
	if h.Rise == 0 {
		h.Rise = 1
	}
	if h.Fall == 0 {
		h.Fall = 2
	}
	if h.MaxEjectedPercent == 0 {
		h.MaxEjectedPercent = 50
	}
	if h.DrainTimeout == 0 {
		h.DrainTimeout = caddy.Duration(30 * time.Second)
	}
	var err error
	switch {
	case h.Path != "" && !strings.HasPrefix(h.Path, "/"):
		err = fmt.Errorf("path %q must start with /", h.Path)
	case h.Port < 0 || h.Port > 65535:
		err = fmt.Errorf("port %d: want 1 to 65535", h.Port)
	case h.Interval < 0 || h.Timeout < 0 || h.SlowStart < 0 || h.DrainTimeout < 0:
		err = errors.New("durations must not be negative")
	case h.Rise < 1 || h.Fall < 1:
		err = errors.New("rise and fall must be at least 1")
	case h.MaxEjectedPercent < 1 || h.MaxEjectedPercent > 100:
		err = fmt.Errorf("max_ejected_percent %d: want 1 to 100", h.MaxEjectedPercent)
	}
	if err != nil {
		return err
	}
	if h.status, err = parseStatus(h.Status); err != nil {
		return err
	}
	if h.Body != "" {
		if h.body, err = regexp.Compile(h.Body); err != nil {
			return fmt.Errorf("body: %w", err)
		}
	}
	return nil
}

// healthPolicy is the resolved health configuration of a config.
type healthPolicy struct {
	base      HealthCheck
	overrides map[ServiceKey]*HealthCheck // version "" = every version
	anyActive bool                        // some service has active checks
}

// newHealthPolicy checks and resolves the configured entries.
func newHealthPolicy(entries []HealthCheck) (*healthPolicy, error) {
	p := &healthPolicy{overrides: map[ServiceKey]*HealthCheck{}}
	byKey := map[ServiceKey]HealthCheck{}
	for _, e := range entries {
		if e.Version != "" && e.Service == "" {
			return nil, errors.New("health check: a version needs a service")
		}
		key := ServiceKey{e.Service, e.Version}
		if e.Service != "" {
			if err := checkName("service", e.Service); err != nil {
				return nil, fmt.Errorf("health check: %w", err)
			}
		}
		if e.Version != "" {
			if err := checkName("version", e.Version); err != nil {
				return nil, fmt.Errorf("health check: %w", err)
			}
		}
		if _, dup := byKey[key]; dup {
			return nil, fmt.Errorf("health check for %q %q configured twice", e.Service, e.Version)
		}
		byKey[key] = e
	}
	p.base = byKey[ServiceKey{}]
	for key, e := range byKey {
		if key.Service == "" {
			continue
		}
		h := p.base.merge(byKey[ServiceKey{key.Service, ""}]).merge(e)
		if err := h.finish(); err != nil {
			return nil, fmt.Errorf("health check for service %q %q: %w", key.Service, key.Version, err)
		}
		p.overrides[key] = &h
		p.anyActive = p.anyActive || h.active()
	}
	if err := p.base.finish(); err != nil {
		return nil, fmt.Errorf("health check: %w", err)
	}
	p.anyActive = p.anyActive || p.base.active()
	return p, nil
}

// forService returns the health configuration of a service version.
func (p *healthPolicy) forService(key ServiceKey) *HealthCheck {
	if h, ok := p.overrides[key]; ok {
		return h
	}
	if h, ok := p.overrides[ServiceKey{key.Service, ""}]; ok {
		return h
	}
	return &p.base
}

// endpointHealth is the health state of one endpoint. It is shared by
// every snapshot that holds the endpoint; all fields are atomic.
type endpointHealth struct {
	ejected     atomic.Bool  // out of rotation after a failed request (passive)
	probeDown   atomic.Bool  // out of rotation after failed active checks
	draining    atomic.Bool  // being removed: no new requests
	fails       atomic.Int64 // failed requests in a row since it last answered
	lastFailure atomic.Int64 // unix nanoseconds
	nextProbe   atomic.Int64 // unix nanoseconds of the next check while out
	rampStart   atomic.Int64 // unix nanoseconds: slow start began
	rampEnd     atomic.Int64 // unix nanoseconds: slow start ends; 0 = off

	requests  atomic.Uint64 // tries sent to it
	failures  atomic.Uint64 // tries that failed without an answer
	ejections atomic.Uint64 // times it was taken out after a failed request

	host atomic.Pointer[reverseproxy.Host] // reverse_proxy's state of the address, for requests in flight
}

// available reports whether the endpoint takes new requests.
func (h *endpointHealth) available() bool {
	return !h.ejected.Load() && !h.probeDown.Load() && !h.draining.Load()
}

// Available reports whether the endpoint is in rotation: not failed, not
// failing its active checks, not being removed.
func (ep *Endpoint) Available() bool { return ep.health.available() }

// Fails returns the endpoint's failed requests in a row since it last
// answered.
func (ep *Endpoint) Fails() int { return int(ep.health.fails.Load()) }

// LastFailure returns when the endpoint last failed a request, or the zero
// time.
func (ep *Endpoint) LastFailure() time.Time { return unixTime(ep.health.lastFailure.Load()) }

// OutOfRotation says why the endpoint takes no new requests: "draining",
// "probe" (failing active checks), "passive" (failed a request), or "" when
// it is in rotation.
func (ep *Endpoint) OutOfRotation() string {
	switch h := ep.health; {
	case h.draining.Load():
		return "draining"
	case h.probeDown.Load():
		return "probe"
	case h.ejected.Load():
		return "passive"
	}
	return ""
}

// InFlight returns how many requests reverse_proxy has in flight to the
// endpoint's address.
func (ep *Endpoint) InFlight() int {
	if host := ep.health.host.Load(); host != nil {
		return host.NumRequests()
	}
	return 0
}

// SlowStartUntil returns when the endpoint's slow start ends, or the zero
// time when it is not ramping up.
func (ep *Endpoint) SlowStartUntil() time.Time {
	if end := ep.health.rampEnd.Load(); end > now().UnixNano() {
		return time.Unix(0, end)
	}
	return time.Time{}
}

// rampShare is the share of its weight a rejoining endpoint gets at t: from
// 0.1 up to 1 over the slow start. Past the end it switches the ramp off, so
// later picks skip the clock and the random draw.
func (h *endpointHealth) rampShare(t int64) float64 {
	end := h.rampEnd.Load()
	if end == 0 {
		return 1
	}
	if t >= end {
		h.rampEnd.CompareAndSwap(end, 0)
		return 1
	}
	start := h.rampStart.Load()
	return max(0.1, float64(t-start)/float64(end-start))
}

func unixTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// healthChecker runs every check of a registry: the active checks of the
// services that have them, and the checks that bring passively failed
// endpoints back. One goroutine schedules; a bounded pool probes.
type healthChecker struct {
	table  *Table
	logger atomic.Pointer[zap.Logger]
	policy atomic.Pointer[healthPolicy]
	events atomic.Pointer[eventEmitter]
	dial   func(ctx context.Context, network, address string) (net.Conn, error)
	client *http.Client

	wake chan struct{}

	mu       sync.Mutex                       // guards failed, released; limits ejections per service
	failed   []*probeTarget                   // taken out after a failed request
	released []*probeTarget                   // put back by the ejection limit
	targets  map[*endpointHealth]*probeTarget // owned by run
	queue    probeQueue                       // owned by run
	seen     *Snapshot                        // owned by run
	seenFor  *healthPolicy                    // owned by run
}

// eventEmitter emits Caddy events through the events app of a config.
type eventEmitter func(name string, data map[string]any)

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

func newHealthChecker(table *Table, logger *zap.Logger) *healthChecker {
	d := &net.Dialer{Timeout: dialTimeout}
	c := &healthChecker{
		table:   table,
		dial:    d.DialContext,
		client:  &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1, IdleConnTimeout: 30 * time.Second}},
		wake:    make(chan struct{}, 1),
		targets: map[*endpointHealth]*probeTarget{},
	}
	c.logger.Store(logger)
	policy, _ := newHealthPolicy(nil)
	c.policy.Store(policy)
	c.events.Store(new(eventEmitter))
	return c
}

// configure takes the health configuration, logger and events of the
// config that started last.
func (c *healthChecker) configure(policy *healthPolicy, logger *zap.Logger, emit eventEmitter) {
	if logger != nil {
		c.logger.Store(logger)
	}
	if policy != nil {
		c.policy.Store(policy)
	}
	if emit != nil {
		c.events.Store(&emit)
	}
	c.poke()
}

func (c *healthChecker) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *healthChecker) emit(name string, t *probeTarget, reason string) {
	if emit := *c.events.Load(); emit != nil {
		emit(name, map[string]any{"host": t.address, "service": t.key.Service, "version": t.key.Version, "reason": reason})
	}
}

// failure records a failed request to ep of svc and takes it out of
// rotation, within the service's ejection limit. It is called on the
// request path: no I/O, no blocking beyond a short lock.
func (c *healthChecker) failure(svc *Service, ep *Endpoint) {
	h := ep.health
	h.fails.Add(1)
	t := now()
	h.lastFailure.Store(t.UnixNano())
	h.failures.Add(1)
	if h.ejected.Load() || h.draining.Load() {
		return
	}
	// at least one may always go, whatever the percentage
	limit := max(1, len(svc.Endpoints)*c.policy.Load().forService(svc.Key()).MaxEjectedPercent/100)

	c.mu.Lock()
	defer c.mu.Unlock()
	if h.ejected.Load() {
		return
	}
	ejected, oldest := 0, (*Endpoint)(nil)
	for _, other := range svc.Endpoints {
		if other.health.ejected.Load() {
			ejected++
			if oldest == nil || other.health.lastFailure.Load() < oldest.health.lastFailure.Load() {
				oldest = other
			}
		}
	}
	if ejected >= limit {
		// Over the limit (ejected >= 1, so oldest is set): the least
		// recently failed one goes back in.
		oldest.health.ejected.Store(false)
		oldest.health.nextProbe.Store(0)
		c.released = append(c.released, &probeTarget{key: svc.Key(), address: oldest.Address, health: oldest.health})
	}
	h.ejected.Store(true)
	h.nextProbe.Store(t.Add(probeBackoffMin).UnixNano())
	h.ejections.Add(1)
	c.failed = append(c.failed, &probeTarget{key: svc.Key(), address: ep.Address, health: h})
	c.poke()
}

// run schedules checks until ctx is done.
func (c *healthChecker) run(ctx context.Context) {
	jobs := make(chan *probeTarget)
	results := make(chan probeResult)
	var workers sync.WaitGroup
	for range maxConcurrentProbes {
		workers.Go(func() {
			for t := range jobs {
				ok := c.check(ctx, t)
				select {
				case results <- probeResult{t, ok}:
				case <-ctx.Done():
				}
			}
		})
	}
	defer func() {
		close(jobs)
		workers.Wait()
		c.client.CloseIdleConnections()
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.reconcile()
		// hand out every due check the pool can take now
		for c.queue.Len() > 0 && !c.queue[0].next.After(now()) {
			t := heap.Pop(&c.queue).(*probeTarget)
			t.running = true
			select {
			case jobs <- t:
				continue
			case r := <-results:
				c.done(r)
				t.running = false
				heap.Push(&c.queue, t)
			case <-ctx.Done():
				return
			}
			break
		}
		wait := time.Hour
		if c.queue.Len() > 0 {
			wait = max(c.queue[0].next.Sub(now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case r := <-results:
			c.done(r)
		case <-c.wake:
		case <-timer.C:
		}
	}
}

type probeResult struct {
	t  *probeTarget
	ok bool
}

// reconcile brings the targets in line with the snapshot, the policy and
// the endpoints that failed requests. Only run calls it.
func (c *healthChecker) reconcile() {
	c.mu.Lock()
	failed, released := c.failed, c.released
	c.failed, c.released = nil, nil
	c.mu.Unlock()
	policy := c.policy.Load()
	t0 := now()

	snap := c.table.Snapshot()
	if (snap != c.seen || policy != c.seenFor) && (policy.anyActive || len(c.targets) > 0) {
		c.seen, c.seenFor = snap, policy
		live := map[*endpointHealth]bool{}
		for _, svc := range snap.Services() {
			hc := policy.forService(svc.Key())
			for _, ep := range svc.Endpoints {
				live[ep.health] = true
				if _, ok := c.targets[ep.health]; !ok && hc.active() {
					// first check at a random point of the interval, so that
					// checks spread out
					c.add(&probeTarget{key: svc.Key(), address: ep.Address, health: ep.health,
						next: t0.Add(time.Duration(rand.Int64N(int64(hc.Interval))))})
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
		if !ok || t.backoff == 0 || r.health.ejected.Load() {
			continue // not out, or taken out again since
		}
		t.backoff, t.passes = 0, 0
		if !policy.forService(t.key).active() {
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
		if !f.health.ejected.Load() {
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
			c.emit("unhealthy", t, "passive")
			if ce := c.logger.Load().Check(zapcore.WarnLevel, "endpoint failed a request; out of rotation until it answers"); ce != nil {
				ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address))
			}
		}
		t.backoff, t.passes = probeBackoffMin, 0
		c.reschedule(t, t0.Add(probeBackoffMin))
	}
}

func (c *healthChecker) add(t *probeTarget) {
	t.index = -1
	c.targets[t.health] = t
	heap.Push(&c.queue, t)
}

func (c *healthChecker) remove(t *probeTarget) {
	delete(c.targets, t.health)
	if t.index >= 0 {
		heap.Remove(&c.queue, t.index)
	}
}

func (c *healthChecker) reschedule(t *probeTarget, next time.Time) {
	t.next = next
	if t.index >= 0 {
		heap.Fix(&c.queue, t.index)
	} else if !t.running {
		heap.Push(&c.queue, t)
	}
}

// done applies the result of a check. Only run calls it.
func (c *healthChecker) done(r probeResult) {
	t := r.t
	t.running = false
	if c.targets[t.health] != t {
		return // removed (or replaced) while being checked
	}
	hc := c.policy.Load().forService(t.key)
	h := t.health
	t0 := now()
	if r.ok {
		t.passes, t.fails = t.passes+1, 0
	} else {
		t.passes, t.fails = 0, t.fails+1
	}
	rise := 1
	if hc.active() {
		rise = hc.Rise
	}

	if h.ejected.Load() {
		// passively failed: re-checked on a short backoff until it passes
		if r.ok && t.passes >= rise {
			h.ejected.Store(false)
			h.fails.Store(0)
			h.nextProbe.Store(0)
			t.backoff = 0
			c.rejoined(t, hc, "passive")
		} else {
			if !r.ok {
				t.backoff = min(2*t.backoff, probeBackoffMax)
			}
			h.nextProbe.Store(t0.Add(t.backoff).UnixNano())
			c.reschedule(t, t0.Add(t.backoff))
			return
		}
	} else {
		t.backoff = 0
	}

	if hc.active() {
		switch {
		case !r.ok && t.fails >= hc.Fall && !h.probeDown.Load():
			h.probeDown.Store(true)
			c.emit("unhealthy", t, "probe")
			if ce := c.logger.Load().Check(zapcore.WarnLevel, "endpoint failed its health checks; out of rotation"); ce != nil {
				ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address), zap.Int("fall", hc.Fall))
			}
		case r.ok && t.passes >= hc.Rise && h.probeDown.Load():
			h.probeDown.Store(false)
			c.rejoined(t, hc, "probe")
		}
		c.reschedule(t, t0.Add(time.Duration(hc.Interval)))
		return
	}
	c.remove(t) // no active checks: nothing more to do until it fails again
}

// rejoined puts an endpoint back, ramping it up if slow start is on.
func (c *healthChecker) rejoined(t *probeTarget, hc *HealthCheck, why string) {
	h := t.health
	if hc.SlowStart > 0 {
		t0 := now()
		h.rampStart.Store(t0.UnixNano())
		h.rampEnd.Store(t0.Add(time.Duration(hc.SlowStart)).UnixNano())
	}
	if h.available() {
		c.emit("healthy", t, why)
	}
	if ce := c.logger.Load().Check(zapcore.InfoLevel, "endpoint answers again; back in rotation"); ce != nil {
		ce.Write(zap.String("service", t.key.Service), zap.String("version", t.key.Version), zap.String("upstream", t.address), zap.String("was_out", why))
	}
}

// check probes one endpoint: the service's active check, or a TCP connect
// when it has none.
func (c *healthChecker) check(ctx context.Context, t *probeTarget) bool {
	hc := c.policy.Load().forService(t.key)
	if !hc.active() {
		conn, err := c.dial(ctx, "tcp", t.address)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	addr := t.address
	if hc.Port != 0 {
		host, _, _ := net.SplitHostPort(addr)
		addr = net.JoinHostPort(host, strconv.Itoa(hc.Port))
	}
	path := hc.Path
	if path == "" {
		path = "/"
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hc.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "caddy-svcreg-health-check")
	resp, err := c.client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return false
	}
	if resp.StatusCode < hc.status.min || resp.StatusCode > hc.status.max {
		return false
	}
	return hc.body == nil || hc.body.Match(body)
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
