package svcreg

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/internal/h1"
	"github.com/svcreg/caddy-svcreg/registry"
)

func init() {
	caddy.RegisterModule(HTTPTransport{})
	watchdogs.New = newWatchdog
}

// HTTPTransport is Caddy's http transport (every option of `transport
// http` applies) made to fail over well, for the requests the
// service_registry upstream source and the service_failover policy send:
//
//   - Every try has a deadline for its response header (TryTimeout). A try
//     that misses it fails with 504 Gateway Timeout; reverse_proxy retries
//     GET, HEAD and OPTIONS on another host (service_proxy's
//     lb_retry_match), other methods are answered 504.
//   - A GET, HEAD or OPTIONS answered 502, 503 or 504 is retried on another
//     host while there is an untried one and the retry budget allows.
//   - A GET, HEAD or OPTIONS whose try has had no response header for the
//     service version's recent p99 (at least 50 ms) is also sent to a host
//     in rotation it has not tried, if the retry budget allows (Hedge); the
//     first answer wins and the other try is ended.
//   - Every try's outcome goes to the registry: its latency (balancing,
//     the deadline), a gateway error or a timeout (EjectAfter in a row
//     take the host out), a failed or refused connection (out at once).
//   - Retries after requests a host received (answered with a gateway
//     error, timed out, cut off) are limited by a per-service retry
//     budget, so that a whole version failing does not multiply its load;
//     retries after a host could not be reached, or went silent while its
//     peers answered, are free.
//   - A request whose body can be sent again is sent again when its host
//     provably did not process it, whatever its method: an HTTP/2 stream
//     refused or left unprocessed by a GOAWAY; an HTTP/1 request that
//     failed before one byte of it was written (reported to reverse_proxy
//     as a dial error, which it retries on another host). Before a request
//     that is not retried anyway is written on a reused HTTP/1 connection,
//     the connection is checked, so that it does not go out on one its
//     host has already closed.
//   - GET, HEAD, OPTIONS and requests with an Idempotency-Key or
//     X-Idempotency-Key header are "retried anyway": the rules above that
//     speak of GET, HEAD and OPTIONS apply to them all.
//
// Requests that do not come from the registry are sent as by `transport
// http`, with the rules for requests not processed only.
type HTTPTransport struct {
	reverseproxy.HTTPTransport

	// TryTimeout is how long one try waits for its response header: auto
	// (4 times the service version's recent p99 latency, within
	// TryTimeoutMin and TryTimeoutMax; TryTimeoutMin until it has 20
	// answers, timed-out tries counting as answers at the deadline until
	// then, so that a service slower than the minimum learns its latency
	// within its first few requests), a duration, or off. Default: auto.
	TryTimeout string `json:"try_timeout,omitempty"`

	// TryTimeoutMin is the shortest automatic deadline: a host is never
	// cut sooner, however fast its peers. Default: 2s, or TryTimeoutMax if
	// that is shorter.
	TryTimeoutMin caddy.Duration `json:"try_timeout_min,omitempty"`

	// TryTimeoutMax is the longest automatic deadline. Default: 30s, or
	// TryTimeoutMin if that is longer.
	TryTimeoutMax caddy.Duration `json:"try_timeout_max,omitempty"`

	// RetryStatus are the statuses with which a host's answer to a GET,
	// HEAD or OPTIONS request is retried on another host, within the retry
	// budget. Default: 502, 503 and 504. An empty list turns it off.
	RetryStatus []int `json:"retry_status,omitempty"`

	// RetryBudget limits the retries that follow requests the service
	// version's hosts received. Default: 20% of requests, at least 10 a
	// second, saving up to 100.
	RetryBudget *RetryBudget `json:"retry_budget,omitempty"`

	// Hedge is when a GET, HEAD or OPTIONS request (or one with an
	// Idempotency-Key) whose try has had no response header for a while
	// is also sent to another host, the first answer winning and the
	// other try ended: auto (after the service version's recent p99
	// latency, at least 50ms; not before the version has 20 recent
	// answers), a duration, or off. A hedge counts as a retry for the
	// retry budget, and goes only to a host in rotation that the request
	// has not tried. Default: auto.
	Hedge string `json:"hedge,omitempty"`

	tracked     bool          // connections are writeTrackingConns (not HTTP/3)
	h2c         bool          // plain connections speak HTTP/2
	tryTimeout  time.Duration // 0 = auto, < 0 = off
	hedge       time.Duration // 0 = auto, < 0 = off
	proxied     bool          // requests may go through a forward proxy: no hedges
	budget      budgetRule
	retryStatus [8]bool    // retryStatus[code-500] for 500-507
	ownClient   *h1.Client // service_http's own HTTP/1.1 client; nil: every request goes through Go's transport
}

// RetryBudget configures a retry budget (see HTTPTransport.RetryBudget).
type RetryBudget struct {
	// Percent of requests that may be retried, from 0 to 100. Default: 20.
	Percent *float64 `json:"percent,omitempty"`
	// PerSecond is how many retries a second are allowed whatever the
	// traffic. Default: 10.
	PerSecond *int `json:"per_second,omitempty"`
	// Burst is how many retries the budget can save up. Default: 100.
	Burst *int `json:"burst,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (HTTPTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.service_http",
		New: func() caddy.Module { return new(HTTPTransport) },
	}
}

// Provision sets up the embedded http transport and makes its TCP
// connections count the bytes written on them.
func (t *HTTPTransport) Provision(ctx caddy.Context) error {
	if err := t.provisionFailover(); err != nil {
		return err
	}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	// HTTP/3 runs over QUIC, which is not dialed through DialContext.
	t.h2c = slices.Contains(t.Versions, "h2c")
	t.tracked = !slices.Contains(t.Versions, "3") && t.Transport != nil && t.Transport.DialContext != nil
	if t.tracked {
		t.Transport.DialContext = trackDial(t.Transport.DialContext)
	}
	t.ownClient = newOwnClient(t)
	// Through a forward proxy, Go's transport writes the request's
	// variables as it sends it, which a hedge copies meanwhile.
	t.proxied = t.ForwardProxyURL != "" || len(t.NetworkProxyRaw) > 0 || proxyInEnvironment()
	return nil
}

// Cleanup closes the idle connections.
func (t *HTTPTransport) Cleanup() error {
	if t.ownClient != nil {
		t.ownClient.Close()
	}
	return t.HTTPTransport.Cleanup()
}

// Defaults of the failover settings.
const (
	defaultTryTimeoutMin = caddy.Duration(2 * time.Second)
	defaultTryTimeoutMax = caddy.Duration(30 * time.Second)
	tryTimeoutFactor     = 4
)

// provisionFailover checks the failover settings and fills in defaults.
func (t *HTTPTransport) provisionFailover() error {
	switch t.TryTimeout {
	case "", "auto":
		t.tryTimeout = 0
	case "off":
		t.tryTimeout = -1
	default:
		d, err := caddy.ParseDuration(t.TryTimeout)
		if err != nil || d <= 0 {
			return fmt.Errorf("try_timeout %q: want auto, off or a positive duration", t.TryTimeout)
		}
		t.tryTimeout = d
	}
	switch t.Hedge {
	case "", "auto":
		t.hedge = 0
	case "off":
		t.hedge = -1
	default:
		d, err := caddy.ParseDuration(t.Hedge)
		if err != nil || d <= 0 {
			return fmt.Errorf("hedge %q: want auto, off or a positive duration", t.Hedge)
		}
		t.hedge = d
	}
	if t.TryTimeoutMax == 0 {
		t.TryTimeoutMax = max(defaultTryTimeoutMax, t.TryTimeoutMin)
	}
	if t.TryTimeoutMin == 0 {
		t.TryTimeoutMin = min(defaultTryTimeoutMin, t.TryTimeoutMax)
	}
	if t.TryTimeoutMin < 0 || t.TryTimeoutMax < t.TryTimeoutMin {
		return fmt.Errorf("try_timeout_min %v and try_timeout_max %v: want 0 < min <= max",
			time.Duration(t.TryTimeoutMin), time.Duration(t.TryTimeoutMax))
	}
	if t.RetryStatus == nil {
		t.RetryStatus = []int{502, 503, 504}
	}
	for _, code := range t.RetryStatus {
		if code < 500 || code >= 500+len(t.retryStatus) {
			return fmt.Errorf("retry_status %d: want a status from 500 to %d", code, 500+len(t.retryStatus)-1)
		}
		t.retryStatus[code-500] = true
	}
	t.budget = defaultBudget
	if b := t.RetryBudget; b != nil {
		if b.Percent != nil {
			if *b.Percent < 0 || *b.Percent > 100 {
				return fmt.Errorf("retry_budget percent %v: want 0 to 100", *b.Percent)
			}
			t.budget.ratio = *b.Percent / 100
		}
		if b.PerSecond != nil {
			if *b.PerSecond < 0 {
				return fmt.Errorf("retry_budget per_second %d: want 0 or more", *b.PerSecond)
			}
			t.budget.perSecond = *b.PerSecond
		}
		if b.Burst != nil {
			if *b.Burst < 0 {
				return fmt.Errorf("retry_budget burst %d: want 0 or more", *b.Burst)
			}
			t.budget.burst = *b.Burst
		}
	}
	return nil
}

// RoundTrip sends one try of a request.
func (t *HTTPTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	a, _ := caddyhttp.GetVar(req.Context(), attemptVar).(*attempt)
	if a == nil || a.svc == nil || a.last < 0 {
		resp, _, err, _ := t.sendWithin(req, 0, silenceCheck{})
		return resp, err
	}
	return t.try(req, a, a.svc.Endpoints[a.last])
}

// try sends a try of a request from the registry to ep, with its
// deadline, and reports its outcome.
func (t *HTTPTransport) try(req *http.Request, a *attempt, ep *registry.Endpoint) (*http.Response, error) {
	svc := a.svc
	ep.SetUsesTLS(t.TLSEnabled())
	start := time.Now()
	a.dialing.Store(0)
	if !a.deposited {
		a.deposited = true
		stateOf(svc).budget.deposit(t.budget)
	}
	deadline := t.deadline(svc, start)
	// A body that is not buffered whole cannot be sent again once read:
	// its request is retried only if it never left.
	replayable := bodyReplayable(req)
	retried := replayable && retriedAnyway(req)
	var silence silenceCheck
	var plan hedgePlan
	if retried {
		// a request that is retried anyway need not wait out a host that
		// has stopped answering
		silence = silenceCheck{svc: svc, ep: ep, begin: start, after: t.silenceAfter(svc, start, deadline)}
		firstCheck := deadline
		if silence.after > 0 {
			firstCheck = silence.after
		}
		if after := t.hedgeAfter(req, a, start, firstCheck); after > 0 {
			if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
				req = withGetBody(req) // the hedge sends the body too
			}
			plan = hedgePlan{after: after, t: t, a: a, req: req, header: copyHeader(req.Header), deadline: deadline}
		}
	}
	s := t.sendHedged(req, deadline, silence, plan)
	a.reported = true
	if s.hedge == nil && plan.header != nil {
		releaseHeader(plan.header)
	}
	if s.hedge != nil {
		return t.hedged(s.hedge, req, a, ep, start, s)
	}
	return t.outcome(req, a, ep, start, s)
}

// sent is how one try's sending ended.
type sent struct {
	resp      *http.Response
	err       error
	neverSent bool   // the request provably did not reach the host
	cut       int    // whether, and why, the watchdog ended the try
	hedge     *hedge // the hedge sent meanwhile, or nil
}

// outcome reports how a try of a request from the registry to ep that
// began at start ended, and returns its answer, or the error that
// reverse_proxy retries (or not: a.noRetry).
func (t *HTTPTransport) outcome(req *http.Request, a *attempt, ep *registry.Endpoint, start time.Time, s sent) (*http.Response, error) {
	svc := a.svc
	resp, err, neverSent, cut := s.resp, s.err, s.neverSent, s.cut
	latency := time.Since(start)
	replayable := bodyReplayable(req)
	retried := replayable && retriedAnyway(req)
	switch {
	case cut != notCut:
		outcome := registry.TimedOut
		if cut == cutSilent {
			outcome = registry.Silent
		}
		svcReport(a, ep, outcome, latency)
		// A silent host's peers are answering: retrying on them does not
		// pile load on a failing version, so it costs no budget.
		if !replayable || retried && cut == cutDeadline && !stateOf(svc).budget.withdraw(t.budget, start.Add(latency)) {
			a.noRetry = true
		}
		return nil, tryTimeoutError{latency.Round(time.Millisecond)}
	case err != nil:
		if req.Context().Err() != nil {
			return nil, err // the client went away: not the host's failure
		}
		var dialErr reverseproxy.DialError
		if !neverSent && errors.As(err, &dialErr) {
			svcReport(a, ep, registry.Unreachable, 0)
			return nil, err // nothing was sent: retrying is free
		}
		svcReport(a, ep, registry.Failed, 0)
		if !neverSent && !replayable || retried && !stateOf(svc).budget.withdraw(t.budget, start.Add(latency)) {
			a.noRetry = true
		}
		return nil, err
	case resp.StatusCode >= 500 && resp.StatusCode < 500+len(t.retryStatus) && isGatewayError(resp.StatusCode):
		latency = max(latency-time.Duration(a.dialing.Load()), 0)
		svcReport(a, ep, registry.GatewayError, latency)
		if retried && t.retryStatus[resp.StatusCode-500] && a.untried() > 0 && stateOf(svc).budget.withdraw(t.budget, start.Add(latency)) {
			// another host takes the request: this answer goes nowhere
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10) // so that the connection can be reused
			resp.Body.Close()
			return nil, gatewayStatusError{resp.StatusCode}
		}
		return resp, nil
	default:
		// a dial this try waited for is not the host's answering time
		svcReport(a, ep, registry.Answered, max(latency-time.Duration(a.dialing.Load()), 0))
		return resp, nil
	}
}

// svcReport reports a try's outcome to the request's registry.
func svcReport(a *attempt, ep *registry.Endpoint, o registry.Outcome, latency time.Duration) {
	if a.reg != nil {
		a.reg.Report(a.svc, ep, o, latency)
	}
}

// isGatewayError reports whether a status says the host could not serve
// the request as a gateway: 502, 503 or 504.
func isGatewayError(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// tryTimeoutError is a try that got no response header before its
// deadline, or before its host went silent. It is a net.Error that timed
// out, which reverse_proxy answers with 504.
type tryTimeoutError struct{ after time.Duration }

func (e tryTimeoutError) Error() string {
	return "no response header after " + e.after.String() + " (the try's deadline, or its host stopped answering)"
}
func (tryTimeoutError) Timeout() bool   { return true }
func (tryTimeoutError) Temporary() bool { return true }

// gatewayStatusError is a gateway error answer that another host retries.
type gatewayStatusError struct{ status int }

func (e gatewayStatusError) Error() string {
	return "upstream answered " + strconv.Itoa(e.status) + " " + http.StatusText(e.status) + "; retrying on another host"
}

// deadline returns the deadline of a try to svc that starts at now, or 0
// for none.
func (t *HTTPTransport) deadline(svc *registry.Service, now time.Time) time.Duration {
	switch {
	case t.tryTimeout < 0:
		return 0
	case t.tryTimeout > 0:
		return t.tryTimeout
	}
	p99 := svc.LatencyP99(now)
	return min(max(tryTimeoutFactor*p99, time.Duration(t.TryTimeoutMin)), time.Duration(t.TryTimeoutMax))
}

// silenceAfterMin is the shortest wait before a try's host is checked for
// silence.
const silenceAfterMin = 100 * time.Millisecond

// silenceAfter returns when a try that began at now checks whether its
// host went silent: 4 times the service's p99, at least 100 ms; 0 (never)
// when that is not before the deadline.
func (t *HTTPTransport) silenceAfter(svc *registry.Service, now time.Time, deadline time.Duration) time.Duration {
	after := max(tryTimeoutFactor*svc.LatencyP99(now), silenceAfterMin)
	if deadline > 0 && after >= deadline {
		return 0
	}
	return after
}

// sendWithin sends req with a deadline for its response header (none for
// d <= 0), and the silence check s (none when s.after is 0). cut says
// whether, and why, the watchdog ended the try.
func (t *HTTPTransport) sendWithin(req *http.Request, d time.Duration, s silenceCheck) (resp *http.Response, cut int, err error, neverSent bool) {
	r := t.sendHedged(req, d, s, hedgePlan{})
	return r.resp, r.cut, r.err, r.neverSent
}

// sendHedged is sendWithin that also sends the hedge of plan, if any, when
// it is due.
func (t *HTTPTransport) sendHedged(req *http.Request, d time.Duration, s silenceCheck, plan hedgePlan) (r sent) {
	direct := t.ownClientSends(req)
	if d <= 0 && s.after == 0 && plan.after == 0 {
		if direct {
			r.resp, r.err, r.neverSent = t.ownRoundTrip(req, nil)
		} else {
			r.resp, r.err, r.neverSent = t.send(req)
		}
		return r
	}
	w := watchdogs.Get().(*watchdog)
	first := d
	if s.after > 0 {
		first = s.after
	}
	var cancel context.CancelFunc
	if direct {
		// the client hands the watchdog the try's dial, then its
		// connection
		w.start(nil, s, d, first, plan)
		r.resp, r.err, r.neverSent = t.ownRoundTrip(req, w)
	} else {
		var ctx context.Context
		ctx, cancel = context.WithCancel(req.Context())
		w.start(cancel, s, d, first, plan)
		r.resp, r.err, r.neverSent = t.send(req.WithContext(ctx))
	}
	why, h := w.stop()
	r.hedge = h
	if why != notCut {
		if r.resp != nil {
			r.resp.Body.Close()
		}
		if cancel != nil {
			cancel()
		}
		if req.Context().Err() != nil {
			return sent{err: req.Context().Err(), hedge: h} // the client went away
		}
		return sent{cut: why, hedge: h}
	}
	if direct {
		return r
	}
	if r.err != nil {
		cancel()
		r.resp = nil
		return r
	}
	if r.resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgraded connection is the body: it must stay a
		// ReadWriteCloser, and lives as long as the request.
		return r
	}
	r.resp.Body = &cancelOnClose{ReadCloser: r.resp.Body, cancel: cancel}
	return r
}

// cancelOnClose ends a try's context when its response body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// send sends req with the http transport and marks a request that the
// host provably did not get as safe to retry (neverSent).
//
// A request whose body is buffered whole gets a GetBody, so that the
// transport itself sends it again on another connection when the host
// provably did not process it: an HTTP/2 stream above a GOAWAY's last
// stream ID or refused (REFUSED_STREAM), an HTTP/1 request of which not
// one byte was written.
//
// A request that the host may not see twice (neither retried anyway nor
// marked idempotent) is held to stricter rules:
//   - if its round trip failed before one byte was written on its
//     connection since the connection was handed to it, the host cannot
//     have seen it, and it is retried on another host. This catches an
//     HTTP/2 connection whose host was killed: the kernel refuses the
//     write of its HEADERS frame (the host's reset is already in), before
//     the transport's reader has seen the reset and stopped using it;
//   - over HTTP/1, a host that closes an idle keep-alive connection
//     cannot say whether it read the request that crossed the close, so
//     before its first byte goes out on a reused connection, the
//     connection is checked: if the host has already closed it (or sent
//     something unasked, as a server does before it closes), nothing is
//     written and the request goes out on another connection.
//
// Once a byte of it is written, a request whose connection then breaks
// is not sent again: the host may have read its header and acted on it.
func (t *HTTPTransport) send(req *http.Request) (*http.Response, error, bool) {
	replayable := bodyReplayable(req)
	if replayable && req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		req = withGetBody(req)
	}
	if !t.tracked || retriedAnyway(req) || !replayable {
		resp, err := t.HTTPTransport.RoundTrip(req)
		return resp, err, false
	}
	var conn *writeTrackingConn
	var before int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c, h2 := info.Conn, t.h2c
		if tc, ok := c.(*tls.Conn); ok {
			st := tc.ConnectionState()
			// a handshake never done: net/http's wrapper of an h2c conn
			h2 = !st.HandshakeComplete || st.NegotiatedProtocol == "h2"
			c = tc.NetConn()
		}
		if u, ok := c.(interface{ UnencryptedNetConn() net.Conn }); ok {
			c, h2 = u.UnencryptedNetConn(), true
		}
		if conn, _ = c.(*writeTrackingConn); conn != nil {
			before = conn.written.Load()
			// HTTP/2 hosts send frames unasked: a peek proves nothing
			conn.checkPeer.Store(info.Reused && !h2)
		}
	}}
	resp, err := t.HTTPTransport.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil && conn != nil && req.Context().Err() == nil {
		if conn.written.Load() == before {
			// Not one byte reached the connection since this request
			// got it: the host cannot have seen it, so any method may
			// be sent elsewhere.
			return nil, reverseproxy.NewDialError(err), true
		}
	}
	return resp, err, false
}

// Interface guards
var (
	_ caddy.Provisioner                   = (*HTTPTransport)(nil)
	_ caddy.CleanerUpper                  = (*HTTPTransport)(nil)
	_ http.RoundTripper                   = (*HTTPTransport)(nil)
	_ reverseproxy.TLSTransport           = (*HTTPTransport)(nil)
	_ reverseproxy.ProxyProtocolTransport = (*HTTPTransport)(nil)
	_ net.Error                           = tryTimeoutError{}
)
