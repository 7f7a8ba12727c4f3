package h1

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"sync/atomic"
)

// responseBody is a response body of the client. Read to its end, it puts its
// connection back in the pool; closed before that, it closes it.
type responseBody struct {
	body  io.ReadCloser // from http.ReadResponse: never closed (that reads it to its end)
	pc    *conn
	ctx   context.Context // the request's
	stop  func() bool     // ends the watch on the request's context
	reuse bool            // neither side asked to close the connection, nor is it spent
	err   error           // how the body ended, returned by every later Read (set by Read only)
	done  atomic.Bool
}

// errBodyClosed is a read of a response body after its Close.
var errBodyClosed = errors.New("read on a closed response body")

// Read reads the body. Once it has ended, with its end or an error, every
// later Read returns the same (as Go's transport's bodies do: a reader that
// reads again after an error, as reverse_proxy's response_buffers does,
// must not take a cut body for whole).
func (b *responseBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.done.Load() {
		return 0, errBodyClosed
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
		if err != io.EOF && b.ctx.Err() != nil {
			// the request's context closed the connection: say why,
			// as Go's transport does (its deadline, its cancellation)
			err = context.Cause(b.ctx)
		}
		b.err = err
	}
	return n, err
}

func (b *responseBody) Close() error {
	b.finish(false)
	return nil
}

// finish ends the response: complete says it was read to its end.
func (b *responseBody) finish(complete bool) {
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
