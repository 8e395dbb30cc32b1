# The two set-up commands are `make demo` and `make test`; each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ETL_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo test test-fast dev validate bench clean

$(STAMP): pyproject.toml setup.py scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/bootstrap.sh
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Generate the demo upstreams, run every reference pipeline on embedded defaults, print a summary.
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/etl-assets demo

## Run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest

## Run the quick tests only (no slow, daemon, browser or Postgres test; the markers are in pyproject.toml).
## Extra pytest options go in PYTEST_ARGS, e.g. make test-fast PYTEST_ARGS="--durations=20".
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not daemon and not browser and not postgres" $(PYTEST_ARGS)

## Serve the code location in the Dagster UI on http://127.0.0.1:3000 (daemon included).
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

validate: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/etl-assets validate
	$(BIN)/dagster definitions validate -m etl_assets

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_scale.py --orders 1000000

clean:
	rm -rf data .dagster_home
