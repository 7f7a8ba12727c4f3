package svcreg

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"golang.org/x/net/http/httpguts"
)

// h1Client is service_http's own HTTP/1.1 client, for the requests that
// make up nearly all of a service's traffic: over plain TCP, with no
// body or a small one that request_buffers holds whole, not an upgrade,
// not expecting 100-continue. Everything else goes through Go's
// http.Transport, as configured by Caddy.
//
// It writes the request and reads the response header in the calling
// goroutine, on a keep-alive connection taken from its own pool, where
// Go's transport hands every request to a writer goroutine and gets the
// response back from a reader goroutine, with a context, channels and a
// dozen allocations per request. What a request costs is what the
// benchmarks of issue 16 measured (BENCHMARKS.md, "Where service_proxy's
// extra cost goes").
//
// It does what Go's transport does for such requests:
//   - it asks for gzip when the client did not say which encodings it
//     takes (unless compression is off), and decompresses the answer;
//   - it hands 1xx answers to the request's httptrace.ClientTrace
//     (reverse_proxy forwards 103 Early Hints);
//   - a connection goes back to the pool once its response body has been
//     read to its end, unless either side asked to close it or the host
//     sent more than the body; a body closed before its end closes its
//     connection;
//   - the request's context ends the round trip at once: a client that
//     goes away takes its request's connection with it;
//   - Go's transport reads every idle connection, and so sees at once a
//     host close it or send something unasked (a 408 before it closes);
//     this client checks a connection when it takes it from the pool
//     (peerClosed, a read that does not wait). A request without a body
//     that is retried anyway (GET, HEAD, OPTIONS, marked idempotent) and
//     still fails on a reused connection before one byte of an answer
//     came back is sent again on a new connection: the host closed it
//     meanwhile, which is not the host failing (Go's transport does the
//     same). The host's other idle connections are closed then too;
//   - it refuses what Go's transport refuses (a header with control
//     characters, say) by leaving the request to Go's transport;
//   - idle connections are kept up to the keep-alive settings of the
//     transport (keepalive_idle_conns_per_host, keepalive),
//     the most recently used first, and closed by Cleanup.
//
// A try's deadline and silence check close the try's connection instead
// of cancelling a context made for it.
type h1Client struct {
	t           *HTTPTransport
	compress    bool  // ask for gzip, and decompress
	maxHeader   int64 // the longest response header read
	maxIdle     int   // idle connections per host
	idleTimeout time.Duration
	readSize    int
	writeSize   int

	mu     sync.Mutex
	idle   map[h1Key][]*h1Conn
	sweep  *time.Timer // closes connections idle too long
	swept  bool        // sweep is armed
	closed bool
}

// h1MaxBody is the largest request body the client sends: one that fits
// in a socket buffer at once, so that writing it never waits for a host
// that answers before it reads.
const h1MaxBody = 64 << 10

// newH1Client returns the client for t, or nil when t's settings ask for
// something only Go's transport does: TLS, HTTP/2 or 3, a proxy (from
// the transport or the environment), PROXY protocol, no keep-alive,
// limits on connections, a response header timeout.
func newH1Client(t *HTTPTransport) *h1Client {
	rt := t.Transport
	switch {
	case !t.tracked, t.h2c, t.TLS != nil, rt == nil,
		!slices.Contains(t.Versions, "1.1") && len(t.Versions) > 0,
		t.ProxyProtocol != "", len(t.NetworkProxyRaw) > 0, t.ForwardProxyURL != "", proxyInEnvironment(),
		rt.DisableKeepAlives, rt.MaxConnsPerHost > 0, rt.MaxIdleConns > 0, rt.ResponseHeaderTimeout > 0:
		return nil
	}
	c := &h1Client{
		t:           t,
		compress:    !rt.DisableCompression,
		maxHeader:   rt.MaxResponseHeaderBytes,
		maxIdle:     rt.MaxIdleConnsPerHost,
		idleTimeout: rt.IdleConnTimeout,
		readSize:    rt.ReadBufferSize,
		writeSize:   rt.WriteBufferSize,
		idle:        map[h1Key][]*h1Conn{},
	}
	if c.maxHeader <= 0 {
		c.maxHeader = 10 << 20 // Go's transport's default
	}
	if c.maxIdle <= 0 {
		c.maxIdle = http.DefaultMaxIdleConnsPerHost
	}
	if c.readSize <= 0 {
		c.readSize = 4 << 10
	}
	if c.writeSize <= 0 {
		c.writeSize = 4 << 10
	}
	return c
}

// proxyInEnvironment reports whether Go's transport may send plain HTTP
// requests through a proxy named in the environment (it reads
// HTTP_PROXY, then NO_PROXY for each request: such a setup stays with it).
func proxyInEnvironment() bool {
	for _, name := range []string{"HTTP_PROXY", "http_proxy"} {
		if os.Getenv(name) != "" {
			return true
		}
	}
	return false
}

// handles reports whether the client sends req.
func (c *h1Client) handles(req *http.Request) bool {
	if c.t.TLS != nil { // EnableTLS after Provision
		return false
	}
	if req.Body != nil && req.Body != http.NoBody &&
		(req.ContentLength <= 0 || req.ContentLength > h1MaxBody || !bodyReplayable(req)) {
		return false
	}
	if _, upgrade := req.Header["Upgrade"]; upgrade {
		return false
	}
	if _, expect := req.Header["Expect"]; expect {
		return false
	}
	// Go's transport refuses what Request.Write would send as it is
	// (control characters in a value, a bad name or method): it answers
	// those, with its error.
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) {
		return false
	}
	for name, values := range req.Header {
		if !httpguts.ValidHeaderFieldName(name) {
			return false
		}
		for _, v := range values {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// h1Key names the host a connection goes to.
type h1Key struct{ network, address string }

// h1Conn is a connection of the client.
type h1Conn struct {
	c       *h1Client
	key     h1Key
	conn    *writeTrackingConn
	br      *bufio.Reader
	bw      *bufio.Writer
	idleAt  time.Time
	abortFn func() // abort, made once: context.AfterFunc takes it per request
	left    int64  // bytes that may still be read: the header limit while reading one
	peer    peeker // checks the connection before it is reused
}

// limitedConn is what an h1Conn's reader reads: its connection, up to the
// limit on response headers while one is read.
type limitedConn h1Conn

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errHeaderTooLong
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.conn.Read(p)
	l.left -= int64(n)
	return n, err
}

var errHeaderTooLong = errors.New("upstream response header too long (max_response_header)")

// abort ends whatever the connection is doing: the try's deadline passed,
// its host went silent, or its client went away.
func (pc *h1Conn) abort() { _ = pc.conn.Close() }

// close closes a connection that goes back to no pool.
func (pc *h1Conn) close() { _ = pc.conn.Close() }

// aborter is what a try's watchdog ends: its context, or its connection.
type aborter interface{ abort() }

// cancelAborter ends a try by cancelling its context.
type cancelAborter context.CancelFunc

func (f cancelAborter) abort() { f() }

// roundTrip sends req and returns its response, with the try's watchdog
// w (nil: none). neverSent says that req provably did not reach the host:
// not one byte of it was written.
func (c *h1Client) roundTrip(req *http.Request, w *watchdog) (resp *http.Response, err error, neverSent bool) {
	ctx := req.Context()
	key := h1Key{"tcp", req.URL.Host}
	if di, ok := reverseproxy.GetDialInfo(ctx); ok {
		key = h1Key{di.Network, di.Address}
	}
	if req.URL.Scheme == "" {
		req.URL.Scheme = "http"
	}
	// A reused connection is checked first (as Go's transport reads every
	// idle one): the host must not have closed it, or sent anything
	// unasked (a 408 before it closes). A request without a body that is
	// retried anyway is sent again on a new connection if a reused one
	// still fails before it is answered (the host closed it meanwhile);
	// any other request's body cannot be read again.
	bodyless := req.Body == nil || req.Body == http.NoBody
	resend := bodyless && retriedAnyway(req)
	fresh := false // take a new connection, not an idle one
	for {
		var pc *h1Conn
		if !fresh {
			pc = c.get(key)
		}
		reused := pc != nil
		if reused && (pc.br.Buffered() > 0 || pc.peer.closed()) {
			// the host closed it, or is about to: the request goes
			// out on another connection
			pc.close()
			continue
		}
		if !reused {
			if pc, err = c.dial(ctx, key, w); err != nil {
				return nil, err, false
			}
		}
		if w != nil {
			w.setAbort(pc)
		}
		stop := context.AfterFunc(ctx, pc.abortFn)
		before := pc.conn.written.Load()
		resp, answered, err := pc.exchange(req)
		if err != nil {
			stop()
			pc.close()
			if ctx.Err() != nil {
				return nil, ctx.Err(), false
			}
			if w != nil && w.fired() {
				return nil, err, false // the watchdog cut the try: sendWithin says why
			}
			if reused && !answered {
				// the host had closed this keep-alive connection, and
				// likely its other idle ones
				c.drop(key)
				if resend {
					fresh = true
					continue
				}
			}
			if pc.conn.written.Load() == before {
				return nil, reverseproxy.NewDialError(err), true
			}
			// Not a net.Error, as Go's transport's errors are not:
			// reverse_proxy answers 502, not 504 (a read_timeout).
			return nil, fmt.Errorf("service_http: %w", err), false
		}
		body := &h1Body{pc: pc, stop: stop, reuse: !resp.Close && !req.Close}
		if resp.Body == http.NoBody {
			// done with the connection before the watchdog stops: it
			// must not end it in the pool, or under another request
			if w != nil && !w.detach() {
				body.reuse = false
			}
			body.finish(true)
		} else {
			body.body = resp.Body
			resp.Body = body
		}
		return resp, nil, false
	}
}

// acceptGzip is the Accept-Encoding the client adds (read only).
var acceptGzip = []string{"gzip"}

// exchange writes req and reads its response header. answered says
// whether any byte of an answer came back.
func (pc *h1Conn) exchange(req *http.Request) (resp *http.Response, answered bool, err error) {
	gz := false
	if pc.c.compress && req.Method != http.MethodHead {
		if ae := req.Header["Accept-Encoding"]; len(ae) == 0 || ae[0] == "" {
			if r := req.Header["Range"]; len(r) == 0 || r[0] == "" {
				gz = true
				req.Header["Accept-Encoding"] = acceptGzip
			}
		}
	}
	err = req.Write(pc.bw)
	if gz {
		// the request goes on to other tries, maybe over Go's transport
		delete(req.Header, "Accept-Encoding")
	}
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil {
		return nil, false, err
	}
	// the bytes the reader has already are within the limit: less than
	// a buffer, the rest of an answer it read ahead (none, normally)
	pc.left = pc.c.maxHeader
	if _, err := pc.br.Peek(1); err != nil {
		return nil, false, err
	}
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, true, err
		}
		code := resp.StatusCode
		if code >= 200 {
			break
		}
		if code == http.StatusSwitchingProtocols {
			return nil, true, errors.New("upstream switched protocols, which the request did not ask for")
		}
		// As Go's transport: 1xx answers go to the trace, and each one
		// delivered resets the header limit (the trace's owner limits
		// how many it takes); undelivered, they count towards it.
		if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, true, err
			}
			pc.left = pc.c.maxHeader
		}
	}
	pc.left = math.MaxInt64
	if gz && resp.Body != http.NoBody {
		if ce := resp.Header["Content-Encoding"]; len(ce) > 0 && strings.EqualFold(ce[0], "gzip") {
			delete(resp.Header, "Content-Encoding")
			delete(resp.Header, "Content-Length")
			resp.ContentLength = -1
			resp.Uncompressed = true
			resp.Body = &gzipBody{body: resp.Body}
		}
	}
	return resp, true, nil
}

// dial opens a connection to key's host. A watchdog w ends the dial by
// cancelling its context.
func (c *h1Client) dial(ctx context.Context, key h1Key, w *watchdog) (*h1Conn, error) {
	if w != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		w.setAbort(cancelAborter(cancel))
	}
	conn, err := c.t.Transport.DialContext(ctx, key.network, key.address)
	if err != nil {
		return nil, err
	}
	tc, ok := conn.(*writeTrackingConn)
	if !ok {
		// not from trackDial: cannot happen while c exists
		conn.Close()
		return nil, reverseproxy.NewDialError(errors.New("service_http: untracked connection"))
	}
	pc := &h1Conn{c: c, key: key, conn: tc, bw: bufio.NewWriterSize(tc, c.writeSize), left: math.MaxInt64}
	pc.br = bufio.NewReaderSize((*limitedConn)(pc), c.readSize)
	pc.abortFn = pc.abort
	pc.peer.init(tc.Conn)
	return pc, nil
}

// get takes the most recently used idle connection to key's host, or
// returns nil.
func (c *h1Client) get(key h1Key) *h1Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.idle[key]
	if len(list) == 0 {
		return nil
	}
	var now time.Time
	for len(list) > 0 {
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		if c.idleTimeout > 0 {
			if now.IsZero() {
				now = time.Now()
			}
			if now.Sub(pc.idleAt) > c.idleTimeout {
				pc.close()
				continue
			}
		}
		c.idle[key] = list
		return pc
	}
	c.idle[key] = list
	return nil
}

// put returns an idle connection to the pool.
func (c *h1Client) put(pc *h1Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.idle[pc.key]
	if c.closed || len(list) >= c.maxIdle {
		pc.close()
		return
	}
	if c.idleTimeout > 0 {
		pc.idleAt = time.Now()
		if !c.swept {
			c.swept = true
			if c.sweep == nil {
				c.sweep = time.AfterFunc(c.idleTimeout, c.sweepIdle)
			} else {
				c.sweep.Reset(c.idleTimeout)
			}
		}
	}
	c.idle[pc.key] = append(list, pc)
}

// drop closes the idle connections to key's host.
func (c *h1Client) drop(key h1Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pc := range c.idle[key] {
		pc.close()
	}
	delete(c.idle, key)
}

// sweepIdle closes the connections idle for longer than the idle timeout,
// and forgets hosts with none left.
func (c *h1Client) sweepIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.swept = false
	if c.closed {
		return
	}
	now := time.Now()
	for key, list := range c.idle {
		kept := list[:0]
		for _, pc := range list {
			if now.Sub(pc.idleAt) > c.idleTimeout {
				pc.close()
			} else {
				kept = append(kept, pc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(c.idle, key)
		} else {
			c.idle[key] = kept
		}
	}
	if len(c.idle) > 0 {
		c.swept = true
		c.sweep.Reset(c.idleTimeout)
	}
}

// close closes every idle connection; connections in use close when
// their response is done.
func (c *h1Client) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.sweep != nil {
		c.sweep.Stop()
	}
	for _, list := range c.idle {
		for _, pc := range list {
			pc.close()
		}
	}
	clear(c.idle)
}

// h1Body is a response body of the client. Read to its end, it puts its
// connection back in the pool; closed before that, it closes it.
type h1Body struct {
	body  io.ReadCloser // from http.ReadResponse: never closed (that reads it to its end)
	pc    *h1Conn
	stop  func() bool // ends the watch on the request's context
	reuse bool        // neither side asked to close the connection
	done  atomic.Bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

// finish ends the response: complete says it was read to its end.
func (b *h1Body) finish(complete bool) {
	if b.done.Swap(true) {
		return
	}
	// a watch that already ran has closed the connection; bytes after
	// the body are no answer to anything
	if b.stop() && complete && b.reuse && b.pc.br.Buffered() == 0 {
		b.pc.c.put(b.pc)
	} else {
		b.pc.close()
	}
}

// gzipBody decompresses a response body the client asked gzip for.
type gzipBody struct {
	body io.ReadCloser
	zr   *gzip.Reader
	err  error
}

func (g *gzipBody) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.zr == nil {
		if g.zr, g.err = gzip.NewReader(g.body); g.err != nil {
			return 0, g.err
		}
	}
	n, err := g.zr.Read(p)
	if err == io.EOF {
		// read the underlying body to its end, so that its connection
		// can be reused
		if _, rerr := g.body.Read(make([]byte, 1)); rerr != io.EOF {
			g.body.Close()
		}
		g.err = io.EOF
	} else if err != nil {
		g.err = err
	}
	return n, err
}

func (g *gzipBody) Close() error { return g.body.Close() }

// Interface guards
var (
	_ aborter = (*h1Conn)(nil)
	_ aborter = cancelAborter(nil)
)
