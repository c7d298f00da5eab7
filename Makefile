# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-all lint bench bench-wan clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP) $@

# Bytecode for VeilQL's own modules, written once here: where PYTHONDONTWRITEBYTECODE is
# set (as on the CI machines) Python would otherwise compile them on every start (about
# 0.3-0.5 s of each `veil` command and of every node a test starts). Up-to-date files are
# skipped; an edited one is compiled again here or, until then, in memory.
BYTECODE = $(BIN)/python -m compileall -q veilql sample_data bench

demo: $(STAMP)
	@$(BYTECODE)
	$(BIN)/veil demo

# Both targets run the tests on two workers (pytest-xdist), whole files per worker so each
# module's fixtures (one Spark session, one set of nodes) are still built once;
# `make test XDIST=` runs them in one process.
XDIST ?= -n 2 --dist loadfile

test: $(TEST_STAMP)
	$(BIN)/ruff check veilql tests sample_data bench
	@$(BYTECODE)
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST)

test-all: $(TEST_STAMP)
	@$(BYTECODE)
	$(BIN)/python -m pytest -q $(XDIST)

lint: $(TEST_STAMP)
	$(BIN)/ruff check veilql tests sample_data bench

BENCH_ARGS ?=
# `make bench` (about half an hour) or `make bench BENCH_ARGS=--quick` (a few minutes);
# writes bench/results/<date>.json and .md. smartnoise-sql pins an older OpenDP, so it gets
# its own virtual environment and runs as a subprocess.
bench: $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@test -x bench/.venv-smartnoise/bin/python || { $(PYTHON) -m venv bench/.venv-smartnoise && \
	  bench/.venv-smartnoise/bin/python -m pip install --quiet 'smartnoise-sql==1.0.10'; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# `make bench-wan` (root: network namespaces, tun devices, tc; about ten minutes) or
# `make bench-wan BENCH_ARGS=--quick` (100,000 people, 100 Mbit/s only; a minute or two).
bench-wan: $(TEST_STAMP)
	$(BIN)/python -m bench.wan --json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
