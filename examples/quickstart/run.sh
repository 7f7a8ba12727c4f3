#!/usr/bin/env bash
# Runs the quickstart demo: builds Caddy with the plugin (./bin/caddy) and
# the demo backend, starts three backends on 127.0.0.1:9091-9093 and Caddy
# on 127.0.0.1:9090 (admin API on localhost:2019) with
# examples/quickstart/Caddyfile. Ctrl-C stops everything it started.
#
#   ./examples/quickstart/run.sh           run until Ctrl-C
#   ./examples/quickstart/run.sh --check   start, try a few requests, stop
set -euo pipefail
cd "$(dirname "$0")/../.."
export GOTOOLCHAIN=local

mkdir -p bin

# progress reads go build -v, which names each package as it compiles:
# on a terminal one line with a count, elsewhere a dot a package; anything
# else (a compile error) is printed whole.
progress() {
	local n=0 line
	while IFS= read -r line; do
		if [[ $line =~ ^[A-Za-z0-9._~/+-]+$ ]]; then
			n=$((n + 1))
			if [ -t 1 ]; then
				printf '\r  %d packages compiled: %s\033[K' "$n" "${line:0:60}"
			else
				printf .
			fi
		else
			[ "$n" -gt 0 ] && echo
			n=0
			echo "$line"
		fi
	done
	if [ "$n" -gt 0 ]; then echo; fi
}
echo "building Caddy with the plugin into bin/caddy (the first time takes about 3 minutes; Ctrl-C stops)..."
go build -v -o bin/caddy ./cmd/caddy 2>&1 | progress
echo "building the demo backend into bin/backend..."
go build -v -o bin/backend ./examples/backend 2>&1 | progress
echo "starting three backends on 127.0.0.1:9091-9093 and Caddy on 127.0.0.1:9090..."

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

# Wait until Caddy answers (up to 30 s), or stop if it exited (a port
# already taken, say: its log above says why).
for _ in $(seq 300); do
	curl -fsS -o /dev/null http://localhost:2019/config/ 2>/dev/null && break
	if ! kill -0 "$caddy_pid" 2>/dev/null; then
		echo "Caddy exited; see its log above" >&2
		exit 1
	fi
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

svcreg demo is running (Caddy on 127.0.0.1:9090, admin API on localhost:2019).
Try, in another terminal:
  curl localhost:9090/users/v1/hello        # balanced over 127.0.0.1:9091 and :9092
  curl localhost:9090/users/v2/hello        # 127.0.0.1:9093
  curl localhost:9090/users/v9/hello        # 404: unknown version
  curl localhost:2019/service_registry/services
  curl -X POST -H 'Content-Type: application/json' -d '{"address":"127.0.0.1:9093"}' \
       localhost:2019/service_registry/services/payments/v1
  curl localhost:9090/payments/v1/pay
  bin/caddy service-registry list
Ctrl-C stops Caddy and the backends.
MSG
wait "$caddy_pid"
