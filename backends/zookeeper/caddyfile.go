package zookeeper

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/svcreg/caddy-svcreg/internal/backendopt"
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
	blk, err := backendopt.Open(d, "zookeeper backend")
	if err != nil {
		return err
	}
	for blk.Next() {
		switch blk.Option() {
		case "servers":
			err = blk.Strings(&b.Servers)
		case "base_path":
			err = blk.String(&b.BasePath)
		case "version_field":
			err = blk.String(&b.VersionField)
		case "weight_field":
			err = blk.String(&b.WeightField)
		case "version_level":
			err = blk.Flag(&b.VersionLevel)
		case "session_timeout":
			err = blk.Duration(&b.SessionTimeout, backendopt.Positive, "a positive duration")
		case "write_timeout":
			err = blk.Duration(&b.WriteTimeout, backendopt.Positive, "a positive duration")
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
