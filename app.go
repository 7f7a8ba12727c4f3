package svcreg

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	// The backends register their modules: one --with brings them all.
	_ "github.com/svcreg/caddy-svcreg/backends/consul"
	_ "github.com/svcreg/caddy-svcreg/backends/etcd"
	_ "github.com/svcreg/caddy-svcreg/backends/memory"
	_ "github.com/svcreg/caddy-svcreg/backends/zookeeper"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

func init() {
	caddy.RegisterModule(new(App))
}

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
	HealthChecks []registry.HealthCheck `json:"health_checks,omitempty"`

	// Traffic are traffic policies by service: how requests that name no
	// version, or an alias, choose one (see traffic.Policy). They
	// are seeds: a policy set through the admin API replaces the
	// service's until it is deleted there.
	Traffic map[string]traffic.Policy `json:"traffic,omitempty"`

	// RecoveryGrace is how long endpoints that the backend's store
	// dropped while it was out of reach, or within this time after it
	// came back, keep serving while they answer. A store that was frozen
	// or cut off often comes back having expired every session or lease
	// it could not renew meanwhile (ZooKeeper's ephemeral nodes, etcd's
	// leases, Consul's TTL checks); the services register again within a
	// second or so, and until then their requests would get 404. Once the
	// store has been back this long, the registry routes exactly what it
	// holds. Negative: off. Default: 2s.
	RecoveryGrace caddy.Duration `json:"recovery_grace,omitempty"`

	reg     *pooledRegistry
	poolKey string
	env     registry.BackendEnv
	policy  *registry.HealthPolicy
	emit    registry.EventFunc
	logger  *zap.Logger
	// prev is the app that was current when this one started, while this
	// one's config may still fail to start and hand the admin API back;
	// cleared once that config is running (see Cleanup), so that no chain
	// of old apps, and of the configs they hold, stays reachable.
	prev    atomic.Pointer[App]
	stopped atomic.Bool // Stop was called

	// stopLog ends the goroutine that logs the stored traffic policies
	// once the backend has synced; logDone is closed when it has ended.
	stopLog context.CancelFunc
	logDone chan struct{}
}

// trafficSource says where the traffic policy t of the running registry
// comes from: "config" when it is the config's, "stored" when it was set
// through the admin API (PUT) and stored by the backend, in which case it
// wins over the config's until it is deleted (DELETE, or
// `caddy service-registry traffic <service> --delete`).
func (a *App) trafficSource(t *traffic.Rules) string {
	p, ok := a.Traffic[t.Service()]
	if !ok {
		return "stored"
	}
	c, err := p.Compile(t.Service(), nil) // fills in the defaults
	if err != nil || !samePolicy(c.Policy(), t.Policy()) {
		return "stored"
	}
	return "config"
}

func samePolicy(a, b traffic.Policy) bool {
	return maps.Equal(a.Split, b.Split) && maps.Equal(a.Aliases, b.Aliases) && a.Header == b.Header &&
		a.Cookie == b.Cookie && a.Sticky == b.Sticky && a.StickyHeader == b.StickyHeader && a.Fallback == b.Fallback
}

// logStoredTraffic says, once the backend has synced, which services
// route by a traffic policy set through the admin API rather than the
// config's: a stored policy survives restarts and wins over the config.
func (a *App) logStoredTraffic(ctx context.Context) {
	defer close(a.logDone)
	if !a.reg.WaitSynced(ctx) {
		return
	}
	for _, t := range a.reg.Snapshot().Policies() {
		if a.trafficSource(t) != "stored" {
			continue
		}
		if _, inConfig := a.Traffic[t.Service()]; inConfig {
			a.logger.Warn("a traffic policy set through the admin API overrides the config's; delete it to use the config's",
				zap.String("service", t.Service()), zap.String("source", "stored"))
		} else {
			a.logger.Info("traffic policy set through the admin API, stored by the backend",
				zap.String("service", t.Service()), zap.String("source", "stored"))
		}
	}
}

// checkSeededVersions refuses a policy naming versions the config does
// not seed, when it seeds the service: a typo there would route nowhere.
// (A service the config does not seed gets its versions from the backend.)
func checkSeededVersions(service string, p traffic.Policy, seeds map[registry.ServiceKey][]registry.Endpoint) error {
	seeded := false
	for key := range seeds {
		if key.Service == service {
			seeded = true
			break
		}
	}
	if !seeded {
		return nil
	}
	_, err := p.Compile(service, func(v string) bool {
		_, ok := seeds[registry.ServiceKey{Service: service, Version: v}]
		return ok
	})
	return err
}

// emitTraffic emits the traffic_changed event: a service's traffic policy
// was set or deleted through the admin API.
func (a *App) emitTraffic(service, change string) {
	if a.emit != nil {
		a.emit("traffic_changed", map[string]any{"service": service, "change": change})
	}
	a.logger.Info("traffic policy changed", zap.String("service", service), zap.String("change", change))
}

// ServiceConfig seeds one service version.
type ServiceConfig struct {
	// Name is the service name: 1 to 64 characters of A-Z a-z 0-9 . _ -.
	Name string `json:"name,omitempty"`
	// Version is the version name, with the same rules as Name.
	Version string `json:"version,omitempty"`
	// Endpoints are the version's hosts. A version listed with no
	// endpoints is known: its requests get 503 until one is added.
	Endpoints []registry.Endpoint `json:"endpoints,omitempty"`
}

// pooledRegistry is a registry in the usage pool, shared by every config
// with the same backend settings; the pool stops it when the last of
// those configs is unloaded.
type pooledRegistry struct{ *registry.Registry }

// Destruct stops the registry.
func (p *pooledRegistry) Destruct() error { return p.Stop() }

// registries holds the registries of running configs, keyed by backend
// settings, so that state survives config reloads.
var registries = caddy.NewUsagePool()

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
	for service, p := range a.Traffic {
		// versions may come from the backend later: only the policy's
		// shape is checked here
		if _, err := p.Compile(service, nil); err != nil {
			return err
		}
		if err := checkSeededVersions(service, p, seeds); err != nil {
			return err
		}
	}
	a.env = registry.BackendEnv{Seeds: seeds, Storage: ctx.Storage(), Logger: a.logger, Traffic: a.Traffic,
		RecoveryGrace: time.Duration(a.RecoveryGrace)}
	repl := caddy.NewReplacer()
	for i, hc := range a.HealthChecks {
		if hc.TLS != nil { // file names and server name may be placeholders
			t := *hc.TLS
			t.CA, t.ServerName = repl.ReplaceKnown(t.CA, ""), repl.ReplaceKnown(t.ServerName, "")
			a.HealthChecks[i].TLS = &t
		}
	}
	if a.policy, err = registry.NewHealthPolicy(a.HealthChecks); err != nil {
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
	a.emit = statusEvents.recorder(a.emit) // ejections and readmissions for the status page

	if a.BackendRaw == nil {
		a.BackendRaw = json.RawMessage(`{"backend":"memory"}`)
	}
	key, err := poolKey(a.BackendRaw)
	if err != nil {
		return fmt.Errorf("reading backend settings: %w", err)
	}
	// Loading the backend reads its settings (placeholders, files) but
	// starts nothing: the registry it joins decides whether it runs.
	mod, err := ctx.LoadModule(a, "BackendRaw")
	if err != nil {
		return fmt.Errorf("loading backend: %w", err)
	}
	backend, ok := mod.(registry.Backend)
	if !ok {
		return fmt.Errorf("module %T is not a service registry backend", mod)
	}
	if f, ok := backend.(interface{ Fingerprint() string }); ok {
		// settings as read, so that a rotated credential or file makes
		// a new backend that reads it
		key += " " + f.Fingerprint()
	}
	val, loaded, err := registries.LoadOrNew(key, func() (caddy.Destructor, error) {
		return &pooledRegistry{registry.New(backend, registry.Options{Logger: a.logger})}, nil
	})
	if err != nil {
		return err
	}
	a.poolKey = key
	a.reg = val.(*pooledRegistry)
	if prev := current.Load(); !loaded && prev != nil && prev.reg != a.reg {
		a.handOver(prev)
	}
	return nil
}

// handoverWait bounds how long a reload onto new backend settings waits
// for the new backend to sync before it goes on (and the new config's
// registry-routed requests get 503 until it does).
var handoverWait = 10 * time.Second

// handOver starts a new registry while prev's runs, so that the new config
// routes nothing before its backend has synced: it waits for that (up to
// handoverWait) before the config goes on to start, while the running
// config keeps serving. (When prev's config is retired, the new backend
// adopts what prev's kept registered: see Cleanup.)
func (a *App) handOver(prev *App) {
	if err := a.reg.Start(a.env, a.policy, a.emit); err != nil {
		return // App.Start tries again and reports it
	}
	ctx, cancel := context.WithTimeout(context.Background(), handoverWait)
	defer cancel()
	if a.reg.WaitSynced(ctx) {
		a.logger.Info("new registry backend synced; taking over from the previous config's")
	} else {
		a.logger.Warn("new registry backend did not sync in time; its requests get 503 until it does",
			zap.Duration("waited", handoverWait))
	}
}

// seedMap validates the configured services and merges repeated ones.
func seedMap(services []ServiceConfig) (map[registry.ServiceKey][]registry.Endpoint, error) {
	seeds := make(map[registry.ServiceKey][]registry.Endpoint, len(services))
	for _, sc := range services {
		key := registry.ServiceKey{Service: sc.Name, Version: sc.Version}
		if err := key.Validate(); err != nil {
			return nil, fmt.Errorf("service %q version %q: %w", sc.Name, sc.Version, err)
		}
		eps := seeds[key]
		if eps == nil {
			eps = []registry.Endpoint{}
		}
		for _, ep := range sc.Endpoints {
			norm, err := ep.Normalize()
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
	if err := a.reg.Start(a.env, a.policy, a.emit); err != nil {
		return fmt.Errorf("starting service registry backend: %w", err)
	}
	a.prev.Store(current.Swap(a))
	ctx, cancel := context.WithCancel(context.Background())
	a.stopLog, a.logDone = cancel, make(chan struct{})
	go a.logStoredTraffic(ctx)
	return nil
}

// Stop detaches the app from the admin API. If this config failed to
// start while the previous one keeps running, the previous app gets the
// admin API back and its seeds go back into a shared registry. The
// registry itself stops when no config uses it any more (Cleanup).
func (a *App) Stop() error {
	a.stopped.Store(true)
	if a.stopLog != nil {
		a.stopLog()
		<-a.logDone
	}
	prev := a.prev.Swap(nil)
	if prev == nil || prev.stopped.Load() {
		current.CompareAndSwap(a, nil)
		return nil
	}
	if !current.CompareAndSwap(a, prev) {
		return nil
	}
	if prev.reg == a.reg {
		if err := a.reg.Start(prev.env, prev.policy, prev.emit); err != nil {
			return fmt.Errorf("restoring the running config's seeds: %w", err)
		}
	}
	return nil
}

// Cleanup releases the app's hold on its registry. Caddy cleans up a
// config once the one replacing it runs, so that one no longer needs to
// hand the admin API back to this app: it forgets it.
func (a *App) Cleanup() error {
	if next := current.Load(); next != nil {
		next.prev.CompareAndSwap(a, nil)
	}
	if a.poolKey == "" {
		return nil
	}
	if next := current.Load(); next != nil && next != a && next.reg != a.reg {
		if refs, _ := registries.References(a.poolKey); refs == 1 {
			// This registry stops now: the running config's takes over
			// the endpoints it keeps registered (TTL endpoints added
			// through the admin API), before their leases run out.
			a.reg.HandOver(next.reg.Registry)
		}
	}
	_, err := registries.Delete(a.poolKey)
	a.poolKey = ""
	return err
}

// Registry returns the app's registry.
func (a *App) Registry() *registry.Registry { return a.reg.Registry }

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
	_ caddy.Destructor   = (*pooledRegistry)(nil)
)
