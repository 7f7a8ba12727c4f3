package svcreg

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// The admin API answers the page at /service_registry/ and its data at
// /service_registry/status.json, read-only; the JSON API is unchanged.
func TestAdminStatusPage(t *testing.T) {
	app := &App{reg: &pooledRegistry{newTestRegistry(t, matcherServices)}, logger: zap.NewNop()}
	prev := current.Swap(app)
	t.Cleanup(func() { current.Store(prev) })

	for _, tc := range []struct {
		method, path string
		status       int
		contentType  string
		body         string
	}{
		{"GET", "/service_registry/", 200, "text/html", "<table id=\"events\">"},
		{"HEAD", "/service_registry/", 200, "text/html", ""},
		{"GET", "/service_registry/status.json", 200, "application/json", `"services"`},
		{"POST", "/service_registry/", 405, "", ""},
		{"DELETE", "/service_registry/status.json", 405, "", ""},
		{"GET", "/service_registry/services", 200, "application/json", `"synced"`},
		{"GET", "/service_registry/status.json/x", 404, "", ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			w := httptest.NewRecorder()
			err := adminAPI{}.serve(w, httptest.NewRequest(tc.method, tc.path, nil))
			status := w.Code
			if apiErr, ok := err.(caddy.APIError); ok {
				status = apiErr.HTTPStatus
			} else if err != nil {
				t.Fatal(err)
			}
			if status != tc.status {
				t.Fatalf("status %d; want %d (%v)", status, tc.status, err)
			}
			if status == 405 && w.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("405 with Allow %q; want GET, HEAD", w.Header().Get("Allow"))
			}
			if !strings.HasPrefix(w.Header().Get("Content-Type"), tc.contentType) {
				t.Errorf("content type %q; want %s", w.Header().Get("Content-Type"), tc.contentType)
			}
			if !strings.Contains(w.Body.String(), tc.body) {
				t.Errorf("body lacks %q:\n%.300s", tc.body, w.Body.String())
			}
			if tc.method == "HEAD" && w.Body.Len() != 0 {
				t.Errorf("HEAD answered a body of %d bytes", w.Body.Len())
			}
		})
	}

	w := httptest.NewRecorder()
	if err := serveStatus(w, httptest.NewRequest("GET", "/service_registry/status.json", nil), app); err != nil {
		t.Fatal(err)
	}
	var data statusData
	if err := json.Unmarshal(w.Body.Bytes(), &data); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range data.Services {
		got = append(got, fmt.Sprintf("%s %s %d", s.Name, s.Version, len(s.Endpoints)))
	}
	if want := len(matcherServices); len(got) != want || data.Traffic == nil || data.Events == nil {
		t.Errorf("status.json: services %v (want %d), traffic %v, events %v", got, want, data.Traffic, data.Events)
	}
}

// The page loads nothing from elsewhere, and fetches its data relative to
// its own URL.
func TestStatusPageSelfContained(t *testing.T) {
	page := string(statusPage)
	if m := regexp.MustCompile(`(?i)(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//`).FindString(page); m != "" {
		t.Errorf("the page refers to another site: %q", m)
	}
	if strings.Contains(page, "http://") || strings.Contains(page, "https://") {
		t.Error("the page contains an absolute URL")
	}
	if !strings.Contains(page, "new URL('status.json', location.href)") {
		t.Error("the page does not fetch status.json relative to its own URL")
	}
	for _, want := range []string{`<meta name="viewport"`, "<caption", `scope: 'col'`, `scope: 'row'`, "'in rotation'", "'out: '"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
}

// The event log keeps the last maxStatusEvents health events, newest first,
// and passes every event on.
func TestStatusEventLog(t *testing.T) {
	var l eventLog
	var passed int
	rec := l.recorder(func(string, map[string]any) { passed++ })
	rec("traffic_changed", map[string]any{"service": "users"})
	if len(l.list()) != 0 || passed != 1 {
		t.Fatalf("a traffic event: kept %v, passed %d", l.list(), passed)
	}
	for i := range maxStatusEvents + 5 {
		name := "unhealthy"
		if i%2 == 1 {
			name = "healthy"
		}
		rec(name, map[string]any{"host": fmt.Sprintf("127.0.0.1:%d", 9000+i), "service": "users", "version": "v1", "reason": "probe"})
	}
	got := l.list()
	if len(got) != maxStatusEvents || passed != maxStatusEvents+6 {
		t.Fatalf("kept %d events, passed %d; want %d, %d", len(got), passed, maxStatusEvents, maxStatusEvents+6)
	}
	newest, oldest := got[0], got[len(got)-1]
	if newest.Host != fmt.Sprintf("127.0.0.1:%d", 9000+maxStatusEvents+4) || oldest.Host != "127.0.0.1:9005" ||
		newest.Event != "unhealthy" || newest.Reason != "probe" || newest.Service != "users" || newest.Version != "v1" {
		t.Errorf("newest %+v, oldest %+v", newest, oldest)
	}
	l.recorder(nil)("healthy", map[string]any{"host": "h"}) // no next: no panic
}

// The handler answers GET and HEAD with the page or, below it, its data,
// and 405 otherwise.
func TestStatusHandler(t *testing.T) {
	h := &StatusHandler{app: &App{reg: &pooledRegistry{newTestRegistry(t, matcherServices)}, logger: zap.NewNop()}}
	for _, tc := range []struct {
		method, path string
		status       int
		contentType  string
	}{
		{"GET", "/", 200, "text/html"},
		{"GET", "/ops/status/", 200, "text/html"},
		{"GET", "/ops/status/status.json", 200, "application/json"},
		{"HEAD", "/status.json", 200, "application/json"},
		{"POST", "/", 405, ""},
		{"PUT", "/status.json", 405, ""},
	} {
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, nil), nil)
		status := w.Code
		var herr caddyhttp.HandlerError
		if errors.As(err, &herr) {
			status = herr.StatusCode
		} else if err != nil {
			t.Fatal(err)
		}
		if status != tc.status || !strings.HasPrefix(w.Header().Get("Content-Type"), tc.contentType) {
			t.Errorf("%s %s: %d %q; want %d %s", tc.method, tc.path, status, w.Header().Get("Content-Type"), tc.status, tc.contentType)
		}
		if status == http.StatusMethodNotAllowed && w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow %q", tc.method, tc.path, w.Header().Get("Allow"))
		}
	}
}

// The directive takes no arguments and no block.
func TestStatusHandlerCaddyfile(t *testing.T) {
	for input, want := range map[string]string{
		"service_registry_status":           "",
		"service_registry_status extra":     "wrong argument count",
		"service_registry_status {\n\tx\n}": `takes no block, got subdirective "x"`,
	} {
		err := new(StatusHandler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if (err == nil) != (want == "") || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v; want %q", input, err, want)
		}
	}
}
