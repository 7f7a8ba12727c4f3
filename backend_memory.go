package svcreg

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(MemoryBackend))
}

// MemoryBackend keeps the registry in memory and saves every admin-API
// change in Caddy's storage (the file system by default), so that changes
// survive a restart of Caddy.
//
// How seeds and saved changes combine: at every start and config reload
// the registry is the config's `service` seeds with the saved changes
// applied on top, in that order. An endpoint added through the admin API
// is registered even if the config does not list it; a seeded endpoint
// deleted through the admin API stays deleted, even across restarts, until
// it is added again through the admin API. Removing a seed from the config
// removes it from the registry unless it was also added through the API.
type MemoryBackend struct {
	// StorageKey is the key in Caddy's storage under which admin-API
	// changes are saved. Default: service_registry/memory.json.
	StorageKey string `json:"storage_key,omitempty"`

	storage certmagic.Storage
	logger  *zap.Logger

	mu      sync.Mutex // guards everything below and orders saves
	table   *Table
	seeds   map[ServiceKey][]Endpoint
	changes map[ServiceKey]map[string]memoryChange // copy-on-write
}

// memoryChange is one saved admin-API change: an endpoint added with a
// weight, or a seeded endpoint deleted.
type memoryChange struct {
	weight   int
	metadata map[string]string
	deleted  bool
}

// memoryFile is the saved form of the changes.
type memoryFile struct {
	Changes []memoryRecord `json:"changes"`
}

type memoryRecord struct {
	Service  string            `json:"service"`
	Version  string            `json:"version"`
	Address  string            `json:"address"`
	Weight   int               `json:"weight,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Deleted  bool              `json:"deleted,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*MemoryBackend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "service_registry.backends.memory",
		New: func() caddy.Module { return new(MemoryBackend) },
	}
}

// Provision sets defaults.
func (m *MemoryBackend) Provision(caddy.Context) error {
	if m.StorageKey == "" {
		m.StorageKey = "service_registry/memory.json"
	}
	return nil
}

// Start loads the saved changes and publishes seeds plus changes.
func (m *MemoryBackend) Start(table *Table, env BackendEnv) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.table = table
	return m.reconfigure(env)
}

// Reconfigure takes a newer config's seeds and storage: the saved changes
// are read again from that storage, so a config pointing Caddy at other
// storage finds the changes saved there.
func (m *MemoryBackend) Reconfigure(env BackendEnv) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reconfigure(env)
}

// reconfigure loads the changes from env's storage and publishes env's
// seeds with them; on error nothing changes. The caller holds m.mu.
func (m *MemoryBackend) reconfigure(env BackendEnv) error {
	changes, err := m.load(env.Storage)
	if err != nil {
		return err
	}
	m.storage, m.logger, m.seeds, m.changes = env.Storage, env.Logger, env.Seeds, changes
	m.table.Replace(m.composeAll())
	m.logger.Debug("memory backend loaded", zap.String("backend", "memory"), zap.Int("saved_changes", len(changes)), zap.String("storage_key", m.StorageKey))
	return nil
}

// Add saves the endpoint, then publishes it.
func (m *MemoryBackend) Add(ctx context.Context, key ServiceKey, ep Endpoint) error {
	if ep.TTL != 0 {
		return badInput("the memory backend has no leases: ttl needs the etcd backend")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.apply(ctx, key, ep.Address, memoryChange{weight: ep.Weight, metadata: ep.Metadata})
}

// Delete saves the deletion, then publishes it.
func (m *MemoryBackend) Delete(ctx context.Context, key ServiceKey, address string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkDelete(key, address); err != nil {
		return err
	}
	return m.apply(ctx, key, address, memoryChange{deleted: true})
}

// CheckDelete returns the error Delete would return for an unknown
// service version or endpoint.
func (m *MemoryBackend) CheckDelete(key ServiceKey, address string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.checkDelete(key, address)
}

// checkDelete is CheckDelete; the caller holds m.mu.
func (m *MemoryBackend) checkDelete(key ServiceKey, address string) error {
	eps, known := m.compose(key)
	if !known {
		return fmt.Errorf("deleting %s from %s: %w", address, key, ErrUnknownVersion)
	}
	if !slices.ContainsFunc(eps, func(ep Endpoint) bool { return ep.Address == address }) {
		return fmt.Errorf("deleting %s from %s: %w", address, key, ErrUnknownEndpoint)
	}
	return nil
}

// Stop does nothing: the memory backend runs no goroutines.
func (m *MemoryBackend) Stop() error { return nil }

// apply saves the registry with one more change and, only if that
// worked, publishes it. The caller holds m.mu.
func (m *MemoryBackend) apply(ctx context.Context, key ServiceKey, address string, c memoryChange) error {
	forKey := maps.Clone(m.changes[key])
	if forKey == nil {
		forKey = map[string]memoryChange{}
	}
	seeded := slices.ContainsFunc(m.seeds[key], func(ep Endpoint) bool { return ep.Address == address })
	if c.deleted && !seeded {
		delete(forKey, address) // nothing to hide: just forget the addition
	} else {
		forKey[address] = c
	}
	next := maps.Clone(m.changes)
	if next == nil {
		next = map[ServiceKey]map[string]memoryChange{}
	}
	if len(forKey) == 0 {
		delete(next, key)
	} else {
		next[key] = forKey
	}
	if err := m.save(ctx, next); err != nil {
		return err
	}
	m.changes = next
	if eps, known := m.compose(key); known {
		m.table.Set(key, eps)
	} else {
		m.table.Remove(key)
	}
	return nil
}

// compose returns key's seeds with the saved changes applied, and whether
// the service version is known. The caller holds m.mu.
func (m *MemoryBackend) compose(key ServiceKey) ([]Endpoint, bool) {
	seeds, seeded := m.seeds[key]
	byAddr := make(map[string]Endpoint, len(seeds))
	for _, ep := range seeds {
		byAddr[ep.Address] = ep
	}
	for addr, c := range m.changes[key] {
		if c.deleted {
			delete(byAddr, addr)
		} else {
			byAddr[addr] = Endpoint{Address: addr, Weight: c.weight, Metadata: c.metadata}
		}
	}
	eps := slices.Collect(maps.Values(byAddr))
	return eps, seeded || len(eps) > 0
}

// composeAll composes every known service version. The caller holds m.mu.
func (m *MemoryBackend) composeAll() map[ServiceKey][]Endpoint {
	all := make(map[ServiceKey][]Endpoint, len(m.seeds)+len(m.changes))
	for key := range m.seeds {
		all[key], _ = m.compose(key)
	}
	for key := range m.changes {
		if eps, known := m.compose(key); known {
			all[key] = eps
		}
	}
	return all
}

// load reads the saved changes from storage; a missing key means none.
func (m *MemoryBackend) load(storage certmagic.Storage) (map[ServiceKey]map[string]memoryChange, error) {
	data, err := storage.Load(context.Background(), m.StorageKey)
	if errors.Is(err, fs.ErrNotExist) {
		return map[ServiceKey]map[string]memoryChange{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading saved endpoints from storage key %q: %w", m.StorageKey, err)
	}
	var file memoryFile
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("reading saved endpoints from storage key %q: %w", m.StorageKey, err)
	}
	changes := map[ServiceKey]map[string]memoryChange{}
	for _, rec := range file.Changes {
		key := ServiceKey{rec.Service, rec.Version}
		ep, err := Endpoint{Address: rec.Address, Weight: rec.Weight, Metadata: rec.Metadata}.normalize()
		if err == nil {
			err = key.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("reading saved endpoints from storage key %q: %w", m.StorageKey, err)
		}
		if changes[key] == nil {
			changes[key] = map[string]memoryChange{}
		}
		c := memoryChange{weight: ep.Weight, metadata: ep.Metadata, deleted: rec.Deleted}
		if rec.Deleted {
			c = memoryChange{deleted: true}
		}
		changes[key][ep.Address] = c
	}
	return changes, nil
}

// save writes changes to storage.
func (m *MemoryBackend) save(ctx context.Context, changes map[ServiceKey]map[string]memoryChange) error {
	file := memoryFile{Changes: []memoryRecord{}}
	for key, forKey := range changes {
		for addr, c := range forKey {
			file.Changes = append(file.Changes, memoryRecord{
				Service: key.Service, Version: key.Version, Address: addr,
				Weight: c.weight, Metadata: c.metadata, Deleted: c.deleted,
			})
		}
	}
	slices.SortFunc(file.Changes, func(a, b memoryRecord) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Version, b.Version), cmp.Compare(a.Address, b.Address))
	})
	data, err := json.MarshalIndent(file, "", "\t")
	if err != nil {
		return fmt.Errorf("encoding endpoints: %w", err)
	}
	if err := m.storage.Store(ctx, m.StorageKey, data); err != nil {
		return fmt.Errorf("saving endpoints to storage key %q: %w", m.StorageKey, err)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner = (*MemoryBackend)(nil)
	_ Backend           = (*MemoryBackend)(nil)
	_ DeleteChecker     = (*MemoryBackend)(nil)
)
