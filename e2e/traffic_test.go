package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/etcdtest"
)

// trafficRegistry is a service_registry block with users v1 and v2 and a
// 90/10 split between them.
func trafficRegistry(v1, v2 *backend) string {
	return fmt.Sprintf(`service_registry {
		service users v1 %s
		service users v2 %s
		traffic users {
			split v1 90 v2 10
			alias stable v1
		}
	}`, v1.Addr, v2.Addr)
}

// versionSite answers with the backend's body and the version the
// request went to, and why.
const versionSite = `{http} {
	service_proxy {
		header_down X-Version "{svc.version} {svc.version_from}"
	}
}`

// client is one user of the canary: its own cookie jar.
type client struct {
	http *http.Client
	got  string // the version of its first request
}

// getVersion sends GET path and returns the backend that answered and
// the X-Version header.
func getVersion(t testing.TB, cl *http.Client, url string, header map[string]string) (string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return strings.Fields(string(body))[0], resp.Header.Get("X-Version")
}

// TestTrafficCanary runs a canary as a user would: 1,000 clients with
// sticky cookies, 20 requests each, stay on their version; raising the
// canary from 10 to 20 through the admin API moves about a tenth of them
// to v2 and none back; overrides, aliases and a bad PUT.
func TestTrafficCanary(t *testing.T) {
	v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
	c := startCaddy(t, trafficRegistry(v1, v2), versionSite, caddyOpts{})
	url := "http://" + c.HTTP + "/users/list"
	transport := &http.Transport{MaxIdleConnsPerHost: 16}
	defer transport.CloseIdleConnections()

	clients := make([]*client, 1000)
	for i := range clients {
		jar, _ := cookiejar.New(nil)
		clients[i] = &client{http: &http.Client{Transport: transport, Jar: jar}}
	}
	// each worker takes every 8th client through all its requests
	var mu sync.Mutex
	var problems []string
	each := func(f func(cl *client) string) {
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < len(clients); i += 8 {
					if p := f(clients[i]); p != "" {
						mu.Lock()
						problems = append(problems, p)
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
	}
	each(func(cl *client) string {
		for j := range 20 {
			name, how := getVersion(t, cl.http, url, nil)
			want := "split"
			if j > 0 {
				want = "sticky"
			}
			if how != name+" "+want {
				return fmt.Sprintf("request %d went to %s as %q; want %s by %s", j, name, how, name, want)
			}
			if j == 0 {
				cl.got = name
			} else if name != cl.got {
				return fmt.Sprintf("a client went to %s, then to %s", cl.got, name)
			}
		}
		return ""
	})
	if len(problems) > 0 {
		t.Fatalf("%d problems, the first: %s", len(problems), problems[0])
	}
	onV2 := 0
	for _, cl := range clients {
		if cl.got == "v2" {
			onV2++
		}
	}
	if onV2 < 60 || onV2 > 140 {
		t.Errorf("%d of 1,000 clients on v2 with a 90/10 split; want about 100", onV2)
	}

	// Requests per version, by why they went there.
	m := metrics(t, c)
	if split, sticky := m[`caddy_service_registry_version_requests_total{from="split",service="users",version="v2"}`],
		m[`caddy_service_registry_version_requests_total{from="sticky",service="users",version="v2"}`]; split != float64(onV2) || sticky != float64(19*onV2) {
		t.Errorf("v2's requests: %v by split, %v sticky; want %d and %d", split, sticky, onV2, 19*onV2)
	}

	// Raise the canary: about 10% of clients move to v2, none back.
	if status, body := c.AdminDo(http.MethodPut, "/service_registry/traffic/users", "application/json",
		`{"split":{"v1":80,"v2":20},"aliases":{"stable":"v1"}}`); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	var moved, back int
	each(func(cl *client) string {
		name, _ := getVersion(t, cl.http, url, nil)
		mu.Lock()
		defer mu.Unlock()
		if name != cl.got {
			moved++
			if cl.got == "v2" {
				back++
			}
		}
		return ""
	})
	if moved < 50 || moved > 150 || back != 0 {
		t.Errorf("raising the canary from 10 to 20 moved %d of 1,000 clients, %d of them from v2 back to v1; want about 100, none back", moved, back)
	}

	// Overrides: a path version beats the header, which beats the cookie.
	for _, tc := range []struct {
		path   string
		header map[string]string
		want   string
	}{
		{"/users/v2/x", map[string]string{"X-Service-Version": "v1"}, "v2 path"},
		{"/users/x", map[string]string{"X-Service-Version": "v2"}, "v2 header"},
		{"/users/x", map[string]string{"X-Service-Version": "stable"}, "v1 header"},
		{"/users/x", map[string]string{"Cookie": "svc_version=v2"}, "v2 cookie"},
		{"/users/stable/x", nil, "v1 alias"},
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+c.HTTP+tc.path, nil)
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Version"); got != tc.want {
			t.Errorf("GET %s with %v: went to %q, want %q", tc.path, tc.header, got, tc.want)
		}
	}

	// A PUT naming unknown versions changes nothing and names them.
	status, body := c.AdminDo(http.MethodPut, "/service_registry/traffic/users", "application/json", `{"split":{"v1":50,"v3":50},"aliases":{"beta":"v4"}}`)
	if status != http.StatusBadRequest || !strings.Contains(body, `unknown versions \"v3\", \"v4\" of service \"users\"`) {
		t.Errorf("PUT with unknown versions: %d %s; want 400 naming v3 and v4", status, body)
	}
	for _, bad := range []string{`{"split":{"v1":50},"Split":{}}`, `{"splits":{}}`, `{"split":{"v1":-1}}`, `[]`} {
		if status, body := c.AdminDo(http.MethodPut, "/service_registry/traffic/users", "application/json", bad); status != http.StatusBadRequest {
			t.Errorf("PUT %s: %d %s; want 400", bad, status, body)
		}
	}
	if status, body := c.AdminDo(http.MethodGet, "/service_registry/traffic/users", "", ""); status != http.StatusOK || !strings.Contains(body, `"v2": 20`) {
		t.Errorf("GET after bad PUTs: %d %s; want the 80/20 policy", status, body)
	}

	// The policy survives a restart (memory backend: Caddy's storage);
	// DELETE brings the config's back.
	// The start says so, and so do the admin API and the CLI.
	if strings.Contains(c.Log(), "overrides the config") {
		t.Errorf("a stored policy logged as overriding before any restart:\n%s", c.Log())
	}
	c.Restart()
	if status, body := c.AdminDo(http.MethodGet, "/service_registry/traffic/users", "", ""); status != http.StatusOK || !strings.Contains(body, `"v2": 20`) || !strings.Contains(body, `"source": "stored"`) {
		t.Errorf("GET after a restart: %d %s; want the 80/20 policy, stored", status, body)
	}
	waitFor(t, 5*time.Second, "the start to log that the stored policy overrides the config's", func() bool {
		for _, l := range strings.Split(c.Log(), "\n") {
			if strings.Contains(l, `"level":"warn"`) && strings.Contains(l, "overrides the config") && strings.Contains(l, `"service":"users"`) {
				return true
			}
		}
		return false
	})
	if out := cliOK(t, c, "traffic", "users"); !strings.Contains(out, "SOURCE") || !strings.Contains(out, "stored (overrides config)") {
		t.Errorf("caddy service-registry traffic users after a restart:\n%s\nwant the SOURCE column to say stored", out)
	}
	if status, body := c.AdminDo(http.MethodDelete, "/service_registry/traffic/users", "", ""); status != http.StatusOK || !strings.Contains(body, `"v2": 10`) || !strings.Contains(body, `"source": "config"`) {
		t.Errorf("DELETE: %d %s; want the config's 90/10 back", status, body)
	}
	if status, body := c.AdminDo(http.MethodDelete, "/service_registry/traffic/users", "", ""); status != http.StatusNotFound {
		t.Errorf("second DELETE: %d %s; want 404", status, body)
	}
	if status, body := c.AdminDo(http.MethodGet, "/service_registry/traffic/orders", "", ""); status != http.StatusNotFound {
		t.Errorf("GET of a service without a policy: %d %s; want 404", status, body)
	}
}

// A PUT through one Caddy is used by a second one on the same etcd
// within a second.
func TestTrafficSharedThroughEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	a := startCaddy(t, etcdRegistry(srv.Endpoint), versionSite, caddyOpts{})
	b := startCaddy(t, etcdRegistry(srv.Endpoint), versionSite, caddyOpts{})
	v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
	for v, be := range map[string]*backend{"v1": v1, "v2": v2} {
		if status, body := a.AdminDo(http.MethodPost, "/service_registry/services/users/"+v, "", `{"address":"`+be.Addr+`"}`); status != http.StatusCreated {
			t.Fatalf("add %s: %d %s", v, status, body)
		}
	}
	waitFor(t, 5*time.Second, "B to route v2", func() bool { return routesTo(b, "/users/v2/x", "v2") })
	if status, _, _ := b.Get("/users/x"); status != http.StatusNotFound {
		t.Fatalf("without a policy, /users/x: %d; want 404", status)
	}
	if status, body := a.AdminDo(http.MethodPut, "/service_registry/traffic/users", "application/json", `{"split":{"v2":100},"aliases":{"stable":"v1"}}`); status != http.StatusOK {
		t.Fatalf("PUT through A: %d %s", status, body)
	}
	if !routesTo(a, "/users/x", "v2") {
		t.Error("A does not use the policy its own admin API just set")
	}
	put := time.Now()
	waitFor(t, 5*time.Second, "B to use the policy", func() bool { return routesTo(b, "/users/x", "v2") && routesTo(b, "/users/stable/x", "v1") })
	if took := time.Since(put); took > time.Second {
		t.Errorf("B used the policy %v after the PUT; want within 1s", took)
	}
	// stored in the shared etcd, so a DELETE through B removes it for A too
	if status, body := b.AdminDo(http.MethodDelete, "/service_registry/traffic/users", "", ""); status != http.StatusOK {
		t.Fatalf("DELETE through B: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, "A to drop the policy", func() bool {
		status, _, _ := a.Get("/users/x")
		return status == http.StatusNotFound
	})
}

// A reload that drops the config's policy drops it from routing; one that
// brings it back restores it. Nothing of it outlives the config.
func TestTrafficReload(t *testing.T) {
	v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
	c := startCaddy(t, trafficRegistry(v1, v2), versionSite, caddyOpts{})
	if !routesTo(c, "/users/stable/x", "v1") {
		t.Fatal("the alias does not route")
	}
	c.Reload(fmt.Sprintf(`service_registry {
		service users v1 %s
		service users v2 %s
	}`, v1.Addr, v2.Addr), versionSite)
	for _, path := range []string{"/users/stable/x", "/users/x"} {
		if status, body, _ := c.Get(path); status != http.StatusNotFound {
			t.Errorf("GET %s after the policy left the config: %d %s; want 404", path, status, body)
		}
	}
	if status, body := c.AdminDo(http.MethodGet, "/service_registry/traffic", "", ""); status != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("policies after the reload: %d %s; want none", status, body)
	}
	// a config naming a version it does not seed is refused, and changes nothing
	bad := strings.Replace(trafficRegistry(v1, v2), "split v1 90 v2 10", "split v1 90 v3 10", 1)
	if out, err := c.TryReload(bad, versionSite); err == nil || !strings.Contains(out, "unknown version") || !strings.Contains(out, "v3") /* quoted once per level of JSON */ {
		t.Errorf("reload with a policy naming v3: %v\n%s", err, out)
	}
	if status, _, _ := c.Get("/users/x"); status != http.StatusNotFound {
		t.Errorf("a refused reload changed routing: %d", status)
	}
	c.Reload(trafficRegistry(v1, v2), versionSite)
	if !routesTo(c, "/users/stable/x", "v1") {
		t.Error("the alias does not route after the policy came back")
	}
}
