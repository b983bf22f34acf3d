# Two commands do all the set-up on a fresh machine (see README.md):
#   make run    - a local sandbox run of the example task on the embedded defaults
#   make check  - lint, format check, strict types and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run check lint types test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/koiitasks run examples/hash-puzzle --nodes 50 --rounds 3

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy
	for example in examples/*/; do $(BIN)/mypy "$$example" || exit 1; done

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

check: lint types test

clean:
	rm -rf $(VENV) .koiitasks .mypy_cache .pytest_cache .ruff_cache
