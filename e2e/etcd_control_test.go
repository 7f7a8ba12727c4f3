package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

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

	// etcd gone (nothing listens): nothing can have changed, 503.
	srv.Kill()
	status, body = c.AdminDo(http.MethodDelete, "/service_registry/services/users/v1/"+a.Addr, "", "")
	if status != http.StatusServiceUnavailable {
		t.Errorf("a write with etcd down: %d %s; want 503", status, body)
	}
}
