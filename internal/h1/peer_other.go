//go:build !unix

package h1

import "net"

// PeerClosed cannot look at the socket here: it says the connection is
// open, and the client's other checks stand.
func PeerClosed(net.Conn) bool { return false }

// peeker is PeerClosed for one connection: here it always says open.
type peeker struct{}

func (*peeker) init(net.Conn) bool { return false }
func (*peeker) closed() bool       { return false }
