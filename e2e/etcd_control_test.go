package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
)

// An etcd wiped and started again (as one replaced, or restored from an
// older snapshot) has gone back in time: its revision starts again from
// 1. Caddy lists everything again: the endpoints only the old etcd held
// go, the new ones come, and admin writes answer what they did.
func TestEtcdWipedIsListedAgain(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	old, fresh := startBackend(t, "old"), startBackend(t, "fresh")
	put(t, cli, "/svcreg/users/v1/"+old.Addr, "{}")
	for i := range 10 { // a revision well above the new etcd's
		put(t, cli, "/svcreg/filler/v1/127.0.0.1:"+fmt.Sprint(10000+i), "{}")
	}
	c := startCaddy(t, etcdRegistry(srv.Endpoint), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "the first sync", func() bool { return routesTo(c, "/users/v1/x", "old") })

	srv.Wipe()
	put(t, srv.Client(t), "/svcreg/users/v1/"+fresh.Addr, "{}")
	// An admin write right away, before anything else noticed.
	status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v2", "application/json", `{"address":"`+fresh.Addr+`"}`)
	if status != http.StatusCreated {
		t.Errorf("adding to the new etcd: %d %s; want 201", status, body)
	}
	want := []string{"users v1 " + fresh.Addr, "users v2 " + fresh.Addr}
	waitFor(t, 10*time.Second, "the registry to be what the new etcd holds", func() bool { return slices.Equal(c.Services(), want) })
	for range 20 {
		if !routesTo(c, "/users/v1/x", "fresh") {
			t.Fatal("a request went elsewhere than the one host the new etcd holds")
		}
	}
	status, body = c.AdminDo(http.MethodDelete, "/service_registry/services/users/v2/"+fresh.Addr, "", "")
	if status != http.StatusOK {
		t.Errorf("deleting from the new etcd: %d %s; want 200", status, body)
	}
	if !strings.Contains(c.Log(), "went back in time") {
		t.Error("the log does not say etcd went back in time")
	}
}

// A write to an etcd that stopped answering (frozen) has an unknown
// outcome: 504 saying it may still apply, never 503 saying nothing
// changed. Sending it again once etcd is back is safe.
func TestEtcdWriteOutcomeUnknown(t *testing.T) {
	srv := etcdtest.Start(t)
	a := startBackend(t, "a")
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			dial_timeout 1s
		}
	}`, srv.Endpoint), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "the first sync", func() bool {
		_, body := c.AdminDo(http.MethodGet, "/service_registry/services", "", "")
		return strings.Contains(body, `"synced": true`)
	})

	srv.Pause()
	status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v1", "application/json", `{"address":"`+a.Addr+`"}`)
	srv.Resume()
	if status != http.StatusGatewayTimeout || !strings.Contains(body, "may still apply") {
		t.Errorf("a write to a frozen etcd: %d %s; want 504 saying it may still apply", status, body)
	}
	// Sent again: applied once, whatever happened to the first.
	waitFor(t, 10*time.Second, "etcd to answer again", func() bool {
		status, _ = c.AdminDo(http.MethodPost, "/service_registry/services/users/v1", "application/json", `{"address":"`+a.Addr+`"}`)
		return status == http.StatusCreated || status == http.StatusOK
	})
	if got, want := c.Services(), []string{"users v1 " + a.Addr}; !slices.Equal(got, want) {
		t.Errorf("after sending it again: %q, want %q", got, want)
	}

	// etcd gone (nothing listens), and Caddy has noticed: nothing can
	// have changed, 503. (Right after the kill, the client may still hold
	// a connection it thinks ready: a write then is 504, conservatively.)
	srv.Kill()
	waitFor(t, 10*time.Second, "Caddy to notice etcd is gone", func() bool { return strings.Contains(c.Log(), "etcd unreachable") })
	status, body = c.AdminDo(http.MethodDelete, "/service_registry/services/users/v1/"+a.Addr, "", "")
	if status != http.StatusServiceUnavailable {
		t.Errorf("a write with etcd down: %d %s; want 503", status, body)
	}
}

// Reloads that change the etcd backend's settings hand over from the old
// backend to the new: no request gets a 503 while the new one syncs, and
// an endpoint added with a TTL through this Caddy stays registered.
func TestEtcdReloadHandsOver(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	backends := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	for _, b := range backends {
		put(t, cli, "/svcreg/users/v1/"+b.Addr, "{}")
	}
	withTimeout := func(d string) string {
		return fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			dial_timeout %s
		}
	}`, srv.Endpoint, d)
	}
	c := startCaddy(t, withTimeout("2s"), proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "the first sync", func() bool { return len(c.Services()) == 1 })
	leased := startBackend(t, "leased")
	if status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v1", "application/json",
		`{"address":"`+leased.Addr+`","ttl":"2s"}`); status != http.StatusCreated {
		t.Fatalf("adding an endpoint with a TTL: %d %s", status, body)
	}

	run := sendLoad("http://"+c.HTTP+"/users/v1/x", sendGet, func(time.Time, *loadRun) {
		for i := range 10 {
			c.Reload(withTimeout([]string{"3s", "2s"}[i%2]), proxySite)
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Logf("%d requests across 10 reloads, %d failed", run.total.Load(), len(run.failed))
	for _, f := range run.failed {
		// Caddy's own reload of its HTTP server may reset a client
		// connection (its listener handover, with any config, registry or
		// not): that shows as no status. Every answer must be a 200.
		if strings.HasPrefix(f.err, "status 0,") {
			t.Logf("request %d: %s (a connection reset by Caddy's HTTP server reload)", f.id, f.err)
			continue
		}
		t.Errorf("request %d failed: %s", f.id, f.err)
	}

	time.Sleep(3 * time.Second) // longer than the TTL: only a kept lease keeps it
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/svcreg/users/v1/"+leased.Addr)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the endpoint added with a TTL is gone from etcd after the reloads: %v %v", resp, err)
	}
	if !slices.Contains(c.Services(), "users v1 "+strings.Join(sortedAddrs(append(backends, leased)), ",")) {
		t.Errorf("after the reloads: %q", c.Services())
	}
}

func sortedAddrs(bs []*backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Addr)
	}
	slices.Sort(out)
	return out
}

// A reload reads the backend's credentials again, even when the config's
// text is the same: a password rotated in etcd and in the file the
// config names ({file.*}) is used from the next reload on.
func TestEtcdReloadRereadsCredentials(t *testing.T) {
	srv := etcdtest.Start(t)
	root := srv.Client(t)
	ctx := context.Background()
	enableEtcdAuth(t, root, "first-Passw0rd")
	pwFile := filepath.Join(t.TempDir(), "etcd-password")
	if err := os.WriteFile(pwFile, []byte("first-Passw0rd"), 0o600); err != nil {
		t.Fatal(err)
	}
	global := fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			username root
			password {file.%s}
			dial_timeout 2s
		}
	}`, srv.Endpoint, pwFile)
	c := startCaddy(t, global, proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "the first sync", func() bool {
		_, body := c.AdminDo(http.MethodGet, "/service_registry/services", "", "")
		return strings.Contains(body, `"synced": true`)
	})

	// Rotate: etcd takes only the new password from now on.
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Username: "root", Password: "first-Passw0rd", DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.UserChangePassword(ctx, "root", "second-Passw0rd"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pwFile, []byte("second-Passw0rd"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The same config: Caddy reloads it only when forced.
	if out, err := c.TryReload(global, proxySite, "--force"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	a := startBackend(t, "a")
	status, body := c.AdminDo(http.MethodPost, "/service_registry/services/users/v1", "application/json", `{"address":"`+a.Addr+`"}`)
	if status != http.StatusCreated {
		t.Errorf("a write after the rotation and a reload: %d %s; want 201", status, body)
	}
}

// The etcd backend's TLS files are read on every reload, the same config
// text included: a reload after its client key became unreadable is
// refused, and the running config keeps routing.
func TestEtcdReloadRereadsTLSFiles(t *testing.T) {
	dir := t.TempDir()
	files := etcdtest.WriteTLSFiles(t, dir)
	srv := etcdtest.StartTLS(t, files)
	a := startBackend(t, "a")
	cli := srv.Client(t)
	put(t, cli, "/svcreg/users/v1/"+a.Addr, "{}")
	global := fmt.Sprintf(`service_registry {
		backend etcd {
			endpoints %s
			tls {
				ca   %s
				cert %s
				key  %s
			}
		}
	}`, srv.Endpoint, files.CA, files.ClientCert, files.ClientKey)
	c := startCaddy(t, global, proxySite, caddyOpts{})
	waitFor(t, 10*time.Second, "routing over TLS to etcd", func() bool { return routesTo(c, "/users/v1/x", "a") })

	if err := os.Remove(files.ClientKey); err != nil {
		t.Fatal(err)
	}
	out, err := c.TryReload(global, proxySite, "--force")
	if err == nil || !strings.Contains(out, "client certificate") {
		t.Errorf("a reload with the client key gone: %v\n%s\nwant it refused, naming the client certificate", err, out)
	}
	if !routesTo(c, "/users/v1/x", "a") {
		t.Error("the running config stopped routing after a refused reload")
	}
}
