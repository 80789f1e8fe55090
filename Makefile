# Everything runs from a project-local virtualenv that these targets create on demand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck unit chaos bench-memory bench-redis clean

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

bench-memory: $(VENV)/.core
	$(PY) benchmarks/memory.py

bench-redis: $(VENV)/.dev
	$(PY) benchmarks/redis.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .chaos
