package registry

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Service is one version of a service and its endpoints, as seen in one
// Snapshot. It never changes once published, but for its counters.
type Service struct {
	// Name and Version identify the service version.
	Name, Version string
	// Prefix is the request path prefix, /<name>/<version>.
	Prefix string
	// Endpoints are sorted by address. The slice is shared: never modify it.
	Endpoints []*Endpoint

	rotation    Rotation
	unavailable error
	attached    atomic.Value // Attach's

	stats *serviceStats // kept across snapshots
}

// serviceStats are what a service version keeps while it stays
// registered, whatever its endpoints do.
type serviceStats struct {
	retries   atomic.Uint64              // tries after a request's first
	hedges    atomic.Uint64              // backup tries sent while a request's try waited
	hedgesWon atomic.Uint64              // backup tries that answered first
	lastReply atomic.Int64               // unix nanoseconds of its last response header
	latency   latencyHist                // response times of its tries
	budget    retryBudget                // retries after requests its hosts received
	routed    [sourceCount]atomic.Uint64 // requests routed here, by why
}

// Key returns the service version's key.
func (s *Service) Key() ServiceKey { return ServiceKey{s.Name, s.Version} }

// Endpoint returns the endpoint with the given canonical address, or nil.
func (s *Service) Endpoint(address string) *Endpoint {
	i, ok := slices.BinarySearchFunc(s.Endpoints, address, func(ep *Endpoint, a string) int {
		return strings.Compare(ep.Address, a)
	})
	if !ok {
		return nil
	}
	return s.Endpoints[i]
}

// Rotation returns the service version's round-robin position, shared by
// every request to it.
func (s *Service) Rotation() *Rotation { return &s.rotation }

// Attachment returns the value a caller attached to the service version
// with Attach, or nil. A Service never changes (a change of its version's
// endpoints brings a new one): what a caller derives from it once (the
// Caddy module, the values of its placeholders) can stay with it.
func (s *Service) Attachment() any { return s.attached.Load() }

// Attach attaches v to the service version unless a value is attached
// already (the first of concurrent callers wins), and returns the value
// attached. Every value attached must be of the same type.
func (s *Service) Attach(v any) any {
	if s.attached.CompareAndSwap(nil, v) {
		return v
	}
	return s.attached.Load()
}

// Unavailable returns the error for a request that finds no available
// endpoint of the service version: it matches ErrNoAvailableHost and
// names the service and version. It is made once per Service.
func (s *Service) Unavailable() error { return s.unavailable }

// CountRouted counts a request routed to the service version, and why.
func (s *Service) CountRouted(from traffic.Source) {
	if from < sourceCount {
		s.stats.routed[from].Add(1)
	}
}

// Routed returns how many requests were routed to the service version
// for the reason from, while it stayed registered.
func (s *Service) Routed(from traffic.Source) uint64 {
	if from >= sourceCount {
		return 0
	}
	return s.stats.routed[from].Load()
}

// CountRetry counts one more try after a request's first.
func (s *Service) CountRetry() { s.stats.retries.Add(1) }

// Retries returns how many tries came after a request's first, over the
// service version's life in the registry.
func (s *Service) Retries() uint64 { return s.stats.retries.Load() }

// CountHedge counts a backup (hedged) try: sent to another endpoint while
// a request's try was still waiting for its answer.
func (s *Service) CountHedge() { s.stats.hedges.Add(1) }

// CountHedgeWon counts a backup try that answered before the try it backed
// up.
func (s *Service) CountHedgeWon() { s.stats.hedgesWon.Add(1) }

// Hedges returns how many backup tries were sent, and how many of them
// answered first, over the service version's life in the registry.
func (s *Service) Hedges() (sent, won uint64) { return s.stats.hedges.Load(), s.stats.hedgesWon.Load() }

// LatencyP99 returns the 99th percentile of the time its endpoints took
// to answer (to the response header) over the last 10 to 20 s, or 0
// before 20 answers. It is cheap to call on every request.
func (s *Service) LatencyP99(now time.Time) time.Duration {
	return s.stats.latency.quantile99(now.UnixNano())
}

// Silent reports whether ep, an endpoint of the service version, has
// stopped answering (frozen, black-holed) rather than being slow: it has
// sent no response header for the last window before now while another of
// its endpoints has, though it has more than one request in flight (one
// slow request on an otherwise idle host says nothing) and is not being
// drained (which sends it none).
func (s *Service) Silent(ep *Endpoint, now time.Time, window time.Duration) bool {
	since := now.Add(-window).UnixNano()
	return ep.health.lastReply.Load() < since && s.stats.lastReply.Load() >= since &&
		ep.inFlight() >= 2 && !ep.health.out(outDraining)
}

// SilentSince reports whether ep, an endpoint of the service version, has
// sent no response header since t while another of its endpoints has, and
// is not being drained: a try that began at t and lost to a backup try on
// another endpoint waited on a host that answered nobody meanwhile,
// however few requests it had.
func (s *Service) SilentSince(ep *Endpoint, t time.Time) bool {
	since := t.UnixNano()
	return ep.health.lastReply.Load() < since && s.stats.lastReply.Load() >= since && !ep.health.out(outDraining)
}

// DepositRetry credits the service version's retry budget with one
// request: call it once per request (not per try).
func (s *Service) DepositRetry(b RetryBudget) { s.stats.budget.deposit(b) }

// WithdrawRetry takes a retry after a request its host received out of
// the budget, and reports whether one was left.
func (s *Service) WithdrawRetry(b RetryBudget, now time.Time) bool {
	return s.stats.budget.withdraw(b, now.UnixNano())
}

func newService(key ServiceKey, eps []*Endpoint) *Service {
	s := &Service{
		Name:      key.Service,
		Version:   key.Version,
		Prefix:    "/" + key.Service + "/" + key.Version,
		Endpoints: eps,
		rotation:  Rotation{schedule: weightedSchedule(eps)},
		stats:     new(serviceStats),
	}
	s.unavailable = fmt.Errorf("%w for service %q version %q", ErrNoAvailableHost, s.Name, s.Version)
	return s
}

// weightedSchedule returns a smooth weighted round-robin order (as nginx
// does it) of indexes into eps, or nil when all weights are equal.
func weightedSchedule(eps []*Endpoint) []int32 {
	equal, total := true, 0
	for _, ep := range eps {
		total += ep.Weight.Int()
		if ep.Weight != eps[0].Weight {
			equal = false
		}
	}
	if equal {
		return nil
	}
	sched := make([]int32, 0, total)
	current := make([]int, len(eps))
	for range total {
		best := 0
		for i, ep := range eps {
			current[i] += ep.Weight.Int()
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		sched = append(sched, int32(best))
	}
	return sched
}
