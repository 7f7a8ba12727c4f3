package consul

import (
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/svcreg/caddy-svcreg/internal/backendopt"
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
	blk, err := backendopt.Open(d, "consul backend")
	if err != nil {
		return err
	}
	for blk.Next() {
		switch blk.Option() {
		case "services":
			err = blk.Strings(&c.Services)
		case "address":
			err = blk.String(&c.Address)
		case "token":
			err = blk.String(&c.Token)
		case "datacenter":
			err = blk.String(&c.Datacenter)
		case "version_tag":
			err = blk.String(&c.VersionTag)
		case "version_meta":
			err = blk.String(&c.VersionMeta)
		case "wait":
			err = blk.Duration(&c.Wait, func(d time.Duration) bool { return d >= minWait && d <= maxWait }, "a duration from 1s to 10m")
		default:
			err = blk.Unknown()
		}
		if err != nil {
			return err
		}
	}
	return blk.Err()
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Backend)(nil)
