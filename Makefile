# kdoct: `make run` serves the default model on http://127.0.0.1:8000; `make test` runs the suite.
# Both set everything up on a fresh machine (virtual environment, packages, the default model).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_DIR ?= var/default-model
PYTEST_ARGS ?=

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The default bundles are trained once on the real B-scans in data/oct2017-sample and reused.
run: install
	PY=$(PY) MODEL_DIR=$(MODEL_DIR) HOST=$(HOST) PORT=$(PORT) scripts/run-local.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench

clean:
	rm -rf var test-artifacts .pytest_cache
