package consul

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the consul backend:
//
//	backend consul {
//		address      <host:port or URL>
//		token        <ACL token>
//		datacenter   <name>
//		services     <name>...
//		version_tag  <tag prefix>
//		version_meta <metadata key>
//		wait         <duration>
//	}
//
// Values may be placeholders such as {env.CONSUL_TOKEN}.
func (c *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("consul backend: %s specified more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "services":
			c.Services = d.RemainingArgs()
			if len(c.Services) == 0 {
				return d.ArgErr()
			}
		case "address", "token", "datacenter", "version_tag", "version_meta":
			if !d.NextArg() {
				return d.ArgErr()
			}
			*map[string]*string{
				"address": &c.Address, "token": &c.Token, "datacenter": &c.Datacenter,
				"version_tag": &c.VersionTag, "version_meta": &c.VersionMeta,
			}[opt] = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "wait":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur < minWait || dur > maxWait {
				return d.Errf("consul backend: wait: want a duration from 1s to 10m, got %q", d.Val())
			}
			c.Wait = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("consul backend: unknown subdirective %q", opt)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Backend)(nil)
