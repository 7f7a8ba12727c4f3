#!/usr/bin/env bash
# Runs the quickstart demo: builds Caddy with the plugin (./bin/caddy) and
# the demo backend, starts three backends on 127.0.0.1:9091-9093 and Caddy
# on :9090 (admin API on localhost:2019) with examples/quickstart/Caddyfile.
# Ctrl-C stops everything.
#
#   ./examples/quickstart/run.sh           run until Ctrl-C
#   ./examples/quickstart/run.sh --check   start, try a few requests, stop
set -euo pipefail
cd "$(dirname "$0")/../.."
export GOTOOLCHAIN=local

mkdir -p bin
echo "building bin/caddy and bin/backend..."
go build -o bin/caddy ./cmd/caddy
go build -o bin/backend ./examples/backend

# Keep the demo's storage (admin-API changes) apart from the user's own Caddy.
export XDG_DATA_HOME="$PWD/bin/demo-data" XDG_CONFIG_HOME="$PWD/bin/demo-config"

pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in 9091 9092 9093; do
	bin/backend -listen "127.0.0.1:$port" -name "backend-$port" &
	pids+=($!)
done
bin/caddy run --config examples/quickstart/Caddyfile --adapter caddyfile &
caddy_pid=$!
pids+=("$caddy_pid")

for _ in $(seq 100); do
	curl -fsS -o /dev/null http://localhost:2019/config/ 2>/dev/null && break
	sleep 0.1
done

if [ "${1:-}" = "--check" ]; then
	fail=0
	expect() { # expect <status> <path> <text in body>
		out=$(curl -sS -w '\n%{http_code}' "http://127.0.0.1:9090$2")
		if [ "$(tail -n1 <<<"$out")" != "$1" ] || ! grep -q -- "$3" <<<"$out"; then
			echo "demo check: GET $2: want $1 with \"$3\", got: $out" >&2
			fail=1
		fi
	}
	expect 200 /users/v1/hello "backend-909[12]: GET /hello"
	expect 200 /users/v2/hello "backend-9093: GET /hello"
	expect 200 /orders/v2/x "backend-909[23]: GET /x"
	expect 404 /users/v9/hello 'unknown version "v9" of service "users"'
	curl -fsS -X POST -H 'Content-Type: application/json' -d '{"address":"127.0.0.1:9093"}' \
		http://localhost:2019/service_registry/services/payments/v1 >/dev/null || fail=1
	expect 200 /payments/v1/pay "backend-9093: GET /pay"
	curl -fsS -X DELETE http://localhost:2019/service_registry/services/payments/v1/127.0.0.1:9093 >/dev/null || fail=1
	expect 404 /payments/v1/pay 'unknown service "payments"'
	[ "$fail" = 0 ] && echo "demo check: ok"
	exit "$fail"
fi

cat <<'MSG'

svcreg demo is running. Try:
  curl localhost:9090/users/v1/hello        # balanced over 127.0.0.1:9091 and :9092
  curl localhost:9090/users/v2/hello        # 127.0.0.1:9093
  curl localhost:9090/users/v9/hello        # 404: unknown version
  curl localhost:2019/service_registry/services
  curl -X POST -H 'Content-Type: application/json' -d '{"address":"127.0.0.1:9093"}' \
       localhost:2019/service_registry/services/payments/v1
  curl localhost:9090/payments/v1/pay
Ctrl-C stops Caddy and the backends.
MSG
wait "$caddy_pid"
