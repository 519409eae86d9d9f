# Two commands do all set-up on a fresh machine with Python >= 3.10:
#   make demo   - the main job: streams through the real openai SDK against the fault server
#   make test   - lint (ruff), types (mypy) and the whole test suite (pytest)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint rules bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/streamsentinel demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples dashboards
	$(BIN)/ruff format --check src tests benchmarks examples dashboards
	$(BIN)/mypy

# Prometheus rules: promtool from PATH (.ci/run installs it: Debian's `prometheus` package).
rules:
	@command -v promtool >/dev/null 2>&1 || { echo "promtool not found on PATH: install Prometheus (apt-get install prometheus; .ci/run does it)" >&2; exit 1; }
	promtool check rules dashboards/alerts.yml
	promtool test rules dashboards/alerts.test.yml

test: lint rules
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
