# fmbench: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export BROWSER_PATH ?= /usr/bin/chromium

.PHONY: uv install demo test test-fast bench deploy lint typecheck clean

uv:
	@command -v uv >/dev/null 2>&1 || test -x "$(UV)" || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

# Bytecode is compiled at install, as pip does (uv does not by default): a first run then reads it
# instead of compiling every module, and so does every run where PYTHONDONTWRITEBYTECODE is set.
# Prefect's migrations of a new database (6-8 s) run here once too: a new Prefect home starts from a copy.
install: uv
	@$(UV) sync --frozen --all-extras --quiet --compile-bytecode
	@$(UV) run --frozen --no-sync python -m compileall -q fmbench cli flows tasks >/dev/null
	@$(UV) run --frozen --no-sync python -m fmbench.localapi --make-db-template

demo: install
	@$(UV) run --frozen fmbench run configs/quickstart.yml

test: install
	@$(UV) run --frozen pytest

# The edit-test loop: everything but the tests marked `integration` (Prefect, moto, Chromium,
# subprocesses, real servers; see tests/conftest.py). `make test` runs both tiers, as CI does.
test-fast: install
	@$(UV) run --frozen pytest -m "not integration" -q

bench: install
	@$(UV) run --frozen python -m benchmarks.run_all

deploy: install
	@$(UV) run --frozen bash deployments/deploy.sh

lint: install
	@$(UV) run --frozen ruff check fmbench cli tasks flows tests

typecheck: install
	@$(UV) run --frozen mypy

clean:
	rm -rf .venv results .pytest_cache
