package e2e

import (
	"fmt"
	"testing"
)

// service_proxy inside route, handle and handle_path blocks, and at the top level
// of a site beside a path-matched reverse_proxy, which keeps its paths;
// its errors get the same texts wherever it sits.
func TestServiceProxyNested(t *testing.T) {
	users, static := startBackend(t, "users"), startBackend(t, "static")
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens here
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
		service empty v1
		service dead v1 %s
	}`, users.Addr, dead), fmt.Sprintf(`{http} {
	reverse_proxy /static/* %s
	handle_path /api/* {
		service_proxy
	}
	handle /h/* {
		service_proxy {
			prefix /h
		}
	}
	route /r/* {
		uri strip_prefix /r
		service_proxy
		respond "fallback" 200
	}
	service_proxy
}`, static.Addr), caddyOpts{})

	for _, tc := range []struct {
		path, body string
		status     int
		retryAfter string
	}{
		{"/static/css/site.css", "static GET /static/css/site.css", 200, ""},
		{"/api/users/v1/x", "users GET /x", 200, ""},
		{"/r/users/v1/x", "users GET /x", 200, ""},
		{"/h/users/v1/x", "users GET /x", 200, ""},
		{"/h/users/v2/x", `unknown version "v2" of service "users"`, 404, ""},
		{"/r/plain", "fallback", 200, ""},
		{"/users/v1/x", "users GET /x", 200, ""},
		{"/users/v9/x", `unknown version "v9" of service "users"`, 404, ""},
		{"/r/nosuch/v1/x", `unknown service "nosuch"`, 404, ""},
		{"/api/nosuch/v1/x", `unknown service "nosuch"`, 404, ""},
		{"/empty/v1/x", `no available host for service "empty" version "v1"`, 503, "1"},
		{"/api/dead/v1/x", `no host of service "dead" version "v1" answered`, 502, ""},
	} {
		status, body, hdr := rawGet(t, c.HTTP, "", tc.path)
		if status != tc.status || body != tc.body || hdr.Get("Retry-After") != tc.retryAfter {
			t.Errorf("GET %s: %d %q (Retry-After %q); want %d %q (Retry-After %q)",
				tc.path, status, body, hdr.Get("Retry-After"), tc.status, tc.body, tc.retryAfter)
		}
	}
}
