package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzResponseFraming answers a GET with the fuzzed bytes, through Go's
// transport and through the client: the client must get what Go's
// transport gets (the same status and body, or both refuse), never reuse
// a connection whose answer it refused, and give the next request its
// own answer. go test -fuzz FuzzResponseFraming ./internal/h1 runs it;
// its seed corpus is testdata/fuzz/FuzzResponseFraming.
func FuzzResponseFraming(f *testing.F) {
	log.SetOutput(io.Discard) // Go's transport logs unsolicited answers
	f.Cleanup(func() { log.SetOutput(os.Stderr) })
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 16<<10 {
			return // one write, one segment: the bytes arrive at once
		}
		goTransport := &http.Transport{MaxIdleConnsPerHost: 32}
		defer goTransport.CloseIdleConnections()
		theirs := fuzzFraming(t, goTransport, string(raw))
		c := newTestClient(t)
		ours := fuzzFraming(t, roundTripper{c}, string(raw))
		switch {
		case ours.hung || theirs.hung:
			t.Errorf("a round trip hung: the client %s, Go's transport %s", ours.first, theirs.first)
		case ours.reused:
			t.Errorf("the client sent the next request on a connection whose answer it refused (%s)", ours.first)
		case ours.next != "200 id b":
			t.Errorf("the next request got %q, not its own answer (the first got %s)", ours.next, ours.first)
		case ours.first == theirs.first:
		case ours.first == "refused" && strings.HasPrefix(theirs.first, "101 "):
			// the client refuses a protocol switch the request did
			// not ask for; Go's transport hands over the connection
		case ours.first == "refused" && theirs.code >= 0 && theirs.code < 100:
			// the client refuses a status below 100; Go's transport
			// passes it on
		default:
			t.Errorf("the client got %s, Go's transport %s", ours.first, theirs.first)
		}
	})
}

// framingResult is what fuzzFraming saw.
type framingResult struct {
	code   int    // the first request's status; -1: none
	hung   bool   // a request hit fuzzFraming's deadline
	first  string // the first request's outcome: summary's words
	next   string // the next request's
	reused bool   // the next request came on the connection of a refused answer
}

// fuzzFraming sends a GET answered with raw, then another GET, through rt.
func fuzzFraming(t *testing.T, rt http.RoundTripper, raw string) framingResult {
	var reused atomic.Int64
	// a short linger: most fuzzed answers are cut short, and wait for it
	h := framingHost(t, raw, 5*time.Millisecond, &reused)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, body, gz, err := fetchGzip(rt, request(t, "GET", h.url, "a", 0).WithContext(ctx))
	r := framingResult{code: code, first: summary(code, body, err)}
	if err != nil && !gz {
		r.reused = reused.Load() > 0
	}
	code, body, err = fetch(rt, request(t, "GET", h.url, "b", 0).WithContext(ctx))
	r.next = summary(code, body, err)
	r.hung = ctx.Err() != nil
	return r
}

// What a host does with a request, in FuzzConnectionReuse.
const (
	reuseAnswer         = iota // answer with a Content-Length
	reuseChunked               // answer chunked
	reuseAnswerClose           // answer with Connection: close, and close
	reuseAnswerThenGone        // answer, and close without saying so
	reuseReadGone              // read, and close unanswered
	reuseReadReset             // read, and reset unanswered
	reuseDelayed               // answer after a few milliseconds
	reuseExtraBytes            // answer, and a fake answer in the same write
	reuse408                   // answer; idle a moment later, 408 and close
	reuseNoContent             // answer 204, and a fake answer in the same write
	reuseUntilClose            // answer without a length, and close
	reuseEarly                 // answer before reading the body, and close
	reuseActions
)

// FuzzConnectionReuse has 4 clients send 4 requests each (GETs, POSTs,
// POSTs with an Idempotency-Key), at once, through one client, to a host
// whose every answer the fuzzed script says (answers of every framing,
// closes with and without an answer, resets, delays, extra bytes, 408s):
// no client may get an answer meant for another, and no POST without a
// key may reach the host twice. go test -fuzz FuzzConnectionReuse
// ./internal/h1 runs it; its seed corpus is
// testdata/fuzz/FuzzConnectionReuse.
func FuzzConnectionReuse(f *testing.F) {
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) == 0 {
			return
		}
		// a request's action and method depend on its id alone, not on
		// the order in which the requests arrive
		action := func(id int) (int, byte) {
			b := script[id%len(script)]
			return int(b) % reuseActions, b / reuseActions
		}
		h := newHost(t, func(h *testHost, c net.Conn, br *bufio.Reader, _ int) {
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				id, _ := strconv.Atoi(req.Header.Get("X-Id"))
				what, arg := action(id)
				if what != reuseEarly {
					if _, err := io.Copy(io.Discard, req.Body); err != nil {
						return
					}
				}
				h.mu.Lock()
				h.got[req.Header.Get("X-Id")]++
				h.mu.Unlock()
				if !reuseServe(c, br, req, what, arg) {
					return
				}
			}
		})
		c := newTestClient(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var problems []string
		var posts []string
		for client := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 4 {
					id := client*4 + i
					_, arg := action(id)
					method, size := "GET", 0
					if arg%3 > 0 {
						method, size = "POST", 1+int(arg)%4*8<<10
					}
					req := request(t, method, h.url, strconv.Itoa(id), size)
					if arg%3 == 2 {
						req.Header.Set("Idempotency-Key", strconv.Itoa(id))
					} else if method == "POST" {
						mu.Lock()
						posts = append(posts, strconv.Itoa(id))
						mu.Unlock()
					}
					if p := reuseCheck(c, req, id); p != "" {
						mu.Lock()
						problems = append(problems, p)
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		for _, p := range problems {
			t.Error(p)
		}
		if n := h.twice(posts); n > 0 {
			t.Errorf("%d POSTs without an Idempotency-Key reached the host twice", n)
		}
	})
}

// reuseServe does what a FuzzConnectionReuse host does with a request,
// and reports whether the connection stays open.
func reuseServe(c net.Conn, br *bufio.Reader, req *http.Request, what int, arg byte) bool {
	id := req.Header.Get("X-Id")
	real := reuseAnswerFor(id, "")
	switch what {
	case reuseAnswer:
	case reuseChunked:
		real = "HTTP/1.1 200 OK\r\nX-Answer-Id: " + id + "\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\nid %s\r\n0\r\n\r\n", len("id "+id), id)
	case reuseAnswerClose:
		io.WriteString(c, reuseAnswerFor(id, "Connection: close\r\n"))
		return false
	case reuseAnswerThenGone:
		io.WriteString(c, real)
		return false
	case reuseReadGone:
		return false
	case reuseReadReset:
		c.(*net.TCPConn).SetLinger(0)
		return false
	case reuseDelayed:
		time.Sleep(time.Duration(arg%4) * time.Millisecond)
	case reuseExtraBytes:
		real += reuseFake
	case reuse408:
		io.WriteString(c, real)
		c.SetReadDeadline(time.Now().Add(time.Duration(1+arg%3) * time.Millisecond))
		if _, err := br.Peek(1); err != nil {
			io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			return false
		}
		c.SetReadDeadline(time.Time{})
		return true
	case reuseNoContent:
		real = "HTTP/1.1 204 No Content\r\nX-Answer-Id: " + id + "\r\n\r\n" + reuseFake
	case reuseUntilClose:
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Answer-Id: "+id+"\r\n\r\nid "+id)
		return false
	case reuseEarly:
		io.WriteString(c, reuseAnswerFor(id, "Connection: close\r\n"))
		return false
	}
	_, err := io.WriteString(c, real)
	return err == nil
}

// reuseFake is an answer meant for nobody.
const reuseFake = "HTTP/1.1 200 OK\r\nX-Answer-Id: fake\r\nContent-Length: 4\r\n\r\nfake"

// reuseAnswerFor is the host's answer to the request with this id, with
// more header lines.
func reuseAnswerFor(id, more string) string {
	body := "id " + id
	return "HTTP/1.1 200 OK\r\nX-Answer-Id: " + id + "\r\n" + more + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// reuseCheck sends req and says what is wrong with its answer, if
// anything: an answer to another request (a 408 the host sent on a
// connection as the request went out on it is no one's answer, and
// allowed).
func reuseCheck(c *Client, req *http.Request, id int) string {
	resp, err := c.RoundTrip(req, Host{"tcp", req.URL.Host}, nil)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	got := resp.Header.Get("X-Answer-Id")
	if got == strconv.Itoa(id) || got == "" && resp.StatusCode == http.StatusRequestTimeout {
		return ""
	}
	return fmt.Sprintf("request %d (%s) got the answer meant for %q (status %d)", id, req.Method, got, resp.StatusCode)
}
