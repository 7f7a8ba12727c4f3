package consul

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`consul {
		address      https://consul.example:8501
		token        {env.CONSUL_TOKEN}
		datacenter   dc2
		services     users orders
		version_tag  release=
		version_meta api_version
		wait         30s
	}`)
	var c Backend
	if err := c.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if c.Address != "https://consul.example:8501" || c.Token != "{env.CONSUL_TOKEN}" || c.Datacenter != "dc2" ||
		!slices.Equal(c.Services, []string{"users", "orders"}) || c.VersionTag != "release=" ||
		c.VersionMeta != "api_version" || c.Wait != caddy.Duration(30*time.Second) {
		t.Errorf("parsed address %q token %q datacenter %q services %q version_tag %q version_meta %q wait %v",
			c.Address, c.Token, c.Datacenter, c.Services, c.VersionTag, c.VersionMeta, time.Duration(c.Wait))
	}

	var empty Backend
	if err := empty.UnmarshalCaddyfile(caddyfile.NewTestDispenser("consul")); err != nil || empty.Address != "" || empty.Wait != 0 {
		t.Errorf("without a block: %v, address %q, wait %v: want the zero config", err, empty.Address, empty.Wait)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		line        int
		want        string
	}{
		{"argument", "consul 127.0.0.1:8500", 1, "wrong argument count"},
		{"unknown option", "consul {\n\taddr 127.0.0.1:8500\n}", 2, `consul backend: unknown subdirective "addr"`},
		{"repeated option", "consul {\n\ttoken a\n\ttoken b\n}", 3, "consul backend: token specified more than once"},
		{"missing value", "consul {\n\tdatacenter\n}", 2, "wrong argument count"},
		{"two values", "consul {\n\taddress a:1 b:2\n}", 2, "wrong argument count"},
		{"no services", "consul {\n\tservices\n}", 2, "wrong argument count"},
		{"bad wait", "consul {\n\twait soon\n}", 2, `consul backend: wait: want a duration from 1s to 10m, got "soon"`},
		{"short wait", "consul {\n\twait 100ms\n}", 2, `consul backend: wait: want a duration from 1s to 10m, got "100ms"`},
		{"long wait", "consul {\n\n\twait 1h\n}", 3, `consul backend: wait: want a duration from 1s to 10m, got "1h"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Backend
			err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			at := fmt.Sprintf("at Testfile:%d", tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), at) {
				t.Errorf("error = %v\nwant it to contain %q and end with %q", err, tc.want, at)
			}
		})
	}
}
