package selfreg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkkv"
	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/internal/zktest"
	"github.com/svcreg/caddy-svcreg/registry"
)

func TestConfigEncode(t *testing.T) {
	for _, tc := range []struct {
		cfg     Config
		key     string
		wantErr string
	}{
		{cfg: Config{Service: "users", Version: "v1", Address: "127.0.0.1:9091"}, key: "/svcreg/users/v1/127.0.0.1:9091"},
		{cfg: Config{Service: "users", Version: "v1", Address: "http://127.0.0.1:9091"}, key: "/svcreg/users/v1/127.0.0.1:9091"},
		{cfg: Config{Service: "users", Version: "v1", Address: "localhost:09091", Prefix: "/reg"}, key: "/reg/users/v1/localhost:9091"},
		{cfg: Config{Service: "users", Version: "v1"}, wantErr: "required"},
		{cfg: Config{Service: "us/ers", Version: "v1", Address: "127.0.0.1:1"}, wantErr: "invalid service name"},
		{cfg: Config{Service: "users", Version: "v1", Address: "127.0.0.1:99999"}, wantErr: "port must be"},
		{cfg: Config{Service: "users", Version: "v1", Address: "127.0.0.1:1", TTL: time.Millisecond}, wantErr: "invalid ttl"},
	} {
		key, _, err := tc.cfg.Encode()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("%+v: %q, %v; want an ErrInvalid naming %q", tc.cfg, key, err, tc.wantErr)
			}
			continue
		}
		if err != nil || key != tc.key {
			t.Errorf("%+v: %q, %v; want %q", tc.cfg, key, err, tc.key)
		}
	}
}

// TestRegister registers through a real etcd with an address in a
// non-canonical form: the key holds the canonical address, which the etcd
// backend reads, and it is gone as soon as Register returns.
func TestRegister(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Register(ctx, Config{Endpoints: []string{srv.Endpoint}, Service: "users", Version: "v1",
			Address: "http://127.0.0.1:09091", Weight: 3, TTL: 2 * time.Second, Drain: 3 * time.Second, Logf: t.Logf})
	}()
	const want = "/svcreg/users/v1/127.0.0.1:9091"
	var kv []byte
	deadline := time.Now().Add(15 * time.Second)
	for kv == nil {
		resp, err := cli.Get(context.Background(), "/svcreg/", clientv3.WithPrefix())
		if err == nil && len(resp.Kvs) > 0 {
			if k := string(resp.Kvs[0].Key); k != want || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
				t.Fatalf("etcd holds %q (%d keys, lease %x), want the one leased key %q", k, len(resp.Kvs), resp.Kvs[0].Lease, want)
			}
			kv = resp.Kvs[0].Value
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing registered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	key, ep, err := etcdkv.Decode(etcdkv.DefaultPrefix, []byte(want), kv)
	if err != nil || key.Service != "users" || ep.Address != "127.0.0.1:9091" || ep.Weight != 3 {
		t.Errorf("the etcd backend reads %v %+v, %v", key, ep, err)
	}
	// Stopping deregisters at once; Register returns the drain later,
	// when the caller may close its server.
	cancel()
	deregisteredThenDrained(t, done, func() bool {
		resp, err := cli.Get(context.Background(), want)
		return err == nil && len(resp.Kvs) == 0
	})

	// A config that cannot be registered fails at once, without etcd.
	if err := Register(context.Background(), Config{Endpoints: []string{"127.0.0.1:1"}, Service: "users", Version: "v1", Address: "127.0.0.1"}); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("registering a bad address: %v, want ErrInvalid at once", err)
	}
}

// TestRegisterZooKeeper registers in a real ZooKeeper: an ephemeral node
// in Curator's layout, which the zookeeper backend reads; created again
// after the session expires (the process cut off from ZooKeeper for longer
// than its TTL); gone as soon as Register returns.
func TestRegisterZooKeeper(t *testing.T) {
	srv := zktest.Start(t)
	check := srv.Conn(t)
	proxy := testutil.NewProxy(t, srv.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Register(ctx, Config{ZooKeeper: []string{proxy.Addr}, Service: "users", Version: "v1",
			Address: "http://127.0.0.1:09091", Weight: 3, TTL: 2 * time.Second, Drain: 3 * time.Second, Logf: t.Logf})
	}()
	const node = "/services/users/v1@127.0.0.1:9091"
	owner := func() int64 {
		_, stat, err := check.Get(node)
		if err != nil {
			return 0
		}
		return stat.EphemeralOwner
	}
	testutil.Eventually(t, 15*time.Second, "the registration", func() bool { return owner() != 0 })
	first := owner()
	data, _, err := check.Get(node)
	if err != nil {
		t.Fatal(err)
	}
	layout, _ := zkkv.Layout{}.Normalize()
	if key, ep, err := layout.Decode(node, data); err != nil || key.Service != "users" || ep.Address != "127.0.0.1:9091" || ep.Weight != 3 {
		t.Errorf("the zookeeper backend reads %v %+v, %v", key, ep, err)
	}
	proxy.Cut()
	testutil.Eventually(t, 30*time.Second, "the session to expire", func() bool { return owner() == 0 })
	proxy.Mend()
	testutil.Eventually(t, 30*time.Second, "the registration in a new session", func() bool { o := owner(); return o != 0 && o != first })
	cancel()
	deregisteredThenDrained(t, done, func() bool { ok, _, err := check.Exists(node); return err == nil && !ok })
}

// A ZooKeeper wiped and started again (replaced, or restored from an
// older snapshot) refuses the session of a client that has seen a newer
// zxid: Register starts a fresh client, registers again, and says why.
func TestRegisterZooKeeperWiped(t *testing.T) {
	srv := zktest.Start(t)
	filler := srv.Conn(t)
	for i := range 40 { // a zxid well above the wiped ZooKeeper's
		if _, err := filler.Create(fmt.Sprintf("/filler-%d", i), nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	filler.Close()
	var logged lines
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Register(ctx, Config{ZooKeeper: []string{srv.Addr}, Service: "users", Version: "v1",
			Address: "127.0.0.1:9091", TTL: 2 * time.Second, Drain: -1, Logf: logged.Logf})
	}()
	const node = "/services/users/v1@127.0.0.1:9091"
	registered := func(conn *zk.Conn) func() bool {
		return func() bool {
			_, stat, err := conn.Get(node)
			return err == nil && stat.EphemeralOwner != 0
		}
	}
	testutil.Eventually(t, 15*time.Second, "the registration", registered(srv.Conn(t)))

	srv.Wipe()
	testutil.Eventually(t, 20*time.Second, "the registration in the wiped ZooKeeper", registered(srv.Conn(t)))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "went back in time") {
		t.Errorf("the log does not say ZooKeeper went back in time:\n%s", logged.String())
	}
}

// lines keeps what Register logs, for a test to read.
type lines struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lines) Logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.buf, format+"\n", args...)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// deregisteredThenDrained checks that, once its ctx is done, Register
// deregisters at once (gone turns true while it has not returned) and
// returns without error only Config.Drain (3 s in these tests) later,
// when the caller may close its server.
func deregisteredThenDrained(t *testing.T, done <-chan error, gone func() bool) {
	t.Helper()
	for !gone() {
		select {
		case err := <-done:
			t.Fatalf("Register returned (%v) while still registered", err)
		default:
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Register returned (%v) as soon as it deregistered, without the drain", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A process told to stop while its registration's put was on the way may
// see the put fail though etcd applied it (the answer lost with the
// canceled call): the key must not outlive Register by its TTL. The put
// here is applied, then reported canceled, as that stop would.
func TestRegisterStoppedDuringPut(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	realPut := put
	t.Cleanup(func() { put = realPut })
	put = func(_ context.Context, c *clientv3.Client, key, value string, lease clientv3.LeaseID) error {
		err := realPut(context.Background(), c, key, value, lease)
		cancel()
		return errors.Join(err, context.Canceled)
	}
	const key = "/svcreg/users/v1/127.0.0.1:9091"
	err := Register(ctx, Config{Endpoints: []string{srv.Endpoint}, Service: "users", Version: "v1",
		Address: "127.0.0.1:9091", TTL: time.Minute, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("%s is still in etcd after Register returned (lease %x, TTL 1m)", key, resp.Kvs[0].Lease)
	}
}
