package svcreg

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
)

// racingRegistry is a registry where another change deletes the version's
// endpoint right after each add is applied.
type racingRegistry struct{ *registry.Registry }

func (r racingRegistry) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	if err := r.Registry.Add(ctx, key, ep); err != nil {
		return err
	}
	_, err := r.Registry.Delete(ctx, key, ep.Address)
	return err
}

// A POST whose add was applied and then undone by a racing DELETE says it
// added the endpoint, not that the version is unknown.
func TestAddRacingDelete(t *testing.T) {
	reg := racingRegistry{newTestRegistry(t, nil)}
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/service_registry/services/users/v1", strings.NewReader(`{"address":"127.0.0.1:9091"}`))
	if err := addEndpoint(w, r, reg, key); err != nil {
		t.Fatalf("add: %v", err)
	}
	if w.Code != http.StatusCreated || !strings.Contains(w.Body.String(), `"added": true`) {
		t.Errorf("add undone by a racing delete: %d %s; want 201 saying it was added", w.Code, w.Body.String())
	}
}

// checkJSONObject refuses what encoding/json would let through.
func TestCheckJSONObject(t *testing.T) {
	for body, want := range map[string]string{
		`{"address":"a:1"}`:                              "",
		`{"address":"a:1","metadata":{"z":"a"}}`:         "",
		`{"Address":"a:1"}`:                              `unknown field "Address"`,
		`{"address":"a:1","address":"b:1"}`:              `"address" given twice`,
		`{"address":"a:1","metadata":{"z":"a","z":"b"}}`: `"z" given twice`,
		`"a:1"`:       "want a JSON object",
		`{"address":`: "EOF",
	} {
		err := checkJSONObject([]byte(body), "address", "metadata")
		if (err == nil) != (want == "") || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", body, err, want)
		}
	}
}

// PUT and DELETE of a traffic policy emit traffic_changed; a refused PUT
// emits nothing and changes nothing.
func TestTrafficEvents(t *testing.T) {
	reg := newTestRegistry(t, matcherServices)
	var events []string
	app := &App{reg: &pooledRegistry{reg}, logger: zap.NewNop(), emit: func(name string, data map[string]any) {
		events = append(events, name+" "+data["service"].(string)+" "+data["change"].(string))
	}}
	do := func(method, body string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(method, "/service_registry/traffic/users", strings.NewReader(body))
		if err := serveTraffic(w, r, app, []string{"users"}); err != nil {
			if apiErr, ok := err.(caddy.APIError); ok {
				w.Code = apiErr.HTTPStatus
			}
		}
		return w
	}
	if w := do(http.MethodPut, `{"split":{"v1":1,"v9":1}}`); w.Code != http.StatusBadRequest || len(events) != 0 {
		t.Fatalf("a bad PUT: %d, events %v", w.Code, events)
	}
	if w := do(http.MethodPut, `{"split":{"v1":1,"v2":1}}`); w.Code != http.StatusOK {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	if w := do(http.MethodDelete, ``); w.Code != http.StatusOK {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	if len(events) != 2 || events[0] != "traffic_changed users set" || events[1] != "traffic_changed users deleted" {
		t.Errorf("events %v", events)
	}
}
