#!/usr/bin/env bash
# Requests a load without retries loses to `caddy reload` alone: Caddy's
# plain reverse_proxy and service_proxy on the same two backends, 32
# keep-alive connections for 8 s, five forced reloads 1.2 s apart. A
# reload's old server closes its idle keep-alive connections, and a
# request the client wrote on one at that moment is lost ("connection
# closed" or "reset"); HTTP clients that retry a request on a reused
# connection that closed (browsers, Go's net/http for idempotent
# requests) never see it. Run from the repository root; ports 19019,
# 19090, 19101-19102 on 127.0.0.1 must be free.
set -euo pipefail
export GOTOOLCHAIN=local
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
go build -o "$dir/caddy" ./cmd/caddy
go build -o "$dir/backend" ./examples/backend
go build -o "$dir/load" ./bench/load
cd "$dir"
./backend -listen 127.0.0.1:19101 -name b1 >/dev/null 2>&1 &
./backend -listen 127.0.0.1:19102 -name b2 >/dev/null 2>&1 &
for kind in plain service_proxy; do
	if [ $kind = plain ]; then
		printf '{\n\tadmin 127.0.0.1:19019\n}\n:19090 {\n\treverse_proxy 127.0.0.1:19101 127.0.0.1:19102\n}\n' >Caddyfile
		path=/
	else
		printf '{\n\tadmin 127.0.0.1:19019\n\tservice_registry {\n\t\tservice users v1 127.0.0.1:19101 127.0.0.1:19102\n\t}\n}\n:19090 {\n\tservice_proxy\n}\n' >Caddyfile
		path=/users/v1/x
	fi
	./caddy run --config Caddyfile >caddy.log 2>&1 &
	c=$!
	for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:19090$path" && break; sleep 0.1; done
	./load -addr 127.0.0.1:19090 -path $path -conns 32 -duration 8s >load.json &
	l=$!
	for _ in 1 2 3 4 5; do
		sleep 1.2
		./caddy reload --config Caddyfile --address 127.0.0.1:19019 --force >/dev/null 2>&1
	done
	wait $l
	kill $c
	wait $c 2>/dev/null || true
	python3 -c 'import json,sys; d=json.load(open("load.json")); print(sys.argv[1], "requests", d["total"], "failed", d["failed"], d.get("errors", {}), d.get("statuses", {}))' $kind
done
