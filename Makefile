# marketbus — the two commands a newcomer needs: `make run` and `make test`.
# Everything is installed into ./.venv from requirements-dev.lock (pinned) by `make venv`;
# requirements.lock pins the runtime dependencies alone (the Docker image, `make dist` users).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
UV_VERSION := 0.13.8
PYTEST_ARGS ?=
TEST_WORKERS ?= 4  # pytest-xdist workers: most tests wait on servers and subprocesses, not on the CPU; one of them runs the whole-system tests (tests/conftest.py)

.PHONY: help venv run lint test test-fast chaos bench lock dist schemas secrets up down clean

help:
	@echo "make run     - the whole system on embedded defaults (NATS, sandboxes, services); Ctrl-C stops"
	@echo "make lint    - ruff (lint rules only, no reformatting) and mypy (strict on shared/marketbus); CI runs it first"
	@echo "make test    - the test suite (real NATS, sandboxes, PostgreSQL when reachable)"
	@echo "make chaos   - the chaos soak: kill -9 ingestors, the writer and nats-server (also on a 3-node cluster)"
	@echo "make bench   - benchmarks; results go to bench/RESULTS.md"
	@echo "make up      - the same system with docker compose (make secrets first writes deploy/secrets)"
	@echo "make lock    - re-pin requirements-dev.lock and requirements.lock after editing pyproject.toml"
	@echo "make dist    - build dist/marketbus-<version>-py3-none-any.whl: the client package for your own environment"
	@echo "make schemas - regenerate docs/schemas (JSON Schema + AsyncAPI) from the code"

venv: $(STAMP)

# setup.py compiles the contract checks' C extension (shared/marketbus/contracts/_checks.c) in place
$(STAMP): pyproject.toml setup.py shared/marketbus/contracts/_checks.c requirements-dev.lock requirements-nodeps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info >= (3, 11), "marketbus needs Python 3.11+"'
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements-dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e . -r requirements-nodeps.txt
	@touch $(STAMP)

run: venv
	$(BIN)/marketbus up

# configuration in pyproject.toml ([tool.ruff], [tool.mypy])
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: venv
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# MARKETBUS_CHAOS_SEED replays a run; MARKETBUS_CHAOS_ROUNDS sets the number of kills
chaos: venv
	$(BIN)/pytest -m soak tests/chaos $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/run_all.py

lock:
	@test -x $(BIN)/uv || $(MAKE) venv
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements-dev.lock
	# the runtime subset, at exactly the versions the tests run
	$(BIN)/uv pip compile --quiet pyproject.toml --python-version 3.11 -c requirements-dev.lock -o requirements.lock

# the `marketbus` package alone (contracts, clients, CLI, FastStream helpers; no services), built
# from shared/pyproject.toml: `pip install dist/marketbus-*.whl` in any Python 3.11+ environment
dist: venv
	rm -rf dist shared/build
	$(BIN)/uv build --quiet --wheel --out-dir dist shared
	rm -rf shared/build

schemas: venv
	$(BIN)/python -m marketbus.contracts.schema docs/schemas

secrets: venv
	$(BIN)/marketbus credentials deploy/secrets --compose

up: secrets
	docker compose up --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .marketbus .pytest_cache .mypy_cache .ruff_cache
