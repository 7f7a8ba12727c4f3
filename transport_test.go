package svcreg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/internal/h1"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
)

func newTestTransport(t *testing.T) *HTTPTransport {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	tr := new(HTTPTransport)
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Cleanup() })
	return tr
}

// resetServer handles each connection with serve, then resets it.
func resetServer(t *testing.T, serve func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if serve != nil {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				serve(c)
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}()
	}
	return ln
}

// resetBeforeWriting makes tr's next connection to ln dead on arrival: once
// connected it closes ln, which resets the connection still waiting in the
// backlog, and hands the connection over only when the reset has arrived.
func resetBeforeWriting(t *testing.T, tr *HTTPTransport, ln net.Listener) {
	dial := tr.Transport.DialContext
	tr.Transport.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		ln.Close()
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("read data from a listener that never accepted")
		}
		return c, nil
	}
}

func TestHTTPTransportRetriesRequestsThatNeverLeft(t *testing.T) {
	payload := bytes.Repeat([]byte("x"), 1<<20)
	readHeaders := func(c net.Conn) { _, _ = http.ReadRequest(bufio.NewReader(c)) }
	readAll := func(c net.Conn) {
		if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.Copy(io.Discard, req.Body)
		}
	}
	buffered := func() io.ReadCloser { return io.NopCloser(bytes.NewReader(payload)) }
	for _, tc := range []struct {
		name      string
		serve     func(net.Conn) // nil: the connection is reset before Caddy writes
		body      func() io.ReadCloser
		wantRetry bool
		length    int64 // 0: unknown (-1)
	}{
		{"reset before a byte was written, buffered body", nil, buffered, true, 0},
		{"reset before a byte was written, small buffered body (service_http's own client)", nil, func() io.ReadCloser {
			return io.NopCloser(strings.NewReader("small"))
		}, true, 5},
		{"reset before a byte was written, streamed body", nil, func() io.ReadCloser {
			return io.NopCloser(io.LimitReader(bytes.NewReader(payload), int64(len(payload))))
		}, false, 0}, // the body cannot be sent again
		{"reset after the headers arrived", readHeaders, buffered, false, 0}, // the host may have acted on it
		{"reset after the whole request arrived", readAll, func() io.ReadCloser { return io.NopCloser(strings.NewReader("small")) }, false, 0},
		{"reset after the whole request arrived (service_http's own client)", readAll, func() io.ReadCloser { return io.NopCloser(strings.NewReader("small")) }, false, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := resetServer(t, tc.serve)
			tr := newTestTransport(t)
			if tc.serve == nil {
				resetBeforeWriting(t, tr, ln)
			}
			req, err := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Body = tc.body()
			req.ContentLength = -1
			if tc.length > 0 {
				req.ContentLength = tc.length
			}
			resp, err := tr.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatal("round trip to a resetting server succeeded")
			}
			var dialErr reverseproxy.DialError
			if got := errors.As(err, &dialErr); got != tc.wantRetry {
				t.Errorf("error %v: reported as a dial error (retried for any method) = %v, want %v", err, got, tc.wantRetry)
			}
		})
	}
}

func TestBodyReplayable(t *testing.T) {
	get := func(body io.ReadCloser) *http.Request { return &http.Request{Body: body} }
	if !bodyReplayable(get(nil)) || !bodyReplayable(get(http.NoBody)) {
		t.Error("no body must be replayable")
	}
	if !bodyReplayable(get(io.NopCloser(bytes.NewReader([]byte("x"))))) {
		t.Error("a body buffered by request_buffers must be replayable")
	}
	if bodyReplayable(get(io.NopCloser(io.LimitReader(strings.NewReader("x"), 1)))) {
		t.Error("a streamed body must not be replayable")
	}
}

// registryTry sets up a request from the registry the way reverse_proxy
// runs it: the matcher's vars, GetUpstreams and Select; it returns the
// request (aimed at the selected host, as reverse_proxy aims it) and the
// request's attempt.
func registryTry(t *testing.T, reg *registry.Registry, key registry.ServiceKey, method string) (*http.Request, *attempt, *registry.Endpoint) {
	t.Helper()
	try := newProxyTry(t, reg, "round_robin", key)
	addr := try.next()
	if addr == "" {
		t.Fatal("no host selected")
	}
	r := try.r.Clone(try.r.Context())
	r.Method = method
	r.URL.Scheme, r.URL.Host = "http", addr
	a := caddyhttp.GetVar(r.Context(), attemptVar).(*attempt)
	return r, a, a.svc.Endpoints[a.last]
}

// transportWith returns a provisioned service_http transport with the
// given failover settings.
func transportWith(t *testing.T, set func(*HTTPTransport)) *HTTPTransport {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	tr := new(HTTPTransport)
	set(tr)
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Cleanup() })
	return tr
}

// TestTryDeadline sends tries to a host that never answers: each fails
// after the deadline with a timeout (which reverse_proxy answers 504, and
// retries for GET), counts, and takes the host out of rotation (it is
// tried again all the same: it is the only one).
func TestTryDeadline(t *testing.T) {
	hung := hungServer(t)
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	addr := hung.Listener.Addr().String()
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(addr)})
	tr := transportWith(t, func(tr *HTTPTransport) { tr.TryTimeout = "200ms" })
	for i := range 3 {
		req, a, ep := registryTry(t, reg, key, http.MethodGet)
		start := time.Now()
		resp, err := tr.RoundTrip(req)
		took := time.Since(start)
		if err == nil {
			resp.Body.Close()
			t.Fatal("a try to a host that never answers succeeded")
		}
		var netErr net.Error
		if !errors.As(err, &netErr) || !netErr.Timeout() || errors.Is(err, context.Canceled) {
			t.Errorf("error %v: want a timeout that is not a client cancellation (504, retried for GET)", err)
		}
		if took < 200*time.Millisecond {
			t.Errorf("the try failed after %v, before its deadline", took)
		}
		if !a.reported {
			t.Error("the try's outcome was not reported")
		}
		if st := ep.Stats(); st.Failures != uint64(i+1) || st.Available {
			t.Errorf("after %d timeouts: %+v; want %d failures, out of rotation", i+1, st, i+1)
		}
	}
}

// TestTryGatewayErrors sends tries to hosts answering 503: a GET with an
// untried host left fails over (the answer is dropped), a POST gets the
// answer; both count.
func TestTryGatewayErrors(t *testing.T) {
	busy := func() *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("busy"))
		}))
	}
	a1, a2 := busy(), busy()
	defer a1.Close()
	defer a2.Close()
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(a1.Listener.Addr().String(), a2.Listener.Addr().String())})
	tr := transportWith(t, func(*HTTPTransport) {})

	req, _, ep := registryTry(t, reg, key, http.MethodGet)
	if resp, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "503") {
		if resp != nil {
			resp.Body.Close()
		}
		t.Errorf("GET answered 503 with another host untried: %v, want an error that reverse_proxy retries", err)
	}
	if st := ep.Stats(); st.Failures != 1 {
		t.Errorf("the 503 was not counted: %+v", st)
	}
	req, _, ep = registryTry(t, reg, key, http.MethodPost)
	resp, err := tr.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("POST answered 503: %v, %v; want the answer itself (a POST is not retried)", resp, err)
	}
	resp.Body.Close()
	if st := ep.Stats(); st.Failures != 1 {
		t.Errorf("the POST's 503 was not counted: %+v", st)
	}
}

// TestTryRetryBudget spends a service's retry budget on GETs answered
// 502: once it is spent, the answer goes to the client.
func TestTryRetryBudget(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer failing.Close()
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(failing.Listener.Addr().String(), other.Listener.Addr().String())},
		registry.HealthCheck{EjectAfter: 1000})
	zero, two := 0.0, 2
	tr := transportWith(t, func(tr *HTTPTransport) {
		tr.RetryBudget = &RetryBudget{Percent: &zero, PerSecond: new(int), Burst: &two}
	})
	retried := 0
	for range 10 {
		req, _, ep := registryTry(t, reg, key, http.MethodGet)
		if ep.Address != failing.Listener.Addr().String() {
			continue
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			retried++
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if retried != 2 {
		t.Errorf("%d 502s were retried with a budget of 2", retried)
	}
}

// TestTryUnreachable sends a try to a closed port: the host is out of
// rotation as unreachable, and the error is a dial error (retried for any
// method).
func TestTryUnreachable(t *testing.T) {
	addr := testutil.RefusedAddr(t)
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(addr)})
	tr := transportWith(t, func(*HTTPTransport) {})
	req, _, ep := registryTry(t, reg, key, http.MethodPost)
	if resp, err := tr.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatal("a try to a closed port succeeded")
	} else if !errors.As(err, new(reverseproxy.DialError)) {
		t.Errorf("error %v: want a dial error", err)
	}
	if st := ep.Stats(); st.OutOfRotation != "unreachable" {
		t.Errorf("after a refused connection: %+v, want out of rotation as unreachable", st)
	}
}

// TestTryTimeoutAuto checks the automatic deadline: the maximum until a
// service has answers, then 4 times its p99 within the bounds.
func TestTryTimeoutAuto(t *testing.T) {
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps("127.0.0.1:1")})
	svc, _ := reg.Lookup(key)
	tr := transportWith(t, func(tr *HTTPTransport) {
		tr.TryTimeoutMin, tr.TryTimeoutMax = caddy.Duration(100*time.Millisecond), caddy.Duration(5*time.Second)
	})
	now := time.Now()
	if d := tr.deadline(svc, now); d != 100*time.Millisecond {
		t.Errorf("deadline with no answers yet: %v, want the minimum", d)
	}
	for range 100 {
		reg.Report(svc, svc.Endpoints[0], registry.Answered, 200*time.Millisecond)
	}
	if d := tr.deadline(svc, now.Add(time.Second)); d < 800*time.Millisecond || d > time.Second {
		t.Errorf("deadline with a p99 of 200ms: %v, want about 4 times it", d)
	}
	for _, tc := range []struct {
		setting string
		want    time.Duration
	}{{"off", 0}, {"750ms", 750 * time.Millisecond}} {
		fixed := transportWith(t, func(tr *HTTPTransport) { tr.TryTimeout = tc.setting })
		if d := fixed.deadline(svc, now); d != tc.want {
			t.Errorf("try_timeout %s: deadline %v, want %v", tc.setting, d, tc.want)
		}
	}
}

// TestTrySilentHost sends tries to a host that never answers while the
// service's other host keeps answering: a GET, with other requests in
// flight on that host, ends long before its deadline, as a timeout
// (retried elsewhere); a GET alone on the host (perhaps just slow), and a
// POST, wait for the deadline.
func TestTrySilentHost(t *testing.T) {
	hung := hungServer(t)
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	for _, tc := range []struct {
		name     string
		method   string
		inFlight int
		min, max time.Duration
	}{
		{"GET among others", http.MethodGet, 3, 100 * time.Millisecond, time.Second},
		{"GET alone", http.MethodGet, 1, 3 * time.Second, 10 * time.Second},
		{"POST among others", http.MethodPost, 3, 3 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(hung.Listener.Addr().String(), "127.0.0.1:1")})
			svc, _ := reg.Lookup(key)
			other := svc.Endpoint("127.0.0.1:1")
			var req *http.Request
			for req == nil { // a try aimed at the hung host
				r, _, ep := registryTry(t, reg, key, tc.method)
				if ep.Address == hung.Listener.Addr().String() {
					req = r
					ep.CountInFlight(inFlight(tc.inFlight)) // as reverse_proxy counts them
				}
			}
			stop := make(chan struct{})
			answering := make(chan struct{})
			go func() { // the other host answers every 10 ms
				defer close(answering)
				for {
					reg.Report(svc, other, registry.Answered, time.Millisecond)
					select {
					case <-stop:
						return
					case <-time.After(10 * time.Millisecond):
					}
				}
			}()
			defer func() { close(stop); <-answering }()
			tr := transportWith(t, func(tr *HTTPTransport) { tr.TryTimeout = "3s" })
			start := time.Now()
			resp, err := tr.RoundTrip(req)
			took := time.Since(start)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("%s to a silent host succeeded", tc.method)
			}
			if took < tc.min || took > tc.max {
				t.Errorf("%s to a silent host failed after %v, want %v to %v", tc.method, took, tc.min, tc.max)
			}
		})
	}
}

// hungServer returns a server that takes requests and never answers them,
// until the test ends.
func hungServer(t *testing.T) *httptest.Server {
	t.Helper()
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hung.Close() })
	return hung
}

// inFlight is a fixed count of requests in flight.
type inFlight int

func (n inFlight) NumRequests() int { return int(n) }

// A POST the client marked idempotent is retried like a GET after a 503;
// one with a body that is not buffered whole is not retried, whatever its
// method, since its body cannot be sent again.
func TestTryIdempotencyKey(t *testing.T) {
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer busy.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer other.Close()
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	tr := transportWith(t, func(*HTTPTransport) {})

	for _, tc := range []struct {
		name      string
		header    string
		body      io.ReadCloser
		wantRetry bool
	}{
		{"Idempotency-Key", "Idempotency-Key", io.NopCloser(bytes.NewReader([]byte("a=1"))), true},
		{"X-Idempotency-Key", "X-Idempotency-Key", io.NopCloser(bytes.NewReader([]byte("a=1"))), true},
		{"no key", "", io.NopCloser(bytes.NewReader([]byte("a=1"))), false},
		{"streamed body", "Idempotency-Key", io.NopCloser(io.LimitReader(strings.NewReader("a=1"), 3)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(busy.Listener.Addr().String(), other.Listener.Addr().String())})
			for range 4 {
				req, a, _ := registryTry(t, reg, key, http.MethodPost)
				if req.URL.Host != busy.Listener.Addr().String() {
					continue // round robin: the next try goes to the busy host
				}
				if tc.header != "" {
					req.Header.Set(tc.header, "k1")
				}
				req.Body = tc.body
				resp, err := tr.RoundTrip(req)
				if resp != nil {
					resp.Body.Close()
				}
				if got := err != nil && !a.noRetry; got != tc.wantRetry {
					t.Errorf("503 to a POST: retried = %v (%v, noRetry %v), want %v", got, err, a.noRetry, tc.wantRetry)
				}
				return
			}
			t.Fatal("round robin never picked the busy host")
		})
	}
}

// A buffered body gets a GetBody that gives it whole again, in a copy of
// the request; the request itself is left alone.
func TestWithGetBody(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 10000)
	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/x", nil)
	req.Body = io.NopCloser(bytes.NewReader(payload))
	r := withGetBody(req)
	if r == req || req.GetBody != nil {
		t.Fatal("withGetBody changed the request it was given")
	}
	for i := range 3 {
		body := r.Body
		if i > 0 {
			var err error
			if body, err = r.GetBody(); err != nil {
				t.Fatal(err)
			}
		}
		got, err := io.ReadAll(body)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("body %d: %d bytes, %v; want the %d bytes sent", i, len(got), err, len(payload))
		}
	}
}

// h1.PeerClosed tells an idle connection whose host closed it, or sent
// something unasked, from one still open, and consumes nothing.
func TestPeerClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() (client, server net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s := <-accepted
		t.Cleanup(func() { s.Close() })
		return c, s
	}
	// waitReadable waits until c has something to read (without reading).
	waitReadable := func(c net.Conn) {
		for range 1000 {
			if h1.PeerClosed(c) {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}

	open, _ := dial()
	if h1.PeerClosed(open) {
		t.Error("an open idle connection was reported closed")
	}
	closed, s := dial()
	s.Close()
	waitReadable(closed)
	if !h1.PeerClosed(closed) {
		t.Error("a connection the host closed was reported open")
	}
	talking, s := dial()
	s.Write([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n"))
	waitReadable(talking)
	if !h1.PeerClosed(talking) {
		t.Error("a connection the host sent something unasked on was reported open")
	}
	buf := make([]byte, 8)
	if n, _ := talking.Read(buf); string(buf[:n]) != "HTTP/1.1" {
		t.Errorf("the check consumed data: read %q", buf[:n])
	}

	// A write through writeTrackingConn checks first when asked to, and
	// then writes nothing.
	wc := &writeTrackingConn{Conn: closed}
	wc.checkPeer.Store(true)
	if n, err := wc.Write([]byte("POST / HTTP/1.1\r\n")); n != 0 || err != errPeerClosed {
		t.Errorf("write on a closed idle connection: %d, %v; want 0, errPeerClosed", n, err)
	}
	wc = &writeTrackingConn{Conn: open}
	wc.checkPeer.Store(true)
	if n, err := wc.Write([]byte("x")); n != 1 || err != nil || wc.written.Load() != 1 {
		t.Errorf("write on an open idle connection: %d, %v", n, err)
	}
}

// TestTryLatencyLeavesOutDialing sends a try that must dial a new
// connection slowly: the latency it reports for balancing is the host's
// answering time, without the connect.
func TestTryLatencyLeavesOutDialing(t *testing.T) {
	fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer fast.Close()
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(fast.Listener.Addr().String())})
	tr := transportWith(t, func(*HTTPTransport) {})
	const slow = 300 * time.Millisecond
	tr.Transport.DialContext = trackDial(func(ctx context.Context, network, address string) (net.Conn, error) {
		time.Sleep(slow)
		return (&net.Dialer{}).DialContext(ctx, network, address)
	})
	req, a, ep := registryTry(t, reg, key, http.MethodGet)
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	dialing := time.Duration(a.dialing.Load())
	if dialing < slow {
		t.Fatalf("the try's dialing time is %v; the dial took at least %v", dialing, slow)
	}
	if lat := ep.Stats().Latency; lat <= 0 || lat > took-dialing {
		t.Errorf("reported latency %v; want the try's %v without its %v of dialing", lat, took, dialing)
	}
}

// TestTryHedge sends a try to a host that does not answer in time, once
// the version's p99 is known (1 ms: hedges go after 50 ms): a GET, or a
// POST marked idempotent, is answered by its hedge on the other host, and
// the host that answered nobody meanwhile is reported silent, though it
// had one request in flight; a POST, a version with hedging off or with
// its retry budget spent, or with no other host, sends no hedge. When the
// first try answers before its hedge, its answer is the one.
func TestTryHedge(t *testing.T) {
	hung := hungServer(t)
	answering := func(name string, delay time.Duration) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(delay)
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	fast, slow := answering("fast", 0), answering("slow", 300*time.Millisecond)
	none := func(*HTTPTransport) {}
	zero := 0
	pct := 0.0
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	for _, tc := range []struct {
		name        string
		first, peer string // the first try's host, and the other one ("": none)
		method      string
		header      string
		set         func(*HTTPTransport)
		want        string // the answer's body; "": the try fails
		hedges, won uint64
		firstOut    string // the first host's out_of_rotation afterwards
	}{
		{"GET", hung.Listener.Addr().String(), fast, http.MethodGet, "", none, "fast", 1, 1, "unreachable"},
		{"POST with Idempotency-Key", hung.Listener.Addr().String(), fast, http.MethodPost, "Idempotency-Key", none, "fast", 1, 1, "unreachable"},
		{"POST", hung.Listener.Addr().String(), fast, http.MethodPost, "", none, "", 0, 0, "passive"},
		{"hedge off", hung.Listener.Addr().String(), fast, http.MethodGet, "", func(tr *HTTPTransport) { tr.Hedge = "off" }, "", 0, 0, "passive"},
		{"budget spent", hung.Listener.Addr().String(), fast, http.MethodGet, "", func(tr *HTTPTransport) {
			tr.RetryBudget = &RetryBudget{Percent: &pct, PerSecond: &zero, Burst: &zero}
		}, "", 0, 0, "passive"},
		{"no other host", hung.Listener.Addr().String(), "", http.MethodGet, "", none, "", 0, 0, "passive"},
		{"first answers first", slow, hung.Listener.Addr().String(), http.MethodGet, "", none, "slow", 1, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hosts := []string{tc.first}
			if tc.peer != "" {
				hosts = append(hosts, tc.peer)
			}
			reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(hosts...)})
			svc, _ := reg.Lookup(key)
			for range 30 { // the version's p99 becomes 1 ms
				reg.Report(svc, svc.Endpoint(hosts[len(hosts)-1]), registry.Answered, time.Millisecond)
			}
			var req *http.Request
			var first *registry.Endpoint
			for req == nil { // a try aimed at the first host
				if r, _, ep := registryTry(t, reg, key, tc.method); ep.Address == tc.first {
					req, first = r, ep
				}
			}
			if tc.header != "" {
				req.Header.Set(tc.header, "k1")
			}
			tr := transportWith(t, func(tr *HTTPTransport) { tr.TryTimeout = "1s"; tc.set(tr) })
			resp, err := tr.RoundTrip(req)
			got := ""
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got = string(b)
			}
			if got != tc.want {
				t.Errorf("answer %q (error %v), want %q", got, err, tc.want)
			}
			if c := countsOf(svc); c.hedges != tc.hedges || c.hedgesWon != tc.won {
				t.Errorf("%d hedges, %d won; want %d, %d", c.hedges, c.hedgesWon, tc.hedges, tc.won)
			}
			if out := first.Stats().OutOfRotation; out != tc.firstOut {
				t.Errorf("the first host is out of rotation as %q, want %q", out, tc.firstOut)
			}
		})
	}
}
