# Two commands do all the set-up on a fresh machine (see README.md):
#   make run    - a local sandbox run of the example task on the embedded defaults
#   make check  - lint, format check, strict types and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Specs that run real rounds on the wall clock (deployments on 8 s rounds, node processes on
# 400 ms slots) run after the rest, so CPU-bound specs never share the cores with their windows.
# They mostly wait for their windows (three at once took under one core), so four workers run
# them; the CPU-bound rest runs on one worker per core.
WALL_CLOCK := tests/deploy tests/test_remote.py
WALL_CLOCK_WORKERS := 4
FIGURES := $(CURDIR)/.figures

.PHONY: install run check lint types test figures report clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/koiitasks run examples/hash-puzzle --nodes 50 --rounds 3

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy
	for example in examples/*/; do $(BIN)/mypy "$$example" || exit 1; done

test: $(STAMP)
	rm -rf $(FIGURES)
	KOII_FIGURES_DIR=$(FIGURES) $(BIN)/python -m pytest -n auto --dist loadgroup $(WALL_CLOCK:%=--ignore=%) $(PYTEST_ARGS)
	KOII_FIGURES_DIR=$(FIGURES) $(BIN)/python -m pytest -n $(WALL_CLOCK_WORKERS) --dist loadgroup $(WALL_CLOCK) $(PYTEST_ARGS)

# The reliability figures the tests counted: printed, and checked against what was asked for.
figures: $(STAMP)
	$(BIN)/python -m koiitasks.testing.figures check $(FIGURES) --doc docs/reliability.md

# Write the figures of the last full `make test` into docs/reliability.md.
report: $(STAMP)
	$(BIN)/python -m koiitasks.testing.figures render $(FIGURES) docs/reliability.md

check: lint types test figures

clean:
	rm -rf $(VENV) .koiitasks .mypy_cache .pytest_cache .ruff_cache .figures
