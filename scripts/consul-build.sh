#!/usr/bin/env bash
# Builds the Consul agent the Consul backend's tests run against, once, into
# a cache directory outside the repository, and prints the binary's path.
# A binary already there is reused.
#
# The version is v1.16.1, the last Consul release under the MPL-2.0 (later
# ones are under the BUSL). Debian does not package Consul, so it is built
# from its Go module: the module proxy serves github.com/hashicorp/consul,
# whose go.mod replaces its own submodules with relative paths that a module
# download does not contain; without that replace block the pinned requires
# of those submodules come from the proxy. The first build takes about ten
# minutes on two cores.
#
# SVCREG_CACHE sets the cache directory (default: ~/.cache/svcreg).
set -euo pipefail
export GOTOOLCHAIN=local

version=v1.16.1
cache=${SVCREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/svcreg}
bin="$cache/consul-$version/consul"
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache/consul-$version"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

dir=$(cd "$work" && go mod download -json "github.com/hashicorp/consul@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
	echo "consul-build: could not download github.com/hashicorp/consul@$version" >&2
	exit 1
fi
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
# Drop the replace (...) block: its targets are directories of Consul's own
# repository, absent from the module download.
sed -i '/^replace (/,/^)/d' "$work/src/go.mod"
(cd "$work/src" && GOFLAGS=-mod=mod go build -trimpath -o "$bin.tmp" .) >&2
mv "$bin.tmp" "$bin"
"$bin" version >&2
echo "$bin"
