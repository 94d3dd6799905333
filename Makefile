# `make demo` and `make test` are the whole set-up: each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The PyTorch builds this machine kind keeps on local disk (others download gigabytes).
ifeq ($(shell uname -m),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo check test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)

# Stamps re-run the install when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
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
test: $(VENV)/.installed-test
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

# A local Prefect server, work pool, deployments and worker; state under .prefect/.
.PHONY: up down
up: $(VENV)/.installed
	$(BIN)/python -m tools.stack up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tools.stack down; else echo "nothing was running"; fi

# CPU benchmark against the tutorial-style baseline; writes BENCHMARKS.md and bench/results/.
.PHONY: bench
bench: $(VENV)/.installed
	$(BIN)/python -m bench.cpu
	$(BIN)/python -m bench.quality
