package registry

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// probe runs the default probe with the policy made of check; tls says
// the proxy speaks TLS to the endpoint.
func probe(t *testing.T, addr string, check HealthCheck, tls ...bool) error {
	t.Helper()
	policy, err := NewHealthPolicy([]HealthCheck{check})
	must(t, err)
	p := newProber()
	defer p.Close()
	key := ServiceKey{"users", "v1"}
	return p.Probe(context.Background(), probeJob{Key: key, Address: addr, Check: policy.of(key), TLS: len(tls) > 0 && tls[0]})
}

func TestProbeHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Write([]byte("all good"))
		case "/sick":
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	for _, tc := range []struct {
		name  string
		check HealthCheck
		want  string // "" = passes
	}{
		{"passes", HealthCheck{Path: "/healthz"}, ""},
		{"body matches", HealthCheck{Path: "/healthz", Body: "good$"}, ""},
		{"body does not match", HealthCheck{Path: "/healthz", Body: "^bad"}, "body does not match"},
		{"bad status", HealthCheck{Path: "/sick"}, "status 503, want 2xx"},
		{"expected status", HealthCheck{Path: "/sick", Status: "503"}, ""},
		{"no active check: any answer", HealthCheck{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := probe(t, addr, tc.check)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("probe: %v, want %q", err, tc.want)
			}
		})
	}
	srv.Close()
	if err := probe(t, addr, HealthCheck{}); err == nil {
		t.Error("a check of a closed port passed")
	}
}

// TestProbeTLS checks an endpoint that only speaks TLS: plain HTTP fails
// it, HTTPS with its CA passes, HTTPS without the CA fails unless told to
// skip verification.
func TestProbeTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv.StartTLS()
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	must(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600))
	addr := srv.Listener.Addr().String()
	for _, tc := range []struct {
		name string
		tls  *HealthCheckTLS
		ok   bool
	}{
		{"plain HTTP to a TLS endpoint", nil, false},
		{"with its CA", &HealthCheckTLS{CA: ca}, true},
		{"with its CA and server name", &HealthCheckTLS{CA: ca, ServerName: "example.com"}, true},
		{"with its CA and a wrong server name", &HealthCheckTLS{CA: ca, ServerName: "other.test"}, false},
		{"system roots", &HealthCheckTLS{}, false},
		{"insecure", &HealthCheckTLS{InsecureSkipVerify: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := probe(t, addr, HealthCheck{Path: "/healthz", TLS: tc.tls})
			if (err == nil) != tc.ok {
				t.Errorf("probe: %v, want passing %v", err, tc.ok)
			}
		})
	}
}

// TestProbeNoRedirects checks that a redirect is not followed: with the
// default 2xx a 302 fails the check, and the target is never asked.
func TestProbeNoRedirects(t *testing.T) {
	var followed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		followed.Add(1)
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	if err := probe(t, addr, HealthCheck{Path: "/healthz"}); err == nil || !strings.Contains(err.Error(), "status 302") {
		t.Errorf("probe of a redirect: %v, want it to fail with status 302", err)
	}
	if err := probe(t, addr, HealthCheck{Path: "/healthz", Status: "302"}); err != nil {
		t.Errorf("probe expecting the redirect: %v", err)
	}
	if n := followed.Load(); n != 0 {
		t.Errorf("the redirect was followed %d times", n)
	}
}

// TestProbePanic runs a registry whose probe panics: the panic is logged,
// counts as a failed check, and the checker goes on checking.
func TestProbePanic(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	var probes atomic.Int64
	core, logs := observer.New(zap.ErrorLevel)
	r := New(new(testBackend), Options{Logger: zap.New(core), probe: func(context.Context, probeJob) error {
		probes.Add(1)
		panic("probe bug")
	}})
	t.Cleanup(func() { must(t, r.Stop()) })
	must(t, r.Start(BackendEnv{Seeds: normalized(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2")}), Logger: zap.New(core)}, nil, nil))
	r.Failure(key, "127.0.0.1:1")
	eventually(t, 10*time.Second, "two checks of the failed endpoint", func() bool { return probes.Load() >= 2 })
	if r.endpoint(key, "127.0.0.1:1").Stats().Available {
		t.Error("a check that panicked put the endpoint back")
	}
	entries := logs.FilterMessage("health check panicked").All()
	if len(entries) == 0 || entries[0].ContextMap()["panic"] != "probe bug" || entries[0].ContextMap()["upstream"] != "127.0.0.1:1" {
		t.Errorf("the panic was not logged with its value and endpoint: %v", logs.All())
	}
}
