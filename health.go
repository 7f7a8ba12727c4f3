package svcreg

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Passive health: an endpoint that fails a request leaves rotation at once.
// A background prober then dials it, first after probeBackoffMin and then
// with a doubling backoff capped at probeBackoffMax; the first successful
// dial puts it back. A restarted host is therefore back in rotation within
// about probeBackoffMax of accepting connections again, instead of after
// a fixed lockout, and no live request is spent finding that out.
var (
	probeBackoffMin = 250 * time.Millisecond
	probeBackoffMax = time.Second
	probeTimeout    = time.Second
)

// maxConcurrentProbes bounds the dials in flight at once.
const maxConcurrentProbes = 32

// endpointHealth is the health state of one endpoint. It is shared by
// every snapshot that holds the endpoint; all fields are atomic.
type endpointHealth struct {
	ejected     atomic.Bool  // out of rotation after a failure
	fails       atomic.Int64 // consecutive failures since it was last put back
	lastFailure atomic.Int64 // unix nanoseconds
}

// Fails returns the endpoint's consecutive failures since it last
// answered a probe.
func (ep *Endpoint) Fails() int { return int(ep.health.fails.Load()) }

// LastFailure returns when the endpoint last failed, or the zero time.
func (ep *Endpoint) LastFailure() time.Time {
	n := ep.health.lastFailure.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// passiveHealth takes failing endpoints out of rotation and probes them
// back in.
type passiveHealth struct {
	table  *Table
	logger atomic.Pointer[zap.Logger] // the latest config's
	dial   func(ctx context.Context, network, address string) (net.Conn, error)

	wake chan struct{}

	mu   sync.Mutex // guards down
	down map[*endpointHealth]*probeTarget
}

// probeTarget is an ejected endpoint waiting for its next probe. Only the
// prober goroutine touches next and backoff.
type probeTarget struct {
	key     ServiceKey
	address string
	health  *endpointHealth
	next    time.Time
	backoff time.Duration
}

func newPassiveHealth(table *Table, logger *zap.Logger) *passiveHealth {
	d := &net.Dialer{Timeout: probeTimeout}
	p := &passiveHealth{
		table: table,
		dial:  d.DialContext,
		wake:  make(chan struct{}, 1),
		down:  make(map[*endpointHealth]*probeTarget),
	}
	p.setLogger(logger)
	return p
}

// setLogger switches to the logger of the config that started last.
func (p *passiveHealth) setLogger(logger *zap.Logger) {
	if logger != nil {
		p.logger.Store(logger)
	}
}

// failure records a failed request to ep of svc and takes it out of
// rotation. It is called on the request path: no I/O, no blocking.
func (p *passiveHealth) failure(svc *Service, ep *Endpoint) {
	h := ep.health
	h.fails.Add(1)
	h.lastFailure.Store(now().UnixNano())
	if !h.ejected.CompareAndSwap(false, true) {
		return
	}
	if c := p.logger.Load().Check(zapcore.WarnLevel, "endpoint failed; out of rotation until it answers"); c != nil {
		c.Write(zap.String("service", svc.Name), zap.String("version", svc.Version), zap.String("upstream", ep.Address))
	}
	p.mu.Lock()
	p.down[h] = &probeTarget{
		key:     svc.Key(),
		address: ep.Address,
		health:  h,
		next:    now().Add(probeBackoffMin),
		backoff: probeBackoffMin,
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run probes ejected endpoints until ctx is done.
func (p *passiveHealth) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := p.probeDue(ctx)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-timer.C:
		}
	}
}

// probeDue dials every endpoint whose probe is due, puts back those that
// answer, and returns how long to wait for the next due probe.
func (p *passiveHealth) probeDue(ctx context.Context) time.Duration {
	t := now()
	var due []*probeTarget
	p.mu.Lock()
	snap := p.table.Snapshot()
	for h, target := range p.down {
		if !stillRegistered(snap, target) {
			delete(p.down, h)
			continue
		}
		if !target.next.After(t) {
			due = append(due, target)
		}
	}
	p.mu.Unlock()

	if len(due) > 0 {
		answered := make([]bool, len(due))
		sem := make(chan struct{}, maxConcurrentProbes)
		var wg sync.WaitGroup
		for i, target := range due {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				conn, err := p.dial(ctx, "tcp", target.address)
				if err == nil {
					conn.Close()
					answered[i] = true
				}
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return time.Hour
		}
		t = now()
		p.mu.Lock()
		for i, target := range due {
			if answered[i] {
				delete(p.down, target.health)
				target.health.fails.Store(0)
				target.health.ejected.Store(false)
				if c := p.logger.Load().Check(zapcore.InfoLevel, "endpoint answers again; back in rotation"); c != nil {
					c.Write(zap.String("service", target.key.Service), zap.String("version", target.key.Version), zap.String("upstream", target.address))
				}
				continue
			}
			target.backoff = min(2*target.backoff, probeBackoffMax)
			target.next = t.Add(target.backoff)
		}
		p.mu.Unlock()
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	wait := time.Hour
	for _, target := range p.down {
		wait = min(wait, max(target.next.Sub(t), time.Millisecond))
	}
	return wait
}

// stillRegistered reports whether target's endpoint is in snap.
func stillRegistered(snap *Snapshot, target *probeTarget) bool {
	svc, err := snap.Lookup(target.key.Service, target.key.Version)
	if err != nil {
		return false
	}
	ep := svc.Endpoint(target.address)
	return ep != nil && ep.health == target.health
}
