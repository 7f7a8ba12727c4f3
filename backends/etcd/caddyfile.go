package etcd

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the etcd backend:
//
//	backend etcd {
//		endpoints    <host:port or URL>...
//		prefix       <key prefix>
//		dial_timeout <duration>
//		username     <name>
//		password     <password>
//		tls {
//			ca          <PEM file>
//			cert        <PEM file>
//			key         <PEM file>
//			server_name <name>
//		}
//	}
//
// Values may be placeholders such as {env.ETCD_PASSWORD}.
func (e *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("etcd backend: %s specified more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "endpoints":
			e.Endpoints = d.RemainingArgs()
			if len(e.Endpoints) == 0 {
				return d.ArgErr()
			}
		case "prefix", "username", "password":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch opt {
			case "prefix":
				e.Prefix = d.Val()
			case "username":
				e.Username = d.Val()
			default:
				e.Password = d.Val()
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "dial_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("etcd backend: dial_timeout: want a positive duration, got %q", d.Val())
			}
			e.DialTimeout = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			e.TLS = new(TLS)
			for d.NextBlock(1) {
				field := map[string]*string{"ca": &e.TLS.CA, "cert": &e.TLS.Cert, "key": &e.TLS.Key, "server_name": &e.TLS.ServerName}[d.Val()]
				if field == nil {
					return d.Errf("etcd backend: tls: unknown subdirective %q", d.Val())
				}
				if *field != "" {
					return d.Errf("etcd backend: tls: %s specified more than once", d.Val())
				}
				if !d.NextArg() {
					return d.ArgErr()
				}
				*field = d.Val()
				if d.NextArg() {
					return d.ArgErr()
				}
			}
		default:
			return d.Errf("etcd backend: unknown subdirective %q", opt)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Backend)(nil)
