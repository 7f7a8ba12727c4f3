//go:build linux

package h1

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// poller tells the client at once when a host closes one of its
// connections (a FIN or a reset), without a goroutine per connection: one
// epoll instance watches every connection of the client for the host's
// close only (EPOLLRDHUP, edge-triggered: an answer coming in wakes
// nothing), and one goroutine waits on it, parked in Go's own netpoller.
// A connection registers once, when it is made; closing it takes it out.
type poller struct {
	file *os.File // the epoll instance
	raw  syscall.RawConn
	done chan struct{} // closed when the goroutine has returned
}

// epollET is EPOLLET as the event mask's type takes it.
const epollET = 1 << 31

// newPoller starts a poller that calls closed with the id of every
// watched connection its host closed.
func newPoller(closed func(id uint64)) (*poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("setnonblock", err)
	}
	file := os.NewFile(uintptr(fd), "h1 poller")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, err
	}
	p := &poller{file: file, raw: raw, done: make(chan struct{})}
	go p.run(closed)
	return p, nil
}

// run hands closed the ids of the connections whose hosts closed them,
// until the poller is stopped.
func (p *poller) run(closed func(id uint64)) {
	defer close(p.done)
	var events [64]syscall.EpollEvent
	var n int
	var waitErr error
	wait := func(fd uintptr) bool {
		// does not wait: an epoll instance with nothing ready is not
		// readable, and the netpoller parks this goroutine until it is
		n, waitErr = syscall.EpollWait(int(fd), events[:], 0)
		return n > 0 || waitErr != nil && waitErr != syscall.EINTR
	}
	for {
		if err := p.raw.Read(wait); err != nil || waitErr != nil && waitErr != syscall.EINTR {
			return // stopped, or epoll failed: connections are checked when taken, as without a poller
		}
		for _, ev := range events[:n] {
			closed(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// watch registers nc under id, and reports whether it could.
func (p *poller) watch(nc net.Conn, id uint64) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	conn, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | epollET, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var ctlErr error
	err = p.raw.Control(func(epfd uintptr) {
		err := conn.Control(func(fd uintptr) {
			ctlErr = syscall.EpollCtl(int(epfd), syscall.EPOLL_CTL_ADD, int(fd), &ev)
		})
		ctlErr = errors.Join(ctlErr, err)
	})
	return err == nil && ctlErr == nil
}

// stop ends the poller's goroutine and waits for it. The connections it
// watched are left alone.
func (p *poller) stop() {
	p.file.Close()
	<-p.done
}
