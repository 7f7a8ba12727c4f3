package memory

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the memory backend:
//
//	backend memory {
//		storage_key   <key>
//		poll_interval <duration>
//	}
func (m *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "storage_key":
			if m.StorageKey != "" {
				return d.Err("storage_key: specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			m.StorageKey = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "poll_interval":
			if m.PollInterval != 0 {
				return d.Err("poll_interval: specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("poll_interval: want a positive duration, got %q", d.Val())
			}
			m.PollInterval = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("memory backend: unknown subdirective %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Backend)(nil)
