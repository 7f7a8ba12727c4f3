package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/svcreg/caddy-svcreg/internal/zktest"
)

// zkRegistry is the global service_registry block for a ZooKeeper backend.
func zkRegistry(addr string) string {
	return fmt.Sprintf(`service_registry {
		backend zookeeper {
			servers %s
			session_timeout 4s
		}
	}`, addr)
}

// curatorInstance writes an instance node as Curator's ServiceDiscovery
// does (a JVM service registering itself).
func curatorInstance(t *testing.T, conn *zk.Conn, service, version, id, addr string, flags int32) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	for _, p := range []string{"/services", "/services/" + service} {
		if _, err := conn.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			t.Fatal(err)
		}
	}
	data := fmt.Sprintf(`{"name":%q,"id":%q,"address":%q,"port":%s,"sslPort":null,"payload":{"@class":"com.example.Details","version":%q},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}`,
		service, id, host, port, version)
	if _, err := conn.Create("/services/"+service+"/"+id, []byte(data), flags, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
}

// TestZooKeeper routes to services registered in a real ZooKeeper by
// Curator (a JVM service), by the selfreg program and through the admin
// API of another Caddy; a self-registered backend killed under load costs
// no request, and its node goes with its session.
func TestZooKeeper(t *testing.T) {
	srv := zktest.Start(t)
	jvm := srv.Conn(t)
	a, b := startBackend(t, "curator"), startBackend(t, "selfreg")
	api := startBackend(t, "api")
	curatorInstance(t, jvm, "users", "v1", "4d7c0b2e-1a8f-4a51-9b0b-3f6e2f1f5c10", a.Addr, zk.FlagEphemeral)
	c := startCaddy(t, zkRegistry(srv.Addr), proxySite, caddyOpts{})
	other := startCaddy(t, zkRegistry(srv.Addr), proxySite, caddyOpts{})
	waitFor(t, 15*time.Second, "the Curator instance to get traffic", func() bool { return routesTo(c, "/users/v1/x", "curator") })

	// an endpoint added through one Caddy's admin API is in ZooKeeper,
	// routed by the other
	if status, body := other.AdminDo(http.MethodPost, "/service_registry/services/orders/v1", "", `{"address":"`+api.Addr+`"}`); status != http.StatusCreated {
		t.Fatalf("add: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, "the first Caddy to route what the other added", func() bool { return routesTo(c, "/orders/v1/x", "api") })

	// a backend registered by the selfreg program, killed with it under load
	reg := exec.Command(selfregBin, "-zookeeper", srv.Addr, "-service", "users", "-version", "v1", "-address", b.Addr, "-ttl", "2s")
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	waitFor(t, 15*time.Second, "the self-registered backend to get traffic", func() bool { return routesTo(c, "/users/v1/x", "selfreg") })
	killedUnderLoad(t, c, reg, b)
	waitFor(t, 15*time.Second, "the dead backend's node to go with its session", func() bool {
		return !slices.ContainsFunc(c.Services(), func(s string) bool { return strings.Contains(s, b.Addr) })
	})
	if !routesTo(c, "/users/v1/x", "curator") {
		t.Error("the Curator instance no longer routes")
	}
}
