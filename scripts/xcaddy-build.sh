#!/usr/bin/env bash
# Builds Caddy with this plugin the way users do, with xcaddy, from the
# local checkout, and checks that the binary carries every svcreg module.
# Installs xcaddy v0.4.5 first if it is missing (the module proxy refuses
# @latest for xcaddy on some machines; the pinned version works).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local

xcaddy=$(command -v xcaddy || true)
if [ -z "$xcaddy" ]; then
	xcaddy="$(go env GOPATH)/bin/xcaddy"
	if [ ! -x "$xcaddy" ]; then
		tmp=$(mktemp -d)
		(cd "$tmp" && go mod init x >/dev/null 2>&1 &&
			go get github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5 &&
			go build -o "$xcaddy" github.com/caddyserver/xcaddy/cmd/xcaddy)
		rm -rf "$tmp"
	fi
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Without @v0.0.0 xcaddy asks the module proxy for the unpublished module.
"$xcaddy" build v2.11.9 --output "$out/caddy" --with "github.com/svcreg/caddy-svcreg@v0.0.0=$PWD"

modules=$("$out/caddy" list-modules)
for m in service_registry service_registry.backends.memory admin.api.service_registry; do
	if ! grep -qx "$m" <<<"$modules"; then
		echo "xcaddy build: module $m missing from the binary" >&2
		exit 1
	fi
done
echo "xcaddy build: ok ($("$out/caddy" version))"
