# One task runner: the README, .ci/run and developers use these targets.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit component integration chaos bench bench-webhook bench-compare broker management image clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(BIN)/bridge: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

## make run: the fake provider feeding the local RabbitMQ through the bridge
run: $(BIN)/bridge broker management
	scripts/run-demo.sh

broker:
	@scripts/ensure-broker.sh

management:
	@if command -v rabbitmq-plugins >/dev/null 2>&1; then \
	  rabbitmq-plugins enable --quiet rabbitmq_management rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
	    && echo "broker: management UI on http://127.0.0.1:15672 (guest/guest)" || true; fi

## make test: lint, types, and every test tier against the real RabbitMQ, coverage measured
## (floor in pyproject.toml; the pure modules to every line and branch)
PURE_MODULES := bridge/routing.py,bridge/envelope.py,bridge/providers/*,bridge/placement.py,bridge/config.py,bridge/ingest/access.py,bridge/probes.py,bridge/reload.py
test: $(BIN)/bridge broker management lint typecheck
	BRIDGE_CHAOS_SIZE=$${BRIDGE_CHAOS_SIZE:-quick} $(BIN)/pytest --cov
	$(BIN)/coverage report --include='$(PURE_MODULES)' --fail-under=100

lint: $(BIN)/bridge
	$(BIN)/ruff check bridge fakeprovider benchmarks tests examples
	$(BIN)/ruff format --check bridge fakeprovider benchmarks tests examples

typecheck: $(BIN)/bridge
	$(BIN)/mypy

unit: $(BIN)/bridge
	$(BIN)/pytest tests/unit

component: $(BIN)/bridge
	$(BIN)/pytest tests/component

integration: $(BIN)/bridge broker
	$(BIN)/pytest tests/integration

## make chaos: the fault suite alone (docs/faults.md); `make test` runs it too
chaos: $(BIN)/bridge broker
	BRIDGE_CHAOS_SIZE=full $(BIN)/pytest -m chaos tests/chaos

## make bench: polling throughput against the protocol limit (see docs/benchmarks.md)
bench: $(BIN)/bridge broker
	$(BIN)/python -m benchmarks poll $(ARGS)

## make bench-webhook: webhook rate and latency against raw confirmed publishes
bench-webhook: $(BIN)/bridge broker
	$(BIN)/python -m benchmarks webhook $(ARGS)

## make bench-compare: ours against the alternatives, in one run (needs the management plugin)
bench-compare: $(BIN)/bridge broker management
	$(BIN)/python -m benchmarks compare $(ARGS)

## make image: the container image from the Dockerfile, tagged bridge:local (compose.yaml's);
## docker when an engine answers, else podman (see scripts/build-image.sh)
image:
	scripts/build-image.sh --tag bridge:local

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
