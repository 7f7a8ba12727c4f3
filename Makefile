# make demo   builds Caddy with the plugin and runs the quickstart demo (Ctrl-C stops it)
# make build  builds bin/caddy (Caddy with the plugin) and bin/backend (the demo backend)
# make test   runs every check and test (what CI runs)
# make bench  runs the benchmark suite into bench/results (about 40 minutes)
.PHONY: demo test build bench

demo:
	./examples/quickstart/run.sh

test:
	./scripts/test.sh

build:
	GOTOOLCHAIN=local go build -o bin/caddy ./cmd/caddy
	GOTOOLCHAIN=local go build -o bin/backend ./examples/backend

bench:
	GOTOOLCHAIN=local go run ./bench/suite -out bench/results
