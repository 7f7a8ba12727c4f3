package zkstore

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkkv"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
	"github.com/svcreg/caddy-svcreg/registry"
)

// A node created between the listing finding it missing and the watch
// set for its creation (as when a wiped ZooKeeper fills up again while
// this instance lists it): the watch lands on the node's data, which
// would never fire, and the instances under it would never be routed. The
// listing sees it was created and lists it after all.
func TestZooKeeperNodeCreatedWhileListed(t *testing.T) {
	srv := zktest.Start(t)
	jvm := srv.Conn(t)
	var once sync.Once
	afterNoNode = func(p string) {
		if p == "/services" {
			once.Do(func() {
				for _, n := range []string{"/services", "/services/users"} {
					if _, err := jvm.Create(n, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
						t.Error(err)
					}
				}
				// Curator's instance JSON, as a JVM service writes it
				data := fmt.Sprintf(`{"name":"users","id":"created-meanwhile","address":"127.0.0.1","port":%d,"sslPort":null,"payload":{"version":"v1"},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true}]}}`, 9091)
				if _, err := jvm.Create("/services/users/created-meanwhile", []byte(data), 0, zk.WorldACL(zk.PermAll)); err != nil {
					t.Error(err)
				}
			})
		}
	}
	t.Cleanup(func() { afterNoNode = func(string) {} })
	layout, err := zkkv.Layout{}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	r := registry.New(New(Options{Servers: []string{srv.Addr}, Layout: layout, SessionTimeout: 4 * time.Second}, nil), registry.Options{})
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := r.Start(registry.BackendEnv{Logger: zap.NewNop()}, nil, nil); err != nil {
		t.Fatal(err)
	}
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	testutil.Eventually(t, 15*time.Second, "the first sync", func() bool { return r.Snapshot().Synced() })
	testutil.Eventually(t, 5*time.Second, "the instance created while the base was listed", func() bool {
		svc, err := r.Lookup(users)
		return err == nil && slices.Equal(testutil.Addresses(svc), []string{"127.0.0.1:9091"})
	})
}
