# Two commands do all set-up on a fresh machine with Python >= 3.10:
#   make demo   - the main job: streams through the real openai SDK against the fault server
#   make test   - lint (ruff), types (mypy) and the whole test suite (pytest)
# (make docs builds the documentation site into site/; .ci/run runs it after make test)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint rules promtool docs test-loaded bench bench-startup bench-peers valgrind clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/streamsentinel demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples dashboards docs
	$(BIN)/ruff format --check src tests benchmarks examples dashboards docs
	$(BIN)/mypy

# Debian packages the tests need: promtool and prometheus (the `prometheus` package: rules tests and
# tests/ops/test_prometheus_proof.py) and redis-server (the fleet tests start their own). Installed here
# when missing and we are root with apt-get; else the exact command to run, and a failure.
promtool:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "make test needs:$$missing  run  sudo apt-get install --no-install-recommends$$missing" >&2; \
		exit 1; \
	fi

# Prometheus rules: promtool from PATH (the promtool target installs it).
rules: promtool
	@command -v promtool >/dev/null 2>&1 || { echo "promtool not found on PATH: install Prometheus (apt-get install prometheus; .ci/run does it)" >&2; exit 1; }
	promtool check rules dashboards/alerts.yml
	promtool test rules dashboards/alerts.test.yml

test: lint rules
	$(BIN)/pytest $(PYTEST_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link, anchor or
# docstring reference fails the build. The reference tables are rendered from the code
# (docs/gen_reference.py, an MkDocs hook). The docs extra is in dev, so the venv has it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The whole suite with two CPU-bound processes beside it (killed at the end): no test may depend on
# the machine's speed. PYTEST_ARGS as for test; LOAD_PROCS=n for another number of busy loops.
test-loaded: $(STAMP) promtool
	scripts/test-loaded $(PYTEST_ARGS)

# valgrind for benchmarks/bench_instructions.py (Debian's package ships callgrind.h; gcc builds the
# 3-line helper): installed when missing and we are root with apt-get, else the exact command.
valgrind:
	@command -v valgrind >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind; \
	else \
		echo "make bench needs valgrind: run  sudo apt-get install --no-install-recommends valgrind" >&2; \
		exit 1; \
	fi

# Wall clock (benchmarks/bench_overhead.py), then CPU instructions with callgrind and memory per open
# stream (benchmarks/bench_instructions.py; about 5 minutes on 2 cores).
bench: $(STAMP) valgrind
	$(BIN)/python benchmarks/bench_overhead.py
	$(BIN)/python benchmarks/bench_instructions.py

# Other OpenAI instrumentations side by side (virtualenvs under /tmp/streamsentinel-peers-venv, ~8 min).
bench-peers: $(STAMP) valgrind
	$(BIN)/python benchmarks/bench_peers.py

# Interpreter start-up under `streamsentinel run` vs plain (a process that never imports openai, one that does).
bench-startup: $(STAMP)
	$(BIN)/python benchmarks/bench_startup.py

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
