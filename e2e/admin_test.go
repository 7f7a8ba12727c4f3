package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const seededRegistry = `service_registry {
		service users v1 127.0.0.1:9091 127.0.0.1:9092
		service users v2 127.0.0.1:9093
	}`

const plainSite = `{http} {
	respond "ok"
}`

func TestAdminAPI(t *testing.T) {
	c := startCaddy(t, seededRegistry, plainSite, caddyOpts{})
	const svc = "/service_registry/services"
	initial := []string{"users v1 127.0.0.1:9091,127.0.0.1:9092", "users v2 127.0.0.1:9093"}
	if got := c.Services(); !slices.Equal(got, initial) {
		t.Fatalf("seeded registry = %q, want %q", got, initial)
	}

	// Bad requests: each gets its status and a message naming the
	// problem, and none changes anything.
	for _, tc := range []struct {
		name, method, path, ctype, body string
		status                          int
		mention                         string
	}{
		{"bad JSON", "POST", svc + "/users/v1", "application/json", `{"address":`, 400, "decoding JSON"},
		{"unknown field", "POST", svc + "/users/v1", "", `{"adress":"127.0.0.1:1"}`, 400, `unknown field \"adress\"`},
		{"field name in capitals", "POST", svc + "/users/v1", "", `{"ADDRESS":"127.0.0.1:1"}`, 400, `unknown field \"ADDRESS\"`},
		{"field given twice", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1:1","address":"127.0.0.1:2"}`, 400, `\"address\" given twice`},
		{"metadata key twice", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1:1","metadata":{"zone":"a","zone":"b"}}`, 400, `\"zone\" given twice`},
		{"not an object", "POST", svc + "/users/v1", "", `["127.0.0.1:1"]`, 400, "want a JSON object"},
		{"signed port", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1:+80"}`, 400, "port must be"},
		{"IP out of range", "POST", svc + "/users/v1", "", `{"address":"999.1.1.1:80"}`, 400, "not an IP address"},
		{"five numbers", "POST", svc + "/users/v1", "", `{"address":"1.2.3.4.5:80"}`, 400, "not an IP address"},
		{"two JSON values", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1:1"} {}`, 400, "more than one JSON value"},
		{"missing address", "POST", svc + "/users/v1", "", `{}`, 400, `missing \"address\"`},
		{"no port", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1"}`, 400, "want host:port"},
		{"port out of range", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1:70000"}`, 400, "port must be"},
		{"https address", "POST", svc + "/users/v1", "", `{"address":"https://127.0.0.1:443"}`, 400, "tls"},
		{"bad weight", "POST", svc + "/users/v1", "", `{"address":"127.0.0.1:1","weight":500}`, 400, "weight"},
		{"wrong content type", "POST", svc + "/users/v1", "text/plain", `{"address":"127.0.0.1:1"}`, 400, "content type"},
		{"bad service name", "POST", svc + "/us$ers/v1", "", `{"address":"127.0.0.1:1"}`, 400, "service name"},
		{"bad version name", "POST", svc + "/users/" + strings.Repeat("v", 65), "", `{"address":"127.0.0.1:1"}`, 400, "version name"},
		{"dots as name", "POST", svc + "/users/%2E%2E", "", `{"address":"127.0.0.1:1"}`, 400, "version name"},
		{"slash in name", "POST", svc + "/us%2Fers/v1", "", `{"address":"127.0.0.1:1"}`, 400, "bad path segment"},
		{"too big", "POST", svc + "/users/v1", "", `{"address":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "over"},
		{"bad address in DELETE", "DELETE", svc + "/users/v1/not-an-address", "", "", 400, "want host:port"},
		{"unknown endpoint", "DELETE", svc + "/users/v1/127.0.0.1:9999", "", "", 404, `unknown endpoint \"127.0.0.1:9999\" of version \"v1\" of service \"users\"`},
		{"unknown version", "DELETE", svc + "/users/v7/127.0.0.1:9091", "", "", 404, `unknown version \"v7\" of service \"users\"`},
		{"unknown service in DELETE", "DELETE", svc + "/orders/v7/127.0.0.1:9091", "", "", 404, `unknown service \"orders\"`},
		{"unknown service", "GET", svc + "/orders/v1", "", "", 404, `unknown service \"orders\"`},
		{"unknown version in GET", "GET", svc + "/users/v7", "", "", 404, `unknown version \"v7\" of service \"users\"`},
		{"unknown service alone", "GET", svc + "/orders", "", "", 404, `unknown service \"orders\"`},
		{"one service", "GET", svc + "/users", "", "", 200, `"name": "users"`},
		{"no such resource", "GET", "/service_registry/nope", "", "", 404, "no such resource"},
		{"method", "PUT", svc + "/users/v1", "", `{}`, 405, "method not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := c.AdminDo(tc.method, tc.path, tc.ctype, tc.body)
			if status != tc.status || !strings.Contains(body, tc.mention) {
				t.Errorf("%s %s: %d %s; want %d mentioning %q", tc.method, tc.path, status, body, tc.status, tc.mention)
			}
		})
	}
	if got := c.Services(); !slices.Equal(got, initial) {
		t.Fatalf("bad requests changed the registry: %q", got)
	}

	// Happy paths.
	status, body := c.AdminDo("POST", svc+"/orders/v1", "application/json", `{"address":"127.0.0.1:9094","weight":3}`)
	if status != http.StatusCreated || !strings.Contains(body, `"weight": 3`) {
		t.Errorf("add: %d %s", status, body)
	}
	status, _ = c.AdminDo("POST", svc+"/orders/v1", "", `{"address":"http://127.0.0.1:9094","weight":3}`)
	if status != http.StatusOK {
		t.Errorf("adding again: %d, want 200", status)
	}
	status, body = c.AdminDo("GET", svc+"/orders/v1", "", "")
	if status != http.StatusOK || !strings.Contains(body, `"address": "127.0.0.1:9094"`) || !strings.Contains(body, `"healthy": true`) {
		t.Errorf("get one: %d %s", status, body)
	}
	status, body = c.AdminDo("DELETE", svc+"/users/v1/127.0.0.1:9091", "", "")
	if status != http.StatusOK || !strings.Contains(body, `"deleted": true`) {
		t.Errorf("delete: %d %s", status, body)
	}
	want := []string{"orders v1 127.0.0.1:9094", "users v1 127.0.0.1:9092", "users v2 127.0.0.1:9093"}
	if got := c.Services(); !slices.Equal(got, want) {
		t.Errorf("after changes = %q, want %q", got, want)
	}
}

func TestRegistrySurvivesReload(t *testing.T) {
	c := startCaddy(t, seededRegistry, plainSite, caddyOpts{})
	if status, body := c.AdminDo("POST", "/service_registry/services/users/v1", "", `{"address":"127.0.0.1:9095"}`); status != http.StatusCreated {
		t.Fatalf("add: %d %s", status, body)
	}
	// A reload with a different seed and site: the admin-added endpoint
	// stays, the new seed appears.
	c.Reload(`service_registry {
		service users v1 127.0.0.1:9091 127.0.0.1:9096
	}`, `{http} {
	respond "reloaded"
}`)
	if _, body, _ := c.Get("/"); body != "reloaded" {
		t.Fatalf("reload did not take effect: %q", body)
	}
	want := []string{"users v1 127.0.0.1:9091,127.0.0.1:9095,127.0.0.1:9096"}
	if got := c.Services(); !slices.Equal(got, want) {
		t.Errorf("after reload = %q, want %q", got, want)
	}
}

func TestAdminChangesSurviveRestart(t *testing.T) {
	c := startCaddy(t, seededRegistry, plainSite, caddyOpts{})
	if status, body := c.AdminDo("POST", "/service_registry/services/orders/v1", "", `{"address":"127.0.0.1:9097"}`); status != http.StatusCreated {
		t.Fatalf("add: %d %s", status, body)
	}
	if status, body := c.AdminDo("DELETE", "/service_registry/services/users/v1/127.0.0.1:9091", "", ""); status != http.StatusOK {
		t.Fatalf("delete: %d %s", status, body)
	}
	c.Restart()
	want := []string{"orders v1 127.0.0.1:9097", "users v1 127.0.0.1:9092", "users v2 127.0.0.1:9093"}
	if got := c.Services(); !slices.Equal(got, want) {
		t.Errorf("after restart = %q, want %q", got, want)
	}
}

// Two Caddy instances with the memory backend on one storage, as a Caddy
// cluster shares storage for certificates: admin changes made through
// both at once are all kept, and each instance routes them once it has
// next checked the storage (every 2 s by default).
func TestMemorySharedStorage(t *testing.T) {
	dir := t.TempDir()
	a := startCaddy(t, seededRegistry, plainSite, caddyOpts{Dir: dir})
	b := startCaddy(t, seededRegistry, plainSite, caddyOpts{Dir: dir})
	var want []string
	var wg sync.WaitGroup
	for i := range 20 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+i)
		want = append(want, addr)
		c := []*caddy{a, b}[i%2]
		wg.Go(func() {
			if status, body := c.AdminDo("POST", "/service_registry/services/orders/v1", "", `{"address":"`+addr+`"}`); status != http.StatusCreated && status != http.StatusOK {
				t.Errorf("add %s: %d %s", addr, status, body)
			}
		})
	}
	wg.Wait()
	slices.Sort(want)
	line := "orders v1 " + strings.Join(want, ",")
	for _, c := range []*caddy{a, b} {
		waitFor(t, 15*time.Second, "both instances to list every change", func() bool { return slices.Contains(c.Services(), line) })
	}
}
