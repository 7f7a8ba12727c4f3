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

// resetServer handles each connection with serve, then resets it.
func resetServer(t *testing.T, serve func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if serve != nil {
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
	}
	return ln
}

// resetBeforeWriting makes tr's next connection to ln dead on arrival: once
// connected it closes ln, which resets the connection still waiting in the
// backlog, and hands the connection over only when the reset has arrived.
func resetBeforeWriting(t *testing.T, tr *HTTPTransport, ln net.Listener) {
	dial := tr.Transport.DialContext
	tr.Transport.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		ln.Close()
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("read data from a listener that never accepted")
		}
		return c, nil
	}
}

func TestHTTPTransportRetriesRequestsThatNeverLeft(t *testing.T) {
	payload := bytes.Repeat([]byte("x"), 1<<20)
	readHeaders := func(c net.Conn) { _, _ = http.ReadRequest(bufio.NewReader(c)) }
	readAll := func(c net.Conn) {
		if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.Copy(io.Discard, req.Body)
		}
	}
	buffered := func() io.ReadCloser { return io.NopCloser(bytes.NewReader(payload)) }
	for _, tc := range []struct {
		name      string
		serve     func(net.Conn) // nil: the connection is reset before Caddy writes
		body      func() io.ReadCloser
		wantRetry bool
	}{
		{"reset before a byte was written, buffered body", nil, buffered, true},
		{"reset before a byte was written, streamed body", nil, func() io.ReadCloser {
			return io.NopCloser(io.LimitReader(bytes.NewReader(payload), int64(len(payload))))
		}, false}, // the body cannot be sent again
		{"reset after the headers arrived", readHeaders, buffered, false}, // the host may have acted on it
		{"reset after the whole request arrived", readAll, func() io.ReadCloser { return io.NopCloser(strings.NewReader("small")) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := resetServer(t, tc.serve)
			tr := newTestTransport(t)
			if tc.serve == nil {
				resetBeforeWriting(t, tr, ln)
			}
			req, err := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Body = tc.body()
			req.ContentLength = -1
			resp, err := tr.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatal("round trip to a resetting server succeeded")
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
