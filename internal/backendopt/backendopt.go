// Package backendopt reads a backend's Caddyfile block the same way for
// every backend of the service_registry app:
//
//	backend <name> {
//		<option> <value>...
//	}
//
// No argument after the backend's name, each option at most once, and
// errors that name the backend and the option, at the option's line.
package backendopt

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Block is a backend's block being read:
//
//	blk, err := backendopt.Open(d, "etcd backend")
//	if err != nil {
//		return err
//	}
//	for blk.Next() {
//		switch blk.Option() {
//		case "prefix":
//			err = blk.String(&e.Prefix)
//		default:
//			err = blk.Unknown()
//		}
//		if err != nil {
//			return err
//		}
//	}
//	return blk.Err()
type Block struct {
	d    *caddyfile.Dispenser
	name string
	seen map[string]bool
	err  error
}

// Open consumes the backend's name from d and checks that no argument
// follows it. name is how errors call the backend: "etcd backend".
func Open(d *caddyfile.Dispenser, name string) (*Block, error) {
	d.Next() // consume backend name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	return &Block{d: d, name: name, seen: map[string]bool{}}, nil
}

// Next moves to the block's next option. It returns false at the end of
// the block, and on an option given twice (Err says so).
func (b *Block) Next() bool {
	if b.err != nil || !b.d.NextBlock(0) {
		return false
	}
	opt := b.d.Val()
	if b.seen[opt] {
		b.err = b.d.Errf("%s: %s specified more than once", b.name, opt)
		return false
	}
	b.seen[opt] = true
	return true
}

// Err returns the error that ended Next early, if any.
func (b *Block) Err() error { return b.err }

// Option returns the current option's name.
func (b *Block) Option() string { return b.d.Val() }

// Unknown returns the error for an option the backend does not have.
func (b *Block) Unknown() error {
	return b.d.Errf("%s: unknown subdirective %q", b.name, b.d.Val())
}

// String reads the option's one value into dst.
func (b *Block) String(dst *string) error {
	if !b.d.NextArg() {
		return b.d.ArgErr()
	}
	*dst = b.d.Val()
	if b.d.NextArg() {
		return b.d.ArgErr()
	}
	return nil
}

// Strings reads the option's values, at least one, into dst.
func (b *Block) Strings(dst *[]string) error {
	*dst = b.d.RemainingArgs()
	if len(*dst) == 0 {
		return b.d.ArgErr()
	}
	return nil
}

// Flag sets dst for an option that takes no value.
func (b *Block) Flag(dst *bool) error {
	if b.d.NextArg() {
		return b.d.ArgErr()
	}
	*dst = true
	return nil
}

// Duration reads the option's one value, a duration that ok accepts,
// into dst; want says which durations it accepts ("a positive
// duration").
func (b *Block) Duration(dst *caddy.Duration, ok func(time.Duration) bool, want string) error {
	opt := b.Option()
	if !b.d.NextArg() {
		return b.d.ArgErr()
	}
	dur, err := caddy.ParseDuration(b.d.Val())
	if err != nil || !ok(dur) {
		return b.d.Errf("%s: %s: want %s, got %q", b.name, opt, want, b.d.Val())
	}
	*dst = caddy.Duration(dur)
	if b.d.NextArg() {
		return b.d.ArgErr()
	}
	return nil
}

// Positive accepts durations above 0.
func Positive(d time.Duration) bool { return d > 0 }
