# The README's commands. Each target builds its own virtual environment on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV := $(VENV)/.installed-dev
SERVER := $(VENV)/.installed-server

.PHONY: run test check lint typecheck fast bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving needs the server extra only.
$(SERVER): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[server]'
	touch $(SERVER)

$(DEV): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(DEV) $(SERVER)

run: $(SERVER)
	$(BIN)/idmanager serve --host 127.0.0.1 --port 8000

# Everything: lint, types, the fast tier and every test against the real databases.
test: $(DEV) lint typecheck
	$(BIN)/pytest

# Lint, types and the fast in-process tier (no database server needed): under a minute.
check: $(DEV) lint typecheck fast

lint: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(DEV)
	$(BIN)/mypy

fast: $(DEV)
	$(BIN)/pytest tests/unit tests/test_architecture.py

# The HTTP figures want wrk, a load generator in C: bench/load.py, its Python stand-in, takes
# CPU from the server it measures. Installed from Debian's packages where this user may.
bench: $(DEV)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
	  echo "wrk is not installed: the HTTP figures use bench/load.py, which takes CPU from the server"
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
