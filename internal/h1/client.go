// Package h1 is service_http's own HTTP/1.1 client, for the requests that
// make up nearly all of a service's traffic: over plain TCP, with no body
// or a small one held whole in memory, not an upgrade, not expecting
// 100-continue. The caller (service_http) decides which requests it sends;
// everything else goes through Go's http.Transport.
//
// It writes the request and reads the response header in the calling
// goroutine, on a keep-alive connection taken from its own pool, where
// Go's transport hands every request to a writer goroutine and gets the
// response back from a reader goroutine, with a context, channels and a
// dozen allocations per request.
//
// It does what Go's transport does for such requests, and is tested
// against it case by case (differential_test.go, and the fuzz targets in
// fuzz_test.go):
//   - answers are read by http.ReadResponse, so both take and refuse the
//     same framings; this client also refuses a status below 100 and a
//     101 the request did not ask for;
//   - it asks for gzip when the request did not say which encodings it
//     takes (unless compression is off), and decompresses the answer;
//   - it hands 1xx answers to the request's httptrace.ClientTrace;
//   - a connection goes back to the pool once its response body has been
//     read to its end, unless either side asked to close it, the host sent
//     more than the body, or answered before it had the whole request; a
//     body closed before its end closes its connection;
//   - the request's context ends the round trip at once, and the round
//     trip or the body's read fails with the context's cause: a request
//     whose context ends takes its connection with it;
//   - a reused connection is checked before a request is written on it
//     (a read that does not wait): the host must not have closed it, or
//     sent anything unasked (a 408 before it closes). A request that may
//     be sent twice (GET, HEAD, OPTIONS, TRACE, or marked with
//     Idempotency-Key or X-Idempotency-Key, with a GetBody if it has a
//     body) and still fails on a reused connection before one byte of an
//     answer came back, or is answered 408 there, is sent again on a new
//     connection: the host closed it meanwhile, which is not the host
//     failing (Go's transport does the same, but for the 408). The host's
//     other idle connections are closed then too;
//   - an answer the host sent before the write of the request failed (a
//     413 before a POST's body was read, then a reset) is the outcome;
//   - idle connections are kept up to MaxIdleConnsPerHost per host for
//     IdleConnTimeout, the most recently used first, and closed by Close;
//     on Linux, one that its host closes is closed at once (the poller),
//     as Go's transport's reader of every idle connection does.
//
// A try's watchdog (its deadline, a silent host) ends the try by closing
// the try's connection instead of cancelling a context made for it.
package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// MaxBody is the largest request body the client sends: one that fits in
// a socket buffer at once, so that writing it never waits for a host that
// answers before it reads.
const MaxBody = 64 << 10

// Config is how a Client connects and what it keeps. The zero value of
// every field but Dial is a valid setting.
type Config struct {
	// Dial opens a connection to a host. Required.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DisableCompression stops the client from asking for gzip (and
	// decompressing it). Default: off, gzip is asked for.
	DisableCompression bool
	// MaxResponseHeaderBytes is the longest response header read,
	// 1xx answers not handed to a trace included. Default: 10 MB.
	MaxResponseHeaderBytes int64
	// MaxIdleConnsPerHost is how many idle connections are kept per
	// host. Default: 2 (http.DefaultMaxIdleConnsPerHost).
	MaxIdleConnsPerHost int
	// IdleConnTimeout is how long a connection is kept idle. Default: 0,
	// for ever.
	IdleConnTimeout time.Duration
	// ReadBufferSize and WriteBufferSize are the sizes of a connection's
	// buffers. Default: 4 KiB each.
	ReadBufferSize, WriteBufferSize int
}

// Client sends requests over keep-alive connections it pools per host.
// Its methods may be called from any goroutine.
type Client struct {
	dial        func(ctx context.Context, network, address string) (net.Conn, error)
	compress    bool  // ask for gzip, and decompress
	maxHeader   int64 // the longest response header read
	maxIdle     int   // idle connections per host
	idleTimeout time.Duration
	readSize    int
	writeSize   int

	mu       sync.Mutex
	idle     map[Host][]*conn
	sweep    *time.Timer // closes connections idle too long
	swept    bool        // sweep is armed
	closed   bool
	poller   *poller          // started with the first connection; nil: none yet, or none at all
	noPoller bool             // the poller could not start: connections are checked when taken
	lastID   uint64           // the id of the last connection the poller watches
	watched  map[uint64]*conn // the connections the poller watches, by id
}

// Host names the host a request goes to.
type Host struct{ Network, Address string }

// New returns a client with the settings of cfg.
func New(cfg Config) *Client {
	c := &Client{
		dial:        cfg.Dial,
		compress:    !cfg.DisableCompression,
		maxHeader:   cfg.MaxResponseHeaderBytes,
		maxIdle:     cfg.MaxIdleConnsPerHost,
		idleTimeout: cfg.IdleConnTimeout,
		readSize:    cfg.ReadBufferSize,
		writeSize:   cfg.WriteBufferSize,
		idle:        map[Host][]*conn{},
		watched:     map[uint64]*conn{},
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

// Watchdog ends a try early: at its deadline, or when its host goes
// silent. RoundTrip tells it what to end as the try goes on (its dial,
// then its connection); what it ends fails the round trip, and the caller
// knows why.
type Watchdog interface {
	// Watch makes abort what the watchdog ends from now on, and calls it
	// at once if the watchdog has ended the try already.
	Watch(abort func())
	// Fired reports whether the watchdog has ended the try.
	Fired() bool
	// Detach leaves the try's connection alone from now on, and reports
	// whether the watchdog had not ended it already.
	Detach() bool
}

// NotSentError is a round trip that failed before one byte of its request
// reached the connection: the host cannot have seen the request, whatever
// its method, and it may be sent anywhere again.
type NotSentError struct{ Err error }

func (e *NotSentError) Error() string { return e.Err.Error() }
func (e *NotSentError) Unwrap() error { return e.Err }

// ErrHeaderTooLong is a response header longer than MaxResponseHeaderBytes.
var ErrHeaderTooLong = errors.New("upstream response header too long (max_response_header)")

// RoundTrip sends req to host and returns its response, with the try's
// watchdog w (nil: none). The request must have no body, or one of at most
// MaxBody bytes with its ContentLength set; no Upgrade, no Expect.
//
// An error is the request's context's own when it ended; a *NotSentError
// when not one byte of the request was written; the dial's error when no
// connection could be made; otherwise it says what failed.
func (c *Client) RoundTrip(req *http.Request, host Host, w Watchdog) (*http.Response, error) {
	ctx := req.Context()
	if req.URL.Scheme == "" {
		req.URL.Scheme = "http"
	}
	// A reused connection is checked first (as Go's transport reads every
	// idle one): the host must not have closed it, or sent anything
	// unasked (a 408 before it closes). A request that may be sent twice,
	// and whose body can be read again, is sent again on a new connection
	// if a reused one still fails before it is answered, or is answered
	// 408 (the host closed it meanwhile).
	resend := idempotent(req) && (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil)
	fresh := false // take a new connection, not an idle one
	for {
		var pc *conn
		if !fresh {
			pc = c.get(host)
		}
		reused := pc != nil
		if reused && (pc.br.Buffered() > 0 || pc.peer.closed()) {
			// the host closed it, or is about to: the request goes
			// out on another connection
			pc.close()
			continue
		}
		if !reused {
			var err error
			if pc, err = c.connect(ctx, host, w); err != nil {
				if ctx.Err() != nil {
					// the dial says "operation was canceled"
					return nil, context.Cause(ctx)
				}
				return nil, err
			}
		}
		if w != nil {
			w.Watch(pc.abortFn)
		}
		stop := context.AfterFunc(ctx, pc.abortFn)
		before := pc.written
		resp, answered, err := pc.exchange(req)
		if err != nil {
			stop()
			pc.close()
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			if w != nil && w.Fired() {
				return nil, err // the watchdog cut the try: its owner says why
			}
			if reused && !answered {
				// the host had closed this keep-alive connection, and
				// likely its other idle ones
				c.drop(host)
				if resend {
					if req, err = rewind(req); err != nil {
						return nil, err
					}
					fresh = true
					continue
				}
			}
			if pc.written == before {
				return nil, &NotSentError{err}
			}
			return nil, err
		}
		if reused && resend && resp.StatusCode == http.StatusRequestTimeout {
			// The host closed the idle connection as the request went
			// out on it, and said so: the 408 was not an answer to the
			// request, which RFC 9110 lets the client repeat on a new
			// connection (Go's transport hands the 408 on).
			stop()
			pc.close()
			c.drop(host)
			if req, err = rewind(req); err != nil {
				return nil, err
			}
			fresh = true
			continue
		}
		body := &responseBody{pc: pc, ctx: ctx, stop: stop, reuse: !resp.Close && !req.Close && !pc.spent}
		if resp.Body == http.NoBody {
			// done with the connection before the watchdog stops: it
			// must not end it in the pool, or under another request
			if w != nil && !w.Detach() {
				body.reuse = false
			}
			body.finish(true)
		} else {
			body.body = resp.Body
			resp.Body = body
		}
		return resp, nil
	}
}

// rewind returns req ready to be sent again: with its body from its
// start (from GetBody), in a copy.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("reading the request body again: %w", err)
	}
	r := *req
	r.Body = body
	return &r, nil
}

// idempotent reports whether req may reach its host twice, as Go's
// transport decides it: GET, HEAD, OPTIONS and TRACE, and requests marked
// with an Idempotency-Key or X-Idempotency-Key header.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	if _, ok := req.Header["Idempotency-Key"]; ok {
		return true
	}
	_, ok := req.Header["X-Idempotency-Key"]
	return ok
}

// connect opens a connection to host. A watchdog w ends the dial by
// cancelling its context.
func (c *Client) connect(ctx context.Context, host Host, w Watchdog) (*conn, error) {
	if w != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		w.Watch(cancel)
	}
	nc, err := c.dial(ctx, host.Network, host.Address)
	if err != nil {
		return nil, err
	}
	pc := &conn{c: c, host: host, nc: nc, left: math.MaxInt64}
	pc.br = bufio.NewReaderSize((*connReader)(pc), c.readSize)
	pc.bw = bufio.NewWriterSize((*connWriter)(pc), c.writeSize)
	pc.abortFn = pc.abort
	pc.peer.init(nc)
	c.watch(pc)
	return pc, nil
}

// watch has the poller watch a new connection for its host's close,
// starting the poller with the client's first connection.
func (c *Client) watch(pc *conn) {
	c.mu.Lock()
	if c.poller == nil && !c.noPoller && !c.closed {
		p, err := newPoller(c.hostClosed)
		c.poller, c.noPoller = p, err != nil
	}
	p := c.poller
	if p == nil {
		c.mu.Unlock()
		return
	}
	c.lastID++
	pc.id = c.lastID
	c.watched[pc.id] = pc
	c.mu.Unlock()
	if !p.watch(pc.nc, pc.id) {
		c.mu.Lock()
		delete(c.watched, pc.id)
		pc.id = 0
		c.mu.Unlock()
	}
}

// hostClosed closes the connection with this id if it is idle: its host
// closed it. One in use is marked, so that it does not go back to the
// pool; its request finds out by itself.
func (c *Client) hostClosed(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc := c.watched[id]
	switch {
	case pc == nil:
		return // closed meanwhile
	case !pc.idle:
		pc.hostClosed = true
		return
	}
	list := c.idle[pc.host]
	if i := slices.Index(list, pc); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(c.idle, pc.host)
	} else {
		c.idle[pc.host] = list
	}
	pc.closeLocked()
}

// get takes the most recently used idle connection to host, or returns
// nil.
func (c *Client) get(host Host) *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.idle[host]
	if len(list) == 0 {
		return nil
	}
	var now time.Time
	for len(list) > 0 {
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		pc.idle = false
		if c.idleTimeout > 0 {
			if now.IsZero() {
				now = time.Now()
			}
			if now.Sub(pc.idleAt) > c.idleTimeout {
				pc.closeLocked()
				continue
			}
		}
		c.idle[host] = list
		return pc
	}
	c.idle[host] = list
	return nil
}

// put returns an idle connection to the pool.
func (c *Client) put(pc *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.idle[pc.host]
	if c.closed || len(list) >= c.maxIdle || pc.hostClosed {
		pc.closeLocked()
		return
	}
	pc.idle = true
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
	c.idle[pc.host] = append(list, pc)
}

// drop closes the idle connections to host.
func (c *Client) drop(host Host) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pc := range c.idle[host] {
		pc.closeLocked()
	}
	delete(c.idle, host)
}

// sweepIdle closes the connections idle for longer than the idle timeout,
// and forgets hosts with none left.
func (c *Client) sweepIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.swept = false
	if c.closed {
		return
	}
	now := time.Now()
	for host, list := range c.idle {
		kept := list[:0]
		for _, pc := range list {
			if now.Sub(pc.idleAt) > c.idleTimeout {
				pc.closeLocked()
			} else {
				kept = append(kept, pc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(c.idle, host)
		} else {
			c.idle[host] = kept
		}
	}
	if len(c.idle) > 0 {
		c.swept = true
		c.sweep.Reset(c.idleTimeout)
	}
}

// Close closes every idle connection, and stops the poller; connections
// in use close when their response is done.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	if c.sweep != nil {
		c.sweep.Stop()
	}
	for _, list := range c.idle {
		for _, pc := range list {
			pc.closeLocked()
		}
	}
	clear(c.idle)
	p := c.poller
	c.poller = nil
	c.mu.Unlock()
	if p != nil {
		p.stop()
	}
}
