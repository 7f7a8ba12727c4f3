package zookeeper

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the ZooKeeper backend:
//
//	backend zookeeper {
//		servers         <host:port>...
//		base_path       <path>
//		version_field   <payload field>
//		version_level
//		weight_field    <payload field>
//		session_timeout <duration>
//		write_timeout   <duration>
//	}
//
// Values may be placeholders such as {env.ZK_SERVERS}.
func (b *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("zookeeper backend: %s specified more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "servers":
			b.Servers = d.RemainingArgs()
			if len(b.Servers) == 0 {
				return d.ArgErr()
			}
		case "base_path", "version_field", "weight_field":
			if !d.NextArg() {
				return d.ArgErr()
			}
			*map[string]*string{"base_path": &b.BasePath, "version_field": &b.VersionField, "weight_field": &b.WeightField}[opt] = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "version_level":
			if d.NextArg() {
				return d.ArgErr()
			}
			b.VersionLevel = true
		case "session_timeout", "write_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("zookeeper backend: %s: want a positive duration, got %q", opt, d.Val())
			}
			if opt == "session_timeout" {
				b.SessionTimeout = caddy.Duration(dur)
			} else {
				b.WriteTimeout = caddy.Duration(dur)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("zookeeper backend: unknown subdirective %q", opt)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Backend)(nil)
