package registry

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Snapshot is an immutable view of the registry. Readers load it
// atomically and never lock; writers build a new one (copy-on-write).
type Snapshot struct {
	services map[string]map[string]*Service
	traffic  map[string]*Traffic // by service
	synced   bool
}

// Traffic returns the service's traffic policy, or nil for none.
func (s *Snapshot) Traffic(service string) *Traffic { return s.traffic[service] }

// Policies returns every service's traffic policy, sorted by service.
func (s *Snapshot) Policies() []*Traffic {
	out := make([]*Traffic, 0, len(s.traffic))
	for _, t := range s.traffic {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *Traffic) int { return strings.Compare(a.service, b.service) })
	return out
}

// Known reports whether the service has the version.
func (s *Snapshot) Known(service, version string) bool {
	_, ok := s.services[service][version]
	return ok
}

// Lookup returns a service version, or an error matching ErrUnknownService,
// ErrUnknownVersion or ErrNotSynced.
func (s *Snapshot) Lookup(name, version string) (*Service, error) {
	versions, ok := s.services[name]
	if !ok {
		if !s.synced {
			return nil, ErrNotSynced
		}
		return nil, ErrUnknownService
	}
	svc, ok := versions[version]
	if !ok {
		if !s.synced {
			return nil, ErrNotSynced
		}
		return nil, ErrUnknownVersion
	}
	return svc, nil
}

// Versions are the versions of one service in a snapshot.
type Versions struct {
	versions map[string]*Service
	synced   bool
}

// Versions returns the versions of a service, for several lookups that
// find the service once.
func (s *Snapshot) Versions(service string) Versions {
	return Versions{versions: s.services[service], synced: s.synced}
}

// Lookup returns a version of the service, with the errors of
// Snapshot.Lookup.
func (v Versions) Lookup(version string) (*Service, error) {
	if v.versions == nil {
		if !v.synced {
			return nil, ErrNotSynced
		}
		return nil, ErrUnknownService
	}
	svc, ok := v.versions[version]
	if !ok {
		if !v.synced {
			return nil, ErrNotSynced
		}
		return nil, ErrUnknownVersion
	}
	return svc, nil
}

// Known reports whether the service has the version.
func (v Versions) Known(version string) bool {
	_, ok := v.versions[version]
	return ok
}

// Synced reports whether the backend has loaded its endpoints.
func (s *Snapshot) Synced() bool { return s.synced }

// Services returns every service version, sorted by name and version.
func (s *Snapshot) Services() []*Service {
	var out []*Service
	for _, versions := range s.services {
		for _, svc := range versions {
			out = append(out, svc)
		}
	}
	slices.SortFunc(out, func(a, b *Service) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Version, b.Version)
	})
	return out
}

// Table is the in-memory registry that backends feed. Reads go to an
// immutable Snapshot; each write publishes a new one. Endpoints keep their
// health state across writes as long as they stay registered.
type Table struct {
	now  func() time.Time // the clock of the endpoints' health
	mu   sync.Mutex       // serializes writers
	snap atomic.Pointer[Snapshot]
}

// NewTable returns an empty table that is not synced yet.
func NewTable() *Table { return newTable(time.Now) }

func newTable(now func() time.Time) *Table {
	t := &Table{now: now}
	t.snap.Store(&Snapshot{services: map[string]map[string]*Service{}})
	return t
}

// Snapshot returns the current snapshot.
func (t *Table) Snapshot() *Snapshot { return t.snap.Load() }

// Replace sets the whole registry and marks it synced. A key with an empty
// endpoint list is a known service version with no endpoints. The
// endpoints must be normalized (Endpoint.Normalize).
func (t *Table) Replace(all map[ServiceKey][]Endpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	services := make(map[string]map[string]*Service, len(all))
	for key, eps := range all {
		prev, _ := old.Lookup(key.Service, key.Version)
		svc := t.buildService(key, eps, prev)
		if services[key.Service] == nil {
			services[key.Service] = map[string]*Service{}
		}
		services[key.Service][key.Version] = svc
	}
	t.snap.Store(&Snapshot{services: services, traffic: old.traffic, synced: true})
}

// SetTraffic sets every service's traffic policy (nil: none).
func (t *Table) SetTraffic(policies map[string]*Traffic) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	t.snap.Store(&Snapshot{services: old.services, traffic: policies, synced: old.synced})
}

// Set sets the endpoints of one service version, which becomes known even
// with no endpoints. The endpoints must be normalized.
func (t *Table) Set(key ServiceKey, eps []Endpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	prev, _ := old.Lookup(key.Service, key.Version)
	svc := t.buildService(key, eps, prev)
	if svc == prev {
		return
	}
	t.publish(old, key, svc)
}

// Remove forgets a service version.
func (t *Table) Remove(key ServiceKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	if _, err := old.Lookup(key.Service, key.Version); err != nil {
		return
	}
	t.publish(old, key, nil)
}

// SetSynced marks whether the table holds the backend's endpoints.
func (t *Table) SetSynced(synced bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	if old.synced == synced {
		return
	}
	t.snap.Store(&Snapshot{services: old.services, traffic: old.traffic, synced: synced})
}

// publish stores a copy of old with key set to svc (removed when nil).
// The caller holds t.mu.
func (t *Table) publish(old *Snapshot, key ServiceKey, svc *Service) {
	services := make(map[string]map[string]*Service, len(old.services)+1)
	for name, versions := range old.services {
		services[name] = versions
	}
	versions := make(map[string]*Service, len(old.services[key.Service])+1)
	for v, s := range old.services[key.Service] {
		versions[v] = s
	}
	if svc == nil {
		delete(versions, key.Version)
	} else {
		versions[key.Version] = svc
	}
	if len(versions) == 0 {
		delete(services, key.Service)
	} else {
		services[key.Service] = versions
	}
	t.snap.Store(&Snapshot{services: services, traffic: old.traffic, synced: old.synced})
}

// buildService makes the Service for key from eps, reusing prev's
// endpoints (and so their health) where address and weight are unchanged.
// It returns prev itself when nothing changed.
func (t *Table) buildService(key ServiceKey, eps []Endpoint, prev *Service) *Service {
	byAddr := make(map[string]Endpoint, len(eps))
	for _, ep := range eps {
		byAddr[ep.Address] = ep
	}
	out := make([]*Endpoint, 0, len(byAddr))
	same := prev != nil && len(prev.Endpoints) == len(byAddr)
	for _, ep := range byAddr {
		ep.TTL = 0 // an input of Add only
		var old *Endpoint
		if prev != nil {
			old = prev.Endpoint(ep.Address)
		}
		switch {
		case old != nil && old.sameConfig(ep):
			out = append(out, old)
		case old != nil:
			ep.health = old.health
			out = append(out, &ep)
			same = false
		default:
			ep.health = newEndpointHealth(t.now)
			out = append(out, &ep)
			same = false
		}
	}
	if same {
		return prev
	}
	slices.SortFunc(out, func(a, b *Endpoint) int { return strings.Compare(a.Address, b.Address) })
	svc := newService(key, out)
	if prev != nil {
		svc.stats = prev.stats
	}
	return svc
}
