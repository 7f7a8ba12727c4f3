// Package zookeeper is the service_registry.backends.zookeeper module: the
// registry in ZooKeeper, in the layout of Apache Curator's service
// discovery by default (package zkkv), shared by every Caddy instance on
// the same ensemble and base path. The store itself is zkstore, which
// imports nothing of Caddy; this package is its Caddy module and
// Caddyfile syntax.
package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-zookeeper/zk"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkkv"
	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkstore"
	"github.com/svcreg/caddy-svcreg/registry"
)

func init() {
	caddy.RegisterModule(new(Backend))
}

// Backend keeps the registry in ZooKeeper.
//
// Layout: Curator's service discovery, <base>/<service>/<instance-id>,
// each node's data Curator's instance JSON with the version in a payload
// field (or, with version_level, <base>/<service>/<version>/<id>); see
// package zkkv. A node that does not read as an instance is skipped with
// one warning naming it. Children are listed with watches, and every
// watch is set again when it fires: no ZooKeeper call is made on the
// request path.
//
// The admin API writes to ZooKeeper: an endpoint added with a ttl is an
// ephemeral node of this Caddy's session (it disappears session_timeout
// after this Caddy stops, and is created again after the session expires);
// one without is a persistent node. Seeds from the config are this
// instance's own and are not written.
//
// Faults, as with etcd: if ZooKeeper is unreachable at start, Caddy still
// starts and registry-routed requests get 503 until the first sync; if it
// is lost later, routing keeps the last snapshot; once a session is back,
// everything is listed again (after a session expired, this instance's
// ephemeral nodes are created again first). A ZooKeeper that went back in
// time (wiped, or restored from an older snapshot) refuses this
// instance's session: the backend starts a fresh client and does the
// same (see package zkclient). Each change of reachability is logged
// once.
type Backend struct {
	// Servers are the ZooKeeper servers, host:port. Default:
	// 127.0.0.1:2181.
	Servers []string `json:"servers,omitempty"`

	// BasePath is the parent of the service nodes (Curator's basePath).
	// Default: /services.
	BasePath string `json:"base_path,omitempty"`

	// VersionField is the payload field holding an instance's version.
	// Default: version.
	VersionField string `json:"version_field,omitempty"`

	// VersionLevel reads the version from the path instead:
	// <base>/<service>/<version>/<id>.
	VersionLevel bool `json:"version_level,omitempty"`

	// WeightField is the payload field holding an instance's weight.
	// Default: weight.
	WeightField string `json:"weight_field,omitempty"`

	// SessionTimeout is the ZooKeeper session timeout. Default: 10s.
	SessionTimeout caddy.Duration `json:"session_timeout,omitempty"`

	// WriteTimeout bounds an admin-API write. Default: 5s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	layout zkkv.Layout // as read: placeholders expanded, defaults set
	store  *zkstore.Store
}

// CaddyModule returns the Caddy module information.
func (*Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "service_registry.backends.zookeeper",
		New: func() caddy.Module { return new(Backend) },
	}
}

// Provision expands placeholders and sets defaults.
func (b *Backend) Provision(ctx caddy.Context) error {
	return b.setup(ctx.Logger())
}

// setup expands placeholders, sets defaults, checks the settings and
// makes the store.
func (b *Backend) setup(logger *zap.Logger) error {
	repl := caddy.NewReplacer()
	if len(b.Servers) == 0 {
		b.Servers = []string{"127.0.0.1:2181"}
	}
	var servers []string
	for _, s := range b.Servers {
		for part := range strings.SplitSeq(repl.ReplaceKnown(s, ""), ",") {
			if part = strings.TrimSpace(part); part != "" {
				servers = append(servers, part)
			}
		}
	}
	if len(servers) == 0 {
		return errors.New("zookeeper backend: no servers")
	}
	layout, err := zkkv.Layout{
		Base: repl.ReplaceKnown(b.BasePath, ""), VersionField: b.VersionField,
		VersionLevel: b.VersionLevel, WeightField: b.WeightField,
	}.Normalize()
	if err != nil {
		return fmt.Errorf("zookeeper backend: %w", err)
	}
	if b.SessionTimeout == 0 {
		b.SessionTimeout = caddy.Duration(zkstore.DefaultSessionTimeout)
	}
	if b.SessionTimeout < caddy.Duration(time.Second) {
		return fmt.Errorf("zookeeper backend: session_timeout %v: want at least 1s", time.Duration(b.SessionTimeout))
	}
	if b.WriteTimeout == 0 {
		b.WriteTimeout = caddy.Duration(zkstore.DefaultWriteTimeout)
	}
	b.layout = layout
	b.store = zkstore.New(zkstore.Options{
		Servers: servers, Layout: layout,
		SessionTimeout: time.Duration(b.SessionTimeout), WriteTimeout: time.Duration(b.WriteTimeout),
	}, logger)
	return nil
}

// Start connects in the background; it never waits for ZooKeeper.
func (b *Backend) Start(feed *registry.Feed, env registry.BackendEnv) error {
	if b.store == nil { // used without Provision, as a library
		if err := b.setup(env.Logger); err != nil {
			return err
		}
	}
	return b.store.Start(feed, env)
}

// Reconfigure takes a newer config's seeds and logger.
func (b *Backend) Reconfigure(env registry.BackendEnv) error { return b.store.Reconfigure(env) }

// Stop ends the sync and closes the session: this instance's ephemeral
// nodes go with it.
func (b *Backend) Stop() error {
	if b.store == nil {
		return nil
	}
	return b.store.Stop()
}

// Add writes the endpoint to ZooKeeper (an ephemeral node of this Caddy's
// session when ep.TTL is set) and waits until the table holds it.
func (b *Backend) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	return b.store.Add(ctx, key, ep)
}

// Delete removes the endpoint's node and waits until the table no longer
// holds it.
func (b *Backend) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	return b.store.Delete(ctx, key, address)
}

// CheckDelete returns the error Delete would return for reasons other
// than ZooKeeper being unreachable.
func (b *Backend) CheckDelete(key registry.ServiceKey, address string) error {
	return b.store.CheckDelete(key, address)
}

// Owned returns the endpoints this backend keeps as ephemeral nodes.
func (b *Backend) Owned() []registry.Owned {
	if b.store == nil {
		return nil
	}
	return b.store.Owned()
}

// Adopt takes over the ephemeral nodes another backend (of an older
// config) keeps, before that backend stops (see zkstore.Store.Adopt).
func (b *Backend) Adopt(owned []registry.Owned) {
	if b.store != nil {
		b.store.Adopt(owned)
	}
}

// conn returns the ZooKeeper connection in use (for the tests).
func (b *Backend) conn() *zk.Conn { return b.store.Conn() }

// Interface guards
var (
	_ caddy.Provisioner      = (*Backend)(nil)
	_ registry.Backend       = (*Backend)(nil)
	_ registry.DeleteChecker = (*Backend)(nil)
	_ registry.Owner         = (*Backend)(nil)
)
