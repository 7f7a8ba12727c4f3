#!/usr/bin/env bash
# Installs staticcheck, at a pinned version, once, into a cache directory
# outside the repository, and prints the binary's path. A binary already
# there is reused. scripts/test.sh runs it on every package; .ci/run
# installs it ahead.
#
# v0.8.2 (staticcheck 2026.2.2) is the release that builds with and
# understands Go 1.26. Its checks are staticcheck's defaults; a finding
# fails the test run.
#
# SVCREG_CACHE sets the cache directory (default: ~/.cache/svcreg).
set -euo pipefail
export GOTOOLCHAIN=local

version=v0.8.2
cache=${SVCREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/svcreg}
dir="$cache/staticcheck-$version"
bin="$dir/staticcheck"
if [ -x "$bin" ] && "$bin" -version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi
mkdir -p "$dir"
# Outside the repository, so that its module is not this one.
(cd "$dir" && GOBIN="$dir" go install "honnef.co/go/tools/cmd/staticcheck@$version") >&2
echo "$bin"
