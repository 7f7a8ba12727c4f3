// Package zktest runs a real ZooKeeper server (Debian's zookeeperd:
// /usr/share/java/zookeeper.jar and java) on 127.0.0.1 for tests, with a
// temporary data directory and a free, non-default port, and stops it by
// PID.
//
// Without ZooKeeper the tests that need it are skipped with a message
// saying so, unless SVCREG_REQUIRE_ZOOKEEPER is set (CI sets it), in which
// case they fail.
package zktest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
)

// Jar is where Debian's zookeeper package puts the server.
const Jar = "/usr/share/java/zookeeper.jar"

// Server is a running ZooKeeper.
type Server struct {
	// Addr is the client address, 127.0.0.1:port.
	Addr string

	t    testing.TB
	java string
	dir  string
	port int

	proc testutil.Process
	log  testutil.Log // what it printed
}

// Start starts ZooKeeper and waits until it answers. It is stopped when
// the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	java, err := exec.LookPath("java")
	if err == nil {
		_, err = os.Stat(Jar)
	}
	if err != nil {
		if os.Getenv("SVCREG_REQUIRE_ZOOKEEPER") != "" {
			t.Fatalf("no ZooKeeper (java and %s), and SVCREG_REQUIRE_ZOOKEEPER is set: %v", Jar, err)
		}
		t.Skip("skipping: no ZooKeeper; install zookeeperd (Debian) to run the ZooKeeper tests")
	}
	s := &Server{t: t, java: java, dir: t.TempDir(), port: testutil.FreePort(t)}
	s.Addr = fmt.Sprintf("127.0.0.1:%d", s.port)
	cfg := fmt.Sprintf("tickTime=500\ndataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n4lw.commands.whitelist=ruok,srvr,mntr,cons\n",
		filepath.Join(s.dir, "data"), s.port)
	if err := os.WriteFile(filepath.Join(s.dir, "zoo.cfg"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command(s.java, "-Xmx256m", "-cp", "/etc/zookeeper/conf:"+Jar,
		"-Dzookeeper.log.dir="+s.dir, "org.apache.zookeeper.server.ZooKeeperServerMain", filepath.Join(s.dir, "zoo.cfg"))
	cmd.Stdout, cmd.Stderr = &s.log, &s.log
	if err := s.proc.Start(cmd); err != nil {
		s.t.Fatalf("starting ZooKeeper: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !s.ok() {
		if time.Now().After(deadline) {
			s.t.Fatalf("ZooKeeper did not answer in 60s:\n%s", s.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ok reports whether the server answers "ruok" with "imok".
func (s *Server) ok() bool {
	conn, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("ruok")); err != nil {
		return false
	}
	b, _ := io.ReadAll(conn)
	return string(b) == "imok"
}

// Restart starts ZooKeeper again on the same port and data after Stop or
// Kill.
func (s *Server) Restart() {
	s.t.Helper()
	s.start()
}

// Wipe stops ZooKeeper, deletes its data and starts it again empty on the
// same port: a ZooKeeper replaced, or restored from an older snapshot. Its
// zxid starts again from 0, and it refuses the session of a client that
// has seen a newer one.
func (s *Server) Wipe() {
	s.t.Helper()
	s.Stop()
	if err := os.RemoveAll(filepath.Join(s.dir, "data")); err != nil {
		s.t.Fatal(err)
	}
	s.start()
}

// Pause freezes ZooKeeper (SIGSTOP) until Resume, and returns once it is
// frozen: sessions time out.
func (s *Server) Pause() { s.proc.Pause() }

// Resume lets a paused ZooKeeper go on (SIGCONT).
func (s *Server) Resume() { s.proc.Resume() }

// Stop stops ZooKeeper (SIGTERM) and waits for it to exit.
func (s *Server) Stop() { s.proc.Stop(syscall.SIGTERM) }

// Conn returns a client connection with a session (of 4s), closed when
// the test ends.
func (s *Server) Conn(t testing.TB) *zk.Conn {
	t.Helper()
	conn, _, err := zk.Connect([]string{s.Addr}, 4*time.Second, zk.WithLogger(nopLogger{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	deadline := time.Now().Add(30 * time.Second)
	for conn.State() != zk.StateHasSession {
		if time.Now().After(deadline) {
			t.Fatalf("no ZooKeeper session in 30s (state %v)", conn.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return conn
}

// Log returns what ZooKeeper printed.
func (s *Server) Log() string { return s.log.String() }

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
