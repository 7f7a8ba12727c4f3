//go:build !linux

package h1

import (
	"errors"
	"net"
)

// poller is Linux's epoll watch of the hosts' closes; elsewhere there is
// none, and an idle connection its host closed is found when it is taken
// from the pool (and closed then), or at the idle timeout.
type poller struct{}

func newPoller(func(id uint64)) (*poller, error) {
	return nil, errors.New("no poller on this system")
}

func (*poller) watch(net.Conn, uint64) bool { return false }
func (*poller) stop()                       {}
