# One entry point for everything: each target creates/refreshes .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test check lint format-check format typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/duraray demo

test: venv
	bash scripts/ensure-browser.sh
	$(PY) -m pytest $(PYTEST_ARGS)

SOURCES := duraray tests benchmarks examples cluster_config scripts

lint: venv
	$(VENV)/bin/ruff check $(SOURCES)

format-check: venv
	$(VENV)/bin/ruff format --check $(SOURCES)

format: venv
	$(VENV)/bin/ruff format $(SOURCES)

typecheck: venv
	$(VENV)/bin/mypy duraray

# What CI runs (.ci/run): lint, format, types, then the tests.
check: lint format-check typecheck test

bench: venv
	$(VENV)/bin/duraray bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
