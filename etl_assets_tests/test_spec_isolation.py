"""One bad pipeline spec never takes the others down: it is set aside with its error, the other pipelines, their
sensors and the alerting keep working, the sensor ``invalid_pipeline_specs`` fails every tick with the error and
alerts once, and ``etl-assets validate`` fails on it.

Real parts: the code location built from spec files on disk, a real Dagster instance (runs, sensor ticks, its
key-value store), the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from dagster import build_sensor_context

from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.monitoring.spec_errors import SPEC_ERRORS_SENSOR
from etl_assets.pipelines.spec import SpecError, load_specs, load_specs_isolated

GOOD = """
    name: drops
    source: {kind: files, format: csv, glob: "*.csv"}
    columns: [{name: a, type: INTEGER, nullable: false}]
"""
BAD_TYPE = """
    name: broken
    source: {kind: files, format: csv, glob: "*.csv"}
    columns: [{name: a, type: INTEGR}]
"""
NEEDS_BROKEN = """
    name: needs_broken
    transform: {inputs: [broken], sql: needs_broken.sql}
    columns: [{name: a, type: INTEGER}]
"""
NOT_YAML = "name: [unclosed\n"
DUPLICATE = GOOD  # a second file declaring `drops`
DROPS = Pipeline("default", "drops")  # GOOD's pipeline (the default domain)


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def specs(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = _write(
        tmp_path / "specs",
        {
            "a_drops.yaml": GOOD,
            "b_broken.yaml": BAD_TYPE,
            "c_needs_broken.yaml": NEEDS_BROKEN,
            "d_not_yaml.yaml": NOT_YAML,
            "e_duplicate.yaml": DUPLICATE,
        },
    )
    (folder / "needs_broken.sql").write_text("SELECT a FROM broken")
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(folder))
    return folder


def test_each_invalid_spec_is_set_aside_with_its_own_error(specs: Path):
    with pytest.raises(SpecError):
        load_specs()  # the strict loader (tests, tools) still fails on the first
    loaded, broken = load_specs_isolated()
    names = {s.spec.name for s in loaded}
    assert "drops" in names and "orders" in names  # the user's good spec and the packaged ones load
    assert not names & {"broken", "needs_broken"}
    errors = {b.path.name: b.message for b in broken}
    assert set(errors) == {"b_broken.yaml", "c_needs_broken.yaml", "d_not_yaml.yaml", "e_duplicate.yaml"}
    assert "field 'columns.0.type' (line 4): unknown column type 'INTEGR'" in errors["b_broken.yaml"]
    assert (
        f"field 'transform.inputs': 'default.broken' is declared in {specs / 'b_broken.yaml'}, which is invalid"
        in errors["c_needs_broken.yaml"]
    )
    assert "not valid YAML" in errors["d_not_yaml.yaml"]
    assert f"'drops' is already declared in domain 'default' by {specs / 'a_drops.yaml'}" in errors["e_duplicate.yaml"]
    assert all(str(specs) in message for message in errors.values())  # every message names its file


def test_a_missing_pipelines_dir_is_reported_and_the_packaged_specs_load(tmp_path: Path, data_dir: Path, monkeypatch):
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(tmp_path / "nope"))
    loaded, broken = load_specs_isolated()
    assert "orders" in {s.spec.name for s in loaded}
    assert len(broken) == 1 and "ETL_PIPELINES_DIR" in broken[0].message and "not a directory" in broken[0].message


def test_the_location_loads_runs_alerts_and_reports_the_bad_specs(specs: Path, data_dir: Path, instance):
    defs = build_definitions()
    # the good pipeline is there and runs; the monitoring sensors are there
    landing = data_dir / "landing" / pipeline_ref(DROPS)
    landing.mkdir(parents=True)
    (landing / "x.csv").write_text("a\n1\n2\n")
    assert defs.resolve_job_def(pipeline_job_name(DROPS)).execute_in_process(instance=instance).success
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute('SELECT count(*) FROM "default".drops').fetchone() == (2,)
    assert defs.sensors is not None and defs.resources is not None
    sensor_names = {s.name for s in defs.sensors}
    assert {"alert_on_run_failure", "alert_on_check_failure", SPEC_ERRORS_SENSOR} <= sensor_names
    assert not any("broken" in n for n in sensor_names)

    # the spec-error sensor fails every tick with each file's error, and alerts once for the same errors
    sensor = defs.resolve_sensor_def(SPEC_ERRORS_SENSOR)
    resources = {"alerting": defs.resources["alerting"]}
    for _ in range(2):
        with pytest.raises(Exception) as raised:
            sensor.evaluate_tick(build_sensor_context(instance=instance, resources=resources, definitions=defs))
        text = str(raised.value)
        assert "4 pipeline spec(s) could not be loaded" in text
        assert "unknown column type 'INTEGR'" in text and str(specs / "b_broken.yaml") in text
    alerts = [json.loads(line) for line in (data_dir / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == 1 and alerts[0]["kind"] == "spec_error" and "b_broken.yaml" in alerts[0]["text"]

    # fixed: the sensor is gone with the errors
    (specs / "b_broken.yaml").write_text(textwrap.dedent(BAD_TYPE).replace("INTEGR", "INTEGER"))
    for name in ("d_not_yaml.yaml", "e_duplicate.yaml"):
        (specs / name).unlink()
    fixed = build_definitions()
    assert fixed.sensors is not None and SPEC_ERRORS_SENSOR not in {s.name for s in fixed.sensors}
    assert fixed.resolve_job_def(pipeline_job_name(Pipeline("default", "needs_broken"))) is not None


@pytest.mark.slow
def test_the_validate_command_fails_on_a_bad_spec_and_passes_on_good_ones(specs: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "ETL_PIPELINES_DIR"}
    bad = subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", "validate", str(specs)], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1, bad
    assert "unknown column type 'INTEGR'" in bad.stderr and str(specs / "b_broken.yaml") in bad.stderr
    assert "Traceback" not in bad.stderr
    good = _write(tmp_path / "good", {"a_drops.yaml": GOOD})
    ok = subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", "validate", str(good)], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok
    assert ok.stdout.startswith("ok: 8 pipeline specs")
