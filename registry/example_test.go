package registry_test

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/svcreg/caddy-svcreg/backends/memory/memstore"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/balance"
)

// mapStorage keeps what the memory store saves in a map: a program would
// give it a file, or a database.
type mapStorage struct {
	mu   sync.Mutex
	keys map[string][]byte
}

func (s *mapStorage) Load(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.keys[key]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return v, nil
}

func (s *mapStorage) Store(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[key] = value
	return nil
}

// The package doc's example, run: a program balances its calls to users
// v1 over the registry and fails over from a host that refuses to one
// that answers. Its backend is the memory backend's store, which imports
// nothing of Caddy.
func Example() {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from users v1")
	}))
	defer up.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	downAddr := strings.TrimPrefix(down.URL, "http://")
	down.Close() // refuses connections from now on

	seeds := map[registry.ServiceKey][]registry.Endpoint{
		{Service: "users", Version: "v1"}: {
			{Address: strings.TrimPrefix(up.URL, "http://")},
			{Address: downAddr},
		},
	}
	call := func(address string) error {
		resp, err := http.Get("http://" + address + "/hi")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, string(body))
		return err
	}

	storage := &mapStorage{keys: map[string][]byte{}}
	run := func() error {
		backend := &memstore.Store{StorageKey: "registry.json"}
		reg := registry.New(backend, registry.Options{})
		if err := reg.Start(registry.BackendEnv{Seeds: seeds, Storage: storage}, nil, nil); err != nil {
			return err
		}
		defer reg.Stop()

		svc, err := reg.Lookup(registry.ServiceKey{Service: "users", Version: "v1"})
		if err != nil {
			return err // unknown service or version, or not synced yet
		}
		tries := registry.NewTries(svc)
		for ep := tries.Next(balance.RoundRobin); ep != nil; ep = tries.Next(balance.RoundRobin) {
			ep.Sent()
			if err := call(ep.Address); err == nil {
				return nil
			}
			reg.Failure(svc.Key(), ep.Address) // out of rotation until it answers
		}
		return svc.Unavailable()
	}
	if err := run(); err != nil {
		fmt.Println(err)
	}
	// Output: 200 hello from users v1
}
