package registry

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Snapshot is an immutable view of the registry. Readers load it
// atomically and never lock; writers build a new one (copy-on-write).
type Snapshot struct {
	services map[string]*entry // one lookup finds a service's versions and policy
	synced   bool
}

// entry is one service in a snapshot.
type entry struct {
	versions map[string]*Service // nil for a service with only a traffic policy
	names    nameFilter          // of versions
	routing  *Routing            // nil for none
}

// newEntry returns the entry of versions (nil or none: no version) and
// routing.
func newEntry(versions map[string]*Service, routing *Routing) *entry {
	if len(versions) == 0 {
		versions = nil
	}
	e := &entry{versions: versions, routing: routing}
	for v := range versions {
		e.names.add(v)
	}
	return e
}

// nameFilter tells at once that a string is none of a set of names
// (version names: 1 to MaxNameLen bytes) when no name has its length or
// its first byte, which spares the hash of a lookup that would miss: a
// request path's second segment is often no version (an alias, the start
// of a path a traffic policy routes).
type nameFilter struct{ lens, firsts uint64 }

func (f *nameFilter) add(name string) {
	f.lens |= 1 << ((len(name) - 1) & 63)
	f.firsts |= 1 << (name[0] & 63)
}

// mayHave reports whether name may be in the set.
func (f nameFilter) mayHave(name string) bool {
	return len(name) > 0 && f.lens&(1<<((len(name)-1)&63)) != 0 && f.firsts&(1<<(name[0]&63)) != 0
}

// Lookup returns a service version, or an error matching ErrUnknownService,
// ErrUnknownVersion or ErrNotSynced.
func (s *Snapshot) Lookup(name, version string) (*Service, error) {
	v := s.Versions(name)
	if svc := v.Get(version); svc != nil {
		return svc, nil
	}
	return nil, v.Missing()
}

// Versions are the versions of one service in a snapshot, and its traffic
// policy. Get one from Snapshot.Versions: the zero Versions is not usable
// (a nil check in every method cost the sticky-cookie path about 8 ns).
type Versions struct {
	e      *entry // never nil
	synced bool
}

// noEntry is the entry of a service a snapshot does not have.
var noEntry = &entry{}

// Versions returns the versions of a service, for several lookups that
// find the service once.
func (s *Snapshot) Versions(service string) Versions {
	e := s.services[service]
	if e == nil {
		e = noEntry
	}
	return Versions{e: e, synced: s.synced}
}

// Routing returns the service's traffic policy with its split resolved,
// or nil for none.
func (v Versions) Routing() *Routing { return v.e.routing }

// Get returns a version of the service, or nil (Missing says why): the
// request path's lookup, with no error to compare.
func (v Versions) Get(version string) *Service {
	if v.e.routing != nil && !v.e.names.mayHave(version) {
		// A service with a traffic policy gets many paths whose
		// second segment is no version.
		return nil
	}
	return v.e.versions[version]
}

// Missing returns the error of Snapshot.Lookup for a version Get did not find.
func (v Versions) Missing() error {
	switch {
	case !v.synced:
		return ErrNotSynced
	case v.e.versions == nil:
		return ErrUnknownService
	}
	return ErrUnknownVersion
}

// Exist reports whether the service has a version.
func (v Versions) Exist() bool { return v.e.versions != nil }

// Known reports whether the service has the version.
func (v Versions) Known(version string) bool {
	_, ok := v.e.versions[version]
	return ok
}

// Synced reports whether the backend has loaded its endpoints.
func (s *Snapshot) Synced() bool { return s.synced }

// Services returns every service version, sorted by name and version.
func (s *Snapshot) Services() []*Service {
	var out []*Service
	for _, e := range s.services {
		for _, svc := range e.versions {
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

// table is the in-memory registry that backends feed. Reads go to an
// immutable Snapshot; each write publishes a new one. Endpoints keep their
// health state across writes as long as they stay registered.
type table struct {
	now  func() time.Time // the clock of the endpoints' health
	mu   sync.Mutex       // serializes writers, guards hold
	snap atomic.Pointer[Snapshot]
	hold hold // endpoints kept through a store's recovery
}

// newTable returns an empty table that is not synced yet, on the clock
// now.
func newTable(now func() time.Time) *table {
	t := &table{now: now, hold: hold{reachable: true, afterFunc: time.AfterFunc}}
	t.snap.Store(&Snapshot{services: map[string]*entry{}})
	return t
}

// Snapshot returns the current snapshot.
func (t *table) Snapshot() *Snapshot { return t.snap.Load() }

// replace sets the whole registry and marks it synced. A key with an empty
// endpoint list is a known service version with no endpoints. The
// endpoints must be normalized (Endpoint.Normalize).
func (t *table) replace(all map[ServiceKey][]Endpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	byService := make(map[string]map[string]*Service, len(all))
	set := func(key ServiceKey, eps []Endpoint, prev *Service) {
		if byService[key.Service] == nil {
			byService[key.Service] = map[string]*Service{}
		}
		byService[key.Service][key.Version] = t.buildService(key, eps, prev)
	}
	for key, eps := range all {
		prev, _ := old.Lookup(key.Service, key.Version)
		set(key, t.withHeld(key, prev, eps, false), prev)
	}
	for _, e := range old.services {
		for _, prev := range e.versions {
			key := prev.Key()
			if _, ok := all[key]; ok {
				continue
			}
			if eps := t.withHeld(key, prev, nil, true); len(eps) > 0 {
				set(key, eps, prev)
			}
		}
	}
	services := make(map[string]*entry, len(byService))
	for name, versions := range byService {
		services[name] = newEntry(versions, nil)
	}
	for name, oe := range old.services {
		if oe.routing != nil {
			services[name] = newEntry(byService[name], newRouting(oe.routing.Rules, byService[name]))
		}
	}
	t.snap.Store(&Snapshot{services: services, synced: true})
}

// setTraffic sets every service's traffic policy (nil: none).
func (t *table) setTraffic(policies map[string]*traffic.Rules) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	services := make(map[string]*entry, len(old.services)+len(policies))
	for name, oe := range old.services {
		if oe.versions != nil {
			services[name] = &entry{versions: oe.versions, names: oe.names}
		}
	}
	for name, p := range policies {
		e := services[name]
		if e == nil {
			e = &entry{}
			services[name] = e
		}
		e.routing = newRouting(p, e.versions)
	}
	t.snap.Store(&Snapshot{services: services, synced: old.synced})
}

// set sets the endpoints of one service version, which becomes known even
// with no endpoints. The endpoints must be normalized.
func (t *table) set(key ServiceKey, eps []Endpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	prev, _ := old.Lookup(key.Service, key.Version)
	svc := t.buildService(key, t.withHeld(key, prev, eps, false), prev)
	if svc == prev {
		return
	}
	t.publish(old, key, svc)
}

// remove forgets a service version.
func (t *table) remove(key ServiceKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	prev, err := old.Lookup(key.Service, key.Version)
	if err != nil {
		return
	}
	if eps := t.withHeld(key, prev, nil, true); len(eps) > 0 {
		if svc := t.buildService(key, eps, prev); svc != prev {
			t.publish(old, key, svc)
		}
		return
	}
	t.publish(old, key, nil)
}

// setSynced marks whether the table holds the backend's endpoints.
func (t *table) setSynced(synced bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	if old.synced == synced {
		return
	}
	t.snap.Store(&Snapshot{services: old.services, synced: synced})
}

// publish stores a copy of old with key set to svc (removed when nil).
// The caller holds t.mu.
func (t *table) publish(old *Snapshot, key ServiceKey, svc *Service) {
	services := maps.Clone(old.services)
	oe := old.services[key.Service]
	if oe == nil {
		oe = &entry{}
	}
	versions := maps.Clone(oe.versions)
	if svc == nil {
		delete(versions, key.Version)
	} else {
		if versions == nil {
			versions = map[string]*Service{}
		}
		versions[key.Version] = svc
	}
	var routing *Routing
	if oe.routing != nil {
		routing = newRouting(oe.routing.Rules, versions)
	}
	e := newEntry(versions, routing)
	if e.versions == nil && e.routing == nil {
		delete(services, key.Service)
	} else {
		services[key.Service] = e
	}
	t.snap.Store(&Snapshot{services: services, synced: old.synced})
}

// buildService makes the Service for key from eps, reusing prev's
// endpoints (and so their health) where address and weight are unchanged.
// It returns prev itself when nothing changed.
func (t *table) buildService(key ServiceKey, eps []Endpoint, prev *Service) *Service {
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
