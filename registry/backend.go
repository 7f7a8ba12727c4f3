package registry

import (
	"context"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Backend stores a registry's endpoints and keeps its Table current.
// In Caddy, backends are modules in the service_registry.backends
// namespace.
//
// A registry, and so its backend, may outlive the configuration that
// created it (in Caddy: a config reload with the same backend settings).
// A backend therefore keeps nothing from where it was made beyond its own
// settings: each configuration that starts hands it a BackendEnv with its
// own seeds, storage and logger.
type Backend interface {
	// Start loads the stored endpoints, merges them with env's seeds,
	// feeds them to table and keeps it current until Stop. It must
	// return promptly even when the store is unreachable.
	Start(table *Table, env BackendEnv) error
	// Reconfigure takes the env of a configuration that starts later.
	// On error nothing changed.
	Reconfigure(env BackendEnv) error
	// Add stores an endpoint; the table holds it once Add returns nil.
	// The endpoint is normalized (Endpoint.Normalize).
	Add(ctx context.Context, key ServiceKey, ep Endpoint) error
	// Delete removes an endpoint; the table no longer holds it once
	// Delete returns nil. It returns an error matching ErrUnknownVersion
	// or ErrUnknownEndpoint when there is nothing to delete.
	Delete(ctx context.Context, key ServiceKey, address string) error
	// Stop ends every goroutine the backend started and releases its
	// resources.
	Stop() error
}

// DeleteChecker is implemented by backends that can tell ahead of Delete
// whether it would be refused. The registry asks before it drains an
// endpoint, so that a refused removal does not wait for nothing.
type DeleteChecker interface {
	// CheckDelete returns the error Delete would return for reasons
	// other than the store being unreachable (an unknown service
	// version or endpoint, an endpoint Delete cannot remove).
	CheckDelete(key ServiceKey, address string) error
}

// BackendEnv is what a running configuration hands its registry's backend.
type BackendEnv struct {
	// Seeds are the configuration's service versions and their
	// endpoints, normalized. A version with no endpoints is known.
	Seeds map[ServiceKey][]Endpoint
	// Storage is where a backend without a store of its own (memory)
	// keeps its changes; in Caddy, the config's storage.
	Storage Storage
	// Logger is the registry's logger in that configuration.
	Logger *zap.Logger
	// Traffic are the configuration's traffic policies, by service: the
	// seeds of the policies, as Seeds are of the endpoints.
	Traffic map[string]TrafficPolicy
	// RecoveryGrace is how long the registry keeps endpoints the store
	// dropped while it was out of reach, or within that time after it came
	// back (see Table.SetReachable). The registry applies it; a backend
	// ignores it. Default (0): DefaultRecoveryGrace; negative: none.
	RecoveryGrace time.Duration
}

// TrafficBackend is implemented by backends that store traffic policies
// (memory and etcd; the ZooKeeper and Consul backends publish only the
// config's). A stored policy replaces the
// configuration's policy of the same service; deleting it brings the
// configuration's back, if any.
type TrafficBackend interface {
	// PutTraffic stores a service's policy, checked by the caller; the
	// table holds it once PutTraffic returns nil.
	PutTraffic(ctx context.Context, service string, p TrafficPolicy) error
	// DeleteTraffic removes a service's stored policy; the table no
	// longer holds it once DeleteTraffic returns nil. It returns an error
	// matching ErrNoTrafficPolicy when none is stored.
	DeleteTraffic(ctx context.Context, service string) error
}

// MergeTraffic returns the policies of seeds with stored on top, compiled
// without checking their versions exist (they may come later). A policy
// that does not compile (a stored one written by hand) is left out and
// reported to bad, if not nil.
func MergeTraffic(seeds, stored map[string]TrafficPolicy, bad func(service string, err error)) map[string]*Traffic {
	all := make(map[string]*Traffic, len(seeds)+len(stored))
	for _, m := range []map[string]TrafficPolicy{seeds, stored} {
		for service, p := range m {
			t, err := p.Compile(service, nil)
			if err != nil {
				if bad != nil {
					bad(service, err)
				}
				continue
			}
			all[service] = t
		}
	}
	return all
}

// Owned is an endpoint a backend keeps registered for this process: one
// added with a TTL, which the store drops unless the backend keeps it
// alive.
type Owned struct {
	Key      ServiceKey
	Endpoint Endpoint
}

// Owner is implemented by backends that keep endpoints registered for
// this process (leases), so that a backend replacing one (a new
// configuration's) can adopt them before it stops.
type Owner interface {
	// Owned returns the endpoints the backend keeps registered.
	Owned() []Owned
	// Adopt registers endpoints that another backend kept registered,
	// under this one's own keeping (new leases), in the background.
	Adopt(owned []Owned)
}

// Storage is a key-value store of files, such as Caddy's storage
// (certmagic.Storage has these methods). Load returns an error matching
// fs.ErrNotExist for a key it does not hold.
type Storage interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
}

// Change is what a backend holds for one address of a service version
// beside the seeds: an endpoint, which replaces a seed at the same
// address, or, with Deleted, the removal of a seed.
type Change struct {
	Endpoint
	Deleted bool
}

// Merge returns the endpoints of one service version, its seeds with the
// changes applied on top, and whether the version is known: seeded (even
// with no endpoints) or holding an endpoint.
func Merge(seeds []Endpoint, seeded bool, changes map[string]Change) ([]Endpoint, bool) {
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

// MergeAll merges every service version that seeds or changes name (see
// Merge) and leaves out those that end up unknown.
func MergeAll(seeds map[ServiceKey][]Endpoint, changes map[ServiceKey]map[string]Change) map[ServiceKey][]Endpoint {
	all := make(map[ServiceKey][]Endpoint, len(seeds)+len(changes))
	for key, eps := range seeds {
		all[key], _ = Merge(eps, true, changes[key])
	}
	for key, forKey := range changes {
		if _, seeded := seeds[key]; seeded {
			continue
		}
		if eps, known := Merge(nil, false, forKey); known {
			all[key] = eps
		}
	}
	return all
}
