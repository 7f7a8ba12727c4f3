// Package consul is the service_registry.backends.consul backend: the
// health-passing instances of the services in Consul's catalog, followed
// through blocking queries, so that no Consul call is made on the request
// path.
package consul

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
)

func init() {
	caddy.RegisterModule(new(Backend))
}

// Timing of the consul backend.
var (
	consulRetryMin    = 100 * time.Millisecond // first wait after a failed query
	consulRetryMax    = 5 * time.Second        // longest wait between failed queries
	consulMinInterval = 100 * time.Millisecond // shortest time from one query of a watch to the next
	consulSlack       = 10 * time.Second       // how much longer than its wait a query may take
)

// Defaults of the consul backend.
const (
	defaultAddress    = "127.0.0.1:8500"
	defaultVersionTag = "version="
	defaultWait       = caddy.Duration(time.Minute)
	minWait           = time.Second
	maxWait           = 10 * time.Minute // Consul's own limit
)

// Backend routes to the instances that Consul's catalog holds and whose
// health checks all pass: Consul is the source of truth, and the admin
// API cannot add or delete endpoints (register services with Consul).
//
// Each instance of a service whose health checks all pass is an
// endpoint of that service, at the version its tag version=<version>
// names (the tag's prefix is version_tag), or its service metadata under
// version_meta, if set; at its service address (the node's address when
// the service has none) and port; with the weight of
// Service.Weights.Passing (1 to 100). An instance with several version
// tags serves each of those versions. A version is known as long as
// Consul holds an instance of it, whatever its health: when none passes,
// its requests get 503 (no available host); once none is registered, 404.
// An instance without a valid version or address is skipped with one
// warning naming it; a service whose name is not a valid service name,
// with one warning naming the service. The consul service itself is left
// out unless services names it.
//
// One blocking query on the catalog learns the services; one blocking
// query per service (/v1/health/service/<name>) follows its instances
// and their health. A query that fails,
// or whose index goes backwards (Consul restored or replaced), is sent
// again without an index: everything it reads is read afresh. Seeds from
// the config are this instance's own: they are merged with what Consul
// holds.
//
// Faults: if Consul is unreachable at start, Caddy still starts and
// registry-routed requests get 503 until the first sync (the catalog and
// every service read once), retried with backoff; if it is lost later,
// routing keeps the last snapshot; when it is back, everything is read
// again. Each change of reachability is logged once.
type Backend struct {
	// Address is the Consul agent's HTTP API: host:port, or a URL such as
	// https://consul.example:8501. Placeholders such as
	// {env.CONSUL_ADDR} are expanded. Default: 127.0.0.1:8500.
	Address string `json:"address,omitempty"`

	// Token is the ACL token sent with every query, in the X-Consul-Token
	// header; it needs service:read and node:read on what is routed.
	// Placeholders are expanded, so {env.CONSUL_TOKEN} keeps it out of
	// the config; one that expands to nothing is a config error. Never
	// logged. Default: none (as for Consul's own tools, the
	// CONSUL_HTTP_TOKEN environment variable if set).
	Token string `json:"token,omitempty"`

	// Datacenter is the Consul datacenter to read. Placeholders are
	// expanded. Default: the agent's own.
	Datacenter string `json:"datacenter,omitempty"`

	// Services are the Consul services to route to. Default: every
	// service in the catalog, except consul itself.
	Services []string `json:"services,omitempty"`

	// VersionTag is the prefix of the tag that gives an instance's
	// version: with the default, the tag version=v1 gives version v1.
	// Default: version=.
	VersionTag string `json:"version_tag,omitempty"`

	// VersionMeta, if set, is the service metadata key (Service.Meta)
	// that gives an instance's version; where an instance has it, it
	// takes precedence over its tags. Default: none, tags only.
	VersionMeta string `json:"version_meta,omitempty"`

	// Wait is how long a blocking query waits for a change before
	// Consul answers anyway, from 1s to 10m; each query waits a random
	// amount up to a quarter less, so that queries spread out. Default: 1m.
	Wait caddy.Duration `json:"wait,omitempty"`

	logger      atomic.Pointer[zap.Logger] // the latest config's
	client      *api.Client
	transport   *http.Transport // the client's, closed at Stop
	address     string          // as expanded, for logs
	fingerprint string          // of the settings as read

	done sync.WaitGroup // every goroutine of the backend

	mu           sync.Mutex         // guards everything below
	ctx          context.Context    // ends at Stop
	cancel       context.CancelFunc // ends ctx
	stopped      bool
	table        *registry.Table
	seeds        map[registry.ServiceKey][]registry.Endpoint
	trafficSeeds map[string]registry.TrafficPolicy
	stored       map[registry.ServiceKey]map[string]registry.Change // what Consul holds: the passing instances of each known version
	watches      map[string]*watch                                  // by Consul service name
	listed       bool                                               // the catalog has answered
	synced       bool
	reachable    bool
	badNames     map[string]bool // service names warned about
}

// watch follows the instances of one Consul service.
type watch struct {
	service  string
	cancel   context.CancelFunc
	answered bool              // its first answer has been applied
	versions []string          // the versions it holds in Backend.stored, known even without endpoints
	warned   map[string]string // skipped instance → why, as logged
	failing  bool              // its last query failed, and that was logged
}

// CaddyModule returns the Caddy module information.
func (*Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "service_registry.backends.consul",
		New: func() caddy.Module { return new(Backend) },
	}
}

// Provision expands placeholders, sets defaults and makes the client; it
// does not contact Consul.
func (c *Backend) Provision(ctx caddy.Context) error {
	c.logger.Store(ctx.Logger())
	repl := caddy.NewReplacer()
	expand := func(name, value string) (string, error) {
		out := strings.TrimSpace(repl.ReplaceKnown(value, ""))
		if value != "" && out == "" {
			// a variable not set where Caddy runs
			return "", fmt.Errorf("consul backend: %s %q is empty once expanded", name, value)
		}
		return out, nil
	}
	if c.Address == "" {
		c.Address = defaultAddress
	}
	address, err := expand("address", c.Address)
	if err != nil {
		return err
	}
	if err := checkAddress(address); err != nil {
		return fmt.Errorf("consul backend: %w", err)
	}
	token, err := expand("token", c.Token)
	if err != nil {
		return err
	}
	datacenter, err := expand("datacenter", c.Datacenter)
	if err != nil {
		return err
	}
	if c.VersionTag == "" {
		c.VersionTag = defaultVersionTag
	}
	if c.Wait == 0 {
		c.Wait = defaultWait
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 64 // a watch's connection waits idle between two of its queries
	client, err := api.NewClient(&api.Config{Address: address, Token: token, Datacenter: datacenter, Transport: transport})
	if err != nil {
		return fmt.Errorf("consul backend: creating client: %w", err)
	}
	c.client, c.transport, c.address = client, transport, address
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %q %q %q %d\n", address, token, datacenter, c.Services, c.VersionTag, c.VersionMeta, c.Wait)
	c.fingerprint = hex.EncodeToString(h.Sum(nil))
	return nil
}

// checkAddress checks that address is host:port or an http or https URL.
func checkAddress(address string) error {
	if scheme, _, ok := strings.Cut(address, "://"); ok {
		u, err := url.Parse(address)
		if err == nil && u.User != nil {
			return errors.New("address: credentials in the URL are not supported (and would show in logs); use token")
		}
		if err != nil || (scheme != "http" && scheme != "https") || u.Host == "" || u.RawQuery != "" {
			return fmt.Errorf("address %q: want host:port or an http:// or https:// URL", address)
		}
		return nil
	}
	if _, port, err := net.SplitHostPort(address); err != nil || port == "" {
		return fmt.Errorf("address %q: want host:port or an http:// or https:// URL", address)
	}
	return nil
}

// Validate checks the settings.
func (c *Backend) Validate() error {
	if w := time.Duration(c.Wait); w < minWait || w > maxWait {
		return fmt.Errorf("consul backend: wait %v: want a duration from 1s to 10m", w)
	}
	for i, name := range c.Services {
		if err := registry.CheckName("service", name); err != nil {
			return fmt.Errorf("consul backend: services: %w", err)
		}
		if slices.Contains(c.Services[:i], name) {
			return fmt.Errorf("consul backend: services: %q listed twice", name)
		}
	}
	if c.VersionTag == "" || strings.TrimSpace(c.VersionTag) != c.VersionTag {
		return fmt.Errorf("consul backend: version_tag %q: want a tag prefix without spaces around it", c.VersionTag)
	}
	return nil
}

// Fingerprint identifies the backend's settings as read when it was
// provisioned, placeholders expanded. Two configs whose backends have the
// same fingerprint share one registry; a rotated token gives another.
func (c *Backend) Fingerprint() string { return c.fingerprint }

// log returns the logger of the config that started last.
func (c *Backend) log() *zap.Logger { return c.logger.Load() }

// safely runs f, turning a panic into a logged error, so that a bug in
// handling one answer does not end a goroutine the registry depends on:
// the caller goes on as after any other failure.
func (c *Backend) safely(what string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic %s: %v", what, p)
			c.log().Error("panic "+what, zap.String("backend", "consul"), zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	return f()
}

// Start begins following Consul in the background; it never waits for it.
func (c *Backend) Start(table *registry.Table, env registry.BackendEnv) error {
	c.logger.Store(env.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		cancel()
		return errors.New("consul backend: started after Stop")
	}
	c.ctx, c.cancel = ctx, cancel
	c.table, c.seeds, c.trafficSeeds = table, env.Seeds, env.Traffic
	c.stored = map[registry.ServiceKey]map[string]registry.Change{}
	c.watches = map[string]*watch{}
	c.badNames = map[string]bool{}
	c.reachable = true // until shown otherwise, so that a first failure is logged
	c.table.SetTraffic(registry.MergeTraffic(c.trafficSeeds, nil, nil))
	c.done.Go(func() { c.watchCatalog(ctx) })
	return nil
}

// Reconfigure takes a newer config's seeds, traffic policies and logger,
// and republishes the registry once synced.
func (c *Backend) Reconfigure(env registry.BackendEnv) error {
	c.logger.Store(env.Logger)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seeds, c.trafficSeeds = env.Seeds, env.Traffic
	c.table.SetTraffic(registry.MergeTraffic(c.trafficSeeds, nil, nil))
	if c.synced {
		c.table.Replace(c.merged())
	}
	return nil
}

// Stop ends every query and goroutine, and closes the idle connections.
func (c *Backend) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	c.done.Wait()
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
	return nil
}

// errReadOnly is what the admin API's writes get.
var errReadOnly = registry.Invalidf("the consul backend is read-only: register services with Consul itself (its agent's /v1/agent/service/register)")

// Add refuses: Consul is the source of truth.
func (c *Backend) Add(_ context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	return fmt.Errorf("adding %s to %s: %w", ep.Address, key, errReadOnly)
}

// Delete refuses: Consul is the source of truth.
func (c *Backend) Delete(_ context.Context, key registry.ServiceKey, address string) error {
	return c.CheckDelete(key, address)
}

// CheckDelete refuses every removal, so that the registry does not drain
// an endpoint for nothing.
func (c *Backend) CheckDelete(key registry.ServiceKey, address string) error {
	return fmt.Errorf("deleting %s from %s: %w", address, key, errReadOnly)
}

// query returns the options of a blocking query from index.
func query(ctx context.Context, index uint64, wait time.Duration) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
}

// nextIndex returns the index to send after an answer at index got to a
// query sent with index sent, by Consul's rules for blocking queries: if
// the index went backwards, start again from 0 (a full read that does not
// wait); never send 0 after an answer, which would not wait either.
func nextIndex(sent, got uint64) uint64 {
	if got < sent {
		return 0
	}
	return max(got, 1)
}

// jitter returns d less a random amount of up to a quarter of it.
func jitter(d time.Duration) time.Duration {
	return d - rand.N(d/4+1)
}

// sleep waits d, and reports whether ctx is still going.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// poll sends blocking queries with read until ctx ends. read sends index
// and wait and returns the index of the answer, from which nextIndex
// makes the next one. After a failure, which failed hears of unless ctx
// has ended, poll waits (backoff, with jitter) and reads everything again
// (index 0).
func (c *Backend) poll(ctx context.Context, what string, read func(ctx context.Context, index uint64, wait time.Duration) (uint64, error), failed func(error)) {
	var index uint64
	retry := consulRetryMin
	for ctx.Err() == nil {
		begin := time.Now()
		wait := jitter(time.Duration(c.Wait))
		// Consul may add up to wait/16 to the wait
		reqCtx, cancel := context.WithTimeout(ctx, wait+wait/16+consulSlack)
		var got uint64
		err := c.safely("reading "+what, func() (err error) {
			got, err = read(reqCtx, index, wait)
			return err
		})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failed(err)
			index = 0
			if !sleep(ctx, jitter(retry)) {
				return
			}
			retry = min(2*retry, consulRetryMax)
			continue
		}
		retry = consulRetryMin
		index = nextIndex(index, got)
		// a query that answers at once every time (a bug, or changes
		// faster than that) does not spin
		if !sleep(ctx, time.Until(begin.Add(consulMinInterval))) {
			return
		}
	}
}

// watchCatalog follows the catalog's list of services until ctx ends.
func (c *Backend) watchCatalog(ctx context.Context) {
	c.poll(ctx, "the consul catalog", func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		services, meta, err := c.client.Catalog().Services(query(ctx, index, wait))
		if err != nil {
			return 0, err
		}
		c.setReachable(true, nil)
		c.applyCatalog(ctx, services, meta.LastIndex < index)
		return meta.LastIndex, nil
	}, func(err error) { c.setReachable(false, err) })
}

// applyCatalog starts a watch for each new service and ends those of the
// services gone. If the catalog's index went backwards (restart), every
// watch starts again with a full read.
func (c *Backend) applyCatalog(ctx context.Context, services map[string][]string, backwards bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	want := map[string]bool{}
	for name := range services {
		switch {
		case len(c.Services) > 0 && !slices.Contains(c.Services, name):
		case len(c.Services) == 0 && name == "consul":
		case !registry.ValidName(name):
			if !c.badNames[name] {
				c.badNames[name] = true
				c.log().Warn("skipping consul service", zap.String("backend", "consul"), zap.String("service", name),
					zap.String("reason", registry.CheckName("service", name).Error()))
			}
		default:
			want[name] = true
		}
	}
	if backwards && c.listed {
		c.log().Warn("consul's index went backwards (restored, or another cluster); reading everything again",
			zap.String("backend", "consul"))
	}
	for name, w := range c.watches {
		switch {
		case !want[name]:
			w.cancel()
			delete(c.watches, name)
			c.forget(w)
		case backwards:
			w.cancel()
			c.startWatch(name, w)
		}
	}
	for name := range want {
		if c.watches[name] == nil {
			c.startWatch(name, nil)
		}
	}
	c.listed = true
	c.checkSynced()
}

// startWatch starts following a service, taking over what prev held, if
// not nil. The caller holds c.mu, and the catalog watch runs.
func (c *Backend) startWatch(service string, prev *watch) {
	ctx, cancel := context.WithCancel(c.ctx)
	w := &watch{service: service, cancel: cancel, warned: map[string]string{}}
	if prev != nil {
		w.versions, w.warned = prev.versions, prev.warned
	}
	c.watches[service] = w
	c.done.Go(func() {
		defer cancel()
		c.poll(ctx, "consul service "+service, func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			// every instance, whatever its health: a version whose
			// instances all fail is known, without endpoints (503)
			entries, meta, err := c.client.Health().Service(service, "", false, query(ctx, index, wait))
			if err != nil {
				return 0, err
			}
			c.applyService(w, entries)
			return meta.LastIndex, nil
		}, func(err error) { c.serviceFailed(w, err) })
	})
}

// forget removes what a watch held from the registry. The caller holds c.mu.
func (c *Backend) forget(w *watch) {
	for _, v := range w.versions {
		key := registry.ServiceKey{Service: w.service, Version: v}
		delete(c.stored, key)
		c.publish(key)
	}
	w.versions = nil
}

// publish hands the table key's endpoints, its seeds merged with what
// Consul holds, once synced. The caller holds c.mu.
func (c *Backend) publish(key registry.ServiceKey) {
	if !c.synced {
		return
	}
	seeds, seeded := c.seeds[key]
	changes, registered := c.stored[key]
	if eps, known := registry.Merge(seeds, seeded, changes); known || registered {
		c.table.Set(key, eps)
	} else {
		c.table.Remove(key)
	}
}

// merged returns the seeds merged with what Consul holds, every version
// Consul knows included. The caller holds c.mu.
func (c *Backend) merged() map[registry.ServiceKey][]registry.Endpoint {
	all := registry.MergeAll(c.seeds, c.stored)
	for key := range c.stored {
		if _, known := all[key]; !known {
			all[key] = []registry.Endpoint{} // no instance passes
		}
	}
	return all
}

// checkSynced publishes the whole registry once the catalog and every
// service it lists have answered. The caller holds c.mu.
func (c *Backend) checkSynced() {
	if c.synced || !c.listed {
		return
	}
	for _, w := range c.watches {
		if !w.answered {
			return
		}
	}
	c.synced = true
	c.table.Replace(c.merged())
	c.log().Info("consul registry synced", zap.String("backend", "consul"), zap.String("address", c.address),
		zap.Int("services", len(c.watches)))
}

// applyService replaces what w holds with the instances of its latest
// answer, unless w has ended meanwhile: the passing ones as endpoints,
// the others only as making their versions known.
func (c *Backend) applyService(w *watch, entries []*api.ServiceEntry) {
	byVersion := map[string]map[string]registry.Change{}
	warned := map[string]string{}
	for _, entry := range entries {
		versions, ep, err := c.instance(entry)
		if err != nil {
			id := instanceName(entry)
			warned[id] = err.Error()
			if w.warned[id] != err.Error() {
				c.log().Warn("skipping consul instance", zap.String("backend", "consul"), zap.String("service", w.service),
					zap.String("instance", id), zap.String("reason", err.Error()))
			}
			continue
		}
		passing := entry.Checks.AggregatedStatus() == api.HealthPassing
		for _, v := range versions {
			if byVersion[v] == nil {
				byVersion[v] = map[string]registry.Change{}
			}
			if _, dup := byVersion[v][ep.Address]; passing && !dup { // the same host registered twice: the first counts
				byVersion[v][ep.Address] = registry.Change{Endpoint: ep}
			}
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watches[w.service] != w {
		return // ended: the catalog dropped the service or restarted the watch
	}
	w.warned = warned
	if w.failing {
		w.failing = false
		c.log().Info("consul service readable again", zap.String("backend", "consul"), zap.String("service", w.service))
	}
	old := w.versions
	w.versions = make([]string, 0, len(byVersion))
	for v, eps := range byVersion {
		c.stored[registry.ServiceKey{Service: w.service, Version: v}] = eps
		w.versions = append(w.versions, v)
	}
	for _, v := range old {
		if byVersion[v] == nil {
			delete(c.stored, registry.ServiceKey{Service: w.service, Version: v})
		}
	}
	for _, v := range append(old, w.versions...) {
		c.publish(registry.ServiceKey{Service: w.service, Version: v})
	}
	w.answered = true
	c.checkSynced()
}

// serviceFailed logs a failed query of a service that Consul refused
// (once until it succeeds again). A Consul out of reach shows in the
// catalog's queries: that one is logged there.
func (c *Backend) serviceFailed(w *watch, err error) {
	var status api.StatusError
	if !errors.As(err, &status) {
		c.log().Debug("consul service query failed; retrying", zap.String("backend", "consul"), zap.String("service", w.service), zap.Error(err))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.failing || c.watches[w.service] != w {
		return
	}
	w.failing = true
	c.log().Warn("consul refused the query of a service; its endpoints stay as they were, retrying",
		zap.String("backend", "consul"), zap.String("service", w.service), zap.Error(err))
}

// instanceName names an instance in logs: <node>/<service ID>.
func instanceName(entry *api.ServiceEntry) string {
	node := ""
	if entry.Node != nil {
		node = entry.Node.Node
	}
	id := ""
	if entry.Service != nil {
		id = entry.Service.ID
	}
	return node + "/" + id
}

// instance reads the versions and the endpoint of a Consul instance, or
// says why it is skipped.
func (c *Backend) instance(entry *api.ServiceEntry) ([]string, registry.Endpoint, error) {
	svc := entry.Service
	if svc == nil {
		return nil, registry.Endpoint{}, errors.New("no service in the answer")
	}
	host := svc.Address
	if host == "" && entry.Node != nil {
		host = entry.Node.Address
	}
	addr, err := registry.ParseAddress(net.JoinHostPort(host, strconv.Itoa(svc.Port)))
	if err != nil {
		return nil, registry.Endpoint{}, err
	}
	var versions []string
	if v := svc.Meta[c.VersionMeta]; c.VersionMeta != "" && v != "" {
		versions = []string{v}
	} else {
		for _, tag := range svc.Tags {
			if v, ok := strings.CutPrefix(tag, c.VersionTag); ok && !slices.Contains(versions, v) {
				versions = append(versions, v)
			}
		}
	}
	if len(versions) == 0 {
		why := fmt.Sprintf("no version: want a tag %s<version>", c.VersionTag)
		if c.VersionMeta != "" {
			why += fmt.Sprintf(" or service metadata %s", c.VersionMeta)
		}
		return nil, registry.Endpoint{}, errors.New(why)
	}
	for _, v := range versions {
		if err := registry.CheckName("version", v); err != nil {
			return nil, registry.Endpoint{}, err
		}
	}
	weight := min(max(svc.Weights.Passing, 1), registry.MaxWeight)
	return versions, registry.Endpoint{Address: addr, Weight: weight}, nil
}

// setReachable logs a change of Consul's reachability, as the catalog's
// queries see it.
func (c *Backend) setReachable(ok bool, err error) {
	c.mu.Lock()
	changed := c.reachable != ok
	c.reachable = ok
	synced := c.synced
	c.mu.Unlock()
	if !changed {
		return
	}
	fields := []zap.Field{zap.String("backend", "consul"), zap.String("address", c.address)}
	switch {
	case ok:
		c.log().Info("consul reachable again", fields...)
	case synced:
		c.log().Error("consul unreachable; routing keeps the last snapshot and retries", append(fields, zap.Error(err))...)
	default:
		c.log().Error("consul unreachable; registry-routed requests get 503 until the first sync, retrying", append(fields, zap.Error(err))...)
	}
}

// Interface guards
var (
	_ caddy.Provisioner      = (*Backend)(nil)
	_ caddy.Validator        = (*Backend)(nil)
	_ registry.Backend       = (*Backend)(nil)
	_ registry.DeleteChecker = (*Backend)(nil)
)
