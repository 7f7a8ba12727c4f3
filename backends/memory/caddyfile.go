package memory

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/svcreg/caddy-svcreg/internal/backendopt"
)

// UnmarshalCaddyfile sets up the memory backend:
//
//	backend memory {
//		storage_key   <key>
//		poll_interval <duration>
//	}
func (m *Backend) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	blk, err := backendopt.Open(d, "memory backend")
	if err != nil {
		return err
	}
	for blk.Next() {
		switch blk.Option() {
		case "storage_key":
			err = blk.String(&m.StorageKey)
		case "poll_interval":
			err = blk.Duration(&m.PollInterval, backendopt.Positive, "a positive duration")
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
