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
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
)

// Server is a running etcd.
type Server struct {
	// Endpoint is the client address, 127.0.0.1:port, or with TLS
	// https://127.0.0.1:port.
	Endpoint string

	t          testing.TB
	bin        string
	dir        string
	clientPort int
	peerPort   int
	tls        *TLSFiles

	proc testutil.Process
	log  testutil.Log // what it printed
}

// TLSFiles are the PEM files of an etcd that serves clients over TLS and
// requires a client certificate signed by the same CA.
type TLSFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// Config returns a client TLS config with the client certificate.
func (f *TLSFiles) Config() (*tls.Config, error) {
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, err
	}
	pool.AppendCertsFromPEM(ca)
	pair, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// StartTLS starts etcd serving clients over TLS with the given files.
func StartTLS(t testing.TB, files *TLSFiles) *Server {
	t.Helper()
	return start(t, files)
}

// Start starts etcd and waits until it is healthy. The server is stopped
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, nil)
}

func start(t testing.TB, files *TLSFiles) *Server {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("SVCREG_REQUIRE_ETCD") != "" {
			t.Fatalf("no etcd binary on PATH, and SVCREG_REQUIRE_ETCD is set: %v", err)
		}
		t.Skip("skipping: no etcd binary on PATH; install etcd-server (Debian) to run the etcd tests")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), clientPort: testutil.FreePort(t), peerPort: testutil.FreePort(t), tls: files}
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", s.clientPort)
	if files != nil {
		s.Endpoint = "https://" + s.Endpoint
	}
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
	client := s.Endpoint
	if s.tls == nil {
		client = "http://" + client
	}
	args := []string{
		"--name", "svcreg-test",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "svcreg-test=" + peer,
		"--log-level", "warn",
	}
	if s.tls != nil {
		args = append(args, "--cert-file", s.tls.ServerCert, "--key-file", s.tls.ServerKey,
			"--trusted-ca-file", s.tls.CA, "--client-cert-auth")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = &s.log, &s.log
	if err := s.proc.Start(cmd); err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
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
	url, client := "http://"+s.Endpoint+"/health", http.DefaultClient
	if s.tls != nil {
		cfg, err := s.tls.Config()
		if err != nil {
			s.t.Fatal(err)
		}
		url, client = s.Endpoint+"/health", &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	return resp.StatusCode == http.StatusOK && strings.Contains(body.String(), `"true"`)
}

// Wipe stops etcd, deletes its data and starts it again empty on the
// same ports: an etcd replaced, or restored from a snapshot without the
// latest changes. Its revision starts again from 1.
func (s *Server) Wipe() {
	s.t.Helper()
	s.Stop()
	if err := os.RemoveAll(filepath.Join(s.dir, "data")); err != nil {
		s.t.Fatal(err)
	}
	s.start()
}

// Snapshot saves etcd's data to a file (etcdctl snapshot save) and
// returns its path.
func (s *Server) Snapshot() string {
	s.t.Helper()
	file := filepath.Join(s.t.TempDir(), "etcd.snapshot")
	s.etcdctl("snapshot", "save", file, "--endpoints", s.Endpoint)
	return file
}

// Restore stops etcd, replaces its data with a snapshot (etcdctl
// snapshot restore, with the same name, URLs and cluster token, so the
// same cluster ID) and starts it again: etcd as an operator restores it
// from a backup.
func (s *Server) Restore(snapshot string) {
	s.t.Helper()
	s.Stop()
	data := filepath.Join(s.dir, "data")
	if err := os.RemoveAll(data); err != nil {
		s.t.Fatal(err)
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", s.peerPort)
	s.etcdctl("snapshot", "restore", snapshot, "--data-dir", data, "--name", "svcreg-test",
		"--initial-cluster", "svcreg-test="+peer, "--initial-advertise-peer-urls", peer)
	s.start()
}

// etcdctl runs etcdctl (API v3) and fails the test if it fails.
func (s *Server) etcdctl(args ...string) {
	s.t.Helper()
	if s.tls != nil {
		s.t.Fatal("etcdtest: etcdctl with TLS is not supported")
	}
	bin, err := exec.LookPath("etcdctl")
	if err != nil {
		s.t.Fatalf("no etcdctl on PATH (Debian: etcd-client): %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Pause freezes etcd (SIGSTOP), and returns once it is frozen: it
// accepts connections and answers nothing until Resume.
func (s *Server) Pause() { s.proc.Pause() }

// Resume lets a paused etcd go on (SIGCONT).
func (s *Server) Resume() { s.proc.Resume() }

// Kill stops etcd with SIGKILL, the way a crash would.
func (s *Server) Kill() { s.proc.Stop(syscall.SIGKILL) }

// Stop stops etcd with SIGTERM.
func (s *Server) Stop() { s.proc.Stop(syscall.SIGTERM) }

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if s.tls != nil {
		var err error
		if cfg.TLS, err = s.tls.Config(); err != nil {
			t.Fatal(err)
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Log returns what etcd printed.
func (s *Server) Log() string { return s.log.String() }

// WriteTLSFiles makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and writes them as PEM files into dir.
func WriteTLSFiles(t testing.TB, dir string) *TLSFiles {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "svcreg test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) (string, string) {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	f := &TLSFiles{CA: write("ca.pem", "CERTIFICATE", caDER)}
	f.ServerCert, f.ServerKey = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	f.ClientCert, f.ClientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return f
}
