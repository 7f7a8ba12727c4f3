package main

import (
	"net"
	"sync"
)

// partition is a TCP proxy on 127.0.0.1 that the harness puts between
// Caddy and a store, and that can cut the way as a network partition
// does: while cut it forwards nothing in either direction and closes
// nothing (bytes wait, as unacknowledged segments would; connections made
// meanwhile are accepted and wait); when mended everything flows again.
// Clients notice a cut only through their own timeouts and keep-alives.
type partition struct {
	Addr   string
	target string
	ln     net.Listener

	mu     sync.Mutex
	healed chan struct{} // nil while the way is open; closed at Mend
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newPartition(target string) (*partition, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &partition{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	return p, nil
}

func (p *partition) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Go(func() {
			p.wait()
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			if !p.track(up) {
				return
			}
			p.wg.Go(func() { p.pipe(up, c) })
			p.pipe(c, up)
		})
	}
}

// track remembers a connection for Close; false when closed already.
func (p *partition) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

// pipe copies from src to dst, holding what it read while the way is cut.
func (p *partition) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			src.Close()
			dst.Close()
			return
		}
	}
}

// wait returns at once while the way is open, else when it is mended.
func (p *partition) wait() {
	p.mu.Lock()
	ch := p.healed
	p.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// Cut stops forwarding.
func (p *partition) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.healed == nil {
		p.healed = make(chan struct{})
	}
}

// Mend forwards again, what waited first.
func (p *partition) Mend() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.healed != nil {
		close(p.healed)
		p.healed = nil
	}
}

// Close closes the listener and every connection and waits for the
// copies to end.
func (p *partition) Close() {
	p.ln.Close()
	p.Mend()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
