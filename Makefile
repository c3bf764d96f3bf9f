# fedsilo: the two commands a new user runs, and the ones a contributor runs.
#   make quickstart   sets up .venv if needed, then runs a real 3-silo federation end to end
#   make test         sets up .venv if needed, then runs the whole test suite
#   make lint         ruff and mypy --strict
#   make system-deps  installs bubblewrap (the job sandbox) with apt-get, when root
#   make test-deps    and chromium (the MLflow UI's browser tests), for make test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedsilo-installed

.PHONY: quickstart test lint integration clean system-deps test-deps

# Every install goes through constraints.txt, which pins torch to its CPU build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The job sandbox needs bubblewrap. Installed only when missing, as root, with apt-get;
# otherwise a note, and the tests that need a sandbox skip (or fail with
# FEDSILO_REQUIRE_SANDBOX=1). Without root nothing is installed, and the quickstart then
# runs its silos with `sandbox: none`, saying so.
system-deps:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing bubblewrap (the job sandbox) with apt-get"; \
		(apt-get update -qq && apt-get install -y -qq bubblewrap) \
			|| echo "note: apt-get could not install bubblewrap; sandbox tests will skip"; \
	else \
		echo "note: bubblewrap (bwrap) is missing; install it as root (apt-get install" \
			"bubblewrap) or the sandbox tests skip"; \
	fi

# The MLflow UI's browser tests open it in Debian's chromium, headless; the tests need it,
# the quickstart does not. Installed like bubblewrap; without it those tests skip (or fail
# with FEDSILO_REQUIRE_BROWSER=1, as in CI).
test-deps: system-deps
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (the MLflow UI's browser tests) with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			|| echo "note: apt-get could not install chromium; browser tests will skip"; \
	else \
		echo "note: chromium is missing; install it as root (apt-get install chromium)" \
			"or the MLflow UI's browser tests skip"; \
	fi

quickstart: $(STAMP) system-deps
	$(BIN)/fedsilo quickstart

test: $(STAMP) test-deps
	$(BIN)/python -m pytest

integration: $(STAMP) test-deps
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) quickstart-workspace .pytest_cache .mypy_cache .ruff_cache
