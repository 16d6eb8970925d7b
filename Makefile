# The README's commands. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export DATABASE_URL ?= sqlite:///./var/oracle.db

.PHONY: serve test lint bench install install-service clean

# The service alone: no TensorFlow.
$(BIN)/oracle: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e .
	touch $@

# Everything the suite needs: service, training (TensorFlow CPU), dev tools, the worker SDK.
$(VENV)/.dev: pyproject.toml client/pyproject.toml $(BIN)/oracle
	$(BIN)/pip install -e '.[training,dev]' -e ./client
	touch $@

install-service: $(BIN)/oracle
install: $(VENV)/.dev

serve: $(BIN)/oracle
	$(BIN)/oracle serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check oracle tests bench client
	$(BIN)/ruff format --check oracle tests bench client
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: $(VENV)/.dev
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
