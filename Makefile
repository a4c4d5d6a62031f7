# Two commands: `make run` trains on the embedded default, `make test` runs every check.
UV := .tools/bin/uv
RUN := $(UV) run --frozen --no-sync
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run checks test test-fast deploy bench

# uv is pinned and kept in its own folder, so every machine resolves and installs the same way.
$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.9

# `--inexact`: installing what a command needs never removes what another one installed (the
# test tools stay after `make run` or `make deploy`).
run: $(UV)
	$(UV) sync --frozen --inexact
	$(RUN) retrainer demo

# Format, lint and types first: the cheapest failures.
checks: $(UV)
	$(UV) sync --frozen --inexact --group test
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy
	$(RUN) deptry .

# Three pytest workers (pytest-xdist) on two cores: the slow tests often wait on processes and
# servers (measured: 12 min 11 s with three, 12 min 23 s with two before the months test). Slow
# tests first, handed out one at a time, measured no faster (13 min 53 s against 13 min 31 s).
test: checks
	$(RUN) pytest -n 3 --durations=15

# Everything but the slow tests (those that start a Prefect server or train end to end).
test-fast: checks
	$(RUN) pytest -n 2 -m "not slow"

# Registers prefect.yaml's deployments with the Prefect API in PREFECT_API_URL, once the work
# pool is known to run them (flows/pool_check.py).
deploy: $(UV)
	$(UV) sync --frozen --inexact
	$(RUN) python -m flows.pool_check $${RETRAINER_WORK_POOL:-retrainer-gpu}
	RETRAINER_WORK_POOL=$${RETRAINER_WORK_POOL:-retrainer-gpu} $(RUN) prefect deploy --all

# Figures for the README's performance section; each prints its own table (a few minutes).
bench: $(UV)
	$(UV) sync --frozen --inexact --group bench
	$(RUN) python -m bench.cold
	$(RUN) python -m bench.skip
	$(RUN) python -m bench.pipeline
	$(RUN) python -m bench.training
	$(RUN) python -m bench.memory
	$(RUN) python -m bench.allocator
	$(RUN) python -m bench.photos
	$(RUN) python -m bench.duplicates
	$(RUN) python -m bench.feed
	$(RUN) python -m bench.scale
