// Package etcd is the service_registry.backends.etcd backend: the
// registry in etcd, shared by every Caddy instance on the same prefix,
// watched so that no etcd call is made on the request path. The store
// itself is etcdstore, which imports nothing of Caddy; this package is its
// Caddy module (settings, placeholders, TLS files) and Caddyfile syntax.
package etcd

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdstore"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

func init() {
	caddy.RegisterModule(new(Backend))
}

// Backend keeps the registry in etcd, so that several Caddy instances
// share it and backends can register themselves under leases.
//
// Layout: one key per endpoint, <prefix><service>/<version>/<address>
// (address in canonical host:port form), with a small JSON value such as
// {"weight":2,"metadata":{"zone":"a"}}; an empty value or {} means the
// defaults. Anything else under the prefix (a bad key, bad JSON, a bad
// address) is skipped with one warning naming the key. A service's
// traffic policy is <prefix>@traffic/<service>, its value the policy's
// JSON (as the admin API takes it); it replaces the config's policy of
// that service on every instance on the prefix.
//
// One initial Get, then a Watch from the next revision: every change
// updates the in-memory snapshot, and no etcd call is made on the request
// path. The admin API writes to etcd, so every instance on the same prefix
// sees its changes. Seeds from the config are this instance's own: they are
// merged with what etcd holds and are not written to etcd.
//
// Faults: if etcd is unreachable at start, Caddy still starts and
// registry-routed requests get 503 until the first sync, retried with
// backoff; if it is lost later, routing keeps the last snapshot; when the
// connection is back, everything is listed again (one read), so that an
// etcd wiped, replaced or restored from an older snapshot in between is
// followed even when it has the same cluster ID and its revision has
// passed the old one's; that case is logged as "etcd went back in time".
// Each change of reachability is logged once.
type Backend struct {
	// Endpoints are the etcd client endpoints, as host:port or URLs.
	// Placeholders such as {env.ETCD_ENDPOINTS} are expanded.
	// Default: 127.0.0.1:2379.
	Endpoints []string `json:"endpoints,omitempty"`

	// Prefix is the key prefix of the registry. Default: /svcreg/.
	Prefix string `json:"prefix,omitempty"`

	// DialTimeout bounds connecting to etcd and each request the backend
	// makes. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// TLS configures a TLS connection to etcd. Default: plaintext.
	TLS *TLS `json:"tls,omitempty"`

	// Username for etcd authentication; placeholders are expanded.
	Username string `json:"username,omitempty"`

	// Password for etcd authentication; placeholders are expanded, so
	// {env.ETCD_PASSWORD} keeps it out of the config. Never logged.
	Password string `json:"password,omitempty"`

	fingerprint string // of the settings as read: expanded placeholders, file contents
	store       *etcdstore.Store
}

// TLS are the files of a TLS connection to etcd.
type TLS struct {
	// CA is a PEM file of the certificate authorities that sign etcd's
	// certificate. Default: the system's.
	CA string `json:"ca,omitempty"`
	// Cert is a PEM client certificate file, for mutual TLS.
	Cert string `json:"cert,omitempty"`
	// Key is the PEM private key file of Cert.
	Key string `json:"key,omitempty"`
	// ServerName overrides the name checked in etcd's certificate.
	ServerName string `json:"server_name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Backend) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "service_registry.backends.etcd",
		New: func() caddy.Module { return new(Backend) },
	}
}

// Provision expands placeholders, sets defaults and loads the TLS files.
func (e *Backend) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	if len(e.Endpoints) == 0 {
		e.Endpoints = []string{"127.0.0.1:2379"}
	}
	var endpoints []string
	for _, ep := range e.Endpoints {
		// one placeholder may hold several comma-separated endpoints
		for part := range strings.SplitSeq(repl.ReplaceKnown(ep, ""), ",") {
			if part = strings.TrimSpace(part); part != "" {
				endpoints = append(endpoints, part)
			}
		}
	}
	if len(endpoints) == 0 {
		return errors.New("etcd backend: no endpoints")
	}
	prefix := repl.ReplaceKnown(e.Prefix, "")
	if e.Prefix != "" && prefix == "" {
		return fmt.Errorf("etcd backend: prefix %q is empty once expanded", e.Prefix)
	}
	e.Prefix = etcdkv.Prefix(prefix)
	if e.DialTimeout == 0 {
		e.DialTimeout = caddy.Duration(etcdstore.DefaultDialTimeout)
	}
	config := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: time.Duration(e.DialTimeout),
		Username:    repl.ReplaceKnown(e.Username, ""),
		Password:    repl.ReplaceKnown(e.Password, ""),
	}
	// A credential that expands to nothing is a variable not set where
	// Caddy runs: without it every etcd request would be refused.
	switch {
	case e.Username != "" && config.Username == "":
		return fmt.Errorf("etcd backend: username %q is empty once expanded", e.Username)
	case e.Password != "" && config.Password == "":
		return fmt.Errorf("etcd backend: password %q is empty once expanded", e.Password)
	case config.Password != "" && config.Username == "":
		return errors.New("etcd backend: a password needs a username")
	}
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %d %q %q\n", endpoints, e.Prefix, e.DialTimeout, config.Username, config.Password)
	if e.TLS != nil {
		tlsConfig, err := e.TLS.load(repl, h)
		if err != nil {
			return fmt.Errorf("etcd backend: %w", err)
		}
		config.TLS = tlsConfig
	}
	e.fingerprint = hex.EncodeToString(h.Sum(nil))
	e.store = etcdstore.New(config, e.Prefix, ctx.Logger())
	return nil
}

// Fingerprint identifies the backend's settings as read when it was
// provisioned: placeholders expanded, TLS files' contents included. Two
// configs whose backends have the same fingerprint share one registry; a
// rotated password or certificate gives another.
func (e *Backend) Fingerprint() string { return e.fingerprint }

// load reads the TLS files, and writes what it read to h.
func (t *TLS) load(repl *caddy.Replacer, h io.Writer) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: repl.ReplaceKnown(t.ServerName, "")}
	fmt.Fprintf(h, "tls %q\n", cfg.ServerName)
	if ca := repl.ReplaceKnown(t.CA, ""); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		h.Write(pem)
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", ca)
		}
	}
	cert, key := repl.ReplaceKnown(t.Cert, ""), repl.ReplaceKnown(t.Key, "")
	if (cert == "") != (key == "") {
		return nil, errors.New("a client certificate needs both cert and key")
	}
	if cert != "" {
		certPEM, err := os.ReadFile(cert)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		keyPEM, err := os.ReadFile(key)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		h.Write(certPEM)
		h.Write(keyPEM)
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Start begins syncing in the background; it never waits for etcd.
func (e *Backend) Start(feed *registry.Feed, env registry.BackendEnv) error {
	return e.store.Start(feed, env)
}

// Reconfigure takes a newer config's seeds and logger, and republishes
// the registry once synced. The etcd client keeps the logger it started with.
func (e *Backend) Reconfigure(env registry.BackendEnv) error { return e.store.Reconfigure(env) }

// Stop ends the sync, the monitor and every lease keepalive, and closes
// the client. Leases are left to expire, TTL after this.
func (e *Backend) Stop() error { return e.store.Stop() }

// Add writes the endpoint to etcd (under a lease this Caddy keeps alive
// when ep.TTL is set) and waits until the watch has applied it.
func (e *Backend) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	return e.store.Add(ctx, key, ep)
}

// Delete removes the endpoint's key from etcd and waits until the watch
// has applied it.
func (e *Backend) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	return e.store.Delete(ctx, key, address)
}

// CheckDelete returns the error Delete would return for reasons other
// than etcd being unreachable.
func (e *Backend) CheckDelete(key registry.ServiceKey, address string) error {
	return e.store.CheckDelete(key, address)
}

// PutTraffic writes a service's traffic policy to etcd and waits until
// the watch has applied it.
func (e *Backend) PutTraffic(ctx context.Context, service string, p traffic.Policy) error {
	return e.store.PutTraffic(ctx, service, p)
}

// DeleteTraffic removes a service's traffic policy from etcd and waits
// until the watch has applied it.
func (e *Backend) DeleteTraffic(ctx context.Context, service string) error {
	return e.store.DeleteTraffic(ctx, service)
}

// Adopt registers endpoints that another backend kept alive under leases
// of this backend's, in the background.
func (e *Backend) Adopt(owned []registry.Owned) { e.store.Adopt(owned) }

// Owned returns the endpoints this backend keeps registered under leases.
func (e *Backend) Owned() []registry.Owned { return e.store.Owned() }

// Interface guards
var (
	_ caddy.Provisioner       = (*Backend)(nil)
	_ registry.Backend        = (*Backend)(nil)
	_ registry.DeleteChecker  = (*Backend)(nil)
	_ registry.Owner          = (*Backend)(nil)
	_ registry.TrafficBackend = (*Backend)(nil)
)
