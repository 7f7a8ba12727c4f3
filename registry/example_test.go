package registry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/svcreg/caddy-svcreg/registry"
)

// seedsBackend is the smallest Backend: the registry is the seeds it is
// started with, and nothing stores changes. A real program uses a store's
// backend instead (the backends directory); the registry does not care
// which.
type seedsBackend struct{ table *registry.Table }

func (b *seedsBackend) Start(table *registry.Table, env registry.BackendEnv) error {
	b.table = table
	table.Replace(env.Seeds)
	return nil
}

func (b *seedsBackend) Reconfigure(env registry.BackendEnv) error {
	b.table.Replace(env.Seeds)
	return nil
}

func (b *seedsBackend) Add(context.Context, registry.ServiceKey, registry.Endpoint) error {
	return errors.New("seeds only")
}

func (b *seedsBackend) Delete(context.Context, registry.ServiceKey, string) error {
	return errors.New("seeds only")
}

func (b *seedsBackend) Stop() error { return nil }

// The package doc's example, run: a program balances its calls to users
// v1 over the registry and fails over from a host that refuses to one
// that answers.
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

	run := func(backend registry.Backend) error {
		reg := registry.New(backend, registry.Options{})
		if err := reg.Start(registry.BackendEnv{Seeds: seeds}, nil, nil); err != nil {
			return err
		}
		defer reg.Stop()

		svc, err := reg.Lookup(registry.ServiceKey{Service: "users", Version: "v1"})
		if err != nil {
			return err // unknown service or version, or not synced yet
		}
		tries := registry.NewTries(svc)
		for ep := tries.Next(registry.RoundRobin); ep != nil; ep = tries.Next(registry.RoundRobin) {
			ep.Sent()
			if err := call(ep.Address); err == nil {
				return nil
			}
			reg.Failure(svc.Key(), ep.Address) // out of rotation until it answers
		}
		return svc.Unavailable()
	}
	if err := run(new(seedsBackend)); err != nil {
		fmt.Println(err)
	}
	// Output: 200 hello from users v1
}
