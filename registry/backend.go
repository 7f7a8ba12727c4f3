package registry

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Backend stores a registry's endpoints and keeps its table current
// through a Feed.
// In Caddy, backends are modules in the service_registry.backends
// namespace.
//
// A registry, and so its backend, may outlive the configuration that
// created it (in Caddy: a config reload with the same backend settings).
// A backend therefore keeps nothing from where it was made beyond its own
// settings: each configuration that starts hands it a BackendEnv with its
// own seeds, storage and logger.
type Backend interface {
	// Start gives feed env (Feed.Configure), loads the stored
	// endpoints, publishes them through feed and keeps it current until
	// Stop. It must return promptly even when the store is unreachable.
	Start(feed *Feed, env BackendEnv) error
	// Reconfigure takes the env of a configuration that starts later,
	// gives it to the feed and publishes again. On error nothing
	// changed.
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
	Traffic map[string]traffic.Policy
	// RecoveryGrace is how long the registry keeps endpoints the store
	// dropped while it was out of reach, or within that time after it came
	// back (see Feed.Reachable). The registry applies it; a backend
	// ignores it. Default (0): 2s; negative: none.
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
	PutTraffic(ctx context.Context, service string, p traffic.Policy) error
	// DeleteTraffic removes a service's stored policy; the table no
	// longer holds it once DeleteTraffic returns nil. It returns an error
	// matching ErrNoTrafficPolicy when none is stored.
	DeleteTraffic(ctx context.Context, service string) error
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
