package etcdkv

import (
	"errors"
	"strings"
	"testing"

	"github.com/svcreg/caddy-svcreg/registry"
)

func TestPrefix(t *testing.T) {
	for in, want := range map[string]string{"": "/svcreg/", "/svcreg/": "/svcreg/", "/a/b": "/a/b/"} {
		if got := Prefix(in); got != want {
			t.Errorf("Prefix(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEncodeDecode checks that what Encode writes, Decode reads back the
// same, with the address in canonical form whatever form it was given in.
func TestEncodeDecode(t *testing.T) {
	users := registry.ServiceKey{Service: "users", Version: "v1"}
	for _, tc := range []struct {
		ep      registry.Endpoint
		key     string
		value   string
		wantErr string
	}{
		{ep: registry.Endpoint{Address: "127.0.0.1:9091"}, key: "/svcreg/users/v1/127.0.0.1:9091", value: `{"weight":1}`},
		{ep: registry.Endpoint{Address: "http://127.0.0.1:9091"}, key: "/svcreg/users/v1/127.0.0.1:9091", value: `{"weight":1}`},
		{ep: registry.Endpoint{Address: "LocalHost:09091", Weight: 2}, key: "/svcreg/users/v1/localhost:9091", value: `{"weight":2}`},
		{ep: registry.Endpoint{Address: "[::1]:80", Metadata: map[string]string{"zone": "a"}}, key: "/svcreg/users/v1/[::1]:80", value: `{"weight":1,"metadata":{"zone":"a"}}`},
		{ep: registry.Endpoint{Address: "127.0.0.1:9092", Weight: registry.Drained}, key: "/svcreg/users/v1/127.0.0.1:9092", value: `{"weight":0}`},
		{ep: registry.Endpoint{Address: "127.0.0.1"}, wantErr: "want host:port"},
		{ep: registry.Endpoint{Address: "https://127.0.0.1:1"}, wantErr: "tls"},
		{ep: registry.Endpoint{Address: "127.0.0.1:1", Weight: 101}, wantErr: "weight"},
	} {
		k, v, err := Encode(DefaultPrefix, users, tc.ep)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("Encode(%+v) = %q, %v; want an ErrInvalid naming %q", tc.ep, k, err, tc.wantErr)
			}
			continue
		}
		if err != nil || k != tc.key || v != tc.value {
			t.Errorf("Encode(%+v) = %q %q %v; want %q %q", tc.ep, k, v, err, tc.key, tc.value)
			continue
		}
		key, ep, err := Decode(DefaultPrefix, []byte(k), []byte(v))
		if want, _ := tc.ep.Normalize(); err != nil || key != users || ep.Address != strings.TrimPrefix(tc.key, "/svcreg/users/v1/") || ep.Weight != want.Weight {
			t.Errorf("Decode(%q, %q) = %v %+v %v", k, v, key, ep, err)
		}
	}
	if _, _, err := Encode(DefaultPrefix, registry.ServiceKey{Service: "us/ers", Version: "v1"}, registry.Endpoint{Address: "127.0.0.1:1"}); err == nil {
		t.Error("Encode accepted a bad service name")
	}
}

func TestDecodeSkips(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       error
	}{
		{"/svcreg/users/v1/127.0.0.1:09093", "{}", ErrNotEndpointKey},
		{"/svcreg/users/v1/not-an-address", "{}", ErrNotEndpointKey},
		{"/svcreg/bad/key", "{}", ErrNotEndpointKey},
		{"/svcreg/us$ers/v1/127.0.0.1:1", "{}", ErrNotEndpointKey},
		{"/other/users/v1/127.0.0.1:1", "{}", ErrNotEndpointKey},
		{"/svcreg/users/v1/127.0.0.1:1", `{"weight":`, ErrBadValue},
		{"/svcreg/users/v1/127.0.0.1:1", `{"weight":1000}`, registry.ErrInvalid},
		{"/svcreg/users/v1/127.0.0.1:1", `{"weight":-1}`, registry.ErrInvalid},
	} {
		if _, _, err := Decode(DefaultPrefix, []byte(tc.key), []byte(tc.value)); !errors.Is(err, tc.want) {
			t.Errorf("Decode(%q, %q): %v, want %v", tc.key, tc.value, err, tc.want)
		}
	}
	if _, ep, err := Decode(DefaultPrefix, []byte("/svcreg/users/v1/127.0.0.1:1"), nil); err != nil || ep.Weight != 1 {
		t.Errorf("an empty value: %+v, %v; want the defaults", ep, err)
	}
}
