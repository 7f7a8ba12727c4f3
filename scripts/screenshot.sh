#!/usr/bin/env bash
# Makes docs/status-page.png (and docs/status-page-phone.png) from a real
# run of the quickstart demo: starts examples/quickstart/run.sh, mounts the
# status handler on the demo site at /status/ through the admin API (a
# browser cannot open the admin endpoint's own page by its URL: Caddy
# refuses browser requests there that carry no Origin or Referer), adds an
# endpoint nobody listens on and a traffic split, sends traffic so that the
# dead endpoint is ejected, screenshots the page with headless chromium,
# then undoes its admin-API changes and stops everything it started.
#
#   ./scripts/screenshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local

for cmd in chromium curl; do
	command -v "$cmd" >/dev/null || { echo "screenshot: $cmd is not installed" >&2; exit 1; }
done
if curl -s -o /dev/null http://127.0.0.1:2019/config/; then
	echo "screenshot: something already listens on :2019 (a demo running?); stop it first" >&2
	exit 1
fi

admin=http://127.0.0.1:2019
site=http://127.0.0.1:9090
dead=127.0.0.1:9094 # nobody listens here
tmp=$(mktemp -d)
demo_pid= load_pid=
cleanup() {
	[ -n "$load_pid" ] && { kill "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; }
	if [ -n "$demo_pid" ]; then
		# the demo keeps admin-API changes in its storage: undo ours
		curl -s -o /dev/null -X DELETE "$admin/service_registry/services/users/v1/$dead" || true
		curl -s -o /dev/null -X DELETE "$admin/service_registry/traffic/users" || true
		kill "$demo_pid" 2>/dev/null || true # run.sh stops its backends and Caddy
		wait "$demo_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

./examples/quickstart/run.sh >"$tmp/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 600); do # the demo builds Caddy first
	curl -fsS -o /dev/null "$admin/config/" 2>/dev/null && break
	kill -0 "$demo_pid" 2>/dev/null || { cat "$tmp/demo.log" >&2; exit 1; }
	sleep 0.5
done
curl -fsS -o /dev/null "$admin/config/" || { echo "screenshot: the demo did not start" >&2; cat "$tmp/demo.log" >&2; exit 1; }

# The status handler on the demo site, at /status/ (the first route).
curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/json' "$admin/config/apps/http/servers/srv0/routes/0" -d '{
	"match": [{"path": ["/status/*"]}],
	"handle": [{"handler": "rewrite", "strip_path_prefix": "/status"}, {"handler": "service_registry_status"}],
	"terminal": true
}'
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' "$admin/service_registry/services/users/v1" -d "{\"address\":\"$dead\"}"
curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/json' "$admin/service_registry/traffic/users" -d '{"split":{"v1":90,"v2":10}}'

# Traffic while the page loads: the dead endpoint is ejected, the others
# show requests/s.
(
	while :; do
		for path in /users/hello /users/v1/a /users/v1/b /orders/v2/c; do
			curl -s -o /dev/null "$site$path" || true
		done
		sleep 0.05
	done
) &
load_pid=$!
for _ in $(seq 100); do
	curl -fsS "$admin/service_registry/services/users/v1" | grep -q '"out_of_rotation"' && break
	sleep 0.1
done
sleep 2 # a little traffic history for the rates

mkdir -p docs
shot() { # shot <file> <width,height>
	for try in 1 2 3; do
		chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
			--disable-background-networking --disable-component-update --disable-sync \
			--disable-dev-shm-usage --hide-scrollbars --user-data-dir="$tmp/chromium-$try-$2" \
			--window-size="$2" --virtual-time-budget=4000 --screenshot="$1" "$site/status/" 2>>"$tmp/chromium.log" >/dev/null ||
			{ cat "$tmp/chromium.log" >&2; exit 1; }
		# a blank page (not rendered yet) makes a PNG of a few kB
		if [ "$(wc -c <"$1")" -gt 20000 ]; then
			echo "wrote $1"
			return
		fi
	done
	echo "screenshot: $1 came out blank 3 times" >&2
	exit 1
}
shot docs/status-page.png 1000,1000
shot docs/status-page-phone.png 390,844
