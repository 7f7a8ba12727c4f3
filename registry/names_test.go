package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/internal/input"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"users", true},
		{"v1", true},
		{"Users_2.beta-1", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{".", false},
		{"..", false},
		{"...", false},
		{".hidden", true},
		{"a/b", false},
		{"a b", false},
		{"ünï", false},
		{"a%2Fb", false},
		{"a\x00b", false},
	} {
		t.Run(fmt.Sprintf("%q", tc.name), func(t *testing.T) {
			if got := ValidName(tc.name); got != tc.ok {
				t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.ok)
			}
		})
	}
}

func TestValidateFilter(t *testing.T) {
	for _, tc := range []struct {
		key  ServiceKey
		want string // "" = valid
	}{
		{ServiceKey{}, ""},
		{ServiceKey{"users", ""}, ""},
		{ServiceKey{"users", "v1"}, ""},
		{ServiceKey{"", "v1"}, "a version needs a service"},
		{ServiceKey{"us/ers", ""}, `invalid service name "us/ers"`},
		{ServiceKey{"users", "v 1"}, `invalid version name "v 1"`},
	} {
		err := tc.key.ValidateFilter()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid)) {
			t.Errorf("%+v: %v, want %q", tc.key, err, tc.want)
		}
	}
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "127.0.0.1:9091", want: "127.0.0.1:9091"},
		{in: "http://127.0.0.1:9091", want: "127.0.0.1:9091"},
		{in: "HTTP://Backend.Local:80", want: "backend.local:80"},
		{in: "[::1]:9091", want: "[::1]:9091"},
		{in: "[::ffff:127.0.0.1]:9091", want: "127.0.0.1:9091"},
		{in: "localhost:08080", want: "localhost:8080"},
		{in: "my_host.internal:1", want: "my_host.internal:1"},
		{in: "host:65535", want: "host:65535"},
		{in: "", wantErr: "want host:port"},
		{in: "127.0.0.1", wantErr: "want host:port"},
		{in: "127.0.0.1:0", wantErr: "port must be"},
		{in: "127.0.0.1:65536", wantErr: "port must be"},
		{in: "127.0.0.1:http", wantErr: "port must be"},
		{in: "127.0.0.1:-1", wantErr: "port must be"},
		{in: ":9091", wantErr: "bad host name"},
		{in: "https://127.0.0.1:9091", wantErr: "transport http { tls }"},
		{in: "ftp://127.0.0.1:21", wantErr: "unsupported scheme"},
		{in: "127.0.0.1:9091/path", wantErr: "want host:port"},
		{in: "user@127.0.0.1:9091", wantErr: "want host:port"},
		{in: "a b:80", wantErr: "want host:port"},
		{in: "-bad.host:80", wantErr: "bad host name"},
		{in: "bad..host:80", wantErr: "bad host name"},
		{in: "[fe80::1%eth0]:80", wantErr: "zones"},
		{in: "::1:80", wantErr: "want host:port"},
		{in: "127.0.0.1:+80", wantErr: "port must be"},
		{in: "127.0.0.1: 80", wantErr: "want host:port"},
		{in: "999.1.1.1:80", wantErr: "not an IP address"},
		{in: "1.2.3.4.5:80", wantErr: "not an IP address"},
		{in: "01.2.3.4:80", wantErr: "not an IP address"},
		{in: "host.123:80", wantErr: "not an IP address"},
		{in: "123host.example:80", want: "123host.example:80"},
		{in: "3com.com:80", want: "3com.com:80"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseAddress(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseAddress(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not match ErrInvalid", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestEndpointNormalize(t *testing.T) {
	for _, tc := range []struct {
		ep      Endpoint
		want    int // weight
		wantErr string
	}{
		{ep: Endpoint{Address: "127.0.0.1:1"}, want: 1},
		{ep: Endpoint{Address: "127.0.0.1:1", Weight: 1}, want: 1},
		{ep: Endpoint{Address: "127.0.0.1:1", Weight: 100}, want: 100},
		{ep: Endpoint{Address: "127.0.0.1:1", Weight: 101}, wantErr: "invalid weight 101"},
		{ep: Endpoint{Address: "127.0.0.1:1", Weight: Drained}, want: 0},
		{ep: Endpoint{Address: "127.0.0.1:1", Weight: -2}, wantErr: "invalid weight -2"},
		{ep: Endpoint{Address: "127.0.0.1:1", TTL: Duration(500 * time.Millisecond)}, wantErr: "invalid ttl"},
		{ep: Endpoint{Address: "127.0.0.1:1", TTL: Duration(25 * time.Hour)}, wantErr: "invalid ttl"},
		{ep: Endpoint{Address: "127.0.0.1:1", Metadata: map[string]string{"": "x"}}, wantErr: "metadata"},
	} {
		got, err := tc.ep.Normalize()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
				t.Errorf("%+v: %v, want an ErrInvalid naming %q", tc.ep, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.Weight.Int() != tc.want {
			t.Errorf("%+v: %+v, %v; want weight %d", tc.ep, got, err, tc.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1s", time.Second, true},
		{"1.5m", 90 * time.Second, true},
		{"1d", 24 * time.Hour, true},
		{"1d12h", 36 * time.Hour, true},
		{"1h1d", 25 * time.Hour, true},
		{"0.5d", 12 * time.Hour, true},
		{"d", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	} {
		got, err := parseDuration(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v (ok %v)", tc.in, got, err, tc.want, tc.ok)
		}
	}
	var d Duration
	for in, want := range map[string]time.Duration{`"2s"`: 2 * time.Second, `1000`: 1000, `"1d"`: 24 * time.Hour} {
		if err := d.UnmarshalJSON([]byte(in)); err != nil || time.Duration(d) != want {
			t.Errorf("UnmarshalJSON(%s) = %v, %v; want %v", in, time.Duration(d), err, want)
		}
	}
	if err := d.UnmarshalJSON([]byte(`"soon"`)); err == nil {
		t.Error(`UnmarshalJSON("soon") succeeded`)
	}
}

// TestMaxNameLen: the limit the package states is the one names are
// checked against.
func TestMaxNameLen(t *testing.T) {
	if MaxNameLen != input.MaxNameLen {
		t.Errorf("MaxNameLen is %d, but names are checked against %d", MaxNameLen, input.MaxNameLen)
	}
}
