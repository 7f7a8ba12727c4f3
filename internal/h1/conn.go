package h1

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"time"
)

// conn is a connection of the client: one request at a time, written and
// answered in the goroutine of the request.
type conn struct {
	c        *Client
	host     Host
	nc       net.Conn
	br       *bufio.Reader // reads through connReader
	bw       *bufio.Writer // writes through connWriter
	written  int64         // bytes written on nc
	writeErr error         // the last write on nc that failed, in this exchange
	spent    bool          // not to be reused, whatever the answer says
	left     int64         // bytes that may still be read: the header limit while reading one
	idleAt   time.Time
	abortFn  func() // abort, made once: the watchdog and context.AfterFunc take it per request
	peer     peeker // checks the connection before it is reused
	id       uint64 // in the poller; 0: not watched

	// guarded by the client's mu
	idle       bool // in the pool
	hostClosed bool // the poller saw the host close it while in use
}

// connReader is what a conn's reader reads: its connection, up to the
// limit on response headers while one is read.
type connReader conn

func (r *connReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, ErrHeaderTooLong
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.nc.Read(p)
	r.left -= int64(n)
	return n, err
}

// connWriter is what a conn's writer writes to: its connection, counting
// the bytes that reached it.
type connWriter conn

func (w *connWriter) Write(p []byte) (int, error) {
	n, err := w.nc.Write(p)
	w.written += int64(n)
	if err != nil {
		w.writeErr = err
	}
	return n, err
}

// abort ends whatever the connection is doing: the try's deadline passed,
// its host went silent, or its request's context ended.
func (pc *conn) abort() { _ = pc.nc.Close() }

// close closes a connection that goes back to no pool.
func (pc *conn) close() {
	_ = pc.nc.Close()
	if pc.id != 0 {
		pc.c.mu.Lock()
		delete(pc.c.watched, pc.id)
		pc.c.mu.Unlock()
	}
}

// closeLocked is close with the client's mu held.
func (pc *conn) closeLocked() {
	_ = pc.nc.Close()
	delete(pc.c.watched, pc.id)
}

// acceptGzip is the Accept-Encoding the client adds (read only).
var acceptGzip = []string{"gzip"}

// exchange writes req and reads its response header. answered says
// whether any byte of an answer came back. A connection whose answer
// came before the whole request was written is spent.
func (pc *conn) exchange(req *http.Request) (resp *http.Response, answered bool, err error) {
	gz := false
	if pc.c.compress && req.Method != http.MethodHead {
		if ae := req.Header["Accept-Encoding"]; len(ae) == 0 || ae[0] == "" {
			if r := req.Header["Range"]; len(r) == 0 || r[0] == "" {
				gz = true
				if req.Header == nil {
					req.Header = http.Header{}
				}
				req.Header["Accept-Encoding"] = acceptGzip
			}
		}
	}
	before := pc.written
	pc.writeErr = nil
	err = req.Write(pc.bw)
	if gz {
		// the request goes on to other tries, maybe over Go's transport
		delete(req.Header, "Accept-Encoding")
	}
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil {
		err = fmt.Errorf("writing the request to %s: %w", pc.host.Address, err)
		if pc.written == before || !pc.answeredEarly() {
			return nil, false, err
		}
		// The host answered before it read the whole request, and
		// stopped reading (a 413 past its body limit, then a close that
		// resets the connection): the answer is the outcome, not the
		// write that failed after it, as when Go's transport's reader
		// gets it first. The connection is spent.
		pc.spent = true
		resp, answered, rerr := pc.readResponse(req, gz)
		if rerr != nil {
			return nil, answered, err
		}
		return resp, true, nil
	}
	return pc.readResponse(req, gz)
}

// answeredEarly reports whether a request whose write failed may have an
// answer waiting: its connection broke (not a timeout, not the request's
// own body failing), so that reading it cannot wait for long, and the
// host may have sent something before.
func (pc *conn) answeredEarly() bool {
	var ne net.Error
	return pc.writeErr != nil && !(errors.As(pc.writeErr, &ne) && ne.Timeout())
}

// readResponse reads the response header to req, and 1xx answers before
// it. gz says that the client asked for gzip.
func (pc *conn) readResponse(req *http.Request, gz bool) (resp *http.Response, answered bool, err error) {
	// the bytes the reader has already are within the limit: less than
	// a buffer, the rest of an answer it read ahead (none, normally)
	pc.left = pc.c.maxHeader
	if _, err := pc.br.Peek(1); err != nil {
		return nil, false, pc.readError(err)
	}
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, true, pc.readError(err)
		}
		code := resp.StatusCode
		if code >= 200 {
			break
		}
		if code < 100 {
			// Go's transport passes it on, and reverse_proxy cannot
			// answer with it (WriteHeader panics)
			return nil, true, pc.readError(fmt.Errorf("status %d is no HTTP status", code))
		}
		if code == http.StatusSwitchingProtocols {
			return nil, true, pc.readError(errors.New("upstream switched protocols, which the request did not ask for"))
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

// readError says what failed when reading a response header failed.
func (pc *conn) readError(err error) error {
	return fmt.Errorf("reading the response header from %s: %w", pc.host.Address, err)
}
