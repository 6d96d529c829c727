# Butler Pipelines: set-up and the two main entry points.
#   make demo   - builds a demo repository and runs the main job (grows as the pipelines land)
#   make test   - runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data/sdss_stripe82_lsst_demo
DEMO_REPO ?= demo_repo

.PHONY: venv test test-fast bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python benchmarks/registry_bench.py

demo: venv
	DEMO_REPO=$(DEMO_REPO) DATA=$(DATA) BUTLER=$(BIN)/butler PIPETASK=$(BIN)/pipetask PYTHON=$(BIN)/python bash scripts/demo.sh

clean:
	rm -rf $(DEMO_REPO) .pytest_cache
