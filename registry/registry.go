package registry

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Drain says how removing an endpoint went.
type Drain struct {
	// Drained is true when no request was in flight any more at removal,
	// false when the drain timeout ran out first.
	Drained bool
	// Waited is how long the removal waited for requests in flight.
	Waited time.Duration
	// InFlight is how many requests were still in flight at removal.
	InFlight int
}

// drainPoll is how often a drain looks at the requests in flight.
const drainPoll = 10 * time.Millisecond

// Options configure a Registry.
type Options struct {
	// Logger is the registry's logger when a BackendEnv brings none.
	// Default: none.
	Logger *zap.Logger
	// Now is the registry's clock. Default: time.Now.
	Now func() time.Time

	probe probeFunc // replaces the HTTP probe, for tests
}

// Registry holds the endpoints of every service version: a Backend feeds
// its table, which requests read; a health checker keeps each endpoint's
// health; removals drain. Lookup, Report and Failure are on the request
// path: they read an immutable snapshot, take no lock and do no I/O. Add
// and Delete go through the backend and are visible to the next Lookup
// once they return. Make it with New, start it with Start, and Stop it
// when done.
type Registry struct {
	table   *table
	feed    *Feed // the backend's, of table
	backend Backend
	health  *checker
	now     func() time.Time
	logger  *zap.Logger
	prober  *prober // the default probe, if used

	mu      sync.Mutex // guards started, stopped and orders Start calls
	started bool
	stopped bool
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

// New returns a registry on backend; it does nothing until Start.
// Options' zero value gives the defaults.
func New(backend Backend, opts Options) *Registry {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Registry{backend: backend, now: opts.Now, logger: opts.Logger, table: newTable(opts.Now)}
	l.feed = newFeed(l.table)
	if opts.probe == nil {
		l.prober = newProber()
		opts.probe = l.prober.Probe
	}
	l.health = newChecker(l.table, opts.Now, opts.probe, opts.Logger)
	return l
}

// Start starts the backend with env and the health checker the first
// time; later calls (a configuration that starts later) hand the backend
// env instead. Then the health checker takes policy (nil: the defaults,
// or the previous one) and events (nil: none, or the previous ones). On
// error nothing changed.
func (l *Registry) Start(env BackendEnv, policy *HealthPolicy, events EventFunc) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return fmt.Errorf("starting registry: %w", errStopped)
	}
	if env.Logger == nil {
		env.Logger = l.logger
	}
	switch {
	case env.RecoveryGrace == 0:
		l.table.setRecoveryGrace(defaultRecoveryGrace)
	default:
		l.table.setRecoveryGrace(env.RecoveryGrace) // negative: off
	}
	if l.started {
		if err := l.backend.Reconfigure(env); err != nil {
			return err
		}
	} else {
		if err := l.backend.Start(l.feed, env); err != nil {
			return err
		}
		l.started = true
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel = cancel
		l.done.Go(func() { l.health.run(ctx) })
	}
	l.health.configure(policy, env.Logger, events)
	return nil
}

// Stop ends the health checker and its probes, then stops the backend.
// A stopped registry cannot start again.
func (l *Registry) Stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return nil
	}
	l.stopped = true
	if !l.started {
		return nil
	}
	l.cancel()
	l.done.Wait()
	if l.prober != nil {
		l.prober.Close()
	}
	err := l.backend.Stop()
	l.table.mu.Lock()
	l.table.stopHold()
	l.table.mu.Unlock()
	return err
}

// HandOver hands the endpoints the registry's backend keeps registered
// for this process (see Owner) to next's backend, which keeps them
// registered from then on (Owner.Adopt): a registry that stops for another
// (a new configuration's) calls it first. A backend that keeps none hands
// over nothing.
func (l *Registry) HandOver(next *Registry) {
	from, ok := l.backend.(Owner)
	if !ok {
		return
	}
	if to, ok := next.backend.(Owner); ok {
		if owned := from.Owned(); len(owned) > 0 {
			to.Adopt(owned)
		}
	}
}

// WaitSynced waits until the registry has synced with its backend, or ctx
// ends; it reports whether it synced.
func (l *Registry) WaitSynced(ctx context.Context) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !l.table.Snapshot().Synced() {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

// Add registers ep under key. Adding an endpoint that is already
// registered is harmless; a new weight replaces the old one.
func (l *Registry) Add(ctx context.Context, key ServiceKey, ep Endpoint) error {
	if err := key.Validate(); err != nil {
		return err
	}
	ep, err := ep.Normalize()
	if err != nil {
		return err
	}
	if err := l.backend.Add(ctx, key, ep); err != nil {
		return err
	}
	// added again while a removal drained it: it stays, so it serves
	if added := l.endpoint(key, ep.Address); added != nil {
		added.health.setOut(outDraining, false)
	}
	return nil
}

// endpoint returns the registered endpoint of key at address, or nil.
func (l *Registry) endpoint(key ServiceKey, address string) *Endpoint {
	svc, err := l.Lookup(key)
	if err != nil {
		return nil
	}
	return svc.Endpoint(address)
}

// Delete removes the endpoint with the given address from key. It
// first drains it: no new requests, and up to the drain timeout for
// those in flight to finish. It returns an error matching
// ErrUnknownVersion or ErrUnknownEndpoint when there is nothing to
// delete.
func (l *Registry) Delete(ctx context.Context, key ServiceKey, address string) (Drain, error) {
	if err := key.Validate(); err != nil {
		return Drain{}, err
	}
	addr, err := ParseAddress(address)
	if err != nil {
		return Drain{}, err
	}
	if !l.table.Snapshot().Synced() {
		return Drain{}, fmt.Errorf("deleting %s from %s: %w", addr, key, ErrNotSynced)
	}
	// refuse what the backend would refuse before draining anything
	if c, ok := l.backend.(DeleteChecker); ok {
		if err := c.CheckDelete(key, addr); err != nil {
			return Drain{}, err
		}
	}
	drain := Drain{Drained: true}
	ep := l.endpoint(key, addr)
	if ep != nil {
		// No new requests from now on; wait for those in flight. A second
		// removal of the same endpoint waits too, so that neither removes
		// it before the requests in flight are done.
		ep.health.setOut(outDraining, true)
		drain = l.drain(ctx, key, ep)
	}
	if err := l.backend.Delete(context.WithoutCancel(ctx), key, addr); err != nil {
		if ep != nil {
			ep.health.setOut(outDraining, false) // nothing half-applied
		}
		return Drain{}, err
	}
	// still there (a seed the deleted entry overrode, or added back in
	// the meantime): it serves again
	if still := l.endpoint(key, addr); still != nil {
		still.health.setOut(outDraining, false)
	}
	return drain, nil
}

// drain waits until ep has no request in flight, its drain timeout (on
// the registry's clock) runs out or ctx is done.
func (l *Registry) drain(ctx context.Context, key ServiceKey, ep *Endpoint) Drain {
	begin := l.now()
	deadline := begin.Add(time.Duration(l.health.policy.Load().of(key).DrainTimeout))
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for ep.inFlight() > 0 && l.now().Before(deadline) {
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		break
	}
	n := ep.inFlight()
	return Drain{Drained: n == 0, Waited: l.now().Sub(begin), InFlight: n}
}

// Failure records that a request to the endpoint failed; the endpoint
// leaves rotation until it answers again. It is Report with Failed.
func (l *Registry) Failure(key ServiceKey, address string) {
	svc, err := l.Lookup(key)
	if err != nil {
		return
	}
	if ep := svc.Endpoint(address); ep != nil {
		l.Report(svc, ep, Failed, 0)
	}
}

// Report records how one try sent to ep, an endpoint of svc from the
// same snapshot, ended, and latency, the time from sending it to its
// response header (or to its deadline, for TimedOut). Every failed
// try counts; see Outcome for which take the endpoint out of
// rotation. It does no I/O and allocates only when the endpoint
// leaves rotation.
func (l *Registry) Report(svc *Service, ep *Endpoint, o Outcome, latency time.Duration) {
	l.health.report(svc, ep, o, latency, l.now())
}

// Outcome is how one try sent to an endpoint ended.
type Outcome uint8

// The outcomes of a try.
const (
	// Answered: the endpoint answered, with any status but a gateway
	// error. Its latency feeds balancing and the service's p99.
	Answered Outcome = iota
	// GatewayError: it answered 502, 503 or 504. HealthCheck.EjectAfter
	// of these in a row take it out of rotation.
	GatewayError
	// TimedOut: no response header before the try's deadline. It takes
	// the endpoint out of rotation at once (within the ejection limit),
	// and its latency counts as at least the deadline.
	TimedOut
	// Failed: the connection failed once the request may have been sent
	// (a reset, an early close). It takes the endpoint out of rotation at
	// once, within the ejection limit (HealthCheck.MaxEjectedPercent).
	Failed
	// Unreachable: no connection (refused, or the connect timed out): the
	// request was not sent. It takes the endpoint out of rotation at once,
	// whatever the ejection limit.
	Unreachable
	// Silent: no response header while the endpoint answered nobody for
	// a while and its peers answered (see Service.Silent); the try was
	// ended early. Like Unreachable, it takes the endpoint out at once,
	// whatever the ejection limit: a host that answers nobody serves
	// nobody in rotation.
	Silent
	// Overtaken: no response header yet when a backup try of the same
	// request on another endpoint answered, and the try was ended; the
	// endpoint answered other requests meanwhile (else the try is
	// Silent). Not a failure: its latency counts as at least this long
	// for balancing (peak EWMA), not in the service's p99.
	Overtaken
)

var outcomeNames = [...]string{Answered: "answered", GatewayError: "gateway_error", TimedOut: "timed_out", Failed: "failed", Unreachable: "unreachable", Silent: "silent", Overtaken: "overtaken"}

// String returns the outcome's name, such as "timed_out".
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// PutTraffic checks a service's traffic policy against its versions
// and stores it through the backend; the next request uses it. The
// error matches ErrInvalid and names every problem.
func (l *Registry) PutTraffic(ctx context.Context, service string, p traffic.Policy) error {
	snap := l.table.Snapshot()
	if !snap.Synced() {
		return fmt.Errorf("setting the traffic policy of %q: %w", service, ErrNotSynced)
	}
	if _, err := p.Compile(service, snap.Versions(service).Known); err != nil {
		return err
	}
	tb, ok := l.backend.(TrafficBackend)
	if !ok {
		return Invalidf("the registry's backend does not store traffic policies")
	}
	return tb.PutTraffic(ctx, service, p)
}

// DeleteTraffic removes a service's stored traffic policy (the
// configuration's, if any, applies again). It returns an error
// matching ErrNoTrafficPolicy when none is stored.
func (l *Registry) DeleteTraffic(ctx context.Context, service string) error {
	if err := CheckName("service", service); err != nil {
		return err
	}
	if !l.table.Snapshot().Synced() {
		return fmt.Errorf("removing the traffic policy of %q: %w", service, ErrNotSynced)
	}
	tb, ok := l.backend.(TrafficBackend)
	if !ok {
		return fmt.Errorf("removing the traffic policy of %q: %w", service, ErrNoTrafficPolicy)
	}
	return tb.DeleteTraffic(ctx, service)
}

// Lookup returns the service version's endpoints, or an error matching
// ErrUnknownService, ErrUnknownVersion or ErrNotSynced.
func (l *Registry) Lookup(key ServiceKey) (*Service, error) {
	return l.table.Snapshot().Lookup(key.Service, key.Version)
}

// Snapshot returns the current immutable view of the whole registry.
func (l *Registry) Snapshot() *Snapshot { return l.table.Snapshot() }
