package svcreg

import (
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
)

// Hedged (backup) tries, as Finagle's backup requests and Envoy's and
// gRPC's hedging send them: when a try of a request that may be sent twice
// has had no response header for a while, the same request goes to a
// host it has not tried, and the first response header wins; the other
// try is ended.
//
// The delay is the service version's recent p99 latency, at least
// hedgeAfterMin: about one request in a hundred waits that long when
// every host is well, so hedges stay near 1% of requests. A version with
// too few recent answers to know its p99 is not hedged (one slow request
// on a quiet service is most likely just slow). A hedge is a retry for
// the retry budget: it is sent only if the budget has one, and never to a
// host the request tried, or one out of rotation.

// hedgeAfterMin is the shortest automatic hedge delay. Below it the wait
// is within the noise of a busy machine (a scheduling delay, a GC pause),
// which strikes every host alike: a hedge would only double the work.
const hedgeAfterMin = 50 * time.Millisecond

// dialInfoKey is the context key under which reverse_proxy hands the
// transport the address to dial (reverseproxy.GetDialInfo reads it).
const dialInfoKey caddy.CtxKey = "reverse_proxy.dial_info"

// hedgeAfter returns how long a try of req that began at now waits for
// its response header before a hedge is sent, or 0 for no hedge: hedging
// off, a forward proxy, an upgrade, no untried host, no delay
// shorter than the try's next check (firstCheck: its silence check or
// deadline, 0 for none).
func (t *HTTPTransport) hedgeAfter(req *http.Request, a *attempt, now time.Time, firstCheck time.Duration) time.Duration {
	if t.hedge < 0 || t.proxied || a.untried() == 0 {
		return 0
	}
	if _, upgrade := req.Header["Upgrade"]; upgrade {
		return 0 // a connection taken over cannot be sent twice
	}
	after := t.hedge
	if after == 0 {
		p99 := a.svc.LatencyP99(now)
		if p99 == 0 {
			return 0 // its latency is not known yet
		}
		after = max(p99, hedgeAfterMin)
	}
	if firstCheck > 0 && after >= firstCheck {
		return 0
	}
	return after
}

// headerField is one field of a request header: its name and values.
type headerField struct {
	name   string
	values []string
}

// headerCopies hold the lists of copyHeader.
var headerCopies = sync.Pool{New: func() any {
	fields := make([]headerField, 0, 16)
	return &fields
}}

// copyHeader returns the fields of h for a hedge, taken before the first
// try is sent: the own client adds Accept-Encoding to the first try's
// header while it writes it, so a hedge cannot read it then. A list from a
// pool, not a map: most tries send no hedge and give it back, and a list
// costs no hashing. The values are shared (nothing that sends a request
// changes them).
func copyHeader(h http.Header) *[]headerField {
	p := headerCopies.Get().(*[]headerField)
	for name, values := range h {
		*p = append(*p, headerField{name, values})
	}
	return p
}

// releaseHeader gives back a copyHeader list that no hedge took.
func releaseHeader(p *[]headerField) {
	clear(*p) // no references kept
	*p = (*p)[:0]
	headerCopies.Put(p)
}

// headerOf returns the header of copyHeader's fields.
func headerOf(fields []headerField) http.Header {
	h := make(http.Header, len(fields))
	for _, f := range fields {
		h[f.name] = f.values
	}
	return h
}

// hedgePlan is what a try's watchdog needs to send its hedge: the zero
// value sends none.
type hedgePlan struct {
	after    time.Duration // since the try began; 0: no hedge
	t        *HTTPTransport
	a        *attempt
	req      *http.Request  // the try's request; its body has a GetBody
	header   *[]headerField // its header, taken before it was sent (copyHeader)
	deadline time.Duration  // the hedge's own deadline (0: none)
}

// Who answered first.
const (
	hedgePending = iota
	firstWon
	hedgeWon
)

// hedge is a backup try in flight.
type hedge struct {
	t       *HTTPTransport
	reg     tryRegistry // where its outcome is reported
	svc     *registry.Service
	ep      *registry.Endpoint
	index   int // in the request's pool
	req     *http.Request
	begin   time.Time
	dialing *attempt // counts the hedge's own dialing time
	silence silenceCheck
	cancel  context.CancelFunc
	first   *watchdog // the try it backs up

	deadline time.Duration
	done     chan struct{} // closed when run returns

	mu    sync.Mutex
	state int            // hedgePending, firstWon or hedgeWon
	resp  *http.Response // the hedge's answer once it won
}

// launch sends a hedge for the try that w watches, if the request has a
// host left to try and the retry budget allows. It is called with w.mu
// held, so that it and the try's owner never touch the attempt at once.
func (p *hedgePlan) launch(w *watchdog, now time.Time) *hedge {
	a, svc := p.a, p.a.svc
	i := a.balance.Pick(a, svc.Rotation(), false)
	if i < 0 || !stateOf(svc).budget.withdraw(p.t.budget, now) {
		return nil
	}
	a.markTried(i)
	ep := svc.Endpoints[i]
	ep.Sent()
	stateOf(svc).hedges.Add(1)
	h := &hedge{t: p.t, reg: a.reg, svc: svc, ep: ep, index: i, begin: now, first: w, deadline: p.deadline,
		dialing: &attempt{svc: svc, last: -1}, done: make(chan struct{})}
	h.req = h.request(p.req, headerOf(*p.header), a.pool[i])
	after := p.t.silenceAfter(svc, now, p.deadline)
	h.silence = silenceCheck{svc: svc, ep: ep, begin: now, after: after}
	go h.run()
	return h
}

// request returns a copy of req for the hedge's host: its own context
// (cancelled when the first try wins), request variables and dial
// address, header (a copy taken before the first try was sent: the own
// client adds to the first try's while it writes it) and body.
func (h *hedge) request(req *http.Request, header http.Header, up *reverseproxy.Upstream) *http.Request {
	ctx := req.Context()
	vars, _ := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any)
	vars = maps.Clone(vars)
	if vars == nil {
		vars = map[string]any{}
	}
	vars[attemptVar] = h.dialing // trackDial adds the hedge's dialing time here
	host, port, _ := net.SplitHostPort(h.ep.Address)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, vars)
	ctx = context.WithValue(ctx, dialInfoKey, reverseproxy.DialInfo{Upstream: up, Network: "tcp", Address: h.ep.Address, Host: host, Port: port})
	ctx, h.cancel = context.WithCancel(ctx)
	r := req.WithContext(ctx)
	u := *req.URL
	u.Host = h.ep.Address
	r.URL, r.Header = &u, header
	if req.GetBody != nil {
		if body, err := req.GetBody(); err == nil {
			r.Body = body
		}
	}
	return r
}

// run sends the hedge, reports its outcome, and, when it answers first,
// ends the first try.
func (h *hedge) run() {
	defer close(h.done)
	defer func() {
		// a panic here would take Caddy down: the hedge just fails
		if v := recover(); v != nil {
			caddy.Log().Error("hedged try panicked", zap.String("upstream", h.ep.Address), zap.Any("panic", v))
		}
	}()
	resp, cut, err, neverSent := h.t.sendWithin(h.req, h.deadline, h.silence)
	latency := time.Since(h.begin)
	a := h.dialing
	switch {
	case cut != notCut:
		o := registry.TimedOut
		if cut == cutSilent {
			o = registry.Silent
		}
		h.report(o, latency)
	case err != nil:
		if h.req.Context().Err() != nil {
			return // the first try won, or the client went away
		}
		if errors.As(err, new(reverseproxy.DialError)) && !neverSent {
			h.report(registry.Unreachable, 0)
		} else {
			h.report(registry.Failed, 0)
		}
	case isGatewayError(resp.StatusCode):
		h.report(registry.GatewayError, max(latency-time.Duration(a.dialing.Load()), 0))
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		resp.Body.Close()
	default:
		h.report(registry.Answered, max(latency-time.Duration(a.dialing.Load()), 0))
		h.mu.Lock()
		won := h.state == hedgePending
		if won {
			if resp.StatusCode != http.StatusSwitchingProtocols {
				resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: h.cancel}
			}
			h.state, h.resp = hedgeWon, resp
		}
		h.mu.Unlock()
		if !won {
			resp.Body.Close()
			h.cancel()
			return
		}
		h.first.cutFor(cutHedged)
	}
}

func (h *hedge) report(o registry.Outcome, latency time.Duration) {
	if h.reg != nil {
		h.reg.Report(h.svc, h.ep, o, latency)
	}
}

// settle decides between the first try, whose result is firstAnswered
// (true: it has an answer to hand on), and the hedge. It returns the
// hedge's answer when the hedge won, or nil when the first try's result
// stands, the hedge then ended.
func (h *hedge) settle(firstAnswered bool) *http.Response {
	if firstAnswered {
		h.mu.Lock()
		won := h.state == hedgeWon
		if !won {
			h.state = firstWon
		}
		h.mu.Unlock()
		if !won {
			h.cancel() // its run ends without waiting for it
			return nil
		}
	}
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == hedgeWon {
		return h.resp
	}
	h.state = firstWon
	h.cancel()
	return nil
}

// hedged ends a try whose hedge was sent: the first answer wins, the
// other try is ended, and both hosts' outcomes are reported.
func (t *HTTPTransport) hedged(h *hedge, req *http.Request, a *attempt, ep *registry.Endpoint, start time.Time, s sent) (*http.Response, error) {
	firstAnswered := s.cut == notCut && s.err == nil && !t.retriesStatus(s.resp.StatusCode)
	resp := h.settle(firstAnswered)
	if resp == nil {
		return t.outcome(req, a, ep, start, s)
	}
	svc := a.svc
	stateOf(svc).hedgesWon.Add(1)
	a.last = h.index
	latency := time.Since(start)
	switch {
	case s.cut == cutHedged:
		// It had no answer yet. A host that answered nobody since this
		// try began, while its peer answered this very request, has
		// gone silent, however few requests it had.
		o := registry.Overtaken
		if svc.Silent(ep, start, 0) {
			o = registry.Silent
		}
		svcReport(a, ep, o, latency)
	case s.resp != nil:
		// a gateway error that the hedge's answer replaces
		svcReport(a, ep, registry.GatewayError, max(latency-time.Duration(a.dialing.Load()), 0))
		_, _ = io.CopyN(io.Discard, s.resp.Body, 4<<10)
		s.resp.Body.Close()
	case s.cut == cutSilent:
		svcReport(a, ep, registry.Silent, latency)
	case s.cut == cutDeadline:
		svcReport(a, ep, registry.TimedOut, latency)
	case req.Context().Err() != nil:
	case errors.As(s.err, new(reverseproxy.DialError)) && !s.neverSent:
		svcReport(a, ep, registry.Unreachable, 0)
	default:
		svcReport(a, ep, registry.Failed, 0)
	}
	a.noRetry = false
	return resp, nil
}

// retriesStatus reports whether an answer with status code is retried
// on another host (retry_status).
func (t *HTTPTransport) retriesStatus(code int) bool {
	return code >= 500 && code < 500+len(t.retryStatus) && isGatewayError(code) && t.retryStatus[code-500]
}
