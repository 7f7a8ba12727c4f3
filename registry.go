package svcreg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// now is the registry's clock; tests replace it.
var now = time.Now

// Errors that callers tell apart with errors.Is.
var (
	// ErrInvalid is wrapped by every error about bad input: a bad service
	// or version name, a bad address, a bad weight.
	ErrInvalid = errors.New("invalid input")
	// ErrUnknownService means no version of the service is registered.
	ErrUnknownService = errors.New("unknown service")
	// ErrUnknownVersion means the service is registered, but not this version.
	ErrUnknownVersion = errors.New("unknown version")
	// ErrUnknownEndpoint means the service version has no such endpoint.
	ErrUnknownEndpoint = errors.New("unknown endpoint")
	// ErrNotSynced means the backend has not loaded its endpoints yet.
	ErrNotSynced = errors.New("registry not synced with its backend yet")
	// ErrBackendUnavailable means the backend's store could not be reached
	// to make a change; nothing was changed.
	ErrBackendUnavailable = errors.New("registry backend unavailable")
)

// inputError is an error about bad input; it matches ErrInvalid.
type inputError struct{ msg string }

func (e inputError) Error() string        { return e.msg }
func (e inputError) Is(target error) bool { return target == ErrInvalid }

func badInput(format string, args ...any) error {
	return inputError{msg: fmt.Sprintf(format, args...)}
}

// Registry holds the endpoints of every service version. Lookup and
// Failure are on the request path: they read an immutable snapshot, take
// no lock and do no I/O. Add and Delete go through the registry's backend
// and are visible to the next Lookup once they return.
type Registry interface {
	// Add registers ep under key. Adding an endpoint that is already
	// registered is harmless; a new weight replaces the old one.
	Add(ctx context.Context, key ServiceKey, ep Endpoint) error
	// Delete removes the endpoint with the given address from key. It
	// first drains it: no new requests, and up to the drain timeout for
	// those in flight to finish. It returns an error matching
	// ErrUnknownVersion or ErrUnknownEndpoint when there is nothing to
	// delete.
	Delete(ctx context.Context, key ServiceKey, address string) (Drain, error)
	// Failure records that a request to the endpoint failed; the endpoint
	// leaves rotation until it answers again.
	Failure(key ServiceKey, address string)
	// Lookup returns the service version's endpoints, or an error matching
	// ErrUnknownService, ErrUnknownVersion or ErrNotSynced.
	Lookup(key ServiceKey) (*Service, error)
	// Snapshot returns the current immutable view of the whole registry.
	Snapshot() *Snapshot
}

// ServiceKey names one version of a service.
type ServiceKey struct {
	Service string
	Version string
}

func (k ServiceKey) String() string { return k.Service + " " + k.Version }

// Validate checks both names.
func (k ServiceKey) Validate() error {
	if err := checkName("service", k.Service); err != nil {
		return err
	}
	return checkName("version", k.Version)
}

// maxNameLen is the longest service or version name.
const maxNameLen = 64

// validName reports whether s is a service or version name:
// 1 to 64 characters of A-Z a-z 0-9 . _ -, and not only dots.
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	onlyDots := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			onlyDots = false
		default:
			return false
		}
	}
	return !onlyDots
}

func checkName(kind, s string) error {
	if validName(s) {
		return nil
	}
	return badInput("invalid %s name %q: want 1 to %d characters of A-Z a-z 0-9 . _ - (not only dots)", kind, s, maxNameLen)
}

// Endpoint is one host of a service version. Values handed out by a
// Snapshot are shared and must not be modified.
type Endpoint struct {
	// Address is the host:port Caddy dials, for example 127.0.0.1:9091 or
	// [::1]:9091. An http:// prefix is accepted and dropped.
	Address string `json:"address,omitempty"`

	// Weight is the endpoint's share of requests relative to the other
	// endpoints of its service version, from 1 to 100. Default: 1.
	Weight int `json:"weight,omitempty"`

	// Metadata is free-form information about the endpoint (at most 16
	// entries of up to 256 bytes each), shown by the admin API.
	Metadata map[string]string `json:"metadata,omitempty"`

	// TTL, given when adding an endpoint, binds it to a lease of that
	// length that this Caddy keeps alive while the endpoint stays
	// registered: if this Caddy stops, the endpoint disappears TTL later.
	// Only backends with leases (etcd) accept it; 1s to 24h. It is an
	// input of Registry.Add only: snapshots do not carry it.
	// Default: none.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// health is shared by every snapshot that holds this endpoint.
	health *endpointHealth
}

// Limits of an endpoint's metadata and TTL.
const (
	maxMetadataEntries = 16
	maxMetadataLen     = 256
	minTTL             = caddy.Duration(time.Second)
	maxTTL             = caddy.Duration(24 * time.Hour)
)

// sameConfig reports whether ep and other have the same settings.
func (ep *Endpoint) sameConfig(other Endpoint) bool {
	return ep.Weight == other.Weight && maps.Equal(ep.Metadata, other.Metadata)
}

// maxWeight is the largest endpoint weight.
const maxWeight = 100

// normalize validates ep and returns it with a canonical address and weight.
func (ep Endpoint) normalize() (Endpoint, error) {
	addr, err := ParseAddress(ep.Address)
	if err != nil {
		return Endpoint{}, err
	}
	w := ep.Weight
	if w == 0 {
		w = 1
	}
	if w < 1 || w > maxWeight {
		return Endpoint{}, badInput("invalid weight %d for %s: want 1 to %d", ep.Weight, addr, maxWeight)
	}
	if len(ep.Metadata) > maxMetadataEntries {
		return Endpoint{}, badInput("metadata of %s: %d entries, want at most %d", addr, len(ep.Metadata), maxMetadataEntries)
	}
	for k, v := range ep.Metadata {
		if k == "" || len(k) > maxMetadataLen || len(v) > maxMetadataLen {
			return Endpoint{}, badInput("metadata of %s: keys must be 1 to %d bytes, values at most %d", addr, maxMetadataLen, maxMetadataLen)
		}
	}
	if ep.TTL != 0 && (ep.TTL < minTTL || ep.TTL > maxTTL) {
		return Endpoint{}, badInput("invalid ttl %s for %s: want 1s to 24h", time.Duration(ep.TTL), addr)
	}
	var meta map[string]string
	if len(ep.Metadata) > 0 {
		meta = maps.Clone(ep.Metadata)
	}
	return Endpoint{Address: addr, Weight: w, Metadata: meta, TTL: ep.TTL}, nil
}

// ParseAddress checks that s is host:port with a port from 1 to 65535 and
// returns its canonical form. An http:// prefix is dropped; https:// is
// refused, because TLS to upstreams is a setting of Caddy's transport
// (transport http { tls }), not of an address.
func ParseAddress(s string) (string, error) {
	raw := s
	if i := strings.Index(s, "://"); i >= 0 {
		switch strings.ToLower(s[:i]) {
		case "http":
			s = s[i+3:]
		case "https":
			return "", badInput("invalid address %q: register host:port and enable TLS with `transport http { tls }`", raw)
		default:
			return "", badInput("invalid address %q: unsupported scheme %q", raw, s[:i])
		}
	}
	if strings.ContainsAny(s, "/?#@ \t\r\n") {
		return "", badInput("invalid address %q: want host:port", raw)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", badInput("invalid address %q: want host:port", raw)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return "", badInput("invalid address %q: port must be a number from 1 to 65535", raw)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", badInput("invalid address %q: IPv6 zones are not supported", raw)
		}
		return net.JoinHostPort(ip.Unmap().String(), strconv.Itoa(p)), nil
	}
	if !validHostname(host) {
		return "", badInput("invalid address %q: bad host name %q", raw, host)
	}
	return net.JoinHostPort(strings.ToLower(host), strconv.Itoa(p)), nil
}

// validHostname reports whether h is a DNS host name (underscores allowed).
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Service is one version of a service and its endpoints, as seen in one
// Snapshot. It never changes once published.
type Service struct {
	// Name and Version identify the service version.
	Name, Version string
	// Prefix is the request path prefix, /<name>/<version>.
	Prefix string
	// Endpoints are sorted by address. The slice is shared: never modify it.
	Endpoints []*Endpoint

	// schedule is the weighted round-robin order of endpoint indexes;
	// nil when every weight is equal.
	schedule []int32
	// next is the round-robin position.
	next atomic.Uint64

	// Values boxed once, so that setting placeholders does not allocate.
	nameVal, versionVal, prefixVal any
	unavailableMsg                 any

	retries *atomic.Uint64 // tries after a request's first; kept across snapshots
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

func newService(key ServiceKey, eps []*Endpoint) *Service {
	s := &Service{
		Name:      key.Service,
		Version:   key.Version,
		Prefix:    "/" + key.Service + "/" + key.Version,
		Endpoints: eps,
		schedule:  weightedSchedule(eps),
		retries:   new(atomic.Uint64),
	}
	s.nameVal, s.versionVal, s.prefixVal = s.Name, s.Version, s.Prefix
	s.unavailableMsg = fmt.Sprintf("no available host for service %q version %q", s.Name, s.Version)
	return s
}

// weightedSchedule returns a smooth weighted round-robin order (as nginx
// does it) of indexes into eps, or nil when all weights are equal.
func weightedSchedule(eps []*Endpoint) []int32 {
	equal, total := true, 0
	for _, ep := range eps {
		total += ep.Weight
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
			current[i] += ep.Weight
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		sched = append(sched, int32(best))
	}
	return sched
}

// Snapshot is an immutable view of the registry. Readers load it
// atomically and never lock; writers build a new one (copy-on-write).
type Snapshot struct {
	services map[string]map[string]*Service
	synced   bool
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
	mu   sync.Mutex // serializes writers
	snap atomic.Pointer[Snapshot]
}

// NewTable returns an empty table that is not synced yet.
func NewTable() *Table {
	t := new(Table)
	t.snap.Store(&Snapshot{services: map[string]map[string]*Service{}})
	return t
}

// Snapshot returns the current snapshot.
func (t *Table) Snapshot() *Snapshot { return t.snap.Load() }

// Replace sets the whole registry and marks it synced. A key with an empty
// endpoint list is a known service version with no endpoints.
func (t *Table) Replace(all map[ServiceKey][]Endpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	services := make(map[string]map[string]*Service, len(all))
	for key, eps := range all {
		prev, _ := old.Lookup(key.Service, key.Version)
		svc := buildService(key, eps, prev)
		if services[key.Service] == nil {
			services[key.Service] = map[string]*Service{}
		}
		services[key.Service][key.Version] = svc
	}
	t.snap.Store(&Snapshot{services: services, synced: true})
}

// Set sets the endpoints of one service version, which becomes known even
// with no endpoints.
func (t *Table) Set(key ServiceKey, eps []Endpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	prev, _ := old.Lookup(key.Service, key.Version)
	svc := buildService(key, eps, prev)
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
	t.snap.Store(&Snapshot{services: old.services, synced: synced})
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
	t.snap.Store(&Snapshot{services: services, synced: old.synced})
}

// buildService makes the Service for key from eps, reusing prev's
// endpoints (and so their health) where address and weight are unchanged.
// It returns prev itself when nothing changed. eps must be normalized.
func buildService(key ServiceKey, eps []Endpoint, prev *Service) *Service {
	byAddr := make(map[string]Endpoint, len(eps))
	for _, ep := range eps {
		byAddr[ep.Address] = ep
	}
	out := make([]*Endpoint, 0, len(byAddr))
	same := prev != nil && len(prev.Endpoints) == len(byAddr)
	for _, ep := range byAddr {
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
			ep.health = new(endpointHealth)
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
		svc.retries = prev.retries
	}
	return svc
}

// Backend stores a registry's endpoints and keeps its Table current.
// Backends are modules in the service_registry.backends namespace.
//
// A registry, and so its backend, outlives the config that loaded it while
// later configs use the same backend settings. A backend must therefore
// keep nothing from the caddy.Context it was provisioned with beyond
// Provision itself: each config that starts hands it a BackendEnv with its
// own seeds, storage and logger. It releases its resources in Stop, not
// Cleanup.
type Backend interface {
	// Start loads the stored endpoints, merges them with env's seeds,
	// feeds them to table and keeps it current until Stop. It must
	// return promptly even when the store is unreachable.
	Start(table *Table, env BackendEnv) error
	// Reconfigure takes the env of a config that starts later (a reload).
	// On error nothing changed.
	Reconfigure(env BackendEnv) error
	// Add stores an endpoint; the table holds it once Add returns nil.
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

// BackendEnv is what a running config hands its registry's backend.
type BackendEnv struct {
	// Seeds are the config's service versions and their endpoints.
	Seeds map[ServiceKey][]Endpoint
	// Storage is the config's Caddy storage.
	Storage certmagic.Storage
	// Logger is the service_registry app's logger in that config.
	Logger *zap.Logger
}

// registry is the Registry shared by every config that uses the same
// backend settings; it lives in the registries usage pool.
type registry struct {
	table   *Table
	backend Backend
	health  *healthChecker

	mu      sync.Mutex // guards started and orders start calls
	started bool

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// registries holds the registries of running configs, keyed by backend
// settings, so that state survives config reloads.
var registries = caddy.NewUsagePool()

func newRegistry(backend Backend, logger *zap.Logger) *registry {
	ctx, cancel := context.WithCancel(context.Background())
	r := &registry{
		table:   NewTable(),
		backend: backend,
		cancel:  cancel,
	}
	r.health = newHealthChecker(r.table, logger)
	r.done.Go(func() { r.health.run(ctx) })
	return r
}

// start starts the backend the first time and reconfigures it afterwards,
// and hands the health checker the config's policy and events.
func (r *registry) start(env BackendEnv, policy *healthPolicy, emit eventEmitter) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if env.Logger == nil {
		env.Logger = zap.NewNop()
	}
	if r.started {
		if err := r.backend.Reconfigure(env); err != nil {
			return err
		}
	} else {
		if err := r.backend.Start(r.table, env); err != nil {
			return err
		}
		r.started = true
	}
	r.health.configure(policy, env.Logger, emit)
	return nil
}

// Destruct stops the backend and the health checker; the usage pool calls
// it when the last config using this registry is unloaded.
func (r *registry) Destruct() error {
	r.cancel()
	r.done.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		return nil
	}
	r.started = false
	return r.backend.Stop()
}

func (r *registry) Add(ctx context.Context, key ServiceKey, ep Endpoint) error {
	if err := key.Validate(); err != nil {
		return err
	}
	ep, err := ep.normalize()
	if err != nil {
		return err
	}
	if err := r.backend.Add(ctx, key, ep); err != nil {
		return err
	}
	// added again while a removal drained it: it stays, so it serves
	if added := r.endpoint(key, ep.Address); added != nil {
		added.health.draining.Store(false)
	}
	return nil
}

// endpoint returns the registered endpoint of key at address, or nil.
func (r *registry) endpoint(key ServiceKey, address string) *Endpoint {
	svc, err := r.Lookup(key)
	if err != nil {
		return nil
	}
	return svc.Endpoint(address)
}

// Drain says how removing an endpoint went.
type Drain struct {
	// Drained is true when no request was in flight any more at removal,
	// false when the drain timeout ran out first.
	Drained bool
	// Waited is how long the removal waited for requests in flight.
	Waited time.Duration
	// InFlight is how many requests were still in flight at removal.
	InFlight int
}

// drainPoll is how often a drain looks at the requests in flight.
const drainPoll = 10 * time.Millisecond

func (r *registry) Delete(ctx context.Context, key ServiceKey, address string) (Drain, error) {
	if err := key.Validate(); err != nil {
		return Drain{}, err
	}
	addr, err := ParseAddress(address)
	if err != nil {
		return Drain{}, err
	}
	snap := r.table.Snapshot()
	if !snap.Synced() {
		return Drain{}, fmt.Errorf("deleting %s from %s: %w", addr, key, ErrNotSynced)
	}
	// refuse what the backend would refuse before draining anything
	if c, ok := r.backend.(DeleteChecker); ok {
		if err := c.CheckDelete(key, addr); err != nil {
			return Drain{}, err
		}
	}
	drain := Drain{Drained: true}
	ep := r.endpoint(key, addr)
	if ep != nil {
		// No new requests from now on; wait for those in flight. A second
		// removal of the same endpoint waits too, so that neither removes
		// it before the requests in flight are done.
		ep.health.draining.Store(true)
		drain = r.drain(ctx, key, ep)
	}
	if err := r.backend.Delete(context.WithoutCancel(ctx), key, addr); err != nil {
		if ep != nil {
			ep.health.draining.Store(false) // nothing half-applied
		}
		return Drain{}, err
	}
	// still there (a seed the deleted entry overrode, or added back in
	// the meantime): it serves again
	if still := r.endpoint(key, addr); still != nil {
		still.health.draining.Store(false)
	}
	return drain, nil
}

// drain waits until ep has no request in flight, its drain timeout runs
// out or ctx is done.
func (r *registry) drain(ctx context.Context, key ServiceKey, ep *Endpoint) Drain {
	begin := now()
	ctx, cancel := context.WithTimeout(ctx, time.Duration(r.health.policy.Load().forService(key).DrainTimeout))
	defer cancel()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for ep.InFlight() > 0 {
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		break
	}
	n := ep.InFlight()
	return Drain{Drained: n == 0, Waited: now().Sub(begin), InFlight: n}
}

func (r *registry) Failure(key ServiceKey, address string) {
	svc, err := r.Lookup(key)
	if err != nil {
		return
	}
	if ep := svc.Endpoint(address); ep != nil {
		r.health.failure(svc, ep)
	}
}

func (r *registry) Lookup(key ServiceKey) (*Service, error) {
	return r.table.Snapshot().Lookup(key.Service, key.Version)
}

func (r *registry) Snapshot() *Snapshot { return r.table.Snapshot() }

// App is the service_registry app. It owns the registry that the
// service_version matcher, the service_registry upstream source, the
// service_failover policy and the admin API share. The registry survives
// config reloads as long as the backend settings stay the same.
type App struct {
	// Backend stores the endpoints. Default: memory, which keeps
	// admin-API changes in Caddy's storage.
	BackendRaw json.RawMessage `json:"backend,omitempty" caddy:"namespace=service_registry.backends inline_key=backend"`

	// Services are endpoints seeded from the config. The backend decides
	// how seeds combine with endpoints it stores; see its documentation.
	Services []ServiceConfig `json:"services,omitempty"`

	// HealthChecks configure endpoint health: the entry without service
	// is the default, entries naming a service override it. Active checks
	// are off unless an entry sets path or port.
	HealthChecks []HealthCheck `json:"health_checks,omitempty"`

	registry *registry
	poolKey  string
	env      BackendEnv
	policy   *healthPolicy
	emit     eventEmitter
	logger   *zap.Logger
	prev     *App        // the app that was current when this one started
	stopped  atomic.Bool // Stop was called
}

// ServiceConfig seeds one service version.
type ServiceConfig struct {
	// Name is the service name: 1 to 64 characters of A-Z a-z 0-9 . _ -.
	Name string `json:"name,omitempty"`
	// Version is the version name, with the same rules as Name.
	Version string `json:"version,omitempty"`
	// Endpoints are the version's hosts. A version listed with no
	// endpoints is known: its requests get 503 until one is added.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "service_registry",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision validates the seeds and attaches the app to its shared registry.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	seeds, err := seedMap(a.Services)
	if err != nil {
		return err
	}
	a.env = BackendEnv{Seeds: seeds, Storage: ctx.Storage(), Logger: a.logger}
	if a.policy, err = newHealthPolicy(a.HealthChecks); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	eventsApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading events app: %w", err)
	}
	events := eventsApp.(*caddyevents.App)
	a.emit = func(name string, data map[string]any) { events.Emit(ctx, name, data) }

	if a.BackendRaw == nil {
		a.BackendRaw = json.RawMessage(`{"backend":"memory"}`)
	}
	key, err := poolKey(a.BackendRaw)
	if err != nil {
		return fmt.Errorf("reading backend settings: %w", err)
	}
	val, _, err := registries.LoadOrNew(key, func() (caddy.Destructor, error) {
		mod, err := ctx.LoadModule(a, "BackendRaw")
		if err != nil {
			return nil, fmt.Errorf("loading backend: %w", err)
		}
		backend, ok := mod.(Backend)
		if !ok {
			return nil, fmt.Errorf("module %T is not a service registry backend", mod)
		}
		return newRegistry(backend, a.logger), nil
	})
	if err != nil {
		return err
	}
	a.poolKey = key
	a.registry = val.(*registry)
	return nil
}

// seedMap validates the configured services and merges repeated ones.
func seedMap(services []ServiceConfig) (map[ServiceKey][]Endpoint, error) {
	seeds := make(map[ServiceKey][]Endpoint, len(services))
	for _, sc := range services {
		key := ServiceKey{sc.Name, sc.Version}
		if err := key.Validate(); err != nil {
			return nil, fmt.Errorf("service %q version %q: %w", sc.Name, sc.Version, err)
		}
		eps := seeds[key]
		if eps == nil {
			eps = []Endpoint{}
		}
		for _, ep := range sc.Endpoints {
			norm, err := ep.normalize()
			if err != nil {
				return nil, fmt.Errorf("service %s: %w", key, err)
			}
			if norm.TTL != 0 {
				return nil, fmt.Errorf("service %s: endpoint %s: a seed cannot have a ttl", key, norm.Address)
			}
			eps = append(eps, norm)
		}
		seeds[key] = eps
	}
	return seeds, nil
}

// poolKey identifies a registry by its compacted backend settings.
func poolKey(raw json.RawMessage) (string, error) {
	var buf strings.Builder
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	b, err := json.Marshal(v) // maps marshal with sorted keys
	if err != nil {
		return "", err
	}
	buf.WriteString("service_registry:")
	buf.Write(b)
	return buf.String(), nil
}

// current is the app of the running config, for the admin API.
var current atomic.Pointer[App]

// Start starts the backend, or hands it this config's seeds, storage and
// logger after a reload, and makes this app the one the admin API serves.
func (a *App) Start() error {
	if err := a.registry.start(a.env, a.policy, a.emit); err != nil {
		return fmt.Errorf("starting service registry backend: %w", err)
	}
	a.prev = current.Swap(a)
	return nil
}

// Stop detaches the app from the admin API. If this config failed to
// start while the previous one keeps running, the previous app gets the
// admin API back and its seeds go back into a shared registry. The
// registry itself stops when no config uses it any more (Cleanup).
func (a *App) Stop() error {
	a.stopped.Store(true)
	prev := a.prev
	if prev == nil || prev.stopped.Load() {
		current.CompareAndSwap(a, nil)
		return nil
	}
	if !current.CompareAndSwap(a, prev) {
		return nil
	}
	if prev.registry == a.registry {
		if err := a.registry.start(prev.env, prev.policy, prev.emit); err != nil {
			return fmt.Errorf("restoring the running config's seeds: %w", err)
		}
	}
	return nil
}

// Cleanup releases the app's hold on its registry.
func (a *App) Cleanup() error {
	if a.poolKey == "" {
		return nil
	}
	_, err := registries.Delete(a.poolKey)
	a.poolKey = ""
	return err
}

// Registry returns the app's registry.
func (a *App) Registry() Registry { return a.registry }

// registryApp loads the service_registry app of ctx's config.
func registryApp(ctx caddy.Context) (*App, error) {
	app, err := ctx.App("service_registry")
	if err != nil {
		return nil, fmt.Errorf("loading service_registry app: %w", err)
	}
	return app.(*App), nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*registry)(nil)
	_ Registry           = (*registry)(nil)
)
