// Package consul is the service_registry.backends.consul backend: the
// health-passing instances of the services in Consul's catalog, followed
// through blocking queries, so that no Consul call is made on the request
// path. The store itself is consulstore, which imports nothing of Caddy;
// this package is its Caddy module (settings, placeholders) and Caddyfile
// syntax.
package consul

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/svcreg/caddy-svcreg/backends/consul/consulstore"
	"github.com/svcreg/caddy-svcreg/registry"
)

func init() {
	caddy.RegisterModule(new(Backend))
}

// dial opens the connections to Consul; tests count them.
var dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext

// consulReadTimeout is the longest a read of one service may take; tests
// shorten it.
var consulReadTimeout = consulstore.DefaultReadTimeout

// Bounds of Wait.
const (
	minWait = consulstore.MinWait
	maxWait = consulstore.MaxWait
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
// Service.Weights.Passing (1 to 100), or of its service metadata
// weight=<0 to 100> when set, where 0 drains it: it stays an endpoint
// but takes no new request (Consul's own weights cannot be 0). An instance with several version
// tags serves each of those versions. A version is known as long as
// Consul holds an instance of it, whatever its health: when none passes,
// its requests get 503 (no available host); once none is registered, 404.
// An instance without a valid version or address is skipped with one
// warning naming it; a service whose name is not a valid service name,
// with one warning naming the service. The consul service itself is left
// out unless services names it.
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
// Faults: if Consul is unreachable at start, Caddy still starts and
// registry-routed requests get 503 until the first sync, retried with
// backoff; if it is lost later, routing keeps the last snapshot; when it
// is back, everything is read again. A check every second
// (/v1/status/leader, 2 s timeout) sees an agent that froze or was cut
// off, where a blocking query would just wait. Each change of
// reachability is logged once, and so is each way in which reads of
// services fail.
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

	fingerprint string // of the settings as read
	store       *consulstore.Store
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
		c.Address = consulstore.DefaultAddress
	}
	address, err := expand("address", c.Address)
	if err != nil {
		return err
	}
	if err := consulstore.CheckAddress(address); err != nil {
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
		c.VersionTag = consulstore.DefaultVersionTag
	}
	if c.Wait == 0 {
		c.Wait = caddy.Duration(consulstore.DefaultWait)
	}

	store, err := consulstore.New(consulstore.Options{
		Address: address, Token: token, Datacenter: datacenter, Services: c.Services,
		VersionTag: c.VersionTag, VersionMeta: c.VersionMeta, Wait: time.Duration(c.Wait),
		ReadTimeout: consulReadTimeout,
		Dial:        func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) },
	}, ctx.Logger())
	if err != nil {
		return fmt.Errorf("consul backend: %w", err)
	}
	c.store = store
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %q %q %q %d\n", address, token, datacenter, c.Services, c.VersionTag, c.VersionMeta, c.Wait)
	c.fingerprint = hex.EncodeToString(h.Sum(nil))
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

// Start begins following Consul in the background; it never waits for it.
func (c *Backend) Start(feed *registry.Feed, env registry.BackendEnv) error {
	return c.store.Start(feed, env)
}

// Reconfigure takes a newer config's seeds, traffic policies and logger,
// and republishes the registry once synced.
func (c *Backend) Reconfigure(env registry.BackendEnv) error { return c.store.Reconfigure(env) }

// Stop ends every query and goroutine, and closes the idle connections.
func (c *Backend) Stop() error {
	if c.store == nil {
		return nil
	}
	return c.store.Stop()
}

// Add refuses: Consul is the source of truth.
func (c *Backend) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	return c.store.Add(ctx, key, ep)
}

// Delete refuses: Consul is the source of truth.
func (c *Backend) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	return c.store.Delete(ctx, key, address)
}

// CheckDelete refuses every removal, so that the registry does not drain
// an endpoint for nothing.
func (c *Backend) CheckDelete(key registry.ServiceKey, address string) error {
	return c.store.CheckDelete(key, address)
}

// Interface guards
var (
	_ caddy.Provisioner      = (*Backend)(nil)
	_ caddy.Validator        = (*Backend)(nil)
	_ registry.Backend       = (*Backend)(nil)
	_ registry.DeleteChecker = (*Backend)(nil)
)
