package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestServiceProxyOwnHTTP1Client sends requests through service_proxy's
// defaults, which go out through service_http's own HTTP/1.1 client, and
// checks what Go's transport did for them before: gzip asked for and
// decompressed for a client that named no encoding (and passed through
// to one that takes gzip), 103 Early Hints passed on, HEAD, 204, chunked
// bodies with trailers, small POST bodies, and keep-alive connections
// reused (a handful for hundreds of requests).
func TestServiceProxyOwnHTTP1Client(t *testing.T) {
	const text = "a text the host compresses when asked"
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/gzip":
			if r.Header.Get("Accept-Encoding") != "gzip" {
				io.WriteString(w, text)
				return
			}
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			io.WriteString(zw, text)
			zw.Close()
		case "/hints":
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "one ")
			w.(http.Flusher).Flush()
			io.WriteString(w, "two")
			w.Header().Set("X-Sum", "7")
		default:
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
		}
	}))
	srv.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
	}`, ln.Addr()), "{http} {\n\tservice_proxy\n}", caddyOpts{})
	base := "http://" + c.HTTP + "/users/v1"
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	do := func(req *http.Request) (*http.Response, string) {
		t.Helper()
		return doResponse(t, client, req)
	}
	get := func(path string) *http.Request {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}

	for i := 0; i < 100; i++ {
		if resp, body := do(get("/gzip")); body != text || resp.Header.Get("Content-Encoding") != "" {
			t.Fatalf("a client that named no encoding got %q (Content-Encoding %q)", body, resp.Header.Get("Content-Encoding"))
		}
		req := get("/gzip")
		req.Header.Set("Accept-Encoding", "gzip")
		resp, body := do(req)
		if resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("a client that takes gzip got Content-Encoding %q", resp.Header.Get("Content-Encoding"))
		}
		if zr, err := gzip.NewReader(strings.NewReader(body)); err != nil {
			t.Fatal(err)
		} else if b, _ := io.ReadAll(zr); string(b) != text {
			t.Fatalf("gzip body decompresses to %q", b)
		}
		var hints []int
		req = get("/hints")
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				if h.Get("Link") != "" {
					hints = append(hints, code)
				}
				return nil
			},
		}))
		if resp, body := do(req); resp.StatusCode != 200 || body != "after hints" || len(hints) != 1 || hints[0] != 103 {
			t.Fatalf("hints: %d %q, 1xx with Link seen: %v", resp.StatusCode, body, hints)
		}
		if resp, body := do(get("/empty")); resp.StatusCode != 204 || body != "" {
			t.Fatalf("204: %d %q", resp.StatusCode, body)
		}
		head := get("/x")
		head.Method = http.MethodHead
		if resp, body := do(head); resp.StatusCode != 200 || body != "" {
			t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
		}
		if resp, body := do(get("/chunked")); body != "one two" || resp.Trailer.Get("X-Sum") != "7" {
			t.Fatalf("chunked: %q, trailer %v", body, resp.Trailer)
		}
		post, err := http.NewRequest(http.MethodPost, base+"/post", bytes.NewReader([]byte(fmt.Sprint("body ", i))))
		if err != nil {
			t.Fatal(err)
		}
		if resp, body := do(post); resp.StatusCode != 200 || body != fmt.Sprintf("POST /post body %d", i) {
			t.Fatalf("POST: %d %q", resp.StatusCode, body)
		}
	}
	// one request at a time: Caddy needs one connection, and keeps it
	if n := conns.Load(); n > 2 {
		t.Errorf("700 requests one after another took %d connections to the host", n)
	}
}

// rawHost serves each connection to 127.0.0.1 with serve, which gets the
// connection and a reader over it, until the test ends.
func rawHost(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// TestOwnHTTP1ClientEarlyAnswers sends POSTs of 16 to 64 KiB through
// service_proxy to a host that answers 413 as soon as it has read the
// header and closes without reading the body (which resets the
// connection), as nginx does past client_max_body_size: every client gets
// the 413, and the host, which answered, stays in rotation.
func TestOwnHTTP1ClientEarlyAnswers(t *testing.T) {
	addr := rawHost(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large")
		}
	})
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
	}`, addr), "{http} {\n\tservice_proxy\n}", caddyOpts{})
	client := &http.Client{Timeout: 10 * time.Second}
	got := map[int]int{}
	for _, kib := range []int{16, 32, 48, 64} {
		for range 40 {
			resp, err := client.Post("http://"+c.HTTP+"/users/v1/upload", "application/octet-stream", bytes.NewReader(make([]byte, kib<<10)))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got[resp.StatusCode]++
		}
	}
	if got[413] != 160 {
		t.Errorf("160 POSTs answered 413 before their body was read: %v by status; want all 413", got)
	}
	if ep := endpointState(t, c, addr); ep["failures"].(float64) != 0 || ep["out_of_rotation"] != nil {
		t.Errorf("the host that answered them: %v; want no failures, in rotation", ep)
	}
}

// TestOwnHTTP1ClientClosesWhatTheHostClosed has service_proxy open 32
// connections to a host at once, which closes them once they are idle
// (its keep-alive timeout, 1 s): Caddy closes its ends promptly, where
// it kept them in CLOSE_WAIT up to its own idle timeout (2 minutes).
func TestOwnHTTP1ClientClosesWhatTheHostClosed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts sockets in /proc/net/tcp; the prompt close is Linux's (epoll)")
	}
	const n = 32
	var arrived atomic.Int64
	all := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == n {
			close(all)
		}
		select { // n requests at once: n connections
		case <-all:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "ok")
	}))
	srv.Config.IdleTimeout = time.Second
	srv.Start()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
	}`, addr), "{http} {\n\tservice_proxy\n}", caddyOpts{})
	client := &http.Client{Timeout: 20 * time.Second}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get("http://" + c.HTTP + "/users/v1/together")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	wg.Wait()
	t.Logf("%d connections from Caddy to the host after %d requests at once", openTo(addr), n)
	// the host closes them after 1 s idle; Caddy's ends must follow
	waitFor(t, 5*time.Second, "Caddy to close the connections its host closed", func() bool { return openTo(addr) == 0 })
}

// openTo counts this machine's TCP connections to addr that their client
// has not closed: established, or closed by the host only (CLOSE_WAIT).
func openTo(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[2], want) && (f[3] == "01" || f[3] == "08") {
				n++
			}
		}
	}
	return n
}

// TestOwnHTTP1ClientLogsRefusedAnswers sends requests to hosts that answer
// with two Content-Lengths, once through service_http's own client and
// once through Go's transport (response_header_timeout takes a
// service_http there): both are answered 502 and logged the same way (by
// service_errors, with the status and the error), the own client's error
// saying what failed and where, where Go's transport says "net/http:
// HTTP/1.x transport connection broken".
func TestOwnHTTP1ClientLogsRefusedAnswers(t *testing.T) {
	twoLengths := func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!")
		}
	}
	own, goes := rawHost(t, twoLengths), rawHost(t, twoLengths)
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
		service orders v1 %s
	}`, own, goes), `{http} {
	handle /users/* {
		service_proxy
	}
	handle /orders/* {
		service_proxy {
			transport service_http {
				response_header_timeout 10s
			}
		}
	}
}`, caddyOpts{})
	for _, path := range []string{"/users/v1/x", "/orders/v1/x"} {
		if status, _, _ := c.Get(path); status != http.StatusBadGateway {
			t.Errorf("GET %s answered with two Content-Lengths: %d, want 502", path, status)
		}
	}
	entries := map[string]map[string]any{}
	waitFor(t, 5*time.Second, "both errors in Caddy's log", func() bool {
		for _, line := range strings.Split(c.Log(), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == "request failed" {
				entries[fmt.Sprint(e["service"])] = e
			}
		}
		return len(entries) == 2
	})
	ours, theirs := entries["users"], entries["orders"]
	for _, e := range []map[string]any{ours, theirs} {
		if e["level"] != "error" || e["logger"] != theirs["logger"] || e["status"] != float64(502) ||
			!strings.Contains(fmt.Sprint(e["error"]), "http: message cannot contain multiple Content-Length headers") {
			t.Errorf("log entry %v: want an error with status 502 naming the two Content-Lengths", e)
		}
	}
	if msg, want := fmt.Sprint(ours["error"]), "HTTP 502: service_http: reading the response header from "+own+": "; !strings.Contains(msg, want) {
		t.Errorf("the own client's error %q, want it to say %q", msg, want)
	}
}
