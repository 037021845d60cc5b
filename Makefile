# The two commands of the README: `make demo` and `make test`. Each makes the machine ready
# (scripts/prereqs.sh: installs or starts what is missing as root on Debian, or stops at once
# with the command that would), then creates the virtual environment on first use.
VENV ?= .venv
PY   := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test prereqs-demo prereqs-test lint bench chaos services-up services-down clean

prereqs-demo:
	PYTHON=$(PYTHON) scripts/prereqs.sh demo

prereqs-test:
	PYTHON=$(PYTHON) scripts/prereqs.sh test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: prereqs-demo $(VENV)/.installed
	$(VENV)/bin/govnotify demo

test: prereqs-test $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	$(PY) -m benchmarks

# The fault run: 100,000 licenses while components are killed and the brokers restarted
# (RabbitMQ and PostgreSQL too: CHAOS_ARGS=--no-service-restarts spares the shared ones).
chaos: $(VENV)/.installed
	$(PY) -m benchmarks.chaos $(CHAOS_ARGS)

services-up: $(VENV)/.installed
	$(VENV)/bin/govnotify services up

services-down: $(VENV)/.installed
	$(VENV)/bin/govnotify services down

clean:
	rm -rf $(VENV) .govnotify .pytest_cache .ruff_cache
