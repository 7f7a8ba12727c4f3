//go:build unix

package h1

import (
	"net"
	"syscall"
)

// PeerClosed reports whether the host at the other end of an idle
// connection has closed it, or sent something unasked (as a server does
// before it closes: a 408, say): a peek that does not wait finds the end
// of the stream, an error, or data. It never consumes anything. A
// connection that is not a socket is reported open.
func PeerClosed(c net.Conn) bool {
	var p peeker
	return p.init(c) && p.closed()
}

// peeker does PeerClosed's peek on one connection, again and again,
// without allocating each time.
type peeker struct {
	raw    syscall.RawConn
	peek   func(fd uintptr) // p.peekFD, bound once
	result bool
}

// init readies p for c, and reports whether c's socket can be peeked at.
func (p *peeker) init(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	p.raw, p.peek = raw, p.peekFD
	return true
}

// closed reports whether the host has closed the connection, or sent
// something unasked. A p that init refused says no.
func (p *peeker) closed() bool {
	if p.raw == nil {
		return false
	}
	p.result = false
	err := p.raw.Control(p.peek)
	return err == nil && p.result
}

func (p *peeker) peekFD(fd uintptr) {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	p.result = n > 0 || (err == nil && n == 0) || (err != nil && err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR)
}
