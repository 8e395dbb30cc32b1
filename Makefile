# The two set-up commands are `make demo` and `make test`; each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ETL_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo test test-fast dev validate schema lint bench clean

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

## Run the quick tests only (no slow, daemon, browser, Postgres or MariaDB test; the markers are in pyproject.toml).
## Extra pytest options go in PYTEST_ARGS, e.g. make test-fast PYTEST_ARGS="--durations=20".
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not daemon and not browser and not postgres and not mariadb" $(PYTEST_ARGS)

# dg runs the project in .venv; saying so keeps it from warning that no virtual environment is active
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg

## Serve the code location in the Dagster UI on http://127.0.0.1:3000 (daemon included); stopping it stops them all.
DEV_PORT ?= 3000
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/etl-assets dev --host 127.0.0.1 --port $(DEV_PORT)

## Check every pipeline spec and component, and load the code location as Dagster does (fails on an invalid one).
validate: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/etl-assets validate
	$(DG) check defs
	$(DG) list components > /dev/null
	$(DG) list defs > /dev/null
	$(BIN)/python scripts/spec_schema.py --check

## Lint (ruff), formatting (ruff format) and types (pyright, basic mode), as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright --project pyproject.toml  # this config, never a pyrightconfig.json found in a parent folder

## Regenerate docs/pipeline-spec.schema.json (the spec's JSON schema for editors) from the models.
schema: $(STAMP)
	$(BIN)/python scripts/spec_schema.py

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_scale.py --orders 1000000

clean:
	rm -rf data .dagster_home
