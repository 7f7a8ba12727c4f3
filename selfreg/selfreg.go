// Package selfreg registers a service's endpoint in the svcreg registry,
// in etcd under a lease or in ZooKeeper as an ephemeral node, and keeps it
// registered: while the process runs, Caddy routes to it; when it dies,
// the key expires TTL later (the session times out) and traffic moves
// elsewhere (svcreg's failover covers the gap); when it stops cleanly, it
// deregisters at once and returns Config.Drain (1s) later, when the
// service may close its server without losing a request. A lost lease or
// an expired session is followed by a new registration. It imports
// nothing of Caddy.
//
// Embed it in a Go service, and shut the server down once it has
// returned:
//
//	go selfreg.Register(ctx, selfreg.Config{
//		Endpoints: []string{"127.0.0.1:2379"},
//		Service:   "users", Version: "v1", Address: "127.0.0.1:9091",
//	})
//
// or, for ZooKeeper, with ZooKeeper: []string{"127.0.0.1:2181"}; or run the
// selfreg program beside any backend (see cmd/selfreg). What it writes is
// validated and canonical (packages etcdkv and zkkv), exactly what the
// etcd and zookeeper backends read; in ZooKeeper it is Curator's instance
// JSON, which Curator's own service discovery reads too.
package selfreg

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkclient"
	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkkv"
	"github.com/svcreg/caddy-svcreg/registry"
)

// Config says what to register where.
type Config struct {
	// Endpoints are the etcd client endpoints. Default: 127.0.0.1:2379.
	Endpoints []string
	// ZooKeeper are ZooKeeper servers (host:port): when set, the
	// registration goes to ZooKeeper instead of etcd, as an ephemeral
	// node of a session whose timeout is TTL.
	ZooKeeper []string
	// Layout is the ZooKeeper layout (base path, version field or level),
	// as the zookeeper backend is configured. Default: Curator's, under
	// /services, the version in the payload field "version".
	Layout zkkv.Layout
	// Prefix is the registry's key prefix. Default: /svcreg/.
	Prefix string
	// Service, Version and Address say what this backend serves and
	// where: valid names (registry.ValidName) and a host:port, which is
	// registered in canonical form (http://127.0.0.1:09091 as
	// 127.0.0.1:9091).
	Service, Version, Address string
	// Weight is the backend's share relative to the others, 1 to 100.
	// Default: 1.
	Weight int
	// TTL is how long the key outlives this process, 1s to 24h.
	// Default: 5s.
	TTL time.Duration
	// Drain is how long Register waits, once it has deregistered on a
	// clean stop, before it returns: the time for the proxies watching
	// the store to stop sending here and finish what they sent, so that
	// the caller can close its server when Register returns. A server
	// that closes while a proxy still sends to it can reset a request
	// written on a keep-alive connection it is closing, and over HTTP/1
	// no proxy can tell that request from one the server ran, so a POST
	// lost that way cannot be sent again. Default: 1s; negative: none.
	Drain time.Duration
	// Logf reports registration changes. Default: log.Printf.
	Logf func(format string, args ...any)
}

// drain waits cfg.Drain after a deregistration.
func (cfg Config) drain() {
	d := cfg.Drain
	if d == 0 {
		d = time.Second
	}
	if d > 0 {
		time.Sleep(d)
	}
}

// Encode returns the etcd key and value of the registration, or an error
// (matching registry.ErrInvalid) saying what is wrong with it.
func (c Config) Encode() (key, value string, err error) {
	if c.Service == "" || c.Version == "" || c.Address == "" {
		return "", "", registry.Invalidf("selfreg: service, version and address are required")
	}
	ep := registry.Endpoint{Address: c.Address, Weight: registry.Weight(c.Weight), TTL: registry.Duration(c.TTL)}
	key, value, err = etcdkv.Encode(etcdkv.Prefix(c.Prefix), registry.ServiceKey{Service: c.Service, Version: c.Version}, ep)
	if err != nil {
		return "", "", fmt.Errorf("selfreg: %w", err)
	}
	return key, value, nil
}

// Register registers the backend and keeps it registered until ctx is
// done, then deregisters it and returns Config.Drain later. If etcd is lost, it registers again under a
// new lease when etcd is back. A config it cannot register (a bad name or
// address) is an error at once.
func Register(ctx context.Context, cfg Config) error {
	if len(cfg.ZooKeeper) > 0 {
		return registerZooKeeper(ctx, cfg)
	}
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = []string{"127.0.0.1:2379"}
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	key, value, err := cfg.Encode()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("selfreg: %w", err)
	}
	defer cli.Close()

	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		lease, err := register(ctx, cli, key, value, cfg.TTL)
		if err != nil {
			cfg.Logf("selfreg: registering %s: %v; retrying in %v", key, err, wait)
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, 5*time.Second)
			continue
		}
		wait = 100 * time.Millisecond
		cfg.Logf("selfreg: registered %s (lease %x, ttl %v)", key, lease, cfg.TTL)
		acks, err := cli.KeepAlive(ctx, lease)
		if err == nil {
			for range acks {
			}
		}
		if ctx.Err() != nil {
			// stopping: deregister now rather than TTL from now
			revoke(cli, lease)
			cfg.Logf("selfreg: deregistered %s", key)
			cfg.drain()
			return nil
		}
		cfg.Logf("selfreg: lost the lease of %s; registering again", key)
	}
	return nil
}

func register(ctx context.Context, cli *clientv3.Client, key, value string, ttl time.Duration) (clientv3.LeaseID, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	seconds := int64((ttl + time.Second - 1) / time.Second)
	grant, err := cli.Grant(ctx, seconds)
	if err != nil {
		return 0, err
	}
	if err := put(ctx, cli, key, value, grant.ID); err != nil {
		// The put may have been applied though its answer was lost (the
		// process told to stop while it waited): without its lease, no
		// key outlives a failed registration by its TTL.
		revoke(cli, grant.ID)
		return 0, err
	}
	return grant.ID, nil
}

// put writes the key under the lease; tests replace it.
var put = func(ctx context.Context, cli *clientv3.Client, key, value string, lease clientv3.LeaseID) error {
	_, err := cli.Put(ctx, key, value, clientv3.WithLease(lease))
	return err
}

// revoke ends a lease and so deletes its key, whether or not the caller's
// context is done.
func revoke(cli *clientv3.Client, lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = cli.Revoke(ctx, lease)
}

// registerZooKeeper keeps an ephemeral instance node in ZooKeeper: created
// at every new session (the first, each that replaces an expired one, and
// one of a fresh connection after ZooKeeper went back in time: see package
// zkclient), deleted when ctx is done.
func registerZooKeeper(ctx context.Context, cfg Config) error {
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.Service == "" || cfg.Version == "" || cfg.Address == "" {
		return registry.Invalidf("selfreg: service, version and address are required")
	}
	layout, err := cfg.Layout.Normalize()
	if err != nil {
		return fmt.Errorf("selfreg: %w", err)
	}
	key := registry.ServiceKey{Service: cfg.Service, Version: cfg.Version}
	ep := registry.Endpoint{Address: cfg.Address, Weight: registry.Weight(cfg.Weight), TTL: registry.Duration(cfg.TTL)}
	node, data, err := layout.Encode(key, ep, true, time.Now())
	if err != nil {
		return fmt.Errorf("selfreg: %w", err)
	}
	wake := make(chan struct{}, 1) // a session event, or a replaced connection
	var wentBack atomic.Bool
	client, err := zkclient.New(zkclient.Options{
		Servers: cfg.ZooKeeper, SessionTimeout: cfg.TTL,
		Event: func(ev zk.Event) {
			if ev.Type == zk.EventSession {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		},
		WentBack: func() { wentBack.Store(true) }, // logged here, not from zkclient's goroutine
	})
	if err != nil {
		return fmt.Errorf("selfreg: %w", err)
	}
	defer client.Close()
	var registered int64 // the session the node belongs to
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			if conn := client.Conn(); registered != 0 && registered == conn.SessionID() {
				_ = conn.Delete(node, -1) // at once, not TTL from now
				cfg.Logf("selfreg: deregistered %s", node)
				cfg.drain()
			}
			return nil
		case <-wake:
		case <-retry.C:
		}
		if wentBack.Swap(false) {
			cfg.Logf("selfreg: ZooKeeper went back in time (wiped, or restored from an older snapshot) and refused this session; registering %s again in a new one", node)
		}
		conn := client.Conn()
		if conn.State() != zk.StateHasSession || registered == conn.SessionID() {
			continue
		}
		if err := createEphemeral(conn, node, data); err != nil {
			cfg.Logf("selfreg: registering %s: %v; retrying", node, err)
			retry.Reset(time.Second)
			continue
		}
		registered = conn.SessionID()
		cfg.Logf("selfreg: registered %s (session %x, timeout %v)", node, registered, cfg.TTL)
	}
}

// createEphemeral creates node with its persistent parents. A node left
// by an expired session of ours is gone by then; one of a live session
// (another process at the same address) is taken over.
func createEphemeral(conn *zk.Conn, node string, data []byte) error {
	parts := strings.Split(strings.TrimPrefix(node, "/"), "/")
	at := ""
	for _, part := range parts[:len(parts)-1] {
		at += "/" + part
		if _, err := conn.Create(at, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return err
		}
	}
	_, err := conn.Create(node, data, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if errors.Is(err, zk.ErrNodeExists) {
		if err = conn.Delete(node, -1); err == nil || errors.Is(err, zk.ErrNoNode) {
			_, err = conn.Create(node, data, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
		}
	}
	return err
}
