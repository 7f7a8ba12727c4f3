// Package memory is the default backend of the service_registry app,
// service_registry.backends.memory: the registry in memory, with every
// admin-API change saved in Caddy's storage. The store itself is
// memstore, which imports nothing of Caddy; this package is its Caddy
// module and Caddyfile syntax.
package memory

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/svcreg/caddy-svcreg/backends/memory/memstore"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

func init() {
	caddy.RegisterModule(new(Backend))
}

// Backend keeps the registry in memory and saves every admin-API change in
// Caddy's storage (the file system by default), so that changes survive a
// restart of Caddy.
//
// Several Caddy instances may share the storage (as Caddy clusters share
// it for certificates): every change is a read-modify-write of the saved
// changes under the storage's lock, so that none is lost, and each
// instance checks the storage every PollInterval, so that it routes the
// others' changes within about that long.
//
// How seeds and saved changes combine: at every start and config reload
// the registry is the config's `service` seeds with the saved changes
// applied on top, in that order. An endpoint added through the admin API
// is registered even if the config does not list it; a seeded endpoint
// deleted through the admin API stays deleted, even across restarts, until
// it is added again through the admin API. Removing a seed from the config
// removes it from the registry unless it was also added through the API.
// Traffic policies set through the admin API are saved in the same file
// and replace the config's policy of their service until deleted there.
type Backend struct {
	// StorageKey is the key in Caddy's storage under which admin-API
	// changes are saved. Default: service_registry/memory.json.
	StorageKey string `json:"storage_key,omitempty"`

	// PollInterval is how often the storage is checked for changes that
	// other Caddy instances sharing it saved. Default: 2s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	store memstore.Store
}

// CaddyModule returns the Caddy module information.
func (*Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "service_registry.backends.memory",
		New: func() caddy.Module { return new(Backend) },
	}
}

// Provision sets defaults.
func (m *Backend) Provision(caddy.Context) error {
	if m.StorageKey == "" {
		m.StorageKey = "service_registry/memory.json"
	}
	if m.PollInterval == 0 {
		m.PollInterval = caddy.Duration(memstore.DefaultPollInterval)
	}
	if m.PollInterval < caddy.Duration(100*time.Millisecond) {
		return fmt.Errorf("memory backend: poll_interval %v: want at least 100ms", time.Duration(m.PollInterval))
	}
	return nil
}

// Start loads the saved changes, publishes seeds plus changes, and starts
// checking the storage for changes other instances save.
func (m *Backend) Start(feed *registry.Feed, env registry.BackendEnv) error {
	m.store.StorageKey, m.store.PollInterval = m.StorageKey, time.Duration(m.PollInterval)
	return m.store.Start(feed, withStorage(env))
}

// Reconfigure takes a newer config's seeds and storage: the saved changes
// are read again from that storage, so a config pointing Caddy at other
// storage finds the changes saved there.
func (m *Backend) Reconfigure(env registry.BackendEnv) error {
	return m.store.Reconfigure(withStorage(env))
}

// Add saves the endpoint, then publishes it.
func (m *Backend) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	return m.store.Add(ctx, key, ep)
}

// Delete saves the deletion, then publishes it.
func (m *Backend) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	return m.store.Delete(ctx, key, address)
}

// CheckDelete returns the error Delete would return for an unknown
// service version or endpoint.
func (m *Backend) CheckDelete(key registry.ServiceKey, address string) error {
	return m.store.CheckDelete(key, address)
}

// PutTraffic saves a service's traffic policy, then publishes it.
func (m *Backend) PutTraffic(ctx context.Context, service string, p traffic.Policy) error {
	return m.store.PutTraffic(ctx, service, p)
}

// DeleteTraffic removes a service's saved traffic policy, then publishes
// the config's, if any.
func (m *Backend) DeleteTraffic(ctx context.Context, service string) error {
	return m.store.DeleteTraffic(ctx, service)
}

// Stop ends the polling.
func (m *Backend) Stop() error { return m.store.Stop() }

// withStorage hands the store Caddy's storage with its Stat in the
// store's terms (certmagic's storage has the locks the store wants as
// they are).
func withStorage(env registry.BackendEnv) registry.BackendEnv {
	if s, ok := env.Storage.(certmagic.Storage); ok {
		env.Storage = caddyStorage{s}
	}
	return env
}

// caddyStorage is Caddy's storage as a memstore.Stater and
// memstore.Locker.
type caddyStorage struct{ certmagic.Storage }

// Stat returns when key was last modified, and its size.
func (s caddyStorage) Stat(ctx context.Context, key string) (time.Time, int64, error) {
	info, err := s.Storage.Stat(ctx, key)
	if err != nil {
		return time.Time{}, 0, err
	}
	return info.Modified, info.Size, nil
}

// Interface guards
var (
	_ caddy.Provisioner       = (*Backend)(nil)
	_ registry.TrafficBackend = (*Backend)(nil)
	_ registry.Backend        = (*Backend)(nil)
	_ registry.DeleteChecker  = (*Backend)(nil)
	_ memstore.Stater         = caddyStorage{}
	_ memstore.Locker         = caddyStorage{}
)
