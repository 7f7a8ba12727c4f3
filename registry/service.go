package registry

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/balance"
)

// Service is one version of a service and its endpoints, as seen in one
// Snapshot. It never changes once published; its latency statistics and
// its attachment (Attach) it shares with the version's other Services, in
// other snapshots, while the version stays registered.
type Service struct {
	// Name and Version identify the service version.
	Name, Version string
	// Prefix is the request path prefix, /<name>/<version>.
	Prefix string
	// Endpoints are sorted by address. The slice is shared: never modify it.
	Endpoints []*Endpoint

	rotation    balance.Rotation
	unavailable error

	stats *serviceStats // kept across snapshots
}

// serviceStats are what a service version keeps while it stays
// registered, whatever its endpoints do.
type serviceStats struct {
	lastReply atomic.Int64 // unix nanoseconds of its last response header
	latency   latencyHist  // response times of its tries
	attached  atomic.Value // Attach's
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
func (s *Service) Rotation() *balance.Rotation { return &s.rotation }

// Attachment returns the value a caller attached to the service version
// with Attach, or nil. It stays with the version while the version stays
// registered, whatever its endpoints do: a proxy keeps there what it
// derives from the version once (the values of its placeholders) and what
// it counts (its retries, its retry budget).
func (s *Service) Attachment() any { return s.stats.attached.Load() }

// Attach attaches v to the service version unless a value is attached
// already (the first of concurrent callers wins), and returns the value
// attached. Every value attached must be of the same type.
func (s *Service) Attach(v any) any {
	if s.stats.attached.CompareAndSwap(nil, v) {
		return v
	}
	return s.stats.attached.Load()
}

// Unavailable returns the error for a request that finds no available
// endpoint of the service version: it matches ErrNoAvailableHost and
// names the service and version. It is made once per Service.
func (s *Service) Unavailable() error { return s.unavailable }

// LatencyP99 returns the 99th percentile of the time its endpoints took
// to answer (to the response header) over the last 10 to 20 s, or 0
// before 20 answers. It is cheap to call on every request.
func (s *Service) LatencyP99(now time.Time) time.Duration {
	return s.stats.latency.quantile99(now.UnixNano())
}

// Silent reports whether ep, an endpoint of the service version, has sent
// no response header since t while another of its endpoints has, though
// it has at least inFlight requests in flight, and is not being drained
// (which sends it none): it has stopped answering (frozen, black-holed)
// rather than being slow. A watchdog asks with inFlight 2 (one slow
// request on an otherwise idle host says nothing); a try that began at t
// and lost to a backup try on another endpoint asks with 0, since its
// host answered nobody meanwhile, however few requests it had.
func (s *Service) Silent(ep *Endpoint, t time.Time, inFlight int) bool {
	since := t.UnixNano()
	return ep.health.lastReply.Load() < since && s.stats.lastReply.Load() >= since &&
		(inFlight <= 0 || ep.inFlight() >= inFlight) && !ep.health.out(outDraining)
}

func newService(key ServiceKey, eps []*Endpoint) *Service {
	s := &Service{
		Name:      key.Service,
		Version:   key.Version,
		Prefix:    "/" + key.Service + "/" + key.Version,
		Endpoints: eps,
		rotation:  balance.NewRotation(weights(eps)),
		stats:     new(serviceStats),
	}
	s.unavailable = fmt.Errorf("%w for service %q version %q", ErrNoAvailableHost, s.Name, s.Version)
	return s
}

// weights returns the balancing weights of eps (see Weight.Int).
func weights(eps []*Endpoint) []int {
	w := make([]int, len(eps))
	for i, ep := range eps {
		w[i] = ep.Weight.Int()
	}
	return w
}
