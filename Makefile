# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment and installs what it needs on first use.
VENV ?= .venv
PY   := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench chaos services-up services-down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/govnotify demo

test: $(VENV)/.installed
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
