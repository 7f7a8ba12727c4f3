package svcreg

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
)

// TestNoBodyHandler sends real requests to a server that runs
// NoBodyHandler: the next handler gets a nil Body exactly when the request
// has no body, reads any body whole, and the body is given back after.
func TestNoBodyHandler(t *testing.T) {
	type seen struct {
		nilBody  bool
		body     string
		restored bool
		err      error
	}
	results := make(chan seen, 1)
	errNext := errors.New("next failed")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s seen
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			s.nilBody = r.Body == nil
			if r.Body != nil {
				b, err := io.ReadAll(r.Body)
				if err != nil {
					return err
				}
				s.body = string(b)
			}
			return errNext
		})
		s.err = NoBodyHandler{}.ServeHTTP(w, r, next)
		s.restored = r.Body != nil
		results <- s
	}))
	defer srv.Close()

	for _, tc := range []struct {
		name, method string
		body         io.Reader
		length       int64 // -1: chunked
		wantNil      bool
		wantBody     string
	}{
		{name: "GET without body", method: "GET", wantNil: true},
		{name: "DELETE without body", method: "DELETE", wantNil: true},
		{name: "POST with Content-Length 0", method: "POST", body: strings.NewReader(""), wantNil: true},
		{name: "POST with body", method: "POST", body: strings.NewReader("abc"), length: 3, wantBody: "abc"},
		{name: "POST chunked", method: "POST", body: io.MultiReader(strings.NewReader("chunked body")), length: -1, wantBody: "chunked body"},
		{name: "GET with body", method: "GET", body: strings.NewReader("q=1"), length: 3, wantBody: "q=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+"/users/v1/x", tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if tc.body != nil {
				req.ContentLength = tc.length
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			s := <-results
			if s.nilBody != tc.wantNil {
				t.Errorf("next handler got a nil body: %v, want %v", s.nilBody, tc.wantNil)
			}
			if s.body != tc.wantBody {
				t.Errorf("next handler read %q, want %q", s.body, tc.wantBody)
			}
			if !s.restored {
				t.Errorf("the request's body is still nil after the handler returned")
			}
			if !errors.Is(s.err, errNext) {
				t.Errorf("handler returned %v, want the next handler's error", s.err)
			}
		})
	}
}

// stripPrefix leaves every path exactly as the rewrite handler's
// strip_prefix {svc.prefix} does: Path, RawPath and RequestURI.
func TestStripPrefixAsRewrite(t *testing.T) {
	paths := []string{
		"/users/v1/list", "/users/v1/list/", "/users/v1/", "/users/v1", "/users/v1/a?x=1&y=%20",
		"/users/v1/a%2Fb", "/users/v1/a%20b", "/users/v1/a b", "/users/v1//x", "/users/v1/./x",
		"/users/v1/../v2/x", "/users/v1/x/..", "/Users/V1/x", "/us%65rs/v1/x", "/users/v1/%7Ex",
		"/users/v1/~x", "/users/v1/ü", "/users/v1/a;b", "/users/v1x/y", "/users/v1/.hidden",
		"/api/users/v1/x", "/users/v1/%41x", "/users/v1/x%3F",
	}
	for _, prefix := range []string{"/users/v1", "/users", "/api/users/v1"} {
		for _, raw := range paths {
			mine, repl := newRequest(t, http.MethodGet, raw)
			theirs, repl2 := newRequest(t, http.MethodGet, raw)
			mine.RequestURI, theirs.RequestURI = raw, raw
			stripPrefix(mine, repl, prefix)
			repl2.Set(placeholderPrefix, prefix)
			rewrite.Rewrite{StripPathPrefix: "{" + placeholderPrefix + "}"}.Rewrite(theirs, repl2)
			if mine.URL.Path != theirs.URL.Path || mine.URL.RawPath != theirs.URL.RawPath || mine.RequestURI != theirs.RequestURI {
				t.Errorf("%s minus %s: Path %q RawPath %q RequestURI %q; rewrite gives %q %q %q", raw, prefix,
					mine.URL.Path, mine.URL.RawPath, mine.RequestURI, theirs.URL.Path, theirs.URL.RawPath, theirs.RequestURI)
			}
		}
	}
}
