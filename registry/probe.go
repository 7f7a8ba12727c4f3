package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// probeFunc checks one endpoint and returns nil when it passes. It must
// return once ctx is done.
type probeFunc func(ctx context.Context, target probeJob) error

// probeJob is what a probe checks: one endpoint.
type probeJob struct {
	// Key and Address name the endpoint.
	Key     ServiceKey
	Address string
	// Check is the service version's health configuration, as
	// the HealthPolicy has it (with its defaults filled in).
	Check *HealthCheck
	// TLS says the proxy speaks TLS to the endpoint (Endpoint.UsesTLS).
	TLS bool
}

// prober is the default probe. For a service version with active checks
// it sends an HTTP (or, with the check's TLS, HTTPS) GET of the check's
// path and port, that must answer within its timeout with a status in its
// range and a body matching its pattern, without following redirects.
// Without active checks (how an endpoint out for failed requests is seen
// to answer again) it sends HEAD / (over TLS if the proxy uses TLS to the
// endpoint, without checking its certificate), which passes with any
// status below 500 within the check's timeout: a host that accepts
// connections but does not answer HTTP, or answers 5xx, stays out.
type prober struct {
	// Dial opens the connections of plain-HTTP checks. Default: a
	// net.Dialer with a 1s timeout.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)

	plain    *http.Transport
	anyTLS   *http.Transport // for HEAD checks of endpoints behind TLS
	fallback *HealthCheck    // the defaults, for a target without a check
}

// dialTimeout bounds connecting for a check.
const dialTimeout = time.Second

// newProber returns the default probe. Close releases its idle
// connections.
func newProber() *prober {
	d := &net.Dialer{Timeout: dialTimeout}
	p := &prober{Dial: d.DialContext}
	p.plain = &http.Transport{
		DialContext:         func(ctx context.Context, n, a string) (net.Conn, error) { return p.Dial(ctx, n, a) },
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	p.anyTLS = &http.Transport{
		DialContext:       (&net.Dialer{Timeout: dialTimeout}).DialContext,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // a liveness check, nothing is exchanged
		DisableKeepAlives: true,
	}
	defaults, _ := NewHealthPolicy(nil)
	p.fallback = defaults.of(ServiceKey{})
	return p
}

// Probe checks target.
func (p *prober) Probe(ctx context.Context, target probeJob) error {
	hc := target.Check
	if hc == nil {
		hc = p.fallback
	}
	if !hc.active() {
		return p.answers(ctx, target, hc)
	}
	addr := target.Address
	if hc.Port != 0 {
		host, _, _ := net.SplitHostPort(addr)
		addr = net.JoinHostPort(host, strconv.Itoa(hc.Port))
	}
	path := hc.Path
	if path == "" {
		path = "/"
	}
	scheme, transport := "http", http.RoundTripper(p.plain)
	if hc.transport != nil {
		scheme, transport = "https", hc.transport
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hc.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "caddy-svcreg-health-check")
	resp, err := transport.RoundTrip(req) // a round trip follows no redirect
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if !hc.status.has(resp.StatusCode) {
		return fmt.Errorf("status %d, want %s", resp.StatusCode, hc.Status)
	}
	if hc.body != nil && !hc.body.Match(body) {
		return fmt.Errorf("body does not match %q", hc.Body)
	}
	return nil
}

// answers checks that the endpoint answers HTTP at all: HEAD / with any
// status below 500.
func (p *prober) answers(ctx context.Context, target probeJob, hc *HealthCheck) error {
	scheme, transport := "http", p.plain
	if target.TLS {
		scheme, transport = "https", p.anyTLS
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hc.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, scheme+"://"+target.Address+"/", nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "caddy-svcreg-health-check")
	resp, err := transport.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// Close closes the probe's idle connections.
func (p *prober) Close() {
	p.plain.CloseIdleConnections()
	p.anyTLS.CloseIdleConnections()
}
