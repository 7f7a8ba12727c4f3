// Package memstore is the memory backend's store without Caddy: the
// registry in memory, with every change saved through a registry.Storage
// (a file, Caddy's storage), so that changes survive a restart and
// instances sharing the storage see each other's changes. The Caddy
// module service_registry.backends.memory is a thin wrapper around it; a
// Go program can hand a Store to registry.New directly.
package memstore

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
	"time"

	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Store keeps the registry in memory and saves every change in the
// storage the registry hands it (BackendEnv.Storage), so that changes
// survive a restart.
//
// Several instances may share the storage (as Caddy clusters share it for
// certificates): every change is a read-modify-write of the saved changes
// under the storage's lock, if it has locks (Locker), so that none is
// lost, and each instance checks the storage every PollInterval, if it can
// tell when the changes were saved (Stater), so that it routes the others'
// changes within about that long.
//
// How seeds and saved changes combine: at every start and Reconfigure the
// registry is the seeds (BackendEnv.Seeds) with the saved changes applied
// on top, in that order. An endpoint added (Add) is registered even if
// the seeds do not list it; a seeded endpoint deleted (Delete) stays
// deleted, even across restarts, until it is added again. Removing a seed
// removes it from the registry unless it was also added. Traffic policies
// put (PutTraffic) are saved in the same key and replace the seeded policy
// of their service until deleted there.
type Store struct {
	// StorageKey is the key in the storage under which changes are
	// saved.
	StorageKey string

	// PollInterval is how often the storage is checked for changes that
	// other instances sharing it saved. Default: DefaultPollInterval.
	PollInterval time.Duration

	storage registry.Storage
	logger  *zap.Logger
	cancel  context.CancelFunc
	done    sync.WaitGroup

	mu      sync.Mutex // guards everything below and orders saves
	feed    *registry.Feed
	seeds   map[registry.ServiceKey][]registry.Endpoint
	changes map[registry.ServiceKey]map[string]registry.Change // copy-on-write
	seen    stamp                                              // the saved changes last read or written

	traffic map[string]traffic.Policy // saved policies; copy-on-write
}

// DefaultPollInterval is how often the storage is checked by default.
const DefaultPollInterval = 2 * time.Second

// Stater is implemented by storage that can tell when a key last
// changed (Caddy's can). A Store polls only such storage for the other
// instances' changes.
type Stater interface {
	// Stat returns when key was last modified and its size; an error
	// matching fs.ErrNotExist when it does not exist, and another error
	// when the storage cannot tell.
	Stat(ctx context.Context, key string) (modified time.Time, size int64, err error)
}

// Locker is implemented by storage with locks (Caddy's has). A Store
// saves a change under the lock, so that instances sharing the storage
// lose none of each other's changes.
type Locker interface {
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
}

// stamp tells one version of the saved changes from another.
type stamp struct {
	modified time.Time
	size     int64
}

// file is the saved form of the changes.
type file struct {
	Changes []record                  `json:"changes"`
	Traffic map[string]traffic.Policy `json:"traffic,omitempty"`
}

type record struct {
	Service  string            `json:"service"`
	Version  string            `json:"version"`
	Address  string            `json:"address"`
	Weight   registry.Weight   `json:"weight,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Deleted  bool              `json:"deleted,omitempty"`
}

// Start loads the saved changes, publishes seeds plus changes, and starts
// checking the storage for changes other instances save.
func (m *Store) Start(feed *registry.Feed, env registry.BackendEnv) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.feed = feed
	if err := m.reconfigure(env); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.done.Go(func() { m.poll(ctx) })
	return nil
}

// poll reloads the saved changes whenever the storage holds another
// version of them than the one last read or written.
func (m *Store) poll(ctx context.Context) {
	interval := m.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.mu.Lock()
		if st, ok := m.stat(ctx); ok && st != m.seen {
			if err := m.refresh(ctx); err != nil {
				m.logger.Warn("reading changes saved by other instances", zap.String("backend", "memory"), zap.Error(err))
			}
		}
		m.mu.Unlock()
	}
}

// stat returns the saved changes' stamp, if the storage can tell it.
// The caller holds m.mu.
func (m *Store) stat(ctx context.Context) (stamp, bool) {
	st, ok := m.storage.(Stater)
	if !ok {
		return stamp{}, false
	}
	modified, size, err := st.Stat(ctx, m.StorageKey)
	if errors.Is(err, fs.ErrNotExist) {
		return stamp{}, true
	}
	if err != nil {
		return stamp{}, false
	}
	return stamp{modified, size}, true
}

// refresh reads the saved changes again and publishes them if they
// differ. The caller holds m.mu.
func (m *Store) refresh(ctx context.Context) error {
	st, _ := m.stat(ctx)
	changes, policies, err := m.load(m.storage)
	if err != nil {
		return err
	}
	m.seen = st
	if !sameChanges(changes, m.changes) {
		m.changes = changes
		m.feed.Publish(m.changes, false)
	}
	if !maps.EqualFunc(policies, m.traffic, sameTraffic) {
		m.traffic = policies
		m.feed.PublishTraffic(m.traffic)
	}
	return nil
}

// sameChanges reports whether two sets of changes are equal.
func sameChanges(a, b map[registry.ServiceKey]map[string]registry.Change) bool {
	return maps.EqualFunc(a, b, func(x, y map[string]registry.Change) bool {
		return maps.EqualFunc(x, y, func(c, d registry.Change) bool {
			return c.Address == d.Address && c.Weight == d.Weight && c.Deleted == d.Deleted && maps.Equal(c.Metadata, d.Metadata)
		})
	})
}

// lockStorage takes the storage's lock on the saved changes, if it has
// locks, and returns its release.
func (m *Store) lockStorage(ctx context.Context) (func(), error) {
	locker, ok := m.storage.(Locker)
	if !ok {
		return func() {}, nil
	}
	name := m.StorageKey + ".lock"
	if err := locker.Lock(ctx, name); err != nil {
		return nil, fmt.Errorf("locking storage key %q: %w: %w", m.StorageKey, registry.ErrBackendUnavailable, err)
	}
	return func() {
		if err := locker.Unlock(context.Background(), name); err != nil {
			m.logger.Error("unlocking storage", zap.String("backend", "memory"), zap.String("lock", name), zap.Error(err))
		}
	}, nil
}

// Reconfigure takes a newer config's seeds and storage: the saved changes
// are read again from that storage, so a config pointing Caddy at other
// storage finds the changes saved there.
func (m *Store) Reconfigure(env registry.BackendEnv) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reconfigure(env)
}

// reconfigure loads the changes from env's storage and publishes env's
// seeds with them; on error nothing changes. The caller holds m.mu.
func (m *Store) reconfigure(env registry.BackendEnv) error {
	if env.Storage == nil {
		return errors.New("memory backend: no storage")
	}
	changes, policies, err := m.load(env.Storage)
	if err != nil {
		return err
	}
	m.storage, m.logger, m.seeds, m.changes = env.Storage, env.Logger, env.Seeds, changes
	m.traffic = policies
	m.seen, _ = m.stat(context.Background())
	m.feed.Configure(env)
	m.feed.Publish(m.changes, false)
	m.feed.PublishTraffic(m.traffic)
	m.logger.Debug("memory backend loaded", zap.String("backend", "memory"), zap.Int("saved_changes", len(changes)), zap.String("storage_key", m.StorageKey))
	return nil
}

// Add saves the endpoint, then publishes it.
func (m *Store) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	if ep.TTL != 0 {
		return registry.Invalidf("the memory backend has no leases: ttl needs the etcd backend")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	unlock, err := m.fresh(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return m.apply(ctx, key, registry.Change{Endpoint: registry.Endpoint{Address: ep.Address, Weight: ep.Weight, Metadata: ep.Metadata}})
}

// fresh takes the storage's lock and reads the saved changes again, so
// that a change applies on top of what other instances saved. The caller
// holds m.mu, and calls the returned release when done.
func (m *Store) fresh(ctx context.Context) (func(), error) {
	unlock, err := m.lockStorage(ctx)
	if err != nil {
		return nil, err
	}
	if err := m.refresh(ctx); err != nil {
		unlock()
		return nil, fmt.Errorf("%w: %w", registry.ErrBackendUnavailable, err)
	}
	return unlock, nil
}

// Delete saves the deletion, then publishes it.
func (m *Store) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	unlock, err := m.fresh(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := m.checkDelete(key, address); err != nil {
		return err
	}
	return m.apply(ctx, key, registry.Change{Endpoint: registry.Endpoint{Address: address}, Deleted: true})
}

// CheckDelete returns the error Delete would return for an unknown
// service version or endpoint.
func (m *Store) CheckDelete(key registry.ServiceKey, address string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.checkDelete(key, address)
}

// checkDelete is CheckDelete; the caller holds m.mu.
func (m *Store) checkDelete(key registry.ServiceKey, address string) error {
	eps, known := m.merge(key)
	if !known {
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownVersion)
	}
	if !slices.ContainsFunc(eps, func(ep registry.Endpoint) bool { return ep.Address == address }) {
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownEndpoint)
	}
	return nil
}

// Stop ends the polling.
func (m *Store) Stop() error {
	m.mu.Lock()
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.done.Wait()
	return nil
}

// merge returns key's seeds with the saved changes applied, and whether
// the service version is known. The caller holds m.mu.
func (m *Store) merge(key registry.ServiceKey) ([]registry.Endpoint, bool) {
	return m.feed.Merged(key, m.changes[key])
}

// apply saves the registry with one more change and, only if that
// worked, publishes it. The caller holds m.mu.
func (m *Store) apply(ctx context.Context, key registry.ServiceKey, c registry.Change) error {
	forKey := maps.Clone(m.changes[key])
	if forKey == nil {
		forKey = map[string]registry.Change{}
	}
	seeded := slices.ContainsFunc(m.seeds[key], func(ep registry.Endpoint) bool { return ep.Address == c.Address })
	if c.Deleted && !seeded {
		delete(forKey, c.Address) // nothing to hide: just forget the addition
	} else {
		forKey[c.Address] = c
	}
	next := maps.Clone(m.changes)
	if next == nil {
		next = map[registry.ServiceKey]map[string]registry.Change{}
	}
	if len(forKey) == 0 {
		delete(next, key)
	} else {
		next[key] = forKey
	}
	if err := m.save(ctx, next, m.traffic); err != nil {
		return err
	}
	m.seen, _ = m.stat(ctx)
	m.changes = next
	m.feed.PublishKey(key, m.changes[key], false)
	return nil
}

// load reads the saved changes and traffic policies from storage; a
// missing key means none.
func (m *Store) load(storage registry.Storage) (map[registry.ServiceKey]map[string]registry.Change, map[string]traffic.Policy, error) {
	data, err := storage.Load(context.Background(), m.StorageKey)
	if errors.Is(err, fs.ErrNotExist) {
		return map[registry.ServiceKey]map[string]registry.Change{}, map[string]traffic.Policy{}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("loading saved endpoints from storage key %q: %w", m.StorageKey, err)
	}
	var saved file
	if err := json.Unmarshal(data, &saved); err != nil {
		return nil, nil, fmt.Errorf("reading saved endpoints from storage key %q: %w", m.StorageKey, err)
	}
	for service, p := range saved.Traffic {
		if _, err := p.Compile(service, nil); err != nil {
			return nil, nil, fmt.Errorf("reading saved traffic policies from storage key %q: %w", m.StorageKey, err)
		}
	}
	if saved.Traffic == nil {
		saved.Traffic = map[string]traffic.Policy{}
	}
	changes := map[registry.ServiceKey]map[string]registry.Change{}
	for _, rec := range saved.Changes {
		key := registry.ServiceKey{Service: rec.Service, Version: rec.Version}
		ep, err := registry.Endpoint{Address: rec.Address, Weight: rec.Weight, Metadata: rec.Metadata}.Normalize()
		if err == nil {
			err = key.Validate()
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading saved endpoints from storage key %q: %w", m.StorageKey, err)
		}
		if changes[key] == nil {
			changes[key] = map[string]registry.Change{}
		}
		c := registry.Change{Endpoint: ep}
		if rec.Deleted {
			c = registry.Change{Endpoint: registry.Endpoint{Address: ep.Address}, Deleted: true}
		}
		changes[key][ep.Address] = c
	}
	return changes, saved.Traffic, nil
}

// save writes changes and traffic policies to storage.
func (m *Store) save(ctx context.Context, changes map[registry.ServiceKey]map[string]registry.Change, policies map[string]traffic.Policy) error {
	saved := file{Changes: []record{}, Traffic: policies}
	for key, forKey := range changes {
		for addr, c := range forKey {
			saved.Changes = append(saved.Changes, record{
				Service: key.Service, Version: key.Version, Address: addr,
				Weight: c.Weight, Metadata: c.Metadata, Deleted: c.Deleted,
			})
		}
	}
	slices.SortFunc(saved.Changes, func(a, b record) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Version, b.Version), cmp.Compare(a.Address, b.Address))
	})
	data, err := json.MarshalIndent(saved, "", "\t")
	if err != nil {
		return fmt.Errorf("encoding endpoints: %w", err)
	}
	if err := m.storage.Store(ctx, m.StorageKey, data); err != nil {
		return fmt.Errorf("saving endpoints to storage key %q: %w: %w", m.StorageKey, registry.ErrBackendUnavailable, err)
	}
	return nil
}

// PutTraffic saves a service's traffic policy, then publishes it.
func (m *Store) PutTraffic(ctx context.Context, service string, p traffic.Policy) error {
	return m.changeTraffic(ctx, service, &p)
}

// DeleteTraffic removes a service's saved traffic policy, then publishes
// the config's, if any.
func (m *Store) DeleteTraffic(ctx context.Context, service string) error {
	return m.changeTraffic(ctx, service, nil)
}

// changeTraffic saves service's policy p (nil: none) on top of what other
// instances saved, and publishes the policies once saved.
func (m *Store) changeTraffic(ctx context.Context, service string, p *traffic.Policy) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	unlock, err := m.fresh(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	next := maps.Clone(m.traffic)
	if next == nil {
		next = map[string]traffic.Policy{}
	}
	if p == nil {
		if _, ok := next[service]; !ok {
			return fmt.Errorf("removing the traffic policy of %q: %w", service, registry.ErrNoTrafficPolicy)
		}
		delete(next, service)
	} else {
		next[service] = *p
	}
	if err := m.save(ctx, m.changes, next); err != nil {
		return err
	}
	m.seen, _ = m.stat(ctx)
	m.traffic = next
	m.feed.PublishTraffic(m.traffic)
	return nil
}

// sameTraffic reports whether two policies are equal.
func sameTraffic(a, b traffic.Policy) bool {
	return maps.Equal(a.Split, b.Split) && maps.Equal(a.Aliases, b.Aliases) && a.Header == b.Header &&
		a.Cookie == b.Cookie && a.Sticky == b.Sticky && a.StickyHeader == b.StickyHeader && a.Fallback == b.Fallback
}

// Interface guards
var (
	_ registry.TrafficBackend = (*Store)(nil)
	_ registry.Backend        = (*Store)(nil)
	_ registry.DeleteChecker  = (*Store)(nil)
)
