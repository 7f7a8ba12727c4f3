// Package consulstore is the Consul backend's store without Caddy: the
// health-passing instances of the services in Consul's catalog, followed
// through blocking queries, so that no Consul call is made on the request
// path. The Caddy module service_registry.backends.consul is a thin
// wrapper around it; a Go program can hand a Store to registry.New
// directly.
package consulstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
)

// Timing and bounds of the consul backend.
var (
	consulRetryMin    = 100 * time.Millisecond // first wait after a failed query
	consulRetryMax    = 3 * time.Second        // longest wait between failed queries
	consulMinInterval = 100 * time.Millisecond // shortest time from one query of a watch to the next
	consulSlack       = 10 * time.Second       // how much longer than its wait a blocking query may take
)

// Readers is how many services a Store reads at once: with the two
// blocking queries and the reachability check, the most connections it
// holds to Consul.
const Readers = 8

// MaxConns is the most connections a Store holds to Consul.
const MaxConns = Readers + 3

// consulCheckEvery is how often the backend checks that Consul answers
// (a blocking query to a frozen or cut-off agent just waits), and
// consulCheckTimeout how long a check may take.
var (
	consulCheckEvery   = time.Second
	consulCheckTimeout = 2 * time.Second
)

// notPassingFilter keeps, of every health check, those that do not pass.
const notPassingFilter = `Status != "passing"`

// Defaults and bounds of Options.
const (
	DefaultAddress     = "127.0.0.1:8500"
	DefaultVersionTag  = "version="
	DefaultWait        = time.Minute
	MinWait            = time.Second
	MaxWait            = 10 * time.Minute // Consul's own limit
	DefaultReadTimeout = 10 * time.Second
)

// Options are a Store's settings.
type Options struct {
	// Address is the Consul agent's HTTP API: host:port, or a URL such
	// as https://consul.example:8501 (CheckAddress). Default:
	// DefaultAddress.
	Address string
	// Token is the ACL token sent with every query; it needs
	// service:read and node:read on what is routed. Default: none (the
	// CONSUL_HTTP_TOKEN environment variable, if set).
	Token string
	// Datacenter is the Consul datacenter to read. Default: the agent's
	// own.
	Datacenter string
	// Services are the Consul services to route to. Default: every
	// service in the catalog, except consul itself.
	Services []string
	// VersionTag is the prefix of the tag that gives an instance's
	// version. Default: DefaultVersionTag.
	VersionTag string
	// VersionMeta, if set, is the service metadata key that gives an
	// instance's version, ahead of its tags.
	VersionMeta string
	// Wait is how long a blocking query waits for a change, from MinWait
	// to MaxWait. Default: DefaultWait.
	Wait time.Duration
	// ReadTimeout bounds a read of one service. Default:
	// DefaultReadTimeout.
	ReadTimeout time.Duration
	// Dial opens the connections to Consul. Default: a net.Dialer's.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Store routes to the instances that Consul's catalog holds and whose
// health checks all pass: Consul is the source of truth, and Add and
// Delete refuse (register services with Consul).
//
// Each instance of a service whose health checks all pass is an
// endpoint of that service, at the version its tag version=<version>
// names (the tag's prefix is Options.VersionTag), or its service metadata under
// Options.VersionMeta, if set; at its service address (the node's address when
// the service has none) and port; with the weight of
// Service.Weights.Passing (1 to 100). An instance with several version
// tags serves each of those versions. A version is known as long as
// Consul holds an instance of it, whatever its health: when none passes,
// its requests get 503 (no available host); once none is registered, 404.
// An instance without a valid version or address is skipped with one
// warning naming it; a service whose name is not a valid service name,
// with one warning naming the service. The consul service itself is left
// out unless Options.Services names it.
//
// Two blocking queries say when, and which, services change, whatever
// their number: one on the catalog (/v1/catalog/services), whose index
// moves when an instance is registered, changed or deregistered, and one
// on the health checks that do not pass (/v1/health/state/any, filtered),
// whose index moves when any check changes. A service whose checks
// changed is read again (/v1/health/service/<name>, not blocking), and
// so are the services on a node whose own check changed (maintenance, a
// failed node); when the catalog changed, every followed service is read
// again, since the catalog does not say which instance changed. At most
// 8 services are read at once, so that the backend never holds more than
// 11 connections to Consul, whatever the number of services (its agents
// allow 200 per client by default: a blocking query per service would
// hold one each), and one service that Consul cannot read does not hold
// up the others. A query
// that fails, or whose index goes backwards (Consul restored or
// replaced), is sent again without an index, and everything it covers is
// read again. Seeds from the config are this instance's own: they are
// merged with what Consul holds.
//
// Synced: the registry is synced, and starts routing, once the catalog
// has been read and each service it lists has been read once or has
// failed once. A service whose read fails keeps the endpoints last read
// (none, and so unknown, before its first read), is read again with
// backoff, and holds up no other service.
//
// Faults: if Consul is unreachable at start, Start still returns and
// registry-routed requests get 503 until the first sync, retried with
// backoff; if it is lost later, routing keeps the last snapshot; when it
// is back, everything is read again. A check every second
// (/v1/status/leader, 2 s timeout) sees an agent that froze or was cut
// off, where a blocking query would just wait. Each change of
// reachability is logged once, and so is each way in which reads of
// services fail.
type Store struct {
	opts Options

	logger    atomic.Pointer[zap.Logger] // the latest config's
	client    *api.Client
	transport *http.Transport // the client's, closed at Stop
	address   string          // for logs

	done sync.WaitGroup // every goroutine of the backend

	mu            sync.Mutex         // guards everything below
	ctx           context.Context    // ends at Stop
	cancel        context.CancelFunc // ends ctx
	stopped       bool
	feed          *registry.Feed
	stored        map[registry.ServiceKey]map[string]registry.Change // what Consul holds: the passing instances of each known version
	reads                                                            // the services followed, and which to read
	listed        bool                                               // the catalog has answered
	catalogIndex  uint64                                             // of the catalog's last answer
	checksKnown   bool                                               // the query of the checks has answered since it last failed
	checksFailing bool                                               // the checks' query fails with an answer from Consul, and that was logged
	synced        bool
	reachable     bool
	back          chan struct{}   // closed when Consul is seen back (see wakeQueries)
	badNames      map[string]bool // service names warned about
}

// New returns a store on the Consul agent of opts, with its defaults set;
// it does not contact Consul. logger is for what it logs until Start hands
// it the registry's.
func New(opts Options, logger *zap.Logger) (*Store, error) {
	if opts.Address == "" {
		opts.Address = DefaultAddress
	}
	if err := CheckAddress(opts.Address); err != nil {
		return nil, err
	}
	if opts.VersionTag == "" {
		opts.VersionTag = DefaultVersionTag
	}
	if opts.Wait == 0 {
		opts.Wait = DefaultWait
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	dial := opts.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DialContext = dial
	// the two blocking queries and the readers: never more, and each
	// connection waits idle for its next query rather than closing
	transport.MaxConnsPerHost = MaxConns
	transport.MaxIdleConnsPerHost = MaxConns
	client, err := api.NewClient(&api.Config{Address: opts.Address, Token: opts.Token, Datacenter: opts.Datacenter, Transport: transport})
	if err != nil {
		return nil, fmt.Errorf("creating client: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	c := &Store{opts: opts, client: client, transport: transport, address: opts.Address}
	c.logger.Store(logger)
	return c, nil
}

// CheckAddress checks that address is host:port or an http or https URL.
func CheckAddress(address string) error {
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

// log returns the logger of the config that started last.
func (c *Store) log() *zap.Logger { return c.logger.Load() }

// safely runs f, turning a panic into a logged error, so that a bug in
// handling one answer does not end a goroutine the registry depends on:
// the caller goes on as after any other failure.
func (c *Store) safely(what string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic %s: %v", what, p)
			c.log().Error("panic "+what, zap.String("backend", "consul"), zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	return f()
}

// Start begins following Consul in the background; it never waits for it.
func (c *Store) Start(feed *registry.Feed, env registry.BackendEnv) error {
	c.logger.Store(env.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		cancel()
		return errors.New("consul backend: started after Stop")
	}
	c.ctx, c.cancel = ctx, cancel
	c.feed = feed
	c.feed.Configure(env)
	c.stored = map[registry.ServiceKey]map[string]registry.Change{}
	c.reads = newReads()
	c.back = make(chan struct{})
	c.badNames = map[string]bool{}
	c.reachable = true // until shown otherwise, so that a first failure is logged
	c.feed.PublishTraffic(nil)
	c.done.Go(func() { c.watchCatalog(ctx) })
	c.done.Go(func() { c.watchChecks(ctx) })
	c.done.Go(func() { c.monitor(ctx) })
	for range Readers {
		c.done.Go(func() { c.reader(ctx) })
	}
	return nil
}

// Reconfigure takes a newer config's seeds, traffic policies and logger,
// and republishes the registry once synced.
func (c *Store) Reconfigure(env registry.BackendEnv) error {
	c.logger.Store(env.Logger)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.feed.Configure(env)
	c.feed.PublishTraffic(nil)
	if c.synced {
		c.feed.Publish(c.stored, true)
	}
	return nil
}

// Stop ends every query and goroutine, and closes the idle connections.
func (c *Store) Stop() error {
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

// errReadOnly is what Add and Delete return.
var errReadOnly = registry.Invalidf("the consul backend is read-only: register services with Consul itself (its agent's /v1/agent/service/register)")

// Add refuses: Consul is the source of truth.
func (c *Store) Add(_ context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	return fmt.Errorf("adding %s to %s: %w", ep.Address, key, errReadOnly)
}

// Delete refuses: Consul is the source of truth.
func (c *Store) Delete(_ context.Context, key registry.ServiceKey, address string) error {
	return c.CheckDelete(key, address)
}

// CheckDelete refuses every removal, so that the registry does not drain
// an endpoint for nothing.
func (c *Store) CheckDelete(key registry.ServiceKey, address string) error {
	return fmt.Errorf("deleting %s from %s: %w", address, key, errReadOnly)
}

// Interface guards
var (
	_ registry.Backend       = (*Store)(nil)
	_ registry.DeleteChecker = (*Store)(nil)
)
