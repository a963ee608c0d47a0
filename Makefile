# One entry point for everything: each target creates/refreshes .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test check lint typecheck bench clean

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

lint: venv
	$(VENV)/bin/ruff check duraray tests benchmarks examples cluster_config

typecheck: venv
	$(VENV)/bin/mypy duraray/orchestrations duraray/entities duraray/_errors.py duraray/_registry.py duraray/runtime/engine/codec.py duraray/runtime/engine/store.py duraray/runtime/ray/peerlink.py

check: lint typecheck test

bench: venv
	$(VENV)/bin/duraray bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
