// Package selfreg registers a service's endpoint in the svcreg etcd
// registry under a lease and keeps the lease alive: while the process
// runs, Caddy routes to it; when it dies, the key expires TTL later and
// traffic moves elsewhere (svcreg's failover covers the gap); when it stops
// cleanly, it deregisters at once. It imports nothing of Caddy.
//
// Embed it in a Go service:
//
//	go selfreg.Register(ctx, selfreg.Config{
//		Endpoints: []string{"127.0.0.1:2379"},
//		Service:   "users", Version: "v1", Address: "127.0.0.1:9091",
//	})
//
// or run the selfreg program beside any backend (see cmd/selfreg). What it
// writes is validated and canonical (package etcdkv), exactly what the
// etcd backend reads.
package selfreg

import (
	"context"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/registry"
)

// Config says what to register where.
type Config struct {
	// Endpoints are the etcd client endpoints. Default: 127.0.0.1:2379.
	Endpoints []string
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
	// Logf reports registration changes. Default: log.Printf.
	Logf func(format string, args ...any)
}

// Encode returns the etcd key and value of the registration, or an error
// (matching registry.ErrInvalid) saying what is wrong with it.
func (c Config) Encode() (key, value string, err error) {
	if c.Service == "" || c.Version == "" || c.Address == "" {
		return "", "", registry.Invalidf("selfreg: service, version and address are required")
	}
	ep := registry.Endpoint{Address: c.Address, Weight: c.Weight, TTL: registry.Duration(c.TTL)}
	key, value, err = etcdkv.Encode(etcdkv.Prefix(c.Prefix), registry.ServiceKey{Service: c.Service, Version: c.Version}, ep)
	if err != nil {
		return "", "", fmt.Errorf("selfreg: %w", err)
	}
	return key, value, nil
}

// Register registers the backend and keeps it registered until ctx is
// done, then deregisters it. If etcd is lost, it registers again under a
// new lease when etcd is back. A config it cannot register (a bad name or
// address) is an error at once.
func Register(ctx context.Context, cfg Config) error {
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
			revoke, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = cli.Revoke(revoke, lease)
			cancel()
			cfg.Logf("selfreg: deregistered %s", key)
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
	if _, err := cli.Put(ctx, key, value, clientv3.WithLease(grant.ID)); err != nil {
		return 0, err
	}
	return grant.ID, nil
}
