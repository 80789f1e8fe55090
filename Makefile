# Everything runs from a project-local virtualenv that these targets create on demand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck unit bench-memory bench-redis clean

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

bench-memory: $(VENV)/.core
	$(PY) benchmarks/memory.py

bench-redis: $(VENV)/.dev
	$(PY) benchmarks/redis.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
