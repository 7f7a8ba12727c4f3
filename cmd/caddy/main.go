// Command caddy is Caddy with its standard modules and the svcreg plugin:
// what `xcaddy build --with github.com/svcreg/caddy-svcreg` produces.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/svcreg/caddy-svcreg"
)

func main() {
	caddycmd.Main()
}
