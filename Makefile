# Butler Pipelines: set-up and the two main entry points.
#   make demo   - builds demo_repo/ from the SDSS data in DATA and runs the main job (ProcessCcd, DRP, AP,
#                 SkyCorrection, the run report demo_repo/report.html); `make demo BANDS=r` for one band
#   make test   - runs the test suite
#   make demo-sim - the same on simulated SimCam data, with the simulation's truth metrics
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data/sdss_stripe82_lsst_demo
DEMO_REPO ?= demo_repo
BANDS  ?= u g r i z

.PHONY: venv test test-fast bench demo demo-sim docs clean

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

DEMO_ENV = DEMO_REPO=$(DEMO_REPO) DATA=$(DATA) BANDS="$(BANDS)" BUTLER=$(BIN)/butler PIPETASK=$(BIN)/pipetask \
           PYTHON=$(BIN)/python

demo: venv
	$(DEMO_ENV) bash scripts/demo.sh

demo-sim: venv
	$(DEMO_ENV) SIMCAM=1 bash scripts/demo.sh

docs: venv
	$(BIN)/python scripts/generate_docs.py

clean:
	rm -rf $(DEMO_REPO) $(DEMO_REPO)_sim .pytest_cache
