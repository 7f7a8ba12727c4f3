package etcd

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/svcreg/caddy-svcreg/internal/backendopt"
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
	blk, err := backendopt.Open(d, "etcd backend")
	if err != nil {
		return err
	}
	for blk.Next() {
		switch blk.Option() {
		case "endpoints":
			err = blk.Strings(&e.Endpoints)
		case "prefix":
			err = blk.String(&e.Prefix)
		case "username":
			err = blk.String(&e.Username)
		case "password":
			err = blk.String(&e.Password)
		case "dial_timeout":
			err = blk.Duration(&e.DialTimeout, backendopt.Positive, "a positive duration")
		case "tls":
			err = e.unmarshalTLS(d)
		default:
			err = blk.Unknown()
		}
		if err != nil {
			return err
		}
	}
	return blk.Err()
}

// unmarshalTLS reads the tls block.
func (e *Backend) unmarshalTLS(d *caddyfile.Dispenser) error {
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
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Backend)(nil)
