package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// backend is a real HTTP server on 127.0.0.1 that the tests can kill
// abruptly and start again on the same port. It answers
// "<name> <method> <path>" plus the X-Service header it got, and keeps
// count of what it served.
type backend struct {
	t    testing.TB
	name string
	Addr string // 127.0.0.1:port, fixed for the backend's life

	// delay is how long each request takes.
	delay time.Duration
	// h2c makes it speak HTTP/2 without TLS besides HTTP/1; set it
	// before Start.
	h2c bool

	mu         sync.Mutex
	ln         net.Listener
	srv        *http.Server
	conns      map[net.Conn]struct{}
	generation int         // 1 for the first start, +1 per restart
	started    time.Time   // when the current generation started listening
	firstReq   time.Time   // first request of the current generation
	posts      map[int]int // POST id -> times received (all generations)
	badBodies  []string    // POSTs whose body did not match their id

	served  atomic.Int64 // requests other than health checks, answered
	arrived atomic.Int64 // requests other than health checks, received

	health atomic.Int32 // status /healthz answers with; 0 = 200
	probes atomic.Int64 // health checks received

	// Gray failures, switched on and off while it runs:
	hang   atomic.Bool  // no request (health checks included) gets an answer while on, as with a frozen process
	status atomic.Int32 // status other requests get; 0 = 200
	reset  atomic.Bool  // a connection is reset once a request on it has arrived
	slow   atomic.Int64 // extra time each request other than a health check takes, in ns
}

func startBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{t: t, name: name, Addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), posts: map[int]int{}}
	b.Start()
	t.Cleanup(func() { b.Kill() })
	return b
}

// Start listens on the backend's address (again).
func (b *backend) Start() {
	b.t.Helper()
	var ln net.Listener
	var err error
	// The port may still be held for a moment after a kill; retry briefly.
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", b.Addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		b.t.Fatalf("backend %s: %v", b.name, err)
	}
	b.mu.Lock()
	b.generation++
	gen := b.generation
	b.ln = ln
	b.conns = map[net.Conn]struct{}{}
	b.started = time.Now()
	b.firstReq = time.Time{}
	b.srv = &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { b.serve(gen, w, r) }),
		Protocols: b.protocols(),
		ConnState: func(c net.Conn, s http.ConnState) {
			b.mu.Lock()
			defer b.mu.Unlock()
			switch s {
			case http.StateNew:
				if b.generation != gen || b.ln == nil {
					// Accepted just before this generation was killed.
					if tc, ok := c.(*net.TCPConn); ok {
						_ = tc.SetLinger(0)
					}
					_ = c.Close()
					return
				}
				b.conns[c] = struct{}{}
			case http.StateClosed, http.StateHijacked:
				delete(b.conns, c)
			}
		},
	}
	srv := b.srv
	b.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (b *backend) serve(gen int, w http.ResponseWriter, r *http.Request) {
	check := r.URL.Path == "/healthz" || r.Header.Get("User-Agent") == "caddy-svcreg-health-check"
	if check {
		b.probes.Add(1)
	}
	for b.hang.Load() {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
	if b.reset.Load() {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = conn.Close()
		}
		return
	}
	if r.URL.Path == "/healthz" {
		if status := b.health.Load(); status != 0 {
			w.WriteHeader(int(status))
		}
		fmt.Fprint(w, "health")
		return
	}
	if check {
		// the check that brings a host back after failed requests
		if status := b.status.Load(); status != 0 {
			w.WriteHeader(int(status))
		}
		return
	}
	b.arrived.Add(1)
	b.mu.Lock()
	if gen == b.generation && b.firstReq.IsZero() {
		b.firstReq = time.Now()
	}
	b.mu.Unlock()

	if r.Method == http.MethodPost {
		id, err := strconv.Atoi(r.Header.Get("X-Req-Id"))
		body, rerr := io.ReadAll(r.Body)
		b.mu.Lock()
		switch {
		case err != nil:
			b.badBodies = append(b.badBodies, fmt.Sprintf("no request id: %q", r.Header.Get("X-Req-Id")))
		case rerr != nil:
			// The connection broke while the body was arriving (this
			// backend was killed): the request never ran, but count it
			// as received all the same.
		case string(body) != postBody(id):
			b.badBodies = append(b.badBodies, fmt.Sprintf("id %d: %d bytes, want %d", id, len(body), len(postBody(id))))
		}
		b.posts[id]++
		b.mu.Unlock()
	}
	if b.delay > 0 {
		time.Sleep(b.delay)
	}
	if slow := time.Duration(b.slow.Load()); slow > 0 {
		time.Sleep(slow)
	}
	if status := b.status.Load(); status != 0 {
		w.WriteHeader(int(status))
	}
	b.served.Add(1)
	fmt.Fprintf(w, "%s %s %s", b.name, r.Method, r.URL.RequestURI())
	if svc := r.Header.Get("X-Service"); svc != "" {
		fmt.Fprintf(w, " [%s]", svc)
	}
}

func (b *backend) protocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(b.h2c)
	return p
}

// Shutdown stops the backend gracefully, as a Go service does on SIGTERM:
// it stops listening, closes idle connections (HTTP/2 ones with a
// GOAWAY), lets the requests in flight finish, and returns when they have.
func (b *backend) Shutdown() {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		b.t.Errorf("backend %s: shutdown: %v", b.name, err)
	}
	b.mu.Lock()
	b.ln = nil
	b.mu.Unlock()
}

// Kill closes the listener and every open connection at once, with a
// reset, the way a crashed process loses them. It returns when the kill
// began and ended: under load, on a busy machine, the two can be
// milliseconds apart, and a request that started in between may still
// have been in flight on the backend.
func (b *backend) Kill() (begin, end time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	begin = time.Now()
	if b.ln == nil {
		return begin, begin
	}
	_ = b.ln.Close()
	b.ln = nil
	for c := range b.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	b.conns = nil
	return begin, time.Now()
}

// FirstRequestAfterStart returns how long after the current generation
// started listening it served its first request, or -1 if it has not.
func (b *backend) FirstRequestAfterStart() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.firstReq.IsZero() {
		return -1
	}
	return b.firstReq.Sub(b.started)
}

// postBody is the body of POST id: its size and content depend on id, so
// that a truncated, empty or swapped body shows.
func postBody(id int) string {
	chunk := "id=" + strconv.Itoa(id) + ";"
	size := 1<<10 + (id*7919)%(99<<10) // 1 KiB to 100 KiB
	return strings.Repeat(chunk, size/len(chunk)+1)[:size]
}

// sendPost sends POST id through url.
func sendPost(client *http.Client, url string, id int) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(postBody(id)))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Req-Id", strconv.Itoa(id))
	return statusOf(client.Do(req))
}
