# Everything runs from a project-local virtualenv that these targets create on demand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck unit chaos bench bench-peers bench-memory bench-redis clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip

$(VENV)/.core: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(VENV)/.core $@

demo: $(VENV)/.core  ## run the demo on the in-memory broker
	$(PY) examples/demo.py

test: lint typecheck unit  ## ruff, mypy --strict and the test suite

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.dev
	$(PY) -m mypy --strict task_queue

unit: $(VENV)/.dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fault suite (tests/chaos) at full size, then the figures it measured, even when a
# run failed. `make test` runs the same suite at its small size.
CHAOS_TASKS ?= 100000
CHAOS_RESULTS ?= .chaos/results.json

chaos: $(VENV)/.dev
	rm -f $(CHAOS_RESULTS)
	TQ_CHAOS_TASKS=$(CHAOS_TASKS) TQ_CHAOS_RESULTS=$(CHAOS_RESULTS) \
		$(PY) -m pytest -q -m chaos tests/chaos $(PYTEST_ARGS); status=$$?; \
		$(PY) -m tests.chaos.report $(CHAOS_RESULTS); exit $$status

# Each peer gets its own virtualenv (their Redis clients conflict), rebuilt when its pinned
# requirements change; matplotlib lives in the "chart" one, never in the package's.
PEERS_DIR := benchmarks/.venv-peers
PEER_ENVS := arq saq taskiq streaq async_task_worker chart

$(PEERS_DIR)/%/.installed: benchmarks/peers/%.txt
	rm -rf $(PEERS_DIR)/$*
	$(PYTHON) -m venv $(PEERS_DIR)/$*
	$(PEERS_DIR)/$*/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

bench-peers: $(foreach env,$(PEER_ENVS),$(PEERS_DIR)/$(env)/.installed)

bench: $(VENV)/.dev  ## task_queue side by side with its peers; BENCH_ARGS=--quick for a check
	$(MAKE) --no-print-directory -j6 bench-peers
	$(PY) benchmarks/harness.py --save --chart $(BENCH_ARGS)

bench-redis: $(VENV)/.dev  ## task_queue alone on Redis, against its targets
	$(PY) benchmarks/harness.py --libs task_queue --sections redis,scaling,rss $(BENCH_ARGS)

bench-memory: $(VENV)/.core  ## InMemoryBroker against a plain asyncio.PriorityQueue
	$(PY) benchmarks/harness.py --libs task_queue-memory,priority-queue --sections memory $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_DIR) .mypy_cache .pytest_cache .ruff_cache .chaos
