package svcreg

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/caddyserver/caddy/v2"

	"github.com/svcreg/caddy-svcreg/registry"
)

func poolSize() int {
	n := 0
	registries.Range(func(_, _ any) bool { n++; return true })
	return n
}

// loadConfig loads a config into Caddy in this process. The configs of
// these tests turn the admin endpoint off and do not persist: a test must
// not write the developer's own autosave.json.
func loadConfig(t *testing.T, cfg string) error {
	t.Helper()
	if !strings.Contains(cfg, `"persist": false`) {
		t.Fatal("a test config must not persist")
	}
	return caddy.Load([]byte(cfg), true)
}

// autosaveUnchanged checks, when the test ends, that Caddy's autosave file
// is as it was when the test began.
func autosaveUnchanged(t *testing.T) {
	t.Helper()
	stat := func() string {
		fi, err := os.Stat(caddy.ConfigAutosavePath)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	}
	before := stat()
	t.Cleanup(func() {
		if after := stat(); after != before {
			t.Errorf("%s changed during the test (%s, was %s)", caddy.ConfigAutosavePath, after, before)
		}
	})
}

// registryGoroutines returns the stacks of goroutines running code of the
// registry or its backends.
func registryGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "caddy-svcreg/registry.") || strings.Contains(g, "caddy-svcreg/backends/") {
			out = append(out, g)
		}
	}
	return out
}

func appConfig(dir, storageKey, seed string) string {
	return fmt.Sprintf(`{
		"admin": {"disabled": true, "config": {"persist": false}},
		"storage": {"module": "file_system", "root": %q},
		"apps": {"service_registry": {
			"backend": {"backend": "memory", "storage_key": %q},
			"services": [{"name": "users", "version": "v1", "endpoints": [{"address": %q}]}]
		}}
	}`, dir, storageKey, seed)
}

// TestAppLifecycle loads real configs into Caddy in this process: the
// registry survives a reload with the same backend settings, is replaced
// when they change, and nothing of it outlives caddy.Stop.
func TestAppLifecycle(t *testing.T) {
	autosaveUnchanged(t)
	dir := t.TempDir()
	running := func() *App {
		app := current.Load()
		if app == nil {
			t.Fatal("no running service_registry app")
		}
		return app
	}
	users := registry.ServiceKey{Service: "users", Version: "v1"}

	must(t, loadConfig(t, appConfig(dir, "a.json", "127.0.0.1:1")))
	first := running().reg
	must(t, first.Add(context.Background(), users, registry.Endpoint{Address: "127.0.0.1:9"}))
	first.Failure(users, "127.0.0.1:9") // keeps the checker busy

	// Reload with a new seed: same registry, admin addition and health kept.
	must(t, loadConfig(t, appConfig(dir, "a.json", "127.0.0.1:2")))
	if got := running().reg; got != first {
		t.Fatal("a reload with the same backend settings replaced the registry")
	}
	svc, err := first.Lookup(users)
	must(t, err)
	if got := strings.Join(addresses(svc), ","); got != "127.0.0.1:2,127.0.0.1:9" {
		t.Errorf("after reload: %s, want the new seed and the admin addition", got)
	}
	if svc.Endpoint("127.0.0.1:9").Stats().Available {
		t.Errorf("health was lost across the reload")
	}
	if n := poolSize(); n != 1 {
		t.Errorf("%d registries in the pool after a reload, want 1", n)
	}

	// Other backend settings: a new registry; the old one is destroyed.
	must(t, loadConfig(t, appConfig(dir, "b.json", "127.0.0.1:3")))
	if running().reg == first {
		t.Error("changing the backend settings kept the old registry")
	}
	if n := poolSize(); n != 1 {
		t.Errorf("%d registries in the pool, want 1 (the old one destroyed)", n)
	}

	// A config that fails to start (its http app cannot listen) hands the
	// registry and the admin API back to the running config. Apps start in
	// random order, so try a few times: sometimes the registry started first.
	second := running().reg
	running2 := running()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer busy.Close()
	for range 8 {
		failing := strings.Replace(appConfig(dir, "b.json", "127.0.0.1:5"), `"apps": {`,
			fmt.Sprintf(`"apps": {"http": {"servers": {"s": {"listen": [%q]}}},`, busy.Addr().String()), 1)
		if err := loadConfig(t, failing); err == nil {
			t.Fatal("a config whose server cannot listen loaded")
		}
		if running() != running2 {
			t.Fatal("after a failed start the admin API does not serve the running config's app")
		}
		if svc, _ := second.Lookup(users); strings.Join(addresses(svc), ",") != "127.0.0.1:3" {
			t.Fatalf("a config that failed to start left its seeds in the registry: %v", addresses(svc))
		}
	}

	// A config that fails to provision changes nothing either.
	bad := strings.Replace(appConfig(dir, "b.json", "127.0.0.1:4"), `"name": "users"`, `"name": "us/ers"`, 1)
	if err := loadConfig(t, bad); err == nil || !strings.Contains(err.Error(), "service name") {
		t.Fatalf("loading a bad config: %v", err)
	}
	if svc, _ := second.Lookup(users); strings.Join(addresses(svc), ",") != "127.0.0.1:3" {
		t.Errorf("a config that failed to load changed the registry: %v", addresses(svc))
	}

	must(t, caddy.Stop())
	if n := poolSize(); n != 0 {
		t.Errorf("%d registries left after caddy.Stop", n)
	}
	if current.Load() != nil {
		t.Error("the admin API still sees an app after caddy.Stop")
	}
	deadline := time.Now().Add(5 * time.Second)
	for left := registryGoroutines(); len(left) > 0; left = registryGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the registry outlived caddy.Stop; the first:\n%s", len(left), left[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReloadsKeepNoOldApp reloads many times: once a reload is done, no
// earlier App (and so none of the configs and contexts it holds) stays
// reachable, but for the running one.
func TestReloadsKeepNoOldApp(t *testing.T) {
	autosaveUnchanged(t)
	dir := t.TempDir()
	const reloads = 20
	apps := make([]weak.Pointer[App], 0, reloads)
	for i := range reloads {
		must(t, loadConfig(t, appConfig(dir, "a.json", fmt.Sprintf("127.0.0.1:%d", 100+i))))
		apps = append(apps, weak.Make(current.Load()))
	}
	if prev := current.Load().prev.Load(); prev != nil {
		t.Error("the running app still holds the one it replaced after the reload finished")
	}
	alive := 0
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		alive = 0
		for _, w := range apps[:reloads-1] {
			if w.Value() != nil {
				alive++
			}
		}
		if alive == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if alive > 0 {
		t.Errorf("%d of %d replaced apps are still reachable after %d reloads", alive, reloads-1, reloads)
	}
	if apps[reloads-1].Value() == nil {
		t.Error("the running app was collected")
	}
	must(t, caddy.Stop())
}

// TestHealthCheckTLSFiles checks that a health check's CA file is read
// when the config loads, not when it is adapted: the Caddyfile adapts
// without the file, the config then fails to load naming it, and loads
// once the file (named through a placeholder) is there.
func TestHealthCheckTLSFiles(t *testing.T) {
	autosaveUnchanged(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	t.Setenv("SVCREG_TEST_CA", ca)
	if _, err := adapt(t, "Caddyfile", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\tpath /h\n\t\t\ttls {\n\t\t\t\tca {env.SVCREG_TEST_CA}\n\t\t\t}\n\t\t}\n\t}\n}\n"); err != nil {
		t.Fatalf("adapting with a CA file that is not there yet: %v", err)
	}
	config := strings.Replace(appConfig(dir, "a.json", "127.0.0.1:1"), `"services":`,
		`"health_checks": [{"path": "/h", "tls": {"ca": "{env.SVCREG_TEST_CA}"}}], "services":`, 1)
	if err := loadConfig(t, config); err == nil || !strings.Contains(err.Error(), "reading CA file") {
		t.Fatalf("loading without the CA file: %v, want an error naming it", err)
	}
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	srv.Close()
	must(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600))
	must(t, loadConfig(t, config))
	must(t, caddy.Stop())
}
