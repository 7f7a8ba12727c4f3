#!/usr/bin/env bash
# Runs every test: gofmt, go vet and staticcheck checks, that the core imports nothing of
# Caddy, go test -race ./... (the etcd
# tests start their own etcd from the etcd binary on PATH), a few seconds of
# each fuzz target of service_http's own HTTP/1.1 client, the xcaddy
# build, and the quickstart demo check.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "gofmt: these files need formatting:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
# service_http's own HTTP/1.1 client watches idle connections with epoll on
# Linux only: the package, its tests included, must build elsewhere too.
for goos in darwin windows; do
	GOOS=$goos go vet ./internal/h1
done
# staticcheck at a pinned version, installed outside the repository if it
# is not there yet (scripts/staticcheck-install.sh).
staticcheck=$(./scripts/staticcheck-install.sh)
"$staticcheck" ./...
# The core, the stores' Caddy-free packages, the self-registration library
# and service_http's own HTTP/1.1 client import nothing of Caddy.
caddy_deps=$(go list -deps ./registry ./registry/balance ./selfreg ./backends/memory/memstore ./backends/etcd/etcdstore ./backends/etcd/etcdkv ./backends/zookeeper/zkstore ./backends/zookeeper/zkkv ./backends/zookeeper/zkclient ./backends/consul/consulstore ./internal/h1 | grep caddyserver || true)
if [ -n "$caddy_deps" ]; then
	echo "the Caddy-free packages import Caddy:" >&2
	echo "$caddy_deps" >&2
	exit 1
fi
# The output is kept: when a test fails, what it said (each of its log and
# error lines, cut short) is printed again at the end, after the long logs
# some tests dump, so that the end of the output names what failed.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! go test -race -count=1 -timeout 45m ./... 2>&1 | tee "$out"; then
	echo >&2
	echo "FAILED; what the failing tests said:" >&2
	awk '/^ *--- FAIL/ { on = 1; print; next }
		/^(--- |=== |FAIL|ok|PASS|panic:)/ { on = 0 }
		/^panic:|^FAIL/ { print }
		on && /^ +[^ ]+\.go:[0-9]+: / { print substr($0, 1, 300) }' "$out" >&2
	exit 1
fi
# service_http's own HTTP/1.1 client, each fuzz target briefly
# (docs/development.md, "Fuzzing for longer", says how to run one long).
for target in FuzzResponseFraming FuzzConnectionReuse; do
	go test -run '^$' -fuzz "^$target\$" -fuzztime 5s ./internal/h1
done
./scripts/xcaddy-build.sh
./examples/quickstart/run.sh --check
