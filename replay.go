package svcreg

import (
	"bytes"
	"io"
	"net/http"
)

// withGetBody returns a shallow copy of req, whose body is buffered whole,
// with a GetBody that returns the body from its start.
func withGetBody(req *http.Request) *http.Request {
	var b bodyBytes
	if _, err := req.Body.(io.WriterTo).WriteTo(&b); err != nil {
		return req // a bytes.Reader does not fail; leave any other alone
	}
	r := new(http.Request)
	*r = *req
	body := []byte(b)
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return r
}

// bodyBytes collects a buffered body from its WriteTo. The first write is
// kept as it is: a bytes.Reader hands over its whole buffer in one write,
// which outlives every try of the request (reverse_proxy frees it once
// the request is done).
type bodyBytes []byte

func (b *bodyBytes) Write(p []byte) (int, error) {
	if *b == nil {
		*b = p[:len(p):len(p)]
	} else {
		*b = append(*b, p...)
	}
	return len(p), nil
}

// retriedAnyway reports whether service_proxy retries req after any
// failure: GET, HEAD and OPTIONS, and requests that the client marked
// idempotent with an Idempotency-Key or X-Idempotency-Key header (as Go's
// own transport does).
func retriedAnyway(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return markedIdempotent(req.Header)
}

// markedIdempotent reports whether a request's header marks it idempotent.
func markedIdempotent(h http.Header) bool {
	if _, ok := h["Idempotency-Key"]; ok {
		return true
	}
	_, ok := h["X-Idempotency-Key"]
	return ok
}

// bodyReplayable reports whether reverse_proxy can send req's body again:
// there is none, or request_buffers holds all of it (reverse_proxy then
// hands each try a fresh io.NopCloser over a bytes.Reader, which is an
// io.WriterTo; a streamed body is not).
func bodyReplayable(req *http.Request) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	_, buffered := req.Body.(io.WriterTo)
	return buffered
}
