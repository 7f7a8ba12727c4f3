package registry

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// HealthCheck configures the health of registry endpoints. The entry
// without service is the default; an entry naming a service (and perhaps a
// version) overrides the fields it sets for that service.
//
// Active checks probe every endpoint at Interval once Path or Port is set;
// they are off otherwise. The other knobs (slow start, the ejection limit,
// the drain timeout) apply with or without active checks.
type HealthCheck struct {
	// Service limits this entry to one service. Default: every service.
	Service string `json:"service,omitempty"`
	// Version limits this entry to one version of Service.
	Version string `json:"version,omitempty"`

	// Path is the HTTP path that active checks GET, such as /healthz.
	// Setting Path or Port turns active checks on.
	Path string `json:"path,omitempty"`
	// Port is probed instead of the endpoint's own port. Default: the
	// endpoint's port.
	Port int `json:"port,omitempty"`
	// TLS makes active checks speak HTTPS, for endpoints that serve TLS.
	// Default: plain HTTP.
	TLS *HealthCheckTLS `json:"tls,omitempty"`
	// Interval between two checks of one endpoint. Default: 5s.
	Interval Duration `json:"interval,omitempty"`
	// Timeout of one check. Default: 2s.
	Timeout Duration `json:"timeout,omitempty"`
	// Status is the expected status: a code (200), a class (2xx) or a
	// range (200-399). Redirects are not followed: a 3xx answer is its own
	// status. Default: 2xx.
	Status string `json:"status,omitempty"`
	// Body is a regular expression the response body must match.
	// Default: any body.
	Body string `json:"body,omitempty"`
	// Rise is how many checks in a row must pass for a failed endpoint to
	// rejoin. Default: 1.
	Rise int `json:"rise,omitempty"`
	// Fall is how many active checks in a row must fail for an endpoint to
	// leave rotation. Default: 2.
	Fall int `json:"fall,omitempty"`

	// EjectAfter is how many gateway errors (502, 503, 504) in a row take
	// an endpoint out of rotation, as Envoy's consecutive_gateway_failure
	// does. A try that gets no response header before its deadline, or
	// whose connection fails, takes it out at once. Default: 3.
	EjectAfter int `json:"eject_after,omitempty"`

	// SlowStart ramps a rejoining endpoint's share of requests up from
	// a tenth to its full weight over this long. Default: off.
	SlowStart Duration `json:"slow_start,omitempty"`
	// MaxEjectedPercent caps the share of a service version's endpoints
	// out of rotation for failed requests (passive) at once, from 1 to 100
	// (one endpoint may always go); beyond it the least recently failed
	// ones stay in. Endpoints that cannot be connected to are out whatever
	// this says, and do not count. Default: 50.
	MaxEjectedPercent int `json:"max_ejected_percent,omitempty"`
	// DrainTimeout bounds how long removing an endpoint waits for its
	// requests in flight. Default: 30s.
	DrainTimeout Duration `json:"drain_timeout,omitempty"`

	status    statusRange
	body      *regexp.Regexp
	transport *http.Transport // for checks over TLS; nil for plain HTTP
}

// HealthCheckTLS configures active checks over HTTPS.
type HealthCheckTLS struct {
	// CA is a PEM file of the certificate authorities that sign the
	// endpoints' certificates. Default: the system's.
	CA string `json:"ca,omitempty"`
	// ServerName is the name sent in SNI and checked in the endpoints'
	// certificates. Default: the endpoint's host.
	ServerName string `json:"server_name,omitempty"`
	// InsecureSkipVerify accepts any certificate. Default: false.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// statusRange is an inclusive range of status codes.
type statusRange struct{ min, max int }

func (r statusRange) has(code int) bool { return code >= r.min && code <= r.max }

func parseStatus(s string) (statusRange, error) {
	switch {
	case len(s) == 3 && strings.HasSuffix(s, "xx") && s[0] >= '1' && s[0] <= '5':
		c := int(s[0]-'0') * 100
		return statusRange{c, c + 99}, nil
	case strings.Contains(s, "-"):
		lo, hi, _ := strings.Cut(s, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && a >= 100 && b <= 599 && a <= b {
			return statusRange{a, b}, nil
		}
	default:
		if c, err := strconv.Atoi(s); err == nil && c >= 100 && c <= 599 {
			return statusRange{c, c}, nil
		}
	}
	return statusRange{}, Invalidf("invalid status %q: want a code (200), a class (2xx) or a range (200-399)", s)
}

// active reports whether active checks are on.
func (h *HealthCheck) active() bool { return h.Path != "" || h.Port != 0 }

// merge returns h with the fields o sets.
func (h HealthCheck) merge(o HealthCheck) HealthCheck {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	setInt := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	setDur := func(dst *Duration, v Duration) {
		if v != 0 {
			*dst = v
		}
	}
	set(&h.Path, o.Path)
	setInt(&h.Port, o.Port)
	if o.TLS != nil {
		h.TLS = o.TLS
	}
	setDur(&h.Interval, o.Interval)
	setDur(&h.Timeout, o.Timeout)
	set(&h.Status, o.Status)
	set(&h.Body, o.Body)
	setInt(&h.Rise, o.Rise)
	setInt(&h.Fall, o.Fall)
	setInt(&h.EjectAfter, o.EjectAfter)
	setDur(&h.SlowStart, o.SlowStart)
	setInt(&h.MaxEjectedPercent, o.MaxEjectedPercent)
	setDur(&h.DrainTimeout, o.DrainTimeout)
	return h
}

// finish fills in defaults and checks h; with load, it also loads its TLS
// files.
func (h *HealthCheck) finish(load bool) error {
	if h.Interval == 0 {
		h.Interval = Duration(5 * time.Second)
	}
	if h.Timeout == 0 {
		h.Timeout = Duration(2 * time.Second)
	}
	if h.Status == "" {
		h.Status = "2xx"
	}
	if h.Rise == 0 {
		h.Rise = 1
	}
	if h.Fall == 0 {
		h.Fall = 2
	}
	if h.MaxEjectedPercent == 0 {
		h.MaxEjectedPercent = 50
	}
	if h.EjectAfter == 0 {
		h.EjectAfter = 3
	}
	if h.DrainTimeout == 0 {
		h.DrainTimeout = Duration(30 * time.Second)
	}
	var err error
	switch {
	case h.Path != "" && !strings.HasPrefix(h.Path, "/"):
		err = Invalidf("path %q must start with /", h.Path)
	case h.Port < 0 || h.Port > 65535:
		err = Invalidf("port %d: want 1 to 65535", h.Port)
	case h.Interval < 0 || h.Timeout < 0 || h.SlowStart < 0 || h.DrainTimeout < 0:
		err = Invalidf("durations must not be negative")
	case h.Rise < 1 || h.Fall < 1:
		err = Invalidf("rise and fall must be at least 1")
	case h.EjectAfter < 1:
		err = Invalidf("eject_after must be at least 1")
	case h.MaxEjectedPercent < 1 || h.MaxEjectedPercent > 100:
		err = Invalidf("max_ejected_percent %d: want 1 to 100", h.MaxEjectedPercent)
	}
	if err != nil {
		return err
	}
	if h.status, err = parseStatus(h.Status); err != nil {
		return err
	}
	if h.Body != "" {
		if h.body, err = regexp.Compile(h.Body); err != nil {
			return Invalidf("body: %v", err)
		}
	}
	if h.TLS != nil && load {
		cfg, err := h.TLS.config()
		if err != nil {
			return err
		}
		// A connection per check: nothing idle to close when a newer
		// config replaces this one.
		h.transport = &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: true}
	}
	return nil
}

// config builds the TLS client config of active checks.
func (t *HealthCheckTLS) config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls: reading CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, Invalidf("tls: CA file %s holds no PEM certificate", t.CA)
		}
	}
	return cfg, nil
}

// HealthPolicy is the resolved health configuration of every service
// version: the defaults with each service's overrides. It never changes
// once built.
type HealthPolicy struct {
	base      HealthCheck
	overrides map[ServiceKey]*HealthCheck // version "" = every version
	anyActive bool                        // some service has active checks
}

// NewHealthPolicy checks and resolves the configured entries, and loads
// their TLS files; nil or empty gives the defaults, without active checks.
func NewHealthPolicy(entries []HealthCheck) (*HealthPolicy, error) {
	return newHealthPolicy(entries, true)
}

// Validate returns the error NewHealthPolicy would return for h as its
// only entry, but for its TLS files, which it does not read: a
// configuration can be checked before it runs.
func (h HealthCheck) Validate() error {
	_, err := newHealthPolicy([]HealthCheck{h}, false)
	return err
}

func newHealthPolicy(entries []HealthCheck, load bool) (*HealthPolicy, error) {
	p := &HealthPolicy{overrides: map[ServiceKey]*HealthCheck{}}
	byKey := map[ServiceKey]HealthCheck{}
	for _, e := range entries {
		key := ServiceKey{e.Service, e.Version}
		if err := key.ValidateFilter(); err != nil {
			return nil, fmt.Errorf("health check: %w", err)
		}
		if _, dup := byKey[key]; dup {
			return nil, fmt.Errorf("health check for %q %q configured twice", e.Service, e.Version)
		}
		byKey[key] = e
	}
	p.base = byKey[ServiceKey{}]
	for key, e := range byKey {
		if key.Service == "" {
			continue
		}
		h := p.base.merge(byKey[ServiceKey{key.Service, ""}]).merge(e)
		if err := h.finish(load); err != nil {
			return nil, fmt.Errorf("health check for service %q %q: %w", key.Service, key.Version, err)
		}
		p.overrides[key] = &h
		p.anyActive = p.anyActive || h.active()
	}
	if err := p.base.finish(load); err != nil {
		return nil, fmt.Errorf("health check: %w", err)
	}
	p.anyActive = p.anyActive || p.base.active()
	return p, nil
}

// of returns the health configuration of a service version, with its
// defaults filled in; it must not be modified.
func (p *HealthPolicy) of(key ServiceKey) *HealthCheck {
	if h, ok := p.overrides[key]; ok {
		return h
	}
	if h, ok := p.overrides[ServiceKey{key.Service, ""}]; ok {
		return h
	}
	return &p.base
}

// endpointHealth is the health state of one endpoint. It is shared by
// every snapshot that holds the endpoint; all fields are atomic.
type endpointHealth struct {
	state       atomic.Uint32 // why it is out of rotation: out* bits; 0 = in rotation
	gatewayErrs atomic.Int64  // gateway errors and timed-out tries in a row
	ewma        peakEWMA      // latency estimate, for balancing
	lastReply   atomic.Int64  // unix nanoseconds of its last response header
	tls         atomic.Bool   // the proxy speaks TLS to it
	fails       atomic.Int64  // failed requests in a row since it last answered
	lastFailure atomic.Int64  // unix nanoseconds
	nextProbe   atomic.Int64  // unix nanoseconds of the next check while out
	rampStart   atomic.Int64  // unix nanoseconds: slow start began
	rampEnd     atomic.Int64  // unix nanoseconds: slow start ends; 0 = off

	requests  atomic.Uint64 // tries sent to it
	failures  atomic.Uint64 // tries that failed without an answer
	ejections atomic.Uint64 // times it was taken out after a failed request

	inFlight atomic.Pointer[inFlightBox] // where the proxy counts requests in flight

	held    atomic.Bool // the store dropped it; the table keeps it through a recovery
	checked atomic.Bool // a check (active, or after a failure) has finished on it

	now func() time.Time // the registry's clock
}

func newEndpointHealth(now func() time.Time) *endpointHealth {
	return &endpointHealth{now: now}
}

// Why an endpoint is out of rotation: bits of endpointHealth.state, one
// word so that the request path reads them in one load.
const (
	outPassive     uint32 = 1 << iota // failed requests
	outUnreachable                    // could not be connected to
	outProbe                          // failing its active checks
	outDraining                       // being removed: no new requests
)

// out reports whether any of the given reasons holds.
func (h *endpointHealth) out(reasons uint32) bool { return h.state.Load()&reasons != 0 }

// setOut sets or clears one reason.
func (h *endpointHealth) setOut(reason uint32, on bool) {
	if on {
		h.state.Or(reason)
	} else {
		h.state.And(^reason)
	}
}

// available reports whether the endpoint takes new requests.
func (h *endpointHealth) available() bool { return h.state.Load() == 0 }

// rampShare is the share of its weight a rejoining endpoint gets at t: from
// 0.1 up to 1 over the slow start. Past the end it switches the ramp off, so
// later picks skip the clock and the random draw.
func (h *endpointHealth) rampShare(t int64) float64 {
	end := h.rampEnd.Load()
	if end == 0 {
		return 1
	}
	if t >= end {
		h.rampEnd.CompareAndSwap(end, 0)
		return 1
	}
	start := h.rampStart.Load()
	return max(0.1, float64(t-start)/float64(end-start))
}
