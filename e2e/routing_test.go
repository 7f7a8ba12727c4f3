package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rawGet sends path exactly as given (no cleaning or re-escaping by the
// client) and returns status, body and headers.
func rawGet(t testing.TB, addr, host, path string) (int, string, http.Header) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if host == "" {
		host = addr
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// bodyMatches reports whether body is pattern, where one * in pattern
// stands for any text.
func bodyMatches(pattern, body string) bool {
	prefix, suffix, wild := strings.Cut(pattern, "*")
	if !wild {
		return body == pattern
	}
	return len(body) >= len(prefix)+len(suffix) && strings.HasPrefix(body, prefix) && strings.HasSuffix(body, suffix)
}

func TestRouting(t *testing.T) {
	u1, u2 := startBackend(t, "users-v1-a"), startBackend(t, "users-v1-b")
	u3, o1 := startBackend(t, "users-v2"), startBackend(t, "orders-v1")
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens here
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s %s
		service users v2 %s
		service orders v1 %s
		service empty v1
		service dead v1 %s
	}`, u1.Addr, u2.Addr, u3.Addr, o1.Addr, dead), `{http} {
	service_proxy {
		header_up X-Service "{svc.name} {svc.version} {svc.prefix}"
		lb_policy round_robin
	}
}`, caddyOpts{})

	for _, tc := range []struct {
		name, path string
		status     int
		body       string // exact, or a prefix when it ends in "*"
		retryAfter string
	}{
		{"service v1", "/users/v1/list?page=2", 200, "users-v1-* GET /list?page=2 [users v1 /users/v1]", ""},
		{"service v2", "/users/v2/list", 200, "users-v2 GET /list [users v2 /users/v2]", ""},
		{"other service", "/orders/v1/42", 200, "orders-v1 GET /42 [orders v1 /orders/v1]", ""},
		{"no trailing slash", "/orders/v1", 200, "orders-v1 GET / [orders v1 /orders/v1]", ""},
		{"double slashes", "//orders//v1//42", 200, "orders-v1 GET /42 [orders v1 /orders/v1]", ""},
		{"dot segments", "/users/v1/../../orders/v1/42", 200, "orders-v1 GET /42 [orders v1 /orders/v1]", ""},
		{"unknown version", "/users/v9/list", 404, `unknown version "v9" of service "users"`, ""},
		{"unknown service", "/nosuch/v1/list", 404, `unknown service "nosuch"`, ""},
		{"climbing out", "/users/v1/../../../x/y", 404, `unknown service "x"`, ""},
		{"no host", "/empty/v1/x", 503, `no available host for service "empty" version "v1"`, "1"},
		{"every host fails", "/dead/v1/x", 502, `no host of service "dead" version "v1" answered`, ""},
		{"escaped slash", "/users%2Fv1/list", 200, "", ""},
		{"escaped dots", "/users/%2E%2E/orders/v1", 200, "", ""},
		{"NUL", "/users%00/v1/list", 200, "", ""},
		{"non-ASCII", "/%C3%BCsers/v1/list", 200, "", ""},
		{"long segment", "/" + strings.Repeat("u", 5000) + "/v1/x", 200, "", ""},
		{"one segment", "/users", 200, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := u1.served.Load() + u2.served.Load() + u3.served.Load() + o1.served.Load()
			status, body, hdr := rawGet(t, c.HTTP, "", tc.path)
			if status != tc.status {
				t.Fatalf("GET %s: status %d %q, want %d", tc.path, status, body, tc.status)
			}
			if !bodyMatches(tc.body, body) {
				t.Errorf("GET %s: body %q, want %q", tc.path, body, tc.body)
			}
			if got := hdr.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("GET %s: Retry-After %q, want %q", tc.path, got, tc.retryAfter)
			}
			after := u1.served.Load() + u2.served.Load() + u3.served.Load() + o1.served.Load()
			if tc.status == 200 && tc.body == "" && after != before {
				t.Errorf("GET %s reached a backend; it must not match any service", tc.path)
			}
		})
	}

	// Balancing is per request: consecutive requests on one keep-alive
	// connection go to both hosts of users v1, in turn with round_robin.
	// (The default, peak_ewma, picks at random with shares inversely
	// proportional to latency, which a -race run makes noisy; its shares
	// are unit-tested in TestPeakEWMABalance.)
	client := &http.Client{}
	counts := map[string]int{}
	for range 40 {
		resp, err := client.Get("http://" + c.HTTP + "/users/v1/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		counts[strings.Fields(string(b))[0]]++
	}
	if counts["users-v1-a"] != 20 || counts["users-v1-b"] != 20 {
		t.Errorf("40 requests on one connection went %v; want 20 to each host", counts)
	}

	// An endpoint added through the admin API is routed by the next
	// request, and after a reload too.
	n1 := startBackend(t, "new-v3")
	if status, body := c.AdminDo("POST", "/service_registry/services/users/v3", "", `{"address":"`+n1.Addr+`"}`); status != http.StatusCreated {
		t.Fatalf("add: %d %s", status, body)
	}
	if status, body, _ := c.Get("/users/v3/hi"); status != 200 || !strings.HasPrefix(body, "new-v3 GET /hi") {
		t.Fatalf("right after adding: %d %q", status, body)
	}
	c.Reload(fmt.Sprintf(`service_registry {
		service users v1 %s
	}`, u1.Addr), `{http} {
	service_proxy
}`)
	if status, body, _ := c.Get("/users/v3/hi"); status != 200 || !strings.HasPrefix(body, "new-v3 GET /hi") {
		t.Fatalf("after reload: %d %q", status, body)
	}
	if status, body, _ := c.Get("/users/v2/hi"); status != 404 {
		t.Fatalf("a version dropped from the config is still routed after reload: %d %q", status, body)
	}
}

// TestLongFormAsWritten runs the long form exactly as examples/long-form
// writes it against real backends.
func TestLongFormAsWritten(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "examples", "long-form", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	a, b, v2 := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "v2")
	cfg := string(raw)
	cfg = strings.NewReplacer("127.0.0.1:9091", a.Addr, "127.0.0.1:9092", b.Addr, "127.0.0.1:9093", v2.Addr).Replace(cfg)
	global, site, ok := strings.Cut(cfg, "\n:9090 {")
	if !ok {
		t.Fatal("examples/long-form/Caddyfile has no :9090 site")
	}
	global = global[strings.Index(global, "service_registry"):strings.LastIndex(global, "}")]
	c := startCaddy(t, global, "{http} {"+site, caddyOpts{})

	seen := map[string]bool{}
	for range 4 {
		status, body, _ := c.Get("/users/v1/hello")
		if status != 200 {
			t.Fatalf("long form: %d %q", status, body)
		}
		seen[strings.Fields(body)[0]] = true
		if !strings.HasSuffix(body, "GET /hello") {
			t.Errorf("prefix not stripped: %q", body)
		}
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("long form did not balance: %v", seen)
	}
	a.Kill()
	for range 6 {
		if status, body, _ := c.Get("/users/v1/hello"); status != 200 || !strings.HasPrefix(body, "b ") {
			t.Fatalf("long form with a host down: %d %q", status, body)
		}
	}
	if status, _, _ := c.Get("/users/v7/hello"); status != 404 {
		t.Errorf("long form, unknown version: %d", status)
	}
}

// TestHostsExample runs examples/hosts: sites per host name, a path
// matcher beside service_proxy, and a base prefix.
func TestHostsExample(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "examples", "hosts", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	u1, u2, bill := startBackend(t, "users-a"), startBackend(t, "users-b"), startBackend(t, "billing")
	port := freePort(t)
	cfg := strings.NewReplacer("127.0.0.1:9091", u1.Addr, "127.0.0.1:9092", u2.Addr, "127.0.0.1:9093", bill.Addr,
		":9090", fmt.Sprintf(":%d", port)).Replace(string(raw))
	global, sites, _ := strings.Cut(cfg, "\nhttp://api.localhost")
	global = global[strings.Index(global, "service_registry"):strings.LastIndex(global, "}")]
	startCaddy(t, global, "http://api.localhost"+sites, caddyOpts{HTTPPort: port})
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	for _, tc := range []struct {
		host, path string
		status     int
		want       string
	}{
		{"api.localhost", "/billing/v1/invoice", 200, "billing GET /invoice"},
		{"api.localhost", "/users/v1/me", 200, "users-"},
		{"api.localhost", "/users/v2/me", 404, `unknown version "v2" of service "users"`},
		{"www.localhost", "/static/app.js", 200, "static file /app.js"},
		{"www.localhost", "/svc/billing/v1/invoice", 200, "billing GET /invoice [billing]"},
		{"www.localhost", "/svc/nosuch/v1/x", 404, `unknown service "nosuch"`},
		{"admin.localhost", "/billing/v1/invoice", 200, "admin site"},
	} {
		status, body, _ := rawGet(t, addr, tc.host, tc.path)
		if status != tc.status || !strings.HasPrefix(body, tc.want) {
			t.Errorf("%s%s: %d %q, want %d %q", tc.host, tc.path, status, body, tc.status, tc.want)
		}
	}
}
