package svcreg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// resettingServer accepts connections on 127.0.0.1 and handles each with
// serve, then closes it with a reset.
func resettingServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serve(c)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// readHeaders reads a request's headers but not its body.
func readHeaders(c net.Conn) {
	_, _ = http.ReadRequest(bufio.NewReader(c))
}

func newTestTransport(t *testing.T) *HTTPTransport {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	tr := new(HTTPTransport)
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Cleanup() })
	return tr
}

func TestHTTPTransportRetriesUnsentRequests(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 16<<20) // far more than socket buffers hold
	for _, tc := range []struct {
		name      string
		serve     func(net.Conn)
		body      func() io.ReadCloser
		wantRetry bool
	}{
		{
			name:      "reset before the body is sent, buffered body",
			serve:     readHeaders,
			body:      func() io.ReadCloser { return io.NopCloser(bytes.NewReader(big)) },
			wantRetry: true,
		},
		{
			name:  "reset before the body is sent, streamed body",
			serve: func(net.Conn) {},
			body: func() io.ReadCloser {
				return io.NopCloser(io.LimitReader(strings.NewReader(strings.Repeat("x", 16<<20)), 16<<20))
			},
			wantRetry: false,
		},
		{
			name: "reset after the whole request arrived",
			serve: func(c net.Conn) {
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err == nil {
					io.Copy(io.Discard, req.Body)
				}
			},
			body:      func() io.ReadCloser { return io.NopCloser(bytes.NewReader([]byte("small"))) },
			wantRetry: false,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := resettingServer(t, tc.serve)
			tr := newTestTransport(t)
			var err error
			// On a busy machine the connect itself is sometimes reset; that
			// is a plain dial error, not this test's case: try again.
			for range 10 {
				req, nerr := http.NewRequest(http.MethodPost, "http://"+addr+"/x", nil)
				if nerr != nil {
					t.Fatal(nerr)
				}
				req.Body = tc.body()
				req.ContentLength = -1
				var resp *http.Response
				resp, err = tr.RoundTrip(req)
				if err == nil {
					resp.Body.Close()
					t.Fatal("round trip to a resetting server succeeded")
				}
				if !strings.HasPrefix(err.Error(), "dial tcp") {
					break
				}
			}
			var dialErr reverseproxy.DialError
			if got := errors.As(err, &dialErr); got != tc.wantRetry {
				t.Errorf("error %v: reported as a dial error (retried for any method) = %v, want %v", err, got, tc.wantRetry)
			}
		})
	}
}

func TestBodyReplayable(t *testing.T) {
	get := func(body io.ReadCloser) *http.Request { return &http.Request{Body: body} }
	if !bodyReplayable(get(nil)) || !bodyReplayable(get(http.NoBody)) {
		t.Error("no body must be replayable")
	}
	if !bodyReplayable(get(io.NopCloser(bytes.NewReader([]byte("x"))))) {
		t.Error("a body buffered by request_buffers must be replayable")
	}
	if bodyReplayable(get(io.NopCloser(io.LimitReader(strings.NewReader("x"), 1)))) {
		t.Error("a streamed body must not be replayable")
	}
}
