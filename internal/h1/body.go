package h1

import (
	"compress/gzip"
	"context"
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
	done  atomic.Bool
}

func (b *responseBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
		if err != io.EOF && b.ctx.Err() != nil {
			// the request's context closed the connection: say why,
			// as Go's transport does (its deadline, its cancellation)
			err = context.Cause(b.ctx)
		}
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
