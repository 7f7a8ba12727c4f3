//go:build !unix

package testutil

import (
	"net"
	"testing"
)

// RefusedAddr returns a 127.0.0.1 address that refuses connections: the
// port of a listener closed again (which another process may take; on
// unix, a bound socket that never listens holds it).
func RefusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
