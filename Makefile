# The README's commands. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export DATABASE_URL ?= sqlite:///./var/oracle.db

.PHONY: serve test lint bench install install-service system-deps clean

# The service alone: no TensorFlow.
$(BIN)/oracle: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e .
	touch $@

# Everything the suite needs: service, training (TensorFlow CPU), dev tools, the worker SDK.
$(VENV)/.dev: pyproject.toml client/pyproject.toml $(BIN)/oracle
	$(BIN)/pip install -e '.[training,dev]' -e './client[optuna,ray]'
	touch $@

install-service: $(BIN)/oracle
install: $(VENV)/.dev

serve: $(BIN)/oracle
	$(BIN)/oracle serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check core service training migrations oracle tests bench client
	$(BIN)/ruff format --check core service training migrations oracle tests bench client
	$(BIN)/mypy
	$(BIN)/lint-imports

# System packages the suite drives for real: haproxy (the compose file's proxy config is
# checked with `haproxy -c`) and chromium (the dashboard is rendered in a real browser).
# Installed with apt-get when missing and running as root; otherwise named, and the run stops.
system-deps:
	@need=""; \
	command -v haproxy >/dev/null || need="$$need haproxy"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; \
		else \
			echo "make test needs system packages:$$need (sudo apt-get install$$need)" >&2; \
			exit 1; \
		fi; \
	fi

test: lint system-deps
	$(BIN)/pytest

bench: $(VENV)/.dev
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
