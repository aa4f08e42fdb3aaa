# The one automation entry point. `make demo` runs the demo; `make test` runs every check and test.
# Both install what is missing first (scripts/setup.sh). Set CARGO_TARGET_DIR to share a build cache.

CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "nextest run" || echo "test")

.PHONY: setup services demo serve cluster cluster-down test lint unit bench bench-ingest loadtest clean-demo

setup:
	@scripts/setup.sh

## Run a node with a synthetic shop and a live event stream (data in data/demo).
demo: setup
	$(CARGO) run --bin streamrec -- demo

serve: setup
	$(CARGO) run --bin streamrec -- serve

## A local cluster of N nodes (default 3) in one Kafka consumer group on 127.0.0.1:8081..8080+N,
## data in data/cluster; `scripts/cluster.sh status` shows who owns which partition.
N ?= 3
cluster: setup
	scripts/cluster.sh up $(N)

## Stops the local cluster's nodes (SIGTERM); the broker stays up.
cluster-down:
	scripts/cluster.sh down

## Everything CI runs: formatting, lints, then all tests (unit, actor, API, end-to-end, and
## integration tests against the real servers that scripts/services.sh installs and starts).
test: setup services lint unit

## The real servers the integration tests talk to (PostgreSQL, Redis, a Redis Cluster of six, S3, a
## Kafka broker), on loopback.
services:
	@scripts/services.sh up postgres redis redis-cluster s3 kafka

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	eval "$$(scripts/services.sh env)" && $(CARGO) $(NEXTEST) --workspace

## Benchmarks print figures; they assert nothing. The dev profile already optimises `models` and
## every dependency (ONNX Runtime itself is a prebuilt library), so no second build is needed.
bench: setup
	$(CARGO) bench --profile dev -p models --bench inference

## Kafka ingestion into session state beside kcat and a bare consumer on the same topic.
bench-ingest: setup
	scripts/ingest-bench.sh

## Starts a release node on a temp dir and drives it with the load generator.
loadtest: setup
	scripts/loadtest.sh

clean-demo:
	rm -rf data/demo
