package zkkv

import (
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry"
)

func TestEncodeDecode(t *testing.T) {
	l, err := Layout{}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	key := registry.ServiceKey{Service: "users", Version: "v1"}
	p, data, err := l.Encode(key, registry.Endpoint{Address: "http://127.0.0.1:09091", Weight: 3, Metadata: map[string]string{"zone": "a"}}, true, time.UnixMilli(1700000000000))
	if err != nil {
		t.Fatal(err)
	}
	if p != "/services/users/v1@127.0.0.1:9091" || !strings.Contains(string(data), `"serviceType":"DYNAMIC"`) || !strings.Contains(string(data), `"port":9091`) {
		t.Errorf("encoded %s %s", p, data)
	}
	gotKey, ep, err := l.Decode(p, data)
	if err != nil || gotKey != key || ep.Address != "127.0.0.1:9091" || ep.Weight != 3 || ep.Metadata["zone"] != "a" {
		t.Errorf("decoded %v %+v %v", gotKey, ep, err)
	}
	// a drained endpoint (weight 0) stays drained; the default weight is
	// not written
	for _, w := range []registry.Weight{registry.Drained, 0} {
		p, data, err := l.Encode(key, registry.Endpoint{Address: "127.0.0.1:9092", Weight: w}, true, time.UnixMilli(1))
		if err != nil {
			t.Fatal(err)
		}
		if _, ep, err := l.Decode(p, data); err != nil || ep.Weight.Int() != w.Int() || strings.Contains(string(data), `"weight"`) != (w == registry.Drained) {
			t.Errorf("weight %d: encoded %s, decoded %+v %v", w, data, ep, err)
		}
	}
	// what Curator writes, with its payload class
	curator := `{"name":"users","id":"b1","address":"::1","port":null,"sslPort":8443,"payload":{"@class":"x.Details","version":"v2"},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}`
	if k, ep, err := l.Decode("/services/users/b1", []byte(curator)); err != nil || k.Version != "v2" || ep.Address != "[::1]:8443" || ep.Metadata != nil {
		t.Errorf("Curator's node: %v %+v %v", k, ep, err)
	}
	levels, _ := Layout{Base: "/reg/", VersionLevel: true}.Normalize()
	if k, _, err := levels.Decode("/reg/users/v3/x", []byte(`{"address":"127.0.0.1","port":1}`)); err != nil || k.Version != "v3" {
		t.Errorf("version level: %v %v", k, err)
	}
	for _, tc := range []struct{ path, data, want string }{
		{"/services/users", `{}`, "not an instance node"},
		{"/other/users/x", `{}`, "not an instance node"},
		{"/services/users/x", `{"address":"127.0.0.1","port":1}`, `no "version" string field`},
		{"/services/users/x", `{"address":"127.0.0.1","port":1,"payload":"v1"}`, "want a JSON object"},
		{"/services/users/x", `{"payload":{"version":"v1"}}`, "no address or port"},
		{"/services/users/x", `{"address":"127.0.0.1","port":70000,"payload":{"version":"v1"}}`, "port"},
		{"/services/users/x", `{"address":"127.0.0.1","port":1,"payload":{"version":"v/1"}}`, "invalid version name"},
		{"/services/us$rs/x", `{"address":"127.0.0.1","port":1,"payload":{"version":"v1"}}`, "invalid service name"},
		{"/services/users/x", `{"address":"127.0.0.1","port":1,"payload":{"version":"v1","weight":1.5}}`, "weight"},
		{"/services/users/x", `nope`, "instance JSON"},
	} {
		if _, _, err := l.Decode(tc.path, []byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: %v; want an error naming %q", tc.path, tc.data, err, tc.want)
		}
	}
	if _, err := (Layout{Base: "services"}).Normalize(); err == nil {
		t.Error("a base path without a leading / was accepted")
	}
}
