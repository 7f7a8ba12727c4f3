package registry

import (
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Feed is how a backend feeds its registry: the backend hands it what its
// store holds beside the configuration's seeds, and the feed merges the
// seeds in and publishes the result in the registry's table. A backend
// gets its feed from Start and gives it each configuration's BackendEnv
// (Configure) when it takes that configuration.
type Feed struct {
	table *table

	mu      sync.Mutex // guards the fields below
	seeds   map[ServiceKey][]Endpoint
	traffic map[string]traffic.Policy
	log     *zap.Logger
}

// NewFeed returns a feed of a new table that is not synced yet: for a
// backend used without a registry (New makes a registry's feed), as its
// tests do.
func NewFeed() *Feed { return newFeed(newTable(time.Now)) }

func newFeed(table *table) *Feed { return &Feed{table: table, log: zap.NewNop()} }

// Configure takes env's seeds, traffic policies and logger. It publishes
// nothing: the backend publishes next, with what its store holds.
func (f *Feed) Configure(env BackendEnv) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seeds, f.traffic, f.log = env.Seeds, env.Traffic, env.Logger
	if f.log == nil {
		f.log = zap.NewNop()
	}
}

// Snapshot returns the registry's current snapshot.
func (f *Feed) Snapshot() *Snapshot { return f.table.Snapshot() }

// Change is what a backend's store holds for one address of a service
// version beside the seeds: an endpoint, which replaces a seed at the same
// address, or, with Deleted, the removal of a seed.
type Change struct {
	Endpoint
	Deleted bool
}

// Publish publishes every service version, the seeds with stored (by
// version, then by address) applied on top, and marks the registry
// synced. A version is known when seeded (even with no endpoints), when
// it has an endpoint, or, with listed, when stored has it at all: a store
// that lists a version with no usable endpoint (Consul, when no instance
// passes its checks) makes it answer 503, not 404.
func (f *Feed) Publish(stored map[ServiceKey]map[string]Change, listed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := make(map[ServiceKey][]Endpoint, len(f.seeds)+len(stored))
	for key, eps := range f.seeds {
		all[key], _ = merge(eps, true, stored[key])
	}
	for key, forKey := range stored {
		if _, seeded := f.seeds[key]; seeded {
			continue
		}
		if eps, known := merge(nil, false, forKey); known || listed {
			all[key] = eps
		}
	}
	f.table.replace(all)
}

// PublishKey publishes one service version as Publish does; listed says
// whether the store lists the version, stored being what it holds of it.
func (f *Feed) PublishKey(key ServiceKey, stored map[string]Change, listed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if eps, known := f.merged(key, stored); known || listed {
		f.table.set(key, eps)
	} else {
		f.table.remove(key)
	}
}

// Merged returns what PublishKey would publish for key when the store
// holds stored of it and does not list it: the endpoints, and whether the
// version is known (seeded or holding an endpoint).
func (f *Feed) Merged(key ServiceKey, stored map[string]Change) ([]Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.merged(key, stored)
}

// merged is Merged; the caller holds f.mu.
func (f *Feed) merged(key ServiceKey, stored map[string]Change) ([]Endpoint, bool) {
	seeds, seeded := f.seeds[key]
	return merge(seeds, seeded, stored)
}

// merge returns the endpoints of one service version, its seeds with the
// changes applied on top, and whether the version is known: seeded (even
// with no endpoints) or holding an endpoint.
func merge(seeds []Endpoint, seeded bool, changes map[string]Change) ([]Endpoint, bool) {
	byAddr := make(map[string]Endpoint, len(seeds)+len(changes))
	for _, ep := range seeds {
		byAddr[ep.Address] = ep
	}
	for addr, c := range changes {
		if c.Deleted {
			delete(byAddr, addr)
		} else {
			byAddr[addr] = c.Endpoint
		}
	}
	eps := slices.Collect(maps.Values(byAddr))
	return eps, seeded || len(eps) > 0
}

// PublishTraffic publishes the configuration's traffic policies with
// stored (nil: none) on top, compiled without checking their versions
// exist (they may come later). A policy that does not compile (a stored
// one written by hand) is left out.
func (f *Feed) PublishTraffic(stored map[string]traffic.Policy) {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := make(map[string]*traffic.Rules, len(f.traffic)+len(stored))
	for _, m := range []map[string]traffic.Policy{f.traffic, stored} {
		for service, p := range m {
			if t, err := p.Compile(service, nil); err == nil {
				all[service] = t
			}
		}
	}
	f.table.setTraffic(all)
}

// Reachable tells the registry that the backend's store answers again
// (ok) or no longer does (err says why): while it does not, and for the
// recovery grace after (BackendEnv.RecoveryGrace), the snapshot keeps the
// endpoints the backend removes. A backend calls it when it loses its
// store and when it has it again (after listing it again, if it does).
//
// With a store name ("etcd"), the change is also logged the same way for
// every store: fields (its addresses) go into every message, and back is
// the message when it answers again. A loss is logged as an error that
// says what routing does meanwhile: it keeps the last snapshot once the
// registry has synced from the store (synced), and registry-routed
// requests get 503 until the first sync before that. A backend calls it
// once per change, keeping track of the store's state itself.
func (f *Feed) Reachable(ok, synced bool, err error, store, back string, fields ...zap.Field) {
	f.table.setReachable(ok)
	if store == "" {
		return
	}
	f.mu.Lock()
	log := f.log
	f.mu.Unlock()
	fields = append([]zap.Field{zap.String("backend", store)}, fields...)
	switch {
	case ok:
		log.Info(back, fields...)
	case synced:
		log.Error(store+" unreachable; routing keeps the last snapshot and retries", append(fields, zap.Error(err))...)
	default:
		log.Error(store+" unreachable; registry-routed requests get 503 until the first sync, retrying", append(fields, zap.Error(err))...)
	}
}
