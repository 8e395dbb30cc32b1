"""The code location is built when Dagster loads it, never at import, and reads ETL_ENV with one rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
from dagster import in_process_executor, multiprocess_executor

from etl_assets.definitions import build_definitions
from etl_assets.settings import SettingsError

# What an import must not pull in: Dagster itself, and the modules that build the pipelines.
PROBE = r"""
import json, sys, time
started = time.perf_counter()
import etl_assets.sqlutil, etl_assets.settings, etl_assets.redact
seconds = time.perf_counter() - started
loaded = sorted(m for m in sys.modules if m == "dagster" or m.startswith(("dagster.", "etl_assets.pipelines",
                                                                          "etl_assets.definitions")))
print(json.dumps({"seconds": seconds, "loaded": loaded}))
"""


def test_importing_the_package_builds_nothing_and_needs_no_pipelines_dir(tmp_path):
    env = {**os.environ, "ETL_PIPELINES_DIR": str(tmp_path / "does-not-exist"), "ETL_ENV": "no-such-env"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    probe = json.loads(out.stdout)
    assert probe["loaded"] == [], probe  # nothing of Dagster or of the pipelines was imported, so nothing built
    assert out.stderr == ""


def test_dagster_finds_the_lazy_loader_and_it_builds_the_location(data_dir):
    from dagster._core.workspace.autodiscovery import loadable_targets_from_python_module
    from dagster._utils.test.definitions import LazyDefinitions

    import etl_assets
    import etl_assets.definitions

    # -m etl_assets.definitions (dg) and -m etl_assets (the dagster CLI, workspace.yaml) find the same loader
    for module, attribute in (("etl_assets.definitions", "defs"), ("etl_assets", "code_location")):
        targets = loadable_targets_from_python_module(module, working_directory=None)
        assert [(t.attribute, type(t.target_definition)) for t in targets] == [(attribute, LazyDefinitions)]
        assert targets[0].target_definition is etl_assets.definitions.defs
    assert etl_assets.code_location is etl_assets.definitions.defs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the jobs are resolved when built, with no warning left for later look-ups
        defs = etl_assets.definitions.defs()
        defs.resolve_job_def("shop_daily")
    assert defs.resolve_job_def("shop_daily").executor_def is in_process_executor


@pytest.mark.parametrize(
    ("value", "executor"),
    [
        ("", in_process_executor),
        ("local", in_process_executor),
        (" Local ", in_process_executor),
        ("production", multiprocess_executor),
    ],
)
def test_etl_env_picks_the_executor(monkeypatch, data_dir, value, executor):
    monkeypatch.setenv("ETL_ENV", value)
    assert build_definitions().resolve_job_def("shop_daily").executor_def is executor


def test_an_unknown_etl_env_is_an_error_not_production(monkeypatch, data_dir):
    monkeypatch.setenv("ETL_ENV", "prod")
    with pytest.raises(
        SettingsError, match="ETL_ENV='prod' is not an environment; set ETL_ENV to one of local, production"
    ):
        build_definitions()
