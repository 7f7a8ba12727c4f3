# make demo   builds Caddy with the plugin and runs the quickstart demo
# make test   runs every check and test (what CI runs)
.PHONY: demo test build

demo:
	./examples/quickstart/run.sh

test:
	./scripts/test.sh

build:
	GOTOOLCHAIN=local go build -o bin/caddy ./cmd/caddy
