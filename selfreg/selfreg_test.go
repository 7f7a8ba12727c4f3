package selfreg

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
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
			Address: "http://127.0.0.1:09091", Weight: 3, TTL: 2 * time.Second, Logf: t.Logf})
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
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(context.Background(), want); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("still registered after Register returned: %v (%v)", resp.Kvs, err)
	}

	// A config that cannot be registered fails at once, without etcd.
	if err := Register(context.Background(), Config{Endpoints: []string{"127.0.0.1:1"}, Service: "users", Version: "v1", Address: "127.0.0.1"}); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("registering a bad address: %v, want ErrInvalid at once", err)
	}
}
