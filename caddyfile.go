package svcreg

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/balance"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("service_registry", parseGlobalOption)
	httpcaddyfile.RegisterDirective("service_proxy", parseServiceProxy)
	// After reverse_proxy: a path-matched reverse_proxy in the same site
	// (reverse_proxy /static/* ...) keeps its paths.
	httpcaddyfile.RegisterDirectiveOrder("service_proxy", httpcaddyfile.After, "reverse_proxy")
}

// parseGlobalOption turns the service_registry global option into the
// service_registry app.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("service_registry: the global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "service_registry", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the global option:
//
//	service_registry {
//		backend <name> [{
//			<backend options>
//		}]
//		service <name> <version> [<address>...]
//		recovery_grace <duration>|off
//		health_check [<service> [<version>]] {
//			path                <path>
//			port                <port>
//			interval            <duration>
//			timeout             <duration>
//			status              <code>|<class>|<low>-<high>
//			body                <regexp>
//			rise                <n>
//			fall                <n>
//			slow_start          <duration>
//			max_ejected_percent <1-100>
//			eject_after         <n>
//			drain_timeout       <duration>
//			tls {
//				ca                   <PEM file>
//				server_name          <name>
//				insecure_skip_verify
//			}
//		}
//	}
//
// recovery_grace (default 2s) is how long endpoints that the backend's
// store dropped while it was out of reach, or just after it came back,
// keep serving while they answer (see App.RecoveryGrace).
//
// backend defaults to memory. service may repeat; the addresses of
// repeated lines for the same service and version add up. health_check
// without arguments is the default for every service; with a service (and
// version) it overrides the options it sets for that service.
//
// traffic sets a service's traffic policy (see traffic.Policy):
//
//	traffic <service> {
//		split    <version> <weight> [<version> <weight>...]
//		alias    <alias> <version>
//		header   <name>
//		cookie   <name>
//		sticky   cookie | header <name> | ip | off
//		fallback <version>
//	}
//
// alias may repeat.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "backend":
			if a.BackendRaw != nil {
				return d.Err("backend: specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			mod, err := caddyfile.UnmarshalModule(d, "service_registry.backends."+name)
			if err != nil {
				return err
			}
			a.BackendRaw = caddyconfig.JSONModuleObject(mod, "backend", name, nil)

		case "service":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("service: want <name> <version> [<address>...], got %d arguments", len(args))
			}
			key := registry.ServiceKey{Service: args[0], Version: args[1]}
			if err := key.Validate(); err != nil {
				return d.Errf("service: %v", err)
			}
			sc := ServiceConfig{Name: key.Service, Version: key.Version}
			for _, addr := range args[2:] {
				if _, err := registry.ParseAddress(addr); err != nil {
					return d.Errf("service %s: %v", key, err)
				}
				sc.Endpoints = append(sc.Endpoints, registry.Endpoint{Address: addr})
			}
			if d.NextBlock(d.Nesting()) {
				return d.Errf("service: unexpected block")
			}
			a.Services = append(a.Services, sc)

		case "traffic":
			service, p, err := parseTraffic(d)
			if err != nil {
				return err
			}
			if _, dup := a.Traffic[service]; dup {
				return d.Errf("traffic %s: specified more than once", service)
			}
			if a.Traffic == nil {
				a.Traffic = map[string]traffic.Policy{}
			}
			a.Traffic[service] = p

		case "recovery_grace":
			if a.RecoveryGrace != 0 {
				return d.Err("recovery_grace: specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() == "off" {
				a.RecoveryGrace = -1
			} else {
				dur, err := parsePositiveDuration(d.Val())
				if err != nil {
					return d.Errf("recovery_grace: %v (or off)", err)
				}
				a.RecoveryGrace = caddy.Duration(dur)
			}
			if d.NextArg() {
				return d.ArgErr()
			}

		case "health_check":
			hc, err := parseHealthCheck(d)
			if err != nil {
				return err
			}
			for _, other := range a.HealthChecks {
				if other.Service == hc.Service && other.Version == hc.Version {
					return d.Errf("%s: specified more than once", strings.Join(strings.Fields("health_check "+hc.Service+" "+hc.Version), " "))
				}
			}
			a.HealthChecks = append(a.HealthChecks, hc)

		default:
			return d.Errf("service_registry: unknown subdirective %q", d.Val())
		}
	}
	return nil
}

// parseTraffic parses a traffic block; the policy is checked whole, the
// error pointing at its first line.
func parseTraffic(d *caddyfile.Dispenser) (string, traffic.Policy, error) {
	var p traffic.Policy
	if !d.NextArg() {
		return "", p, d.Errf("traffic: want a service name")
	}
	service := d.Val()
	if err := registry.CheckName("service", service); err != nil {
		return "", p, d.Errf("traffic: %v", err)
	}
	if d.NextArg() {
		return "", p, d.Errf("traffic %s: unexpected argument %q", service, d.Val())
	}
	file, line := d.File(), d.Line()
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		args := d.RemainingArgs()
		if opt != "alias" && seen[opt] {
			return "", p, d.Errf("traffic %s: %s specified more than once", service, opt)
		}
		seen[opt] = true
		one := func() (string, error) {
			if len(args) != 1 {
				return "", d.Errf("traffic %s: %s: want one argument, got %d", service, opt, len(args))
			}
			return args[0], nil
		}
		var err error
		switch opt {
		case "split":
			if len(args) == 0 || len(args)%2 != 0 {
				return "", p, d.Errf("traffic %s: split: want <version> <weight> pairs", service)
			}
			p.Split = map[string]int{}
			for i := 0; i < len(args); i += 2 {
				w, err := strconv.Atoi(args[i+1])
				if err != nil || strings.TrimLeft(args[i+1], "0123456789") != "" {
					return "", p, d.Errf("traffic %s: split: weight of %s %q: want 0 to 100", service, args[i], args[i+1])
				}
				if _, dup := p.Split[args[i]]; dup {
					return "", p, d.Errf("traffic %s: split: %s listed twice", service, args[i])
				}
				p.Split[args[i]] = w
			}
		case "alias":
			if len(args) != 2 {
				return "", p, d.Errf("traffic %s: alias: want <alias> <version>", service)
			}
			if p.Aliases == nil {
				p.Aliases = map[string]string{}
			}
			if _, dup := p.Aliases[args[0]]; dup {
				return "", p, d.Errf("traffic %s: alias %s specified more than once", service, args[0])
			}
			p.Aliases[args[0]] = args[1]
		case "header":
			p.Header, err = one()
		case "cookie":
			p.Cookie, err = one()
		case "fallback":
			p.Fallback, err = one()
		case "sticky":
			switch {
			case len(args) == 2 && args[0] == "header":
				p.Sticky, p.StickyHeader = "header", args[1]
			case len(args) == 1 && args[0] != "header":
				p.Sticky = args[0]
			default:
				return "", p, d.Errf("traffic %s: sticky: want cookie, header <name>, ip or off", service)
			}
		default:
			return "", p, d.Errf("traffic %s: unknown option %q", service, opt)
		}
		if err != nil {
			return "", p, err
		}
	}
	if _, err := p.Compile(service, nil); err != nil {
		// the policy as a whole: point at its first line
		return "", p, fmt.Errorf("%v, at %s:%d", err, file, line)
	}
	return service, p, nil
}

// parseHealthCheck parses one health_check block of the global option.
func parseHealthCheck(d *caddyfile.Dispenser) (registry.HealthCheck, error) {
	var hc registry.HealthCheck
	key, err := parseServiceArgs(d, "health_check")
	if err != nil {
		return hc, err
	}
	hc.Service, hc.Version = key.Service, key.Version
	seen := map[string]bool{}
	for d.NextBlock(1) {
		opt := d.Val()
		if seen[opt] {
			return hc, d.Errf("health_check: %s specified more than once", opt)
		}
		seen[opt] = true
		if opt == "tls" {
			if hc.TLS, err = parseHealthCheckTLS(d); err != nil {
				return hc, err
			}
			continue
		}
		if !d.NextArg() {
			return hc, d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return hc, d.ArgErr()
		}
		switch opt {
		case "path":
			if !strings.HasPrefix(val, "/") {
				return hc, d.Errf("health_check: path %q must start with /", val)
			}
			hc.Path = val
		case "status":
			if err := (registry.HealthCheck{Status: val}).Validate(); err != nil {
				return hc, d.Errf("health_check: %v", errors.Unwrap(err)) // without Validate's "health check: "
			}
			hc.Status = val
		case "body":
			if _, err := regexp.Compile(val); err != nil {
				return hc, d.Errf("health_check: body: %v", err)
			}
			hc.Body = val
		case "port":
			hc.Port, err = parseInt(val, 1, 65535)
		case "rise":
			hc.Rise, err = parseInt(val, 1, 1000)
		case "fall":
			hc.Fall, err = parseInt(val, 1, 1000)
		case "max_ejected_percent":
			hc.MaxEjectedPercent, err = parseInt(val, 1, 100)
		case "eject_after":
			hc.EjectAfter, err = parseInt(val, 1, 1000)
		case "interval":
			hc.Interval, err = parsePositiveDuration(val)
		case "timeout":
			hc.Timeout, err = parsePositiveDuration(val)
		case "slow_start":
			hc.SlowStart, err = parsePositiveDuration(val)
		case "drain_timeout":
			hc.DrainTimeout, err = parsePositiveDuration(val)
		default:
			return hc, d.Errf("health_check: unknown subdirective %q", opt)
		}
		if err != nil {
			return hc, d.Errf("health_check: %s: %v", opt, err)
		}
	}
	// the same checks as at provision time, with the line to show
	if err := hc.Validate(); err != nil {
		return hc, d.Errf("%v", err)
	}
	return hc, nil
}

// parseHealthCheckTLS parses the tls block of a health_check:
//
//	tls [{
//		ca                   <PEM file>
//		server_name          <name>
//		insecure_skip_verify
//	}]
func parseHealthCheckTLS(d *caddyfile.Dispenser) (*registry.HealthCheckTLS, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	t := new(registry.HealthCheckTLS)
	seen := map[string]bool{}
	for d.NextBlock(2) {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("health_check: tls: %s specified more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "insecure_skip_verify":
			t.InsecureSkipVerify = true
		case "ca", "server_name":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			if opt == "ca" {
				t.CA = d.Val()
			} else {
				t.ServerName = d.Val()
			}
		default:
			return nil, d.Errf("health_check: tls: unknown subdirective %q", opt)
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return t, nil
}

// parseServiceArgs reads the optional [<service> [<version>]] arguments
// of directive, which select the service versions it applies to.
func parseServiceArgs(d *caddyfile.Dispenser, directive string) (registry.ServiceKey, error) {
	var key registry.ServiceKey
	args := d.RemainingArgs()
	switch len(args) {
	case 2:
		key.Version = args[1]
		fallthrough
	case 1:
		key.Service = args[0]
	case 0:
	default:
		return key, d.Errf("%s: want [<service> [<version>]], got %d arguments", directive, len(args))
	}
	if err := key.ValidateFilter(); err != nil {
		return key, d.Errf("%s: %v", directive, err)
	}
	return key, nil
}

// parseInt parses a whole number from lo to hi.
func parseInt(s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("want a whole number from %d to %d, got %q", lo, hi, s)
	}
	return n, nil
}

// parsePositiveDuration parses a Caddy duration greater than zero.
func parsePositiveDuration(s string) (registry.Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return 0, fmt.Errorf("want a positive duration, got %q", s)
	}
	return registry.Duration(dur), nil
}

// UnmarshalCaddyfile sets up the matcher:
//
//	@name service_version [<service> [<version>]] [{
//		prefix  <base path>
//		unknown error|match
//	}]
func (m *MatchServiceVersion) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume matcher name
	key, err := parseServiceArgs(d, "service_version")
	if err != nil {
		return err
	}
	m.Service, m.Version = key.Service, key.Version
	for d.NextBlock(0) {
		switch d.Val() {
		case "prefix":
			if m.Prefix != "" {
				return d.Err("service_version: prefix specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			if err := checkPrefix(d.Val()); err != nil {
				return d.Errf("service_version: %v", err)
			}
			m.Prefix = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "unknown":
			if m.Unknown != "" {
				return d.Err("service_version: unknown specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			if v := d.Val(); v != "error" && v != "match" {
				return d.Errf("service_version: unknown %q: want error or match", v)
			}
			m.Unknown = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("service_version: unknown subdirective %q", d.Val())
		}
	}
	if d.Next() {
		return d.Err("service_version: specified more than once in the same matcher set")
	}
	return nil
}

// UnmarshalCaddyfile sets up the upstream source:
//
//	dynamic service_registry [<service> <version>]
func (u *UpstreamSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume source name
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 2:
		u.Service, u.Version = args[0], args[1]
	default:
		return d.Errf("dynamic service_registry: want no arguments or <service> <version>, got %d", len(args))
	}
	if d.NextBlock(0) {
		return d.Errf("dynamic service_registry: unknown subdirective %q", d.Val())
	}
	return nil
}

// UnmarshalCaddyfile sets up the selection policy:
//
//	lb_policy service_failover [round_robin|random|least_conn|p2c|peak_ewma]
func (p *FailoverSelection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	args := d.RemainingArgs()
	if len(args) > 1 {
		return d.Errf("service_failover: want at most one balancing algorithm, got %d arguments", len(args))
	}
	if len(args) == 1 {
		if _, err := balance.Parse(args[0]); err != nil {
			return d.Errf("service_failover: %v", err)
		}
		p.Balance = args[0]
	}
	if d.NextBlock(0) {
		return d.Errf("service_failover: unknown subdirective %q", d.Val())
	}
	return nil
}

// UnmarshalCaddyfile takes the options of `transport http`, and its own:
//
//	transport service_http {
//		try_timeout     auto|off|<duration>
//		try_timeout_min <duration>
//		try_timeout_max <duration>
//		retry_status    <status>...|off
//		retry_budget    <percent>% [<per second> [<burst>]]
//		hedge           auto|off|<duration>
//		<any http transport option>
//	}
func (t *HTTPTransport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume transport name
	nameTok := d.Token()
	if d.NextArg() {
		return d.ArgErr()
	}
	passed := []caddyfile.Token{nameTok}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "try_timeout", "try_timeout_min", "try_timeout_max", "retry_status", "retry_budget", "hedge":
			if seen[opt] {
				return d.Errf("service_http: %s specified more than once", opt)
			}
			seen[opt] = true
		default:
			passed = append(passed, d.NextSegment()...)
			continue
		}
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		if err := t.setFailoverOption(opt, args); err != nil {
			return d.Errf("service_http: %s: %v", opt, err)
		}
		// the checks Provision makes, with the line to show
		check := HTTPTransport{TryTimeout: t.TryTimeout, TryTimeoutMin: t.TryTimeoutMin, TryTimeoutMax: t.TryTimeoutMax,
			RetryStatus: t.RetryStatus, RetryBudget: t.RetryBudget, Hedge: t.Hedge}
		if err := check.provisionFailover(); err != nil {
			return d.Errf("service_http: %v", err)
		}
	}
	return t.HTTPTransport.UnmarshalCaddyfile(caddyfile.NewDispenser(block(passed)))
}

// setFailoverOption sets one of service_http's own options.
func (t *HTTPTransport) setFailoverOption(opt string, args []string) error {
	one := func() (string, error) {
		if len(args) != 1 {
			return "", fmt.Errorf("want one value, got %d", len(args))
		}
		return args[0], nil
	}
	switch opt {
	case "try_timeout":
		v, err := one()
		t.TryTimeout = v
		return err
	case "hedge":
		v, err := one()
		t.Hedge = v
		return err
	case "try_timeout_min", "try_timeout_max":
		v, err := one()
		if err != nil {
			return err
		}
		dur, err := parsePositiveDuration(v)
		if opt == "try_timeout_min" {
			t.TryTimeoutMin = caddy.Duration(dur)
		} else {
			t.TryTimeoutMax = caddy.Duration(dur)
		}
		return err
	case "retry_status":
		t.RetryStatus = []int{}
		if len(args) == 1 && args[0] == "off" {
			return nil
		}
		for _, a := range args {
			code, err := strconv.Atoi(a)
			if err != nil {
				return fmt.Errorf("want statuses or off, got %q", a)
			}
			t.RetryStatus = append(t.RetryStatus, code)
		}
		return nil
	default: // retry_budget
		if len(args) > 3 {
			return fmt.Errorf("want <percent>%% [<per second> [<burst>]], got %d values", len(args))
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(args[0], "%"), 64)
		if err != nil || !strings.HasSuffix(args[0], "%") {
			return fmt.Errorf("want a percentage such as 20%%, got %q", args[0])
		}
		b := &RetryBudget{Percent: &pct}
		for i, dst := range []**int{&b.PerSecond, &b.Burst}[:len(args)-1] {
			n, err := parseInt(args[i+1], 0, 1<<20)
			if err != nil {
				return err
			}
			*dst = &n
		}
		t.RetryBudget = b
		return nil
	}
}

// block returns the tokens of a directive with a block: name, then
// segments (each a subdirective line with its own block) between braces
// on their own lines, so that a parser that expects a block reads them as
// written, errors pointing at the user's lines. With no segments it is
// the name alone.
func block(name []caddyfile.Token) []caddyfile.Token {
	if len(name) == 1 {
		return name
	}
	open, closing := name[0], name[0]
	open.Text, closing.Text, closing.Line = "{", "}", name[len(name)-1].Line+1
	return append(append([]caddyfile.Token{name[0], open}, name[1:]...), closing)
}

// Defaults of service_proxy.
const (
	// defaultBalance balances by latency and load: a slow or busy host
	// gets fewer requests.
	defaultBalance = "peak_ewma"
	// defaultRetries lets a request try up to 17 hosts: every host of
	// any service version with up to that many, since service_failover
	// never tries a host twice.
	defaultRetries = 16
	// defaultRequestBuffers is how much of a request body is buffered so
	// that a retry can send it again.
	defaultRequestBuffers = 1 << 20
	// defaultDialTimeout bounds how long a try waits to connect.
	defaultDialTimeout = caddy.Duration(time.Second)
)

// parseServiceProxy sets up the service_proxy directive:
//
//	service_proxy [{
//		prefix       <base path>
//		lb_policy    [service_failover] round_robin|random|least_conn|p2c|peak_ewma
//		retries      <n>
//		strip_prefix on|off
//		<any other reverse_proxy subdirective: transport, header_up, header_down, ...>
//	}]
//
// It is the short form of the following, with two differences: its
// handlers sit in the matched route itself, where handle would put them in
// a subroute (which rebuilds its middleware chain on every request); and
// instead of the handle_errors block, the route answers its errors itself
// with the same texts (its matcher in unknown match mode, and the handler
// service_errors first, which has no Caddyfile form), so that it needs no
// error route and may sit inside route, handle and handle_path blocks.
// service_errors also hands a request without a body on with a nil Body,
// so that it skips request_buffers (what service_no_body does), and strips
// the prefix itself, to the same result as uri strip_prefix below.
//
//	@svc service_version [{ prefix <base path> }]
//	handle @svc {
//		uri strip_prefix {svc.prefix}
//		reverse_proxy {
//			dynamic service_registry
//			lb_policy service_failover peak_ewma
//			lb_retries 16
//			lb_retry_match {
//				method GET HEAD OPTIONS
//			}
//			lb_retry_match {
//				header Idempotency-Key *
//			}
//			lb_retry_match {
//				header X-Idempotency-Key *
//			}
//			request_buffers 1MiB
//			transport service_http {
//				dial_timeout 1s
//			}
//		}
//	}
//	handle_errors {
//		@svc_error not vars {svc.error} ""
//		respond @svc_error "{svc.error}" {http.error.status_code}
//		@svc_failed not vars {svc.name} ""
//		respond @svc_failed `no host of service "{svc.name}" version "{svc.version}" answered` {http.error.status_code}
//	}
//
// A request that fails to connect, or whose sending fails (service_http),
// is retried on another host whatever its method; GET, HEAD and OPTIONS
// are also retried after a failure once sent (give lb_retry_match to change
// that), and so are requests with an Idempotency-Key or X-Idempotency-Key
// header. Bodies up to 1 MiB are buffered so that a retry sends them whole;
// a larger body is streamed, and its request is retried only if the
// connection failed. A transport http block runs as service_http with the
// same options, and gets the 1s dial_timeout unless it sets one.
func parseServiceProxy(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	h.Next() // consume directive name
	nameTok := h.Token()
	if h.NextArg() {
		return nil, h.Errf("service_proxy: unexpected argument %q; options go in its block", h.Val())
	}

	matcher := MatchServiceVersion{}
	lbPolicy, retries, strip := defaultBalance, defaultRetries, true
	seen := map[string]bool{}
	proxyTokens := []caddyfile.Token{nameTok}
	for h.NextBlock(0) {
		opt := h.Val()
		switch opt {
		case "prefix", "lb_policy", "retries", "strip_prefix":
			if seen[opt] {
				return nil, h.Errf("service_proxy: %s specified more than once", opt)
			}
			seen[opt] = true
		}
		switch opt {
		case "prefix":
			if !h.NextArg() {
				return nil, h.ArgErr()
			}
			if err := checkPrefix(h.Val()); err != nil {
				return nil, h.Errf("service_proxy: %v", err)
			}
			matcher.Prefix = h.Val()
		case "lb_policy":
			args := h.RemainingArgs()
			if len(args) == 2 && args[0] == "service_failover" {
				args = args[1:]
			}
			if len(args) != 1 {
				return nil, h.Errf("service_proxy: lb_policy: want round_robin, random, least_conn, p2c or peak_ewma")
			}
			if _, err := balance.Parse(args[0]); err != nil {
				return nil, h.Errf("service_proxy: lb_policy: %v", err)
			}
			lbPolicy = args[0]
		case "retries":
			if !h.NextArg() {
				return nil, h.ArgErr()
			}
			n, err := strconv.Atoi(h.Val())
			if err != nil || n < 0 {
				return nil, h.Errf("service_proxy: retries: want a number of at least 0, got %q", h.Val())
			}
			retries = n
		case "strip_prefix":
			if !h.NextArg() {
				return nil, h.ArgErr()
			}
			switch h.Val() {
			case "on":
				strip = true
			case "off":
				strip = false
			default:
				return nil, h.Errf("service_proxy: strip_prefix: want on or off, got %q", h.Val())
			}
		case "to", "dynamic":
			return nil, h.Errf("service_proxy: %s is not allowed: the upstreams come from the service registry", opt)
		case "lb_retries":
			return nil, h.Err("service_proxy: use retries instead of lb_retries")
		default:
			// a reverse_proxy subdirective: hand it over as written
			proxyTokens = append(proxyTokens, h.NextSegment()...)
			continue
		}
		if h.NextArg() {
			return nil, h.ArgErr()
		}
	}

	// Parse the passed-through subdirectives with reverse_proxy's own
	// parser, so that errors point at the user's lines.
	d := caddyfile.NewDispenser(block(proxyTokens))
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h.WithDispenser(d)); err != nil {
		return nil, err
	}
	if err := serviceProxyDefaults(rp, lbPolicy, retries); err != nil {
		return nil, h.Errf("service_proxy: %v", err)
	}

	// The handlers go straight into the matched route: a handle block
	// would put them in a subroute, which builds its middleware chain
	// again for every request.
	// The route answers everything it claims by itself (service_errors),
	// so that it needs no error route and may sit inside route, handle
	// and handle_path blocks; service_errors also does service_no_body's
	// work.
	matcher.Unknown = "match"
	// It also strips the prefix (what uri strip_prefix {svc.prefix}
	// does, for less).
	handlers := []json.RawMessage{
		caddyconfig.JSONModuleObject(ErrorsHandler{StripPrefix: strip}, "handler", "service_errors", nil),
		caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil),
	}
	route := caddyhttp.Route{
		MatcherSetsRaw: []caddy.ModuleMap{{"service_version": h.JSON(matcher)}},
		HandlersRaw:    handlers,
	}
	return []httpcaddyfile.ConfigValue{{Class: "route", Value: route}}, nil
}

// serviceProxyDefaults fills in what service_proxy sets on reverse_proxy.
func serviceProxyDefaults(rp *reverseproxy.Handler, lbPolicy string, retries int) error {
	rp.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(new(UpstreamSource), "source", "service_registry", nil)
	if rp.LoadBalancing == nil {
		rp.LoadBalancing = new(reverseproxy.LoadBalancing)
	}
	rp.LoadBalancing.SelectionPolicyRaw = caddyconfig.JSONModuleObject(&FailoverSelection{Balance: lbPolicy}, "policy", "service_failover", nil)
	rp.LoadBalancing.Retries = retries
	// a user's lb_retry_match adds to the retries of idempotent methods
	methods, err := json.Marshal(caddyhttp.MatchMethod{"GET", "HEAD", "OPTIONS"})
	if err != nil {
		return err
	}
	// and so does a request the client marked idempotent
	marked, err := json.Marshal(caddyhttp.MatchHeader{"Idempotency-Key": {"*"}})
	if err != nil {
		return err
	}
	xmarked, err := json.Marshal(caddyhttp.MatchHeader{"X-Idempotency-Key": {"*"}})
	if err != nil {
		return err
	}
	rp.LoadBalancing.RetryMatchRaw = append(rp.LoadBalancing.RetryMatchRaw,
		caddy.ModuleMap{"method": methods}, caddy.ModuleMap{"header": marked}, caddy.ModuleMap{"header": xmarked})
	if rp.RequestBuffers == 0 {
		rp.RequestBuffers = defaultRequestBuffers
	}
	if rp.TransportRaw == nil {
		t := &HTTPTransport{HTTPTransport: reverseproxy.HTTPTransport{DialTimeout: defaultDialTimeout}}
		rp.TransportRaw = caddyconfig.JSONModuleObject(t, "protocol", "service_http", nil)
		return nil
	}
	// A transport http block runs as service_http, with the same options.
	var transport map[string]any
	if err := json.Unmarshal(rp.TransportRaw, &transport); err != nil {
		return err
	}
	if transport["protocol"] != "http" && transport["protocol"] != "service_http" {
		return nil
	}
	transport["protocol"] = "service_http"
	if _, ok := transport["dial_timeout"]; !ok {
		transport["dial_timeout"] = defaultDialTimeout
	}
	raw, err := json.Marshal(transport)
	if err != nil {
		return err
	}
	rp.TransportRaw = raw
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*MatchServiceVersion)(nil)
	_ caddyfile.Unmarshaler = (*UpstreamSource)(nil)
	_ caddyfile.Unmarshaler = (*FailoverSelection)(nil)
	_ caddyfile.Unmarshaler = (*HTTPTransport)(nil)
)
