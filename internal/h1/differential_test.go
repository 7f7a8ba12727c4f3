package h1

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
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

// The differential table: the same misbehaving hosts, raw TCP on
// 127.0.0.1, sent the same requests through Go's transport and through
// the client, one after the other. Each row compares the two outcomes:
// they must be the same, or, where the row says why in one line, the
// client's must be the safer one.

// outcome sums up what a row's requests got.
type outcome struct {
	answer string // what came back, in a few words
	wrong  int    // answers meant for another request
	twice  int    // requests that may not reach their host twice and did
	failed int    // requests the row expects answered that got an error
	notes  string // more, not compared: for the log
}

func (o outcome) String() string {
	s := fmt.Sprintf("%q, %d wrong, %d twice, %d failed", o.answer, o.wrong, o.twice, o.failed)
	if o.notes != "" {
		s += " (" + o.notes + ")"
	}
	return s
}

// same compares two outcomes, leaving out the notes.
func (o outcome) same(p outcome) bool {
	o.notes, p.notes = "", ""
	return o == p
}

// side is one of the two clients a row runs against.
type side struct {
	rt   http.RoundTripper
	ours *Client // nil: Go's transport
}

// diffRow is a row of the table.
type diffRow struct {
	name string
	run  func(t *testing.T, s side) outcome
	// differs, when set, says in one line why the client's outcome may
	// differ from Go's transport's; safer then checks that it is the
	// safer one (and, where it may not differ, that it is the same).
	differs string
	safer   func(ours, theirs outcome) bool
}

func TestDifferential(t *testing.T) {
	// Go's transport logs what it reads on an idle connection
	// ("Unsolicited response received on idle HTTP channel").
	log.SetOutput(io.Discard)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	var rows []diffRow
	rows = append(rows, framingRows()...)
	rows = append(rows, smugglingRows()...)
	rows = append(rows, informationalRows()...)
	rows = append(rows, lifecycleRows()...)
	rows = append(rows, raceRows()...)
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			goTransport := &http.Transport{MaxIdleConnsPerHost: 32}
			t.Cleanup(goTransport.CloseIdleConnections)
			theirs := row.run(t, side{rt: goTransport})
			c := newTestClient(t)
			ours := row.run(t, side{rt: roundTripper{c}, ours: c})
			t.Logf("Go's transport: %v", theirs)
			t.Logf("the client:     %v", ours)
			switch {
			case row.differs == "" && !ours.same(theirs):
				t.Errorf("the client: %v; Go's transport: %v", ours, theirs)
			case row.differs != "" && !row.safer(ours, theirs):
				t.Errorf("the client: %v; Go's transport: %v; want the client's safer (%s)", ours, theirs, row.differs)
			}
		})
	}
}

// testHost is a raw HTTP/1.1 host on 127.0.0.1 that a row scripts.
type testHost struct {
	addr  string
	url   string
	conns atomic.Int64
	mu    sync.Mutex
	got   map[string]int // requests by X-Id
}

// newHost starts a host: serve handles each connection, numbered from 1,
// with a reader over it; the connection closes when serve returns.
func newHost(t *testing.T, serve func(h *testHost, c net.Conn, br *bufio.Reader, n int)) *testHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &testHost{addr: ln.Addr().String(), url: "http://" + ln.Addr().String(), got: map[string]int{}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(h.conns.Add(1))
			mu.Lock()
			open[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					c.Close()
					mu.Lock()
					delete(open, c)
					mu.Unlock()
				}()
				serve(h, c, bufio.NewReader(c), n)
			}()
		}
	}()
	return h
}

// read reads a request, counts it by its X-Id, and reads its body.
func (h *testHost) read(br *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.got[req.Header.Get("X-Id")]++
	h.mu.Unlock()
	return req, nil
}

// times returns how many times the request with this id arrived.
func (h *testHost) times(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.got[id]
}

// twice returns how many POSTs without an Idempotency-Key, among ids,
// arrived more than once.
func (h *testHost) twice(ids []string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, id := range ids {
		if h.got[id] > 1 {
			n++
		}
	}
	return n
}

// answer is the host's real answer to the request with this id.
func answer(id string) string {
	body := "id " + id
	return "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// fake is a response no request asked for.
const fake = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake"

// request returns a request with an id; a POST gets a body of size bytes.
func request(t testing.TB, method, url, id string, size int) *http.Request {
	t.Helper()
	req := newReq(t, method, url, nil)
	req.Header.Set("X-Id", id)
	if size > 0 {
		// as http.NewRequest makes it, and service_http hands it to Go's
		// transport
		body := bytes.Repeat([]byte("x"), size)
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(size)
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return req
}

// fetch sends req and reads its answer whole. The status is -1 when no
// answer came.
func fetch(rt http.RoundTripper, req *http.Request) (int, string, error) {
	code, body, _, err := fetchGzip(rt, req)
	return code, body, err
}

// fetchGzip is fetch, and also says whether the transport decompressed
// the answer. The status is -1 when no answer came.
func fetchGzip(rt http.RoundTripper, req *http.Request) (code int, body string, gz bool, err error) {
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return -1, "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		err = fmt.Errorf("reading the body: %w", err)
	}
	return resp.StatusCode, string(b), resp.Uncompressed, err
}

// summary sums up an exchange in a few words, the same for both clients
// (their error messages differ).
func summary(code int, body string, err error) string {
	switch {
	case err == nil:
		return strconv.Itoa(code) + " " + body
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case code >= 0:
		return strconv.Itoa(code) + " then refused in the body"
	}
	return "refused"
}

// wrongAnswer reports whether a GET's answer is not the host's answer to
// it.
func wrongAnswer(id string, code int, body string, err error) bool {
	return err == nil && (code != 200 || body != "id "+id)
}

// framingRows are single answers in every shape, each to a GET with id
// "a", followed by a GET with id "b": the first outcome must be Go's
// transport's (the same status and body, or both refuse), and the second
// request must get its own answer, never on a connection whose answer
// was refused.
func framingRows() []diffRow {
	var out []diffRow
	for _, r := range framingAnswers {
		out = append(out, diffRow{
			name:    "framing/" + r.name,
			differs: r.differs,
			safer: func(ours, theirs outcome) bool {
				return ours.answer == "refused" && ours.wrong == 0
			},
			run: func(t *testing.T, s side) outcome { return framing(t, s, r.answer) },
		})
	}
	return out
}

// framingAnswers are the answers of framingRows (and seeds of
// FuzzResponseFraming).
var framingAnswers = []struct{ name, answer, differs string }{
	{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", ""},
	{"two equal Content-Lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", ""},
	{"two Content-Lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", ""},
	{"Content-Length +2", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", ""},
	{"Content-Length 0x2", "HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok", ""},
	{"Content-Length -1", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", ""},
	{"empty Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nok", ""},
	{"huge Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nok", ""},
	{"Content-Length longer than the body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", ""},
	{"Content-Length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
	{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
	{"chunked with an extension", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\n\r\n", ""},
	{"chunked, bad size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", ""},
	{"chunked, size too large", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nok\r\n0\r\n\r\n", ""},
	{"chunked, no last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", ""},
	{"chunked, bad chunk end", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", ""},
	{"gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
	{"Transfer-Encoding identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok", ""},
	{"two Transfer-Encodings", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
	{"no length, until the close", "HTTP/1.1 200 OK\r\n\r\nok", ""},
	{"HTTP/1.0, no keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", ""},
	{"Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", ""},
	{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", ""},
	{"space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", ""},
	{"folded header", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok", ""},
	{"bad status", "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", ""},
	{"status 000, then a 200", "HTTP/1.1 000 Zero\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"the client refuses a status below 100 (it took it for a 1xx); Go's transport passes it on, and reverse_proxy cannot answer with it"},
	{"HTTP/2.0 status line", "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", ""},
	{"not HTTP", "SSH-2.0-OpenSSH_9.2\r\n", ""},
	{"nothing, then the close", "", ""},
	{"204 with Content-Length", "HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n", ""},
	{"gzip", "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: " + strconv.Itoa(len(gzipped("ok"))) + "\r\n\r\n" + gzipped("ok"), ""},
	{"gzip, broken", "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope", ""},
	{"101 to a request that did not ask", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
		"the client refuses a protocol switch nobody asked for; Go's transport hands the connection over as the body"},
}

// gzipped returns s compressed with gzip.
func gzipped(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	io.WriteString(zw, s)
	zw.Close()
	return b.String()
}

// framingHost answers the request with id "a" with raw, and any other
// with its real answer; after each answer it waits linger for the next
// request on the connection before it closes it (which ends a body
// without a length). reused counts the requests that came on a
// connection after an answer to "a".
func framingHost(t *testing.T, raw string, linger time.Duration, reused *atomic.Int64) *testHost {
	return newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		answeredA := false
		for {
			req, err := h.read(br)
			if err != nil {
				return
			}
			if answeredA {
				reused.Add(1)
			}
			id := req.Header.Get("X-Id")
			if id == "a" {
				answeredA = true
				io.WriteString(c, raw)
			} else {
				io.WriteString(c, answer(id))
			}
			c.SetReadDeadline(time.Now().Add(linger))
		}
	})
}

// framing sends a GET answered with raw, then another GET.
func framing(t *testing.T, s side, raw string) outcome {
	var reused atomic.Int64
	h := framingHost(t, raw, 50*time.Millisecond, &reused)
	code, body, gz, err := fetchGzip(s.rt, request(t, "GET", h.url, "a", 0))
	o := outcome{answer: summary(code, body, err)}
	// A body that does not decompress came whole: its connection may
	// be reused (Go's transport does; the client does not).
	refused := err != nil && !gz
	code, body, err = fetch(s.rt, request(t, "GET", h.url, "b", 0))
	if err != nil {
		o.failed++
	} else if wrongAnswer("b", code, body, err) {
		o.wrong++
	}
	if refused && reused.Load() > 0 {
		o.wrong++ // a connection reused after its answer was refused
	}
	return o
}

// smugglingRows answer a request in a way that leaves bytes after the
// answer (a fake response) in the same write, then send the next request
// at once, 100 times in each of 10 clients at once: the next request must
// get its own answer.
func smugglingRows() []diffRow {
	var out []diffRow
	for _, r := range smugglingAnswers {
		out = append(out, diffRow{
			name:    "smuggling/" + r.name,
			differs: "Go's transport pools the connection before its reader looks past the answer, and the next request can take it first; the client looks before it pools it",
			safer:   func(ours, theirs outcome) bool { return ours.wrong == 0 },
			run: func(t *testing.T, s side) outcome {
				h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
					for {
						req, err := h.read(br)
						if err != nil {
							return
						}
						if id := req.Header.Get("X-Id"); strings.HasPrefix(id, "trick") {
							io.WriteString(c, r.answer+fake)
						} else {
							io.WriteString(c, answer(id))
						}
					}
				})
				var wrong, failed atomic.Int64
				var wg sync.WaitGroup
				for client := range 10 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range 100 {
							id := fmt.Sprint(client, "-", i)
							fetch(s.rt, request(t, r.method, h.url, "trick"+id, 0))
							code, body, err := fetch(s.rt, request(t, "GET", h.url, id, 0))
							if err != nil {
								failed.Add(1)
							} else if wrongAnswer(id, code, body, err) {
								wrong.Add(1)
							}
						}
					}()
				}
				wg.Wait()
				return outcome{wrong: int(wrong.Load()), notes: fmt.Sprintf("%d of 1000 failed", failed.Load())}
			},
		})
	}
	// A host that answers a request with another's answer: no HTTP/1
	// client can tell (README, "Its own HTTP/1.1 client").
	out = append(out, diffRow{
		name: "smuggling/an answer that comes after the next request was sent",
		run: func(t *testing.T, s side) outcome {
			h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
				for i := 0; ; i++ {
					req, err := h.read(br)
					if err != nil {
						return
					}
					if i == 1 {
						io.WriteString(c, fake) // late bytes, before the real answer
					}
					io.WriteString(c, answer(req.Header.Get("X-Id")))
				}
			})
			fetch(s.rt, request(t, "GET", h.url, "1", 0))
			code, body, err := fetch(s.rt, request(t, "GET", h.url, "2", 0))
			return outcome{answer: summary(code, body, err)}
		},
	})
	return out
}

// smugglingAnswers are the answers of smugglingRows, before the fake one
// (and, with it, seeds of FuzzResponseFraming).
var smugglingAnswers = []struct{ name, method, answer string }{
	{"HEAD answered with a body", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
	{"204 with a body", "GET", "HTTP/1.1 204 No Content\r\n\r\n"},
	{"304 with a body", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"},
	{"Content-Length 0 with a body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
	{"bytes after the body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	{"chunked with trailers, bytes after", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n"},
	{"gzip, bytes after", "GET", "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: " + strconv.Itoa(len(gzipped("ok"))) + "\r\n\r\n" + gzipped("ok")},
}

// informationalRows are 1xx answers before the final one.
func informationalRows() []diffRow {
	hints := strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", 8)
	flood := strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 1000)
	big := strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </"+strings.Repeat("a", 1000)+".css>\r\n\r\n", 20)
	ok := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	rows := []struct {
		name, raw   string
		trace       bool
		maxHeader   int64
		wantAnswers string
	}{
		{"eight 103 to a trace", hints + ok, true, 0, ""},
		{"eight 103, no trace", hints + ok, false, 0, ""},
		{"a thousand 100", flood + ok, false, 0, ""},
		{"1xx past max_response_header, no trace", big + ok, false, 4 << 10, ""},
		{"1xx past max_response_header, to a trace", big + ok, true, 4 << 10, ""},
	}
	var out []diffRow
	for _, r := range rows {
		out = append(out, diffRow{
			name: "1xx/" + r.name,
			run: func(t *testing.T, s side) outcome {
				rt := s.rt
				if r.maxHeader > 0 {
					if s.ours != nil {
						rt = roundTripper{newTestClient(t, func(c *Config) { c.MaxResponseHeaderBytes = r.maxHeader })}
					} else {
						tr := &http.Transport{MaxResponseHeaderBytes: r.maxHeader}
						t.Cleanup(tr.CloseIdleConnections)
						rt = tr
					}
				}
				h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
					for {
						if _, err := h.read(br); err != nil {
							return
						}
						io.WriteString(c, r.raw)
					}
				})
				req := request(t, "GET", h.url, "a", 0)
				n := 0
				if r.trace {
					req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
						Got1xxResponse: func(int, textproto.MIMEHeader) error { n++; return nil },
					}))
				}
				code, body, err := fetch(rt, req)
				return outcome{answer: summary(code, body, err) + ", " + strconv.Itoa(n) + " 1xx to the trace"}
			},
		})
	}
	return out
}

// lifecycleRows are connections that end, stall or answer early.
func lifecycleRows() []diffRow {
	return []diffRow{
		{
			name:    "early answer: 413, then a reset, before the POST body is read",
			differs: "Go's transport loses the answer when its writer fails before its reader has it; the client reads what the host sent",
			safer:   func(ours, theirs outcome) bool { return ours.failed == 0 },
			run:     earlyAnswer,
		},
		{
			name: "Idempotency-Key POST read on a reused connection, closed unanswered",
			run:  func(t *testing.T, s side) outcome { return closedAfterReading(t, s, "POST", "Idempotency-Key") },
		},
		{
			name: "X-Idempotency-Key POST read on a reused connection, closed unanswered",
			run:  func(t *testing.T, s side) outcome { return closedAfterReading(t, s, "POST", "X-Idempotency-Key") },
		},
		{
			name: "POST read on a reused connection, closed unanswered",
			run:  func(t *testing.T, s side) outcome { return closedAfterReading(t, s, "POST", "") },
		},
		{
			name: "GET read on a reused connection, closed unanswered",
			run:  func(t *testing.T, s side) outcome { return closedAfterReading(t, s, "GET", "") },
		},
		{
			name:    "408 and a close as a GET goes out on a reused connection",
			differs: "Go's transport hands the request the 408 meant for the idle connection; the client sends the request again, as RFC 9110 allows",
			safer:   func(ours, theirs outcome) bool { return ours.answer == "200 id 2" },
			run:     func(t *testing.T, s side) outcome { return idle408AsSent(t, s, "GET", "") },
		},
		{
			name:    "408 and a close as an Idempotency-Key POST goes out on a reused connection",
			differs: "Go's transport hands the request the 408 meant for the idle connection; the client sends the request again, as RFC 9110 allows",
			safer:   func(ours, theirs outcome) bool { return ours.answer == "200 id 2" },
			run:     func(t *testing.T, s side) outcome { return idle408AsSent(t, s, "POST", "Idempotency-Key") },
		},
		{
			name:    "408 and a close as a POST goes out on a reused connection",
			differs: "when the host's reset comes before its 408 is read, Go's transport fails the POST; the client reads the 408",
			safer:   func(ours, theirs outcome) bool { return ours.answer == "408 " },
			run:     func(t *testing.T, s side) outcome { return idle408AsSent(t, s, "POST", "") },
		},
		{name: "idle connections the host closed", run: idleClosedByHost},
		{name: "408 on an idle connection, then GET", run: idle408},
		{name: "a body that stalls, past the request's deadline", run: stalledBody},
		{name: "a client that goes away mid-body", run: goneMidBody},
		{name: "a body cut short, read again after its error (response_buffers)", run: rereadCutBody},
		{name: "a header that stalls, past the request's deadline", run: stalledHeader},
		{name: "a slow header past max_response_header", run: slowHeader},
	}
}

// earlyAnswer sends POSTs of 1 to 64 KiB to a host that answers 413 as
// soon as it has the header, and closes without reading the body (so the
// connection is reset), as nginx does past client_max_body_size.
func earlyAnswer(t *testing.T, s side) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	})
	var o outcome
	var notes []string
	for _, kib := range []int{1, 8, 16, 32, 48, 64} {
		failed := 0
		for i := range 40 {
			code, _, err := fetch(s.rt, request(t, "POST", h.url, fmt.Sprint(kib, "-", i), kib<<10))
			if err != nil || code != 413 {
				failed++
			}
		}
		o.failed += failed
		notes = append(notes, fmt.Sprintf("%d KiB: %d of 40 failed", kib, failed))
	}
	o.notes = strings.Join(notes, ", ")
	return o
}

// closedAfterReading sends a request on a reused connection that the host
// reads whole and closes without answering; key, when set, is the header
// that marks the request idempotent.
func closedAfterReading(t *testing.T, s side, method, key string) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		for i := 0; ; i++ {
			req, err := h.read(br)
			if err != nil || i == 1 {
				return
			}
			io.WriteString(c, answer(req.Header.Get("X-Id")))
		}
	})
	size := 0
	if method == "POST" {
		size = 4
	}
	fetch(s.rt, request(t, method, h.url, "1", size))
	req := request(t, method, h.url, "2", size)
	if key != "" {
		req.Header.Set(key, "k2")
	}
	code, body, err := fetch(s.rt, req)
	o := outcome{answer: summary(code, body, err), notes: fmt.Sprintf("the host got it %d times", h.times("2"))}
	if key == "" && method == "POST" && h.times("2") > 1 {
		o.twice++
	}
	return o
}

// idleClosedByHost opens 32 connections at once, lets them go idle, has
// the host close them all, and counts those the client left open
// (CLOSE_WAIT: closed by the host, not by the client) once they are all
// closed or 3 s passed.
func idleClosedByHost(t *testing.T, s side) outcome {
	if runtime.GOOS != "linux" {
		t.Skip("counts sockets in /proc/net/tcp")
	}
	const n = 32
	var arrived, closed atomic.Int64
	all, closeAll := make(chan struct{}), make(chan struct{})
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		req, err := h.read(br)
		if err != nil {
			return
		}
		if arrived.Add(1) == n {
			close(all)
		}
		select { // n connections at once
		case <-all:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(c, answer(req.Header.Get("X-Id")))
		<-closeAll
		c.Close()
		closed.Add(1)
	})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := fetch(s.rt, request(t, "GET", h.url, strconv.Itoa(i), 0)); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	close(closeAll)
	deadline := time.Now().Add(3 * time.Second)
	for closed.Load() < arrived.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	open := openTo(h.addr)
	for open > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		open = openTo(h.addr)
	}
	return outcome{answer: fmt.Sprintf("%d of %d idle connections the host closed left open", open, n), failed: int(failed.Load())}
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

// idle408 has the host send 408 on an idle connection and close it; the
// next GET, sent once the client has closed the connection too (or 2 s
// passed), must not take that for its answer.
func idle408(t *testing.T, s side) outcome {
	sent := make(chan struct{})
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, n int) {
		req, err := h.read(br)
		if err != nil {
			return
		}
		io.WriteString(c, answer(req.Header.Get("X-Id")))
		if n == 1 {
			time.Sleep(10 * time.Millisecond)
			io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			br.ReadByte() // until the client closes its end
			close(sent)
			return
		}
		for {
			req, err := h.read(br)
			if err != nil {
				return
			}
			io.WriteString(c, answer(req.Header.Get("X-Id")))
		}
	})
	fetch(s.rt, request(t, "GET", h.url, "1", 0))
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("the host never sent its 408")
	}
	code, body, err := fetch(s.rt, request(t, "GET", h.url, "2", 0))
	return outcome{answer: summary(code, body, err)}
}

// idle408AsSent has the host answer a connection's first request, and
// send 408 and close the connection as soon as the second comes in,
// before reading it (the keep-alive timeout of a host that says so,
// crossing the request); key, when set, marks the request idempotent. A
// POST has 32 KiB of body.
func idle408AsSent(t *testing.T, s side, method, key string) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		req, err := h.read(br)
		if err != nil {
			return
		}
		io.WriteString(c, answer(req.Header.Get("X-Id")))
		if _, err := br.Peek(1); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	})
	size := 0
	if method == "POST" {
		size = 32 << 10
	}
	fetch(s.rt, request(t, method, h.url, "1", size))
	req := request(t, method, h.url, "2", size)
	if key != "" {
		req.Header.Set(key, "k2")
	}
	code, body, err := fetch(s.rt, req)
	return outcome{answer: summary(code, body, err)}
}

// stalledBody has the host send a header and part of the body, then
// nothing, while the request's deadline passes: the body's read must
// say it was the deadline.
func stalledBody(t *testing.T, s side) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		if _, err := h.read(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
		br.ReadByte() // until the client closes
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	code, body, err := fetch(s.rt, request(t, "GET", h.url, "1", 0).WithContext(ctx))
	return outcome{answer: summary(code, body, err)}
}

// rereadCutBody has the host close a chunked body before its end, and
// reads the body as reverse_proxy's response_buffers does: up to its
// limit, then on from what it buffered when the read failed. The read
// after the error must fail again, or the cut body passes for whole.
func rereadCutBody(t *testing.T, s side) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		if _, err := h.read(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
		}
	})
	resp, err := s.rt.RoundTrip(request(t, "GET", h.url, "1", 0))
	if err != nil {
		return outcome{answer: summary(-1, "", err)}
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, resp.Body, 1<<20); err == nil || err == io.EOF {
		return outcome{answer: "the cut body read whole: " + buf.String()}
	}
	b, err := io.ReadAll(io.MultiReader(&buf, resp.Body))
	return outcome{answer: summary(resp.StatusCode, string(b), err)}
}

// goneMidBody cancels the request's context while its body comes in: the
// body's read must say the request was canceled, and the host must see
// the connection close.
func goneMidBody(t *testing.T, s side) outcome {
	closed := make(chan struct{})
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		if _, err := h.read(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
		br.ReadByte() // until the client closes
		close(closed)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := s.rt.RoundTrip(request(t, "GET", h.url, "1", 0).WithContext(ctx))
	if err != nil {
		return outcome{answer: summary(-1, "", err)}
	}
	defer resp.Body.Close()
	first := make([]byte, 2)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		return outcome{answer: "refused in the first chunk"}
	}
	cancel()
	_, err = io.ReadAll(resp.Body)
	o := outcome{answer: summary(resp.StatusCode, string(first), err)}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		o.answer += ", the host never saw the close"
	}
	return o
}

// stalledHeader has the host send half a header and then nothing.
func stalledHeader(t *testing.T, s side) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		if _, err := h.read(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Len")
		br.ReadByte()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	code, body, err := fetch(s.rt, request(t, "GET", h.url, "1", 0).WithContext(ctx))
	return outcome{answer: summary(code, body, err)}
}

// slowHeader has the host trickle a 2 KiB header to a client that takes
// 1 KiB.
func slowHeader(t *testing.T, s side) outcome {
	var rt http.RoundTripper
	if s.ours != nil {
		rt = roundTripper{newTestClient(t, func(c *Config) { c.MaxResponseHeaderBytes = 1 << 10 })}
	} else {
		tr := &http.Transport{MaxResponseHeaderBytes: 1 << 10}
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	}
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		if _, err := h.read(br); err != nil {
			return
		}
		head := "HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("x", 2<<10) + "\r\nContent-Length: 2\r\n\r\nok"
		for i := 0; i < len(head); i += 64 {
			if _, err := io.WriteString(c, head[i:min(i+64, len(head))]); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	code, body, err := fetch(rt, request(t, "GET", h.url, "1", 0))
	return outcome{answer: summary(code, body, err)}
}

// raceRows race requests against a host that closes connections.
func raceRows() []diffRow {
	return []diffRow{
		{
			name:    "keep-alive timeout race, FIN",
			differs: "which requests cross the close is up to the scheduler; neither client may send a POST twice or fail a GET",
			safer:   raceSafe,
			run:     func(t *testing.T, s side) outcome { return keepAliveRace(t, s, false) },
		},
		{
			name:    "keep-alive timeout race, RST",
			differs: "which requests cross the close is up to the scheduler; neither client may send a POST twice or fail a GET",
			safer:   raceSafe,
			run:     func(t *testing.T, s side) outcome { return keepAliveRace(t, s, true) },
		},
		{
			name:    "200 concurrent clients while the host closes",
			differs: "which requests cross a close is up to the scheduler; no client may get another's answer, nor a POST reach the host twice",
			safer:   func(ours, theirs outcome) bool { return ours.wrong == 0 && ours.twice == 0 },
			run:     concurrentClosing,
		},
		{
			name:    "408s and delays at random",
			differs: "which requests meet a 408 is up to the scheduler; no client may get another's answer",
			safer:   func(ours, theirs outcome) bool { return ours.wrong == 0 && ours.twice == 0 },
			run:     random408s,
		},
	}
}

// raceSafe: no answer to another, no POST twice, no GET failed.
func raceSafe(ours, theirs outcome) bool {
	return ours.wrong == 0 && ours.twice == 0 && ours.failed == 0
}

// keepAliveRace sends GETs and POSTs, one at a time, about as far apart
// as the host's keep-alive timeout (10 ms), after which it closes an idle
// connection, with a FIN or a reset (rst). failed counts the GETs that
// failed; the POSTs that did are in the notes.
func keepAliveRace(t *testing.T, s side, rst bool) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		for i := 0; ; i++ {
			if i > 0 { // the keep-alive timeout: between requests
				c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			}
			req, err := h.read(br)
			if err != nil {
				if rst {
					c.(*net.TCPConn).SetLinger(0)
				}
				return
			}
			io.WriteString(c, answer(req.Header.Get("X-Id")))
		}
	})
	var o outcome
	var posts []string
	postsFailed := 0
	for i := range 100 {
		time.Sleep(time.Duration(8000+rand.IntN(4000)) * time.Microsecond)
		id := strconv.Itoa(i)
		method, size := "GET", 0
		if i%2 == 1 {
			method, size = "POST", 4
			posts = append(posts, id)
		}
		code, body, err := fetch(s.rt, request(t, method, h.url, id, size))
		switch {
		case err != nil && method == "GET":
			o.failed++
		case err != nil:
			postsFailed++
		case wrongAnswer(id, code, body, err):
			o.wrong++
		}
	}
	o.twice = h.twice(posts)
	o.notes = fmt.Sprintf("%d of 50 POSTs failed", postsFailed)
	return o
}

// concurrentClosing has 200 clients send 5 requests each, GETs and POSTs
// with their own ids, to a host that closes connections at random: after
// an answer, or after reading a request without answering it.
func concurrentClosing(t *testing.T, s side) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		for {
			req, err := h.read(br)
			if err != nil {
				return
			}
			switch rand.IntN(8) {
			case 0:
				return // read, not answered
			case 1, 2:
				io.WriteString(c, answer(req.Header.Get("X-Id")))
				return // answered, then closed without saying so
			default:
				io.WriteString(c, answer(req.Header.Get("X-Id")))
			}
		}
	})
	var wrong, failed atomic.Int64
	var mu sync.Mutex
	var posts []string
	var wg sync.WaitGroup
	for client := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				id := fmt.Sprint(client, "-", i)
				method, size := "GET", 0
				if i%2 == 1 {
					method, size = "POST", 4
					mu.Lock()
					posts = append(posts, id)
					mu.Unlock()
				}
				code, body, err := fetch(s.rt, request(t, method, h.url, id, size))
				if err != nil {
					failed.Add(1)
				} else if wrongAnswer(id, code, body, err) {
					wrong.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return outcome{wrong: int(wrong.Load()), twice: h.twice(posts), notes: fmt.Sprintf("%d of 1000 failed", failed.Load())}
}

// random408s has 20 clients send 20 GETs each to a host that answers
// after a random delay and, on a connection idle for a moment, sometimes
// sends 408 and closes it.
func random408s(t *testing.T, s side) outcome {
	h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
		for {
			c.SetReadDeadline(time.Now().Add(time.Duration(rand.IntN(3000)) * time.Microsecond))
			if _, err := br.Peek(1); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) && rand.IntN(2) == 0 {
					io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
					return
				}
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					return
				}
				continue
			}
			c.SetReadDeadline(time.Time{})
			req, err := h.read(br)
			if err != nil {
				return
			}
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			io.WriteString(c, answer(req.Header.Get("X-Id")))
		}
	})
	var wrong, failed, timeouts atomic.Int64
	var wg sync.WaitGroup
	for client := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				id := fmt.Sprint(client, "-", i)
				code, body, err := fetch(s.rt, request(t, "GET", h.url, id, 0))
				switch {
				case err != nil:
					failed.Add(1)
				case code == 408:
					timeouts.Add(1)
				case wrongAnswer(id, code, body, err):
					wrong.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return outcome{wrong: int(wrong.Load()), notes: fmt.Sprintf("%d of 400 failed, %d answered 408", failed.Load(), timeouts.Load())}
}
