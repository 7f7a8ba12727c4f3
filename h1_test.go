package svcreg

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// idleCount returns how many idle connections the pool holds.
func (c *h1Client) idleCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, list := range c.idle {
		n += len(list)
	}
	return n
}

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

func TestH1ClientKeepsConnections(t *testing.T) {
	srv, conns := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/head", "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.WriteHeader(http.StatusNotModified)
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "part one, ")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part two")
			w.Header().Set("X-Sum", "42")
		case "/post":
			b, _ := io.ReadAll(r.Body)
			io.WriteString(w, "got "+string(b))
		default:
			io.WriteString(w, "hello "+r.URL.Path)
		}
	})
	tr := newTestTransport(t)
	if tr.h1 == nil {
		t.Fatal("service_http with default settings does not use its own HTTP/1.1 client")
	}
	for i := 0; i < 3; i++ {
		if _, body := h1Do(t, tr, newReq(t, "GET", srv.URL+"/a", nil)); body != "hello /a" {
			t.Fatalf("GET /a: body %q", body)
		}
		if resp, body := h1Do(t, tr, newReq(t, "HEAD", srv.URL+"/head", nil)); resp.StatusCode != 204 || body != "" {
			t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
		}
		if resp, _ := h1Do(t, tr, newReq(t, "GET", srv.URL+"/notmodified", nil)); resp.StatusCode != 304 {
			t.Fatalf("GET /notmodified: %d", resp.StatusCode)
		}
		resp, body := h1Do(t, tr, newReq(t, "GET", srv.URL+"/chunked", nil))
		if body != "part one, part two" || resp.Trailer.Get("X-Sum") != "42" {
			t.Fatalf("chunked: body %q trailer %v", body, resp.Trailer)
		}
		post := newReq(t, "POST", srv.URL+"/post", nil)
		post.Body, post.ContentLength = io.NopCloser(bytes.NewReader([]byte("a body"))), 6
		if _, body := h1Do(t, tr, post); body != "got a body" {
			t.Fatalf("POST: body %q", body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("15 requests one after another took %d connections, want 1", n)
	}
	if n := tr.h1.idleCount(); n != 1 {
		t.Errorf("%d idle connections after the requests, want 1", n)
	}
	if err := tr.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if n := tr.h1.idleCount(); n != 0 {
		t.Errorf("%d idle connections after Cleanup, want 0", n)
	}
}

func TestH1ClientClosesUnfinishedConnections(t *testing.T) {
	long := strings.Repeat("x", 64<<10)
	srv, conns := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, long)
	})
	tr := newTestTransport(t)
	// a body closed before its end: its connection cannot be reused
	resp, err := tr.RoundTrip(newReq(t, "GET", srv.URL+"/long", nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resp.Body.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := tr.h1.idleCount(); n != 0 {
		t.Fatalf("a connection whose body was closed early went back to the pool (%d idle)", n)
	}
	// the host asked to close it
	if _, body := h1Do(t, tr, newReq(t, "GET", srv.URL+"/close", nil)); body != long {
		t.Fatal("wrong body")
	}
	if n := tr.h1.idleCount(); n != 0 {
		t.Fatalf("a connection its host closed went back to the pool (%d idle)", n)
	}
	h1Do(t, tr, newReq(t, "GET", srv.URL+"/long", nil))
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3 (none reused)", n)
	}
}

func TestH1ClientGzip(t *testing.T) {
	const text = "a text that the host compresses when asked"
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") != "gzip" {
			io.WriteString(w, text)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, text)
		zw.Close()
	})
	tr := newTestTransport(t)
	for i := 0; i < 2; i++ {
		// no Accept-Encoding: asked for gzip and decompressed, as Go's
		// transport does
		req := newReq(t, "GET", srv.URL, nil)
		resp, body := h1Do(t, tr, req)
		if body != text || !resp.Uncompressed || resp.Header.Get("Content-Encoding") != "" || resp.ContentLength != -1 {
			t.Fatalf("body %q uncompressed %v Content-Encoding %q length %d", body, resp.Uncompressed, resp.Header.Get("Content-Encoding"), resp.ContentLength)
		}
		if _, ok := req.Header["Accept-Encoding"]; ok {
			t.Fatal("the Accept-Encoding the client added stayed in the request")
		}
	}
	// the client's own Accept-Encoding: the answer goes through as it is
	req := newReq(t, "GET", srv.URL, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, body := h1Do(t, tr, req)
	if resp.Uncompressed || resp.Header.Get("Content-Encoding") != "gzip" || body == text {
		t.Fatalf("a client that takes gzip got body %q, uncompressed %v", body, resp.Uncompressed)
	}
	if n := tr.h1.idleCount(); n != 1 {
		t.Errorf("%d idle connections, want 1", n)
	}
}

func TestH1ClientInformational(t *testing.T) {
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	tr := newTestTransport(t)
	var got []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if h.Get("Link") == "" {
			t.Error("103 without its Link header")
		}
		got = append(got, code)
		return nil
	}}
	req := newReq(t, "GET", srv.URL, nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, body := h1Do(t, tr, req)
	if resp.StatusCode != 200 || body != "final" || len(got) != 1 || got[0] != 103 {
		t.Fatalf("status %d body %q, 1xx seen %v", resp.StatusCode, body, got)
	}
}

// closingServer answers each request on a connection and then closes the
// connection, telling closed once it has.
func closingServer(t *testing.T) (addr string, conns *atomic.Int64, closed chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns, closed = new(atomic.Int64), make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer func() { c.Close(); closed <- struct{}{} }()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") // keep-alive, as far as the client knows
			}()
		}
	}()
	return ln.Addr().String(), conns, closed
}

func TestH1ClientIdleConnectionClosedByHost(t *testing.T) {
	addr, conns, closed := closingServer(t)
	tr := newTestTransport(t)
	// GET: the stale connection fails before any answer, and the request
	// goes out again on a new one
	for i := 0; i < 3; i++ {
		if resp, body := h1Do(t, tr, newReq(t, "GET", "http://"+addr+"/", nil)); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
		<-closed
	}
	// POST: the connection is checked before the request is written
	for i := 0; i < 3; i++ {
		post := newReq(t, "POST", "http://"+addr+"/", nil)
		post.Body, post.ContentLength = io.NopCloser(bytes.NewReader([]byte("data"))), 4
		if resp, body := h1Do(t, tr, post); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("POST %d: %d %q", i, resp.StatusCode, body)
		}
		<-closed
	}
	if n := conns.Load(); n != 6 {
		t.Errorf("%d connections for 6 requests, want 6", n)
	}
}

func TestH1ClientContextEndsTheTry(t *testing.T) {
	release := make(chan struct{})
	gone, arrived := make(chan struct{}, 1), make(chan struct{}, 1)
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			gone <- struct{}{}
		case <-release:
		}
	})
	defer close(release)
	tr := newTestTransport(t)
	ctx, cancel := context.WithCancel(context.Background())
	req := newReq(t, "GET", srv.URL, nil).WithContext(ctx)
	done := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-arrived // the request is waiting for its answer
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("round trip whose context ended: %v, want context.Canceled", err)
	}
	<-gone // the host saw the connection close
	if n := tr.h1.idleCount(); n != 0 {
		t.Errorf("%d idle connections, want 0", n)
	}
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
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(make([]byte, h1MaxBody+1))), h1MaxBody+1
		}, false},
		{"streamed body", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(io.LimitReader(strings.NewReader("x"), 1)), 1
		}, false},
		{"upgrade", func(r *http.Request) { r.Header.Set("Connection", "Upgrade"); r.Header.Set("Upgrade", "websocket") }, false},
		{"expect 100-continue", func(r *http.Request) { r.Body, r.ContentLength = small(), 1; r.Header.Set("Expect", "100-continue") }, false},
	} {
		req := newReq(t, "POST", "http://127.0.0.1:1/", nil)
		tc.req(req)
		if got := tr.h1.handles(req); got != tc.want {
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
		if tr.h1 != nil {
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
	if tr.h1 == nil {
		t.Fatal("max_response_header_size took service_http off its own client")
	}
	resp, err := tr.RoundTrip(newReq(t, "GET", srv.URL, nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("an 8 KiB header went through a 4 KiB limit")
	}
	if !errors.Is(err, errHeaderTooLong) {
		t.Errorf("error %v, want %v", err, errHeaderTooLong)
	}
}

// rawServer serves each connection to 127.0.0.1 with serve, which gets
// the connection, a reader over it and the connection's number from 1.
func rawServer(t *testing.T, serve func(c net.Conn, br *bufio.Reader, n int)) string {
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
	return "http://" + ln.Addr().String()
}

// outcome sends req through rt and sums up what came back.
func outcome(rt http.RoundTripper, req *http.Request) string {
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return "error"
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "error reading the body"
	}
	return resp.Status + " " + string(b)
}

// TestH1ClientMatchesGoTransport sends the same requests to the same
// misbehaving hosts through service_http's own client and through Go's
// transport, and expects the same outcome.
func TestH1ClientMatchesGoTransport(t *testing.T) {
	keepAnswering := func(answer func(*http.Request) string) func(net.Conn, *bufio.Reader, int) {
		return func(c net.Conn, br *bufio.Reader, _ int) {
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, answer(req))
			}
		}
	}
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	post := func(url string) *http.Request {
		req := newReq(t, "POST", url, nil)
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader([]byte("data"))), 4
		return req
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, rt http.RoundTripper) string
	}{
		{"HEAD answered with a body, then GET", func(t *testing.T, rt http.RoundTripper) string {
			url := rawServer(t, keepAnswering(func(r *http.Request) string {
				if r.Method == "HEAD" {
					return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
				}
				return ok
			}))
			outcome(rt, newReq(t, "HEAD", url, nil))
			time.Sleep(20 * time.Millisecond) // the stray bytes arrive
			return outcome(rt, newReq(t, "GET", url, nil))
		}},
		{"204 answered with a body, then POST", func(t *testing.T, rt http.RoundTripper) string {
			url := rawServer(t, keepAnswering(func(r *http.Request) string {
				if r.Method == "GET" {
					return "HTTP/1.1 204 No Content\r\n\r\n{\"x\":1}\r\n"
				}
				return ok
			}))
			outcome(rt, newReq(t, "GET", url, nil))
			time.Sleep(20 * time.Millisecond)
			return outcome(rt, post(url))
		}},
		{"408 on an idle connection, then GET", func(t *testing.T, rt http.RoundTripper) string {
			sent := make(chan struct{})
			url := rawServer(t, func(c net.Conn, br *bufio.Reader, n int) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, ok)
				if n == 1 {
					time.Sleep(10 * time.Millisecond)
					io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
					close(sent)
					time.Sleep(time.Second)
				}
			})
			outcome(rt, newReq(t, "GET", url, nil))
			<-sent
			time.Sleep(20 * time.Millisecond)
			return outcome(rt, newReq(t, "GET", url, nil))
		}},
		{"eight 103 Early Hints to a trace", func(t *testing.T, rt http.RoundTripper) string {
			url := rawServer(t, keepAnswering(func(*http.Request) string {
				return strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", 8) + ok
			}))
			n := 0
			req := newReq(t, "GET", url, nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				Got1xxResponse: func(int, textproto.MIMEHeader) error { n++; return nil },
			}))
			return outcome(rt, req) + " " + strconv.Itoa(n) + " hints"
		}},
		{"control characters in a header value", func(t *testing.T, rt http.RoundTripper) string {
			url := rawServer(t, keepAnswering(func(*http.Request) string { return ok }))
			req := newReq(t, "GET", url, nil)
			req.Header["X-Bad"] = []string{"a\x00b"}
			return outcome(rt, req)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			goTransport := &http.Transport{}
			defer goTransport.CloseIdleConnections()
			want := tc.run(t, goTransport)
			if got := tc.run(t, newTestTransport(t)); got != want {
				t.Errorf("service_http: %q, Go's transport: %q", got, want)
			}
		})
	}
}

func TestH1ClientResendsOnlyWhatItMay(t *testing.T) {
	// The host answers a connection's first request, and closes it when
	// the second has come in: it closed it "meanwhile", after the client
	// checked the connection.
	serve := func(c net.Conn, br *bufio.Reader, _ int) {
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil || i == 1 {
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	}
	url := rawServer(t, serve)
	tr := newTestTransport(t)
	for i := 0; i < 3; i++ {
		if got := outcome(tr, newReq(t, "GET", url, nil)); got != "200 OK ok" {
			t.Fatalf("GET %d: %s; want it sent again on a new connection", i, got)
		}
	}
	url = rawServer(t, serve)
	outcome(tr, newReq(t, "POST", url, bytes.NewReader([]byte("data"))))
	req := newReq(t, "POST", url, nil)
	req.Body, req.ContentLength = io.NopCloser(bytes.NewReader([]byte("data"))), 4
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a POST the host may have read was sent again")
	}
	var dialErr reverseproxy.DialError
	if errors.As(err, &dialErr) {
		t.Errorf("a POST the host read was reported as never sent: %v", err)
	}
}

func TestH1ClientCutKeepsIdleConnections(t *testing.T) {
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
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
	if n := tr.h1.idleCount(); n != 4 {
		t.Fatalf("%d idle connections, want 4", n)
	}
	_, _, _, cut := tr.sendWithin(newReq(t, "GET", srv.URL+"/slow", nil), 50*time.Millisecond, silenceCheck{})
	if cut != cutDeadline {
		t.Fatalf("the try was not cut at its deadline (cut %d)", cut)
	}
	if n := tr.h1.idleCount(); n != 3 {
		t.Errorf("%d idle connections after a try was cut on one of 4, want 3: a cut is no sign the others are stale", n)
	}
}
