package h1

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
	"strings"
	"sync/atomic"
	"testing"
)

// idleCount returns how many idle connections the pool holds.
func (c *Client) idleCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, list := range c.idle {
		n += len(list)
	}
	return n
}

// newTestClient returns a client with Go's transport's defaults but for
// more idle connections per host (32, as service_http keeps), closed when
// the test ends.
func newTestClient(t testing.TB, set ...func(*Config)) *Client {
	t.Helper()
	cfg := Config{Dial: (&net.Dialer{}).DialContext, MaxIdleConnsPerHost: 32}
	for _, f := range set {
		f(&cfg)
	}
	c := New(cfg)
	t.Cleanup(c.Close)
	return c
}

// roundTripper sends requests through a Client to the host of their URL,
// as an http.RoundTripper, so that tests can send the same requests
// through it and through Go's transport.
type roundTripper struct{ c *Client }

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	return rt.c.RoundTrip(req, Host{"tcp", req.URL.Host}, nil)
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
func h1Do(t *testing.T, tr http.RoundTripper, req *http.Request) (*http.Response, string) {
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

func newReq(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestClientKeepsConnections(t *testing.T) {
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
	c := newTestClient(t)
	tr := roundTripper{c}
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
	if n := c.idleCount(); n != 1 {
		t.Errorf("%d idle connections after the requests, want 1", n)
	}
	c.Close()
	if n := c.idleCount(); n != 0 {
		t.Errorf("%d idle connections after Cleanup, want 0", n)
	}
}

func TestClientClosesUnfinishedConnections(t *testing.T) {
	long := strings.Repeat("x", 64<<10)
	srv, conns := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, long)
	})
	c := newTestClient(t)
	tr := roundTripper{c}
	// a body closed before its end: its connection cannot be reused
	resp, err := tr.RoundTrip(newReq(t, "GET", srv.URL+"/long", nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resp.Body.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := c.idleCount(); n != 0 {
		t.Fatalf("a connection whose body was closed early went back to the pool (%d idle)", n)
	}
	if _, err := resp.Body.Read(make([]byte, 10)); err == nil || err == io.EOF {
		t.Errorf("a read after Close: %v; want an error, as through Go's transport (not the end of the body)", err)
	}
	// the host asked to close it
	if _, body := h1Do(t, tr, newReq(t, "GET", srv.URL+"/close", nil)); body != long {
		t.Fatal("wrong body")
	}
	if n := c.idleCount(); n != 0 {
		t.Fatalf("a connection its host closed went back to the pool (%d idle)", n)
	}
	h1Do(t, tr, newReq(t, "GET", srv.URL+"/long", nil))
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3 (none reused)", n)
	}
}

func TestClientGzip(t *testing.T) {
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
	c := newTestClient(t)
	tr := roundTripper{c}
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
	if n := c.idleCount(); n != 1 {
		t.Errorf("%d idle connections, want 1", n)
	}
}

func TestClientInformational(t *testing.T) {
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	c := newTestClient(t)
	tr := roundTripper{c}
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

func TestClientIdleConnectionClosedByHost(t *testing.T) {
	addr, conns, closed := closingServer(t)
	c := newTestClient(t)
	tr := roundTripper{c}
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

func TestClientContextEndsTheTry(t *testing.T) {
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
	c := newTestClient(t)
	tr := roundTripper{c}
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
	if n := c.idleCount(); n != 0 {
		t.Errorf("%d idle connections, want 0", n)
	}
}

// A request whose context ended before a connection was made for it fails
// with the context's cause, as through Go's transport, not with the
// dial's "operation was canceled".
func TestClientContextEndedBeforeTheDial(t *testing.T) {
	srv, conns := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	goTransport := &http.Transport{}
	t.Cleanup(goTransport.CloseIdleConnections)
	cause := errors.New("the client went away")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	for _, rt := range []http.RoundTripper{goTransport, roundTripper{newTestClient(t)}} {
		resp, err := rt.RoundTrip(newReq(t, "GET", srv.URL, nil).WithContext(ctx))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%T: a request whose context had ended was answered", rt)
		}
		if !errors.Is(err, cause) {
			t.Errorf("%T: %v; want the context's cause, %q", rt, err, cause)
		}
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("%d connections for requests whose context had ended, want 0", n)
	}
}

func TestClientLimitsResponseHeaders(t *testing.T) {
	srv, _ := connCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("x", 8<<10))
		io.WriteString(w, "ok")
	})
	c := newTestClient(t, func(cfg *Config) { cfg.MaxResponseHeaderBytes = 4 << 10 })
	resp, err := roundTripper{c}.RoundTrip(newReq(t, "GET", srv.URL, nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("an 8 KiB header went through a 4 KiB limit")
	}
	if !errors.Is(err, ErrHeaderTooLong) {
		t.Errorf("error %v, want %v", err, ErrHeaderTooLong)
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

// result sends req through rt and sums up what came back.
func result(rt http.RoundTripper, req *http.Request) string {
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

func TestClientResendsOnlyWhatItMay(t *testing.T) {
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
	c := newTestClient(t)
	tr := roundTripper{c}
	for i := 0; i < 3; i++ {
		if got := result(tr, newReq(t, "GET", url, nil)); got != "200 OK ok" {
			t.Fatalf("GET %d: %s; want it sent again on a new connection", i, got)
		}
	}
	url = rawServer(t, serve)
	result(tr, newReq(t, "POST", url, bytes.NewReader([]byte("data"))))
	req := newReq(t, "POST", url, nil)
	req.Body, req.ContentLength = io.NopCloser(bytes.NewReader([]byte("data"))), 4
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a POST the host may have read was sent again")
	}
	var notSent *NotSentError
	if errors.As(err, &notSent) {
		t.Errorf("a POST the host read was reported as never sent: %v", err)
	}
}
