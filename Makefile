# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: here it takes the local CPU build; on a laptop or a GPU box, PyPI's.
TORCH ?= torch==2.13.0

# The official supabase-js, pinned by its lockfile, for the frontend conformance test.
JS_DEPS := tests/js/node_modules/.package-lock.json

.PHONY: demo test unit lint install clean schema

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dispatcher,worker,dev]'
	touch $@

$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/zimage demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile.worker Dockerfile.dispatcher

test: lint $(JS_DEPS)
	$(BIN)/pytest

# The unit tests alone (no Postgres, no servers, no processes, no torch): seconds
unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit

# supabase/schema.sql, the schema as the migrations leave it (checked by the tests)
schema: $(BIN)/.installed
	$(BIN)/python -m devstack.schema_dump

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/js/node_modules
