# fedsilo: the two commands a new user runs, and the ones a contributor runs.
#   make quickstart   sets up .venv if needed, then runs a real 3-silo federation end to end
#   make test         sets up .venv if needed, then runs the whole test suite
#   make lint         ruff and mypy --strict

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedsilo-installed

.PHONY: quickstart test lint integration clean

# Every install goes through constraints.txt, which pins torch to its CPU build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/fedsilo quickstart

test: $(STAMP)
	$(BIN)/python -m pytest

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) quickstart-workspace .pytest_cache .mypy_cache .ruff_cache
