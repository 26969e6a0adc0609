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
# checkov (the manifests' policy scan) pins dozens of packages: it lives in its own virtual environment,
# so it can never change the service's.
TOOLS_VENV := .venv-tools
CHECKOV_VERSION := 3.3.30
TOOLS_STAMP := $(TOOLS_VENV)/.installed-checkov-$(CHECKOV_VERSION)

.PHONY: install tools system run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP):
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(TOOLS_STAMP)

# The default bundles are trained once on the real B-scans in data/oct2017-sample and reused.
run: install
	PY=$(PY) MODEL_DIR=$(MODEL_DIR) HOST=$(HOST) PORT=$(PORT) scripts/run-local.sh

# The programs the suite drives for real (Prometheus, Chromium, dicom3tools, ...) and PostgreSQL running:
# installed and started where it may (root with apt), otherwise one line names the command.
system:
	scripts/test-system.sh

# Lint first: a minute of tests is not worth spending on a tree that CI refuses for its format.
test: install tools system lint
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
