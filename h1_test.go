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
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/svcreg/caddy-svcreg/internal/h1"
	"github.com/svcreg/caddy-svcreg/registry"
)

// connCountingServer is an HTTP server on 127.0.0.1 that counts the
// connections made to it.
func connCountingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

// h1Do sends a request through tr and returns its response and body.
func h1Do(t *testing.T, tr *HTTPTransport, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func newReq(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestH1ClientLeavesOtherRequestsToGo(t *testing.T) {
	tr := newTestTransport(t)
	small := func() io.ReadCloser { return io.NopCloser(bytes.NewReader([]byte("x"))) }
	for _, tc := range []struct {
		name string
		req  func(*http.Request)
		want bool
	}{
		{"GET", func(*http.Request) {}, true},
		{"small buffered body", func(r *http.Request) { r.Body, r.ContentLength = small(), 1 }, true},
		{"body of unknown length", func(r *http.Request) { r.Body, r.ContentLength = small(), -1 }, false},
		{"large body", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(make([]byte, h1.MaxBody+1))), h1.MaxBody+1
		}, false},
		{"streamed body", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(io.LimitReader(strings.NewReader("x"), 1)), 1
		}, false},
		{"upgrade", func(r *http.Request) { r.Header.Set("Connection", "Upgrade"); r.Header.Set("Upgrade", "websocket") }, false},
		{"expect 100-continue", func(r *http.Request) { r.Body, r.ContentLength = small(), 1; r.Header.Set("Expect", "100-continue") }, false},
		{"control characters in a header value", func(r *http.Request) { r.Header["X-Bad"] = []string{"a\x00b"} }, false},
		{"a bad header name", func(r *http.Request) { r.Header["X Bad"] = []string{"x"} }, false},
	} {
		req := newReq(t, "POST", "http://127.0.0.1:1/", nil)
		tc.req(req)
		if got := tr.ownClientSends(req); got != tc.want {
			t.Errorf("%s: handled by service_http's own client = %v, want %v", tc.name, got, tc.want)
		}
	}
	off := false
	for _, tc := range []struct {
		name string
		set  func(*HTTPTransport)
	}{
		{"h2c", func(t *HTTPTransport) { t.Versions = []string{"h2c", "2"} }},
		{"keep-alive off", func(t *HTTPTransport) { t.KeepAlive = &reverseproxy.KeepAlive{Enabled: &off} }},
		{"response header timeout", func(t *HTTPTransport) { t.ResponseHeaderTimeout = caddy.Duration(time.Second) }},
		{"max conns per host", func(t *HTTPTransport) { t.MaxConnsPerHost = 4 }},
		{"proxy protocol", func(t *HTTPTransport) { t.ProxyProtocol = "v2" }},
		{"TLS", func(t *HTTPTransport) { t.TLS = new(reverseproxy.TLSConfig) }},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		tr := new(HTTPTransport)
		tc.set(tr)
		if err := tr.Provision(ctx); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tr.ownClient != nil {
			t.Errorf("%s: service_http uses its own client, which does not do that", tc.name)
		}
		tr.Cleanup()
		cancel()
	}
}

func TestH1ClientLimitsResponseHeaders(t *testing.T) {
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("x", 8<<10))
		io.WriteString(w, "ok")
	})
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	tr := new(HTTPTransport)
	tr.MaxResponseHeaderSize = 4 << 10
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer tr.Cleanup()
	if tr.ownClient == nil {
		t.Fatal("max_response_header_size took service_http off its own client")
	}
	resp, err := tr.RoundTrip(newReq(t, "GET", srv.URL, nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("an 8 KiB header went through a 4 KiB limit")
	}
	if !errors.Is(err, h1.ErrHeaderTooLong) {
		t.Errorf("error %v, want %v", err, h1.ErrHeaderTooLong)
	}
}

func TestH1ClientCutKeepsIdleConnections(t *testing.T) {
	srv, conns := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}
		io.WriteString(w, "ok")
	})
	tr := newTestTransport(t)
	var resps []*http.Response
	for i := 0; i < 4; i++ { // four connections at once, then idle
		resp, err := tr.RoundTrip(newReq(t, "GET", srv.URL+"/fast", nil))
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp)
	}
	for _, resp := range resps {
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if n := conns.Load(); n != 4 {
		t.Fatalf("%d connections, want 4", n)
	}
	_, cut, _, _ := tr.sendWithin(newReq(t, "GET", srv.URL+"/slow", nil), 50*time.Millisecond, silenceCheck{})
	if cut != cutDeadline {
		t.Fatalf("the try was not cut at its deadline (cut %d)", cut)
	}
	// three requests at once take the three idle connections left
	resps = resps[:0]
	for i := 0; i < 3; i++ {
		resp, err := tr.RoundTrip(newReq(t, "GET", srv.URL+"/fast", nil))
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp)
	}
	for _, resp := range resps {
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if n := conns.Load(); n != 4 {
		t.Errorf("%d connections after a try was cut on one of 4 and 3 more requests, want 4: a cut is no sign the others are stale", n)
	}
}

// rawHost serves each connection to 127.0.0.1 with serve, which gets the
// connection, a reader over it and the connection's number from 1.
func rawHost(t *testing.T, serve func(c net.Conn, br *bufio.Reader, n int)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(conns.Add(1))
			go func() { defer c.Close(); serve(c, bufio.NewReader(c), n) }()
		}
	}()
	return ln.Addr().String()
}

// bufferedPOST is a POST with a body as request_buffers hands it to the
// transport: buffered whole, without GetBody.
func bufferedPOST(t *testing.T, url string, size int) *http.Request {
	req := newReq(t, "POST", url, nil)
	req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(bytes.Repeat([]byte("x"), size))), int64(size)
	return req
}

// A POST marked with Idempotency-Key is sent again on a new connection
// when the reused one it went out on is closed before it is answered, as
// Go's transport does and as README promises ("retried like GETs"); a
// POST without one is not.
func TestH1ClientResendsIdempotentPOSTs(t *testing.T) {
	for _, tc := range []struct {
		header    string
		wantTimes int64
	}{{"Idempotency-Key", 2}, {"X-Idempotency-Key", 2}, {"", 1}} {
		t.Run("header "+tc.header, func(t *testing.T) {
			var got atomic.Int64
			// each connection: the first request answered, the second
			// read and left unanswered
			addr := rawHost(t, func(c net.Conn, br *bufio.Reader, _ int) {
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if req.Header.Get("X-Id") == "2" {
						got.Add(1)
					}
					if i == 1 {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			})
			tr := newTestTransport(t)
			h1Do(t, tr, bufferedPOST(t, "http://"+addr, 4))
			req := bufferedPOST(t, "http://"+addr, 4)
			req.Header.Set("X-Id", "2")
			if tc.header != "" {
				req.Header.Set(tc.header, "k2")
			}
			resp, err := tr.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			if tc.header != "" && err != nil {
				t.Errorf("a POST with %s on a connection closed unanswered: %v; want it sent again and answered", tc.header, err)
			}
			if tc.header == "" && err == nil {
				t.Error("a POST without a key the host may have read was sent again")
			}
			if n := got.Load(); n != tc.wantTimes {
				t.Errorf("the host got the POST %d times, want %d", n, tc.wantTimes)
			}
		})
	}
}

// A refused answer fails the try with an error that says what failed and
// where, with Go's own parse error, and that reverse_proxy answers 502 (not
// a net.Error, which it would answer 504).
func TestH1ClientErrorsSayWhatFailed(t *testing.T) {
	addr := rawHost(t, func(c net.Conn, br *bufio.Reader, _ int) {
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!")
		}
	})
	tr := newTestTransport(t)
	resp, err := tr.RoundTrip(newReq(t, "GET", "http://"+addr, nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("two Content-Lengths were taken")
	}
	want := "service_http: reading the response header from " + addr + ": http: message cannot contain multiple Content-Length headers"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
	if _, isNetError := err.(net.Error); isNetError {
		t.Errorf("error %v is a net.Error: reverse_proxy would answer 504", err)
	}
}

// A host that answers a POST before it has read its body (413, as nginx
// does past client_max_body_size) and closes (a reset) has answered: the
// answer goes to the client, and the host is not a failed host.
func TestH1ClientEarlyAnswerIsAnAnswer(t *testing.T) {
	addr := rawHost(t, func(c net.Conn, br *bufio.Reader, _ int) {
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		}
	})
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(addr)})
	tr := transportWith(t, func(*HTTPTransport) {})
	failed := 0
	for _, size := range []int{16 << 10, 32 << 10, 48 << 10, 64 << 10} {
		for range 40 {
			req, _, _ := registryTry(t, reg, key, http.MethodPost)
			post := bufferedPOST(t, "http://"+addr, size)
			req.Body, req.ContentLength = post.Body, post.ContentLength
			resp, err := tr.RoundTrip(req)
			if err != nil {
				failed++
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("status %d, want 413", resp.StatusCode)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of 160 POSTs answered 413 before their body was read failed", failed)
	}
	svc, _ := reg.Lookup(key)
	if st := svc.Endpoints[0].Stats(); st.Failures != 0 || !st.Available {
		t.Errorf("the host that answered: %+v; want no failures, in rotation", st)
	}
}

// A host that stalls in the middle of its response header, past the try's
// deadline: the try fails as timed out (a net.Error that timed out, which
// reverse_proxy answers 504), not as a connection the client closed.
func TestH1ClientStalledHeaderIsATimeout(t *testing.T) {
	addr := rawHost(t, func(c net.Conn, br *bufio.Reader, _ int) {
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-")
			br.ReadByte() // until the client closes
		}
	})
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	reg := newTestRegistry(t, map[registry.ServiceKey][]registry.Endpoint{key: eps(addr)})
	tr := transportWith(t, func(tr *HTTPTransport) { tr.TryTimeout = "200ms" })
	req, _, ep := registryTry(t, reg, key, http.MethodGet)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a stalled header was taken")
	}
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Errorf("error %v: want the try's timeout", err)
	}
	if st := ep.Stats(); st.Failures != 1 {
		t.Errorf("after one timed-out try: %+v, want 1 failure", st)
	}
}
