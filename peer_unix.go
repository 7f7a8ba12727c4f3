//go:build unix

package svcreg

import (
	"net"
	"syscall"
)

// peerClosed reports whether the host at the other end of an idle
// connection has closed it, or sent something unasked (as a server does
// before it closes: a 408, say): a peek that does not wait finds the end
// of the stream, an error, or data. It never consumes anything.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	err = rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = n > 0 || (err == nil && n == 0) || (err != nil && err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR)
	})
	return err == nil && closed
}
