package backendopt

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

type opts struct {
	one   string
	many  []string
	flag  bool
	after caddy.Duration
}

func read(input string) (opts, error) {
	var o opts
	blk, err := Open(caddyfile.NewTestDispenser(input), "test backend")
	if err != nil {
		return o, err
	}
	for blk.Next() {
		switch blk.Option() {
		case "one":
			err = blk.String(&o.one)
		case "many":
			err = blk.Strings(&o.many)
		case "flag":
			err = blk.Flag(&o.flag)
		case "after":
			err = blk.Duration(&o.after, Positive, "a positive duration")
		default:
			err = blk.Unknown()
		}
		if err != nil {
			return o, err
		}
	}
	return o, blk.Err()
}

func TestBlock(t *testing.T) {
	o, err := read("test {\n\tone a\n\tmany b c\n\tflag\n\tafter 2s\n}")
	if err != nil {
		t.Fatal(err)
	}
	if o.one != "a" || strings.Join(o.many, ",") != "b,c" || !o.flag || o.after != caddy.Duration(2*time.Second) {
		t.Errorf("read %+v", o)
	}
	for _, c := range []struct{ name, input, want string }{
		{"argument after the name", "test x {\n}", "wrong argument count"},
		{"twice", "test {\n\tone a\n\tone b\n}", "test backend: one specified more than once, at Testfile:3"},
		{"unknown", "test {\n\ttwo a\n}", `test backend: unknown subdirective "two", at Testfile:2`},
		{"no value", "test {\n\tone\n}", "wrong argument count"},
		{"two values", "test {\n\tone a b\n}", "wrong argument count"},
		{"empty list", "test {\n\tmany\n}", "wrong argument count"},
		{"flag with a value", "test {\n\tflag yes\n}", "wrong argument count"},
		{"bad duration", "test {\n\tafter soon\n}", `test backend: after: want a positive duration, got "soon", at Testfile:2`},
		{"zero duration", "test {\n\tafter 0s\n}", `test backend: after: want a positive duration, got "0s"`},
	} {
		_, err := read(c.input)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error with %q", c.name, err, c.want)
		}
	}
}
