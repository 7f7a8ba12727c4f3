// Package etcdtest runs a real etcd server (the etcd binary on PATH, such
// as Debian's etcd-server) on 127.0.0.1 for tests, with a temporary data
// directory and free, non-default ports, and stops it by PID.
//
// Without an etcd binary the tests that need it are skipped with a message
// saying so, unless SVCREG_REQUIRE_ETCD is set (CI sets it), in which case
// they fail.
package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Server is a running etcd.
type Server struct {
	// Endpoint is the client address, 127.0.0.1:port.
	Endpoint string

	t          testing.TB
	bin        string
	dir        string
	clientPort int
	peerPort   int

	mu  sync.Mutex
	cmd *exec.Cmd
	log bytes.Buffer
}

// Start starts etcd and waits until it is healthy. The server is stopped
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("SVCREG_REQUIRE_ETCD") != "" {
			t.Fatalf("no etcd binary on PATH, and SVCREG_REQUIRE_ETCD is set: %v", err)
		}
		t.Skip("skipping: no etcd binary on PATH; install etcd-server (Debian) to run the etcd tests")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), clientPort: freePort(t), peerPort: freePort(t)}
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", s.clientPort)
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// StartLater reserves ports for an etcd that Start will start later, for
// tests of a backend that starts before etcd does.
func StartLater(t testing.TB) *Server {
	t.Helper()
	s := Start(t)
	s.Stop()
	return s
}

func (s *Server) start() {
	s.t.Helper()
	peer := fmt.Sprintf("http://127.0.0.1:%d", s.peerPort)
	client := "http://" + s.Endpoint
	cmd := exec.Command(s.bin,
		"--name", "svcreg-test",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "svcreg-test="+peer,
		"--log-level", "warn",
	)
	cmd.Stdout, cmd.Stderr = &lockedWriter{s}, &lockedWriter{s}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for !s.healthy() {
		if time.Now().After(deadline) {
			s.t.Fatalf("etcd did not become healthy in 30s:\n%s", s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart starts etcd again on the same ports and data after Kill or Stop.
func (s *Server) Restart() {
	s.t.Helper()
	s.start()
}

func (s *Server) healthy() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Endpoint+"/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	return resp.StatusCode == http.StatusOK && strings.Contains(body.String(), `"true"`)
}

// Kill stops etcd with SIGKILL, the way a crash would.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Stop stops etcd with SIGTERM.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Log returns what etcd printed.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

type lockedWriter struct{ s *Server }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.log.Write(p)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
