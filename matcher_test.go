package svcreg

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"

	"github.com/svcreg/caddy-svcreg/registry"
)

// newRequest returns a request for rawPath carrying a replacer and vars,
// as Caddy's server sets them up.
func newRequest(t testing.TB, method, rawPath string) (*http.Request, *caddy.Replacer) {
	t.Helper()
	r := httptest.NewRequest(method, "http://example.com/", nil)
	u, err := url.Parse("http://example.com" + rawPath)
	if err != nil {
		t.Fatalf("parsing %q: %v", rawPath, err)
	}
	r.URL = u
	r.RequestURI = rawPath
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	return r.WithContext(ctx), repl
}

var matcherServices = map[registry.ServiceKey][]registry.Endpoint{
	{Service: "users", Version: "v1"}:    eps("127.0.0.1:1"),
	{Service: "users", Version: "v2"}:    eps("127.0.0.1:2"),
	{Service: "orders", Version: "v1"}:   eps("127.0.0.1:3"),
	{Service: "a.b_c-d", Version: "1.0"}: eps("127.0.0.1:4"),
}

func TestMatchServiceVersion(t *testing.T) {
	reg := newTestRegistry(t, matcherServices)
	for _, tc := range []struct {
		name    string
		matcher MatchServiceVersion
		path    string
		match   bool
		status  int    // of the error, if any
		service string // expected {svc.name}
		prefix  string // expected {svc.prefix}
		after   string // the path after strip_prefix {svc.prefix}
	}{
		{name: "plain", path: "/users/v1/list", match: true, service: "users", prefix: "/users/v1", after: "/list"},
		{name: "no trailing slash", path: "/users/v1", match: true, service: "users", prefix: "/users/v1", after: "/"},
		{name: "trailing slash", path: "/users/v1/", match: true, service: "users", prefix: "/users/v1", after: "/"},
		{name: "query", path: "/users/v2/x?a=/orders/v1/", match: true, service: "users", prefix: "/users/v2", after: "/x"},
		{name: "dots and dashes", path: "/a.b_c-d/1.0/x", match: true, service: "a.b_c-d", prefix: "/a.b_c-d/1.0", after: "/x"},
		{name: "double slashes", path: "//users//v1//x", match: true, service: "users", prefix: "/users/v1", after: "/x"},
		{name: "dot segments resolved", path: "/orders/v1/../../users/v1/x", match: true, service: "users", prefix: "/users/v1", after: "/x"},
		{name: "climbing out", path: "/users/v1/../../../etc/passwd", match: false, status: 404},
		{name: "climb to one segment", path: "/users/v1/..", match: false},
		{name: "escaped letter", path: "/us%65rs/v1/x", match: true, service: "users", prefix: "/users/v1", after: "/x"},
		{name: "escaped slash", path: "/users%2Fv1/x", match: false},
		{name: "escaped slash in version", path: "/users/v1%2F..%2F..%2Fx", match: false},
		{name: "escaped dots", path: "/users/%2E%2E/x", match: false},
		{name: "escaped NUL", path: "/users%00/v1/x", match: false},
		{name: "non-ASCII", path: "/%C3%BCsers/v1/x", match: false},
		{name: "long segment", path: "/" + strings.Repeat("u", 65) + "/v1/x", match: false},
		{name: "long escaped segment", path: "/" + strings.Repeat("%75", 70) + "/v1/x", match: false},
		{name: "one segment", path: "/users", match: false},
		{name: "root", path: "/", match: false},
		{name: "empty version", path: "/users//", match: false},
		{name: "case matters", path: "/Users/v1/x", match: false, status: 404},
		{name: "unknown service", path: "/nosuch/v1/x", match: false, status: 404},
		{name: "unknown version", path: "/users/v9/x", match: false, status: 404},
		{name: "restricted to service", matcher: MatchServiceVersion{Service: "orders"}, path: "/users/v1/x", match: false},
		{name: "restricted, unknown version", matcher: MatchServiceVersion{Service: "users"}, path: "/users/v9/x", match: false, status: 404},
		{name: "restricted to version", matcher: MatchServiceVersion{Service: "users", Version: "v2"}, path: "/users/v1/x", match: false},
		{name: "restricted match", matcher: MatchServiceVersion{Service: "users", Version: "v2"}, path: "/users/v2/x", match: true, service: "users", prefix: "/users/v2", after: "/x"},
		{name: "base prefix", matcher: MatchServiceVersion{Prefix: "/api"}, path: "/api/users/v1/x", match: true, service: "users", prefix: "/api/users/v1", after: "/x"},
		{name: "outside the base prefix", matcher: MatchServiceVersion{Prefix: "/api"}, path: "/users/v1/x", match: false},
		{name: "base prefix partial", matcher: MatchServiceVersion{Prefix: "/api"}, path: "/apix/users/v1/x", match: false},
		{name: "base prefix only", matcher: MatchServiceVersion{Prefix: "/api"}, path: "/api", match: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.matcher
			m.registry = reg
			r, repl := newRequest(t, http.MethodGet, tc.path)
			match, err := m.MatchWithError(r)
			if match != tc.match {
				t.Fatalf("match = %v, want %v (err %v)", match, tc.match, err)
			}
			var herr caddyhttp.HandlerError
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.status != 0 && (!errors.As(err, &herr) || herr.StatusCode != tc.status):
				t.Fatalf("error = %v, want status %d", err, tc.status)
			case tc.status != 0:
				if msg, _ := repl.GetString(placeholderError); !strings.Contains(msg, "unknown") {
					t.Errorf("{svc.error} = %q, want it to name what is unknown", msg)
				}
			}
			if !match {
				if _, set := repl.Get(placeholderName); set {
					t.Errorf("{svc.name} set without a match")
				}
				return
			}
			name, _ := repl.GetString(placeholderName)
			prefix, _ := repl.GetString(placeholderPrefix)
			if name != tc.service || prefix != tc.prefix {
				t.Errorf("{svc.name} = %q, {svc.prefix} = %q; want %q, %q", name, prefix, tc.service, tc.prefix)
			}
			if v := caddyhttp.GetVar(r.Context(), varName); v != tc.service {
				t.Errorf("var svc_name = %v", v)
			}
			// What Caddy's own strip_prefix leaves of the path.
			rewrite.Rewrite{StripPathPrefix: "{svc.prefix}"}.Rewrite(r, repl)
			if r.URL.Path != tc.after {
				t.Errorf("path after strip_prefix = %q, want %q", r.URL.Path, tc.after)
			}
		})
	}
}

// FuzzMatchServiceVersion checks, for any path, that the matcher does not
// panic, that what it matches is a registered service version whose names
// appear, unescaped, as the first two segments of the path as Caddy's
// strip_prefix cleans it, and that strip_prefix then leaves a path that
// is still rooted (nothing of a segment is cut off, nothing climbs out).
func FuzzMatchServiceVersion(f *testing.F) {
	for _, seed := range []string{
		"/users/v1/x", "/users/v1", "//users/v1", "/users/v1/../../orders/v1/y", "/users/%2E%2E/v1",
		"/users%2Fv1/x", "/us%65rs/v1", "/%00/v1", "/users/v1/%2e%2e/%2e%2e/x", "/a.b_c-d/1.0/",
		"/api/users/v1/x", "/./users/./v1/./x", "/users/v1x/y", "/\u00fcsers/v1", "/users/v1/..%2f..%2f",
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	reg := newTestRegistry(f, matcherServices)
	f.Fuzz(func(t *testing.T, rawPath string, withPrefix bool) {
		u, err := url.Parse("http://example.com" + rawPath)
		if err != nil || u.Host != "example.com" || u.Path == "" || u.Path[0] != '/' {
			return
		}
		m := MatchServiceVersion{registry: reg}
		if withPrefix {
			m.Prefix = "/api"
		}
		r, repl := newRequest(t, http.MethodGet, rawPath)
		match, err := m.MatchWithError(r)
		if !match {
			return
		}
		if err != nil {
			t.Fatalf("matched with an error: %v", err)
		}
		name, _ := repl.GetString(placeholderName)
		version, _ := repl.GetString(placeholderVersion)
		prefix, _ := repl.GetString(placeholderPrefix)
		if _, ok := matcherServices[registry.ServiceKey{Service: name, Version: version}]; !ok {
			t.Fatalf("matched %q %q, which is not registered", name, version)
		}
		segs := strings.Split(caddyhttp.CleanPath(u.EscapedPath(), true), "/")
		base := 1
		if withPrefix {
			base = 2
		}
		if len(segs) < base+2 {
			t.Fatalf("matched a path with too few segments: %q", rawPath)
		}
		for i, want := range []string{name, version} {
			got, err := url.PathUnescape(segs[base+i])
			if err != nil || got != want {
				t.Fatalf("path %q: segment %d is %q, but the match says %q", rawPath, base+i, segs[base+i], want)
			}
		}
		if want := m.Prefix + "/" + name + "/" + version; prefix != want {
			t.Fatalf("{svc.prefix} = %q, want %q", prefix, want)
		}
		rewrite.Rewrite{StripPathPrefix: "{svc.prefix}"}.Rewrite(r, repl)
		if !strings.HasPrefix(r.URL.Path, "/") {
			t.Fatalf("path %q: strip_prefix left %q", rawPath, r.URL.Path)
		}
	})
}

func BenchmarkMatchServiceVersion(b *testing.B) {
	reg := newTestRegistry(b, matcherServices)
	m := MatchServiceVersion{registry: reg}
	r, _ := newRequest(b, http.MethodGet, "/users/v1/list/of/things")
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := m.MatchWithError(r); !ok {
			b.Fatal("no match")
		}
	}
}
