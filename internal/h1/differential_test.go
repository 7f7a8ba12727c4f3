package h1

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestClientMatchesGoTransport sends the same requests to the same
// misbehaving hosts through the client and through Go's
// transport, and expects the same outcome.
func TestClientMatchesGoTransport(t *testing.T) {
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
			if got := tc.run(t, roundTripper{newTestClient(t)}); got != want {
				t.Errorf("service_http: %q, Go's transport: %q", got, want)
			}
		})
	}
}
