"""Permanent failures end a run at once, without step retries, with a message a person can act on; nothing is
written to the lake or the warehouse for the failed partition. A bad row is quarantined, never the whole file."""

from __future__ import annotations

import duckdb
import pytest
from dagster import DagsterEventType

from etl_assets.keys import Pipeline, clean_key, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.steps.load import QUARANTINE_SCHEMA
from etl_assets_tests.specs import column, definitions_for, pipeline

DROPS = Pipeline("default", "drops")  # the pipeline of drops_job (the default domain)


def drops_job(tmp_path, **fields):
    """The ``drops`` pipeline's job: a CSV source of two columns keyed on ``a``, retried three times."""
    spec = pipeline(
        DROPS.name,
        [column("a", "INTEGER", nullable=False), column("b")],
        primary_key=["a"],
        retry={"max_retries": 3, "delay_seconds": 0},
        **fields,
    )
    return definitions_for(tmp_path / "specs", spec).resolve_job_def(pipeline_job_name(DROPS))


@pytest.fixture
def drops(data_dir):
    landing = data_dir / "landing" / pipeline_ref(DROPS)
    landing.mkdir(parents=True)
    return landing


def _attempts(result, step_key: str) -> int:
    return sum(1 for e in result.all_events if e.step_key == step_key and e.event_type == DagsterEventType.STEP_START)


@pytest.mark.slow
def test_an_unreadable_row_deep_in_a_file_is_quarantined_and_the_rest_loads(drops, data_dir, instance, tmp_path):
    rows = "".join(f"{i},x{i}\n" for i in range(20000))
    (drops / "big.csv").write_bytes(b"a,b\n" + rows.encode() + b"1,\xff\xfe bad utf8\n")
    result = drops_job(tmp_path).execute_in_process(instance=instance)
    assert result.success and _attempts(result, "default__raw_drops") == 1
    import duckdb

    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute('SELECT count(*), min(a), max(a) FROM "default".drops').fetchone() == (20000, 0, 19999)
    quarantined = duckdb.execute(
        "SELECT _etl_reasons, _etl_source FROM read_parquet(?)",
        [str(data_dir / "lake" / "default" / "quarantine_drops" / "_all.parquet")],
    ).fetchall()
    # conservation: 20,001 data lines = 20,000 loaded + the one non-UTF-8 line, quarantined with its reason
    assert len(quarantined) == 1 and quarantined[0][1] == "big.csv"
    assert quarantined[0][0] == ["malformed_row"]


def test_a_file_missing_a_required_column_is_refused_at_once_and_leaves_landing(drops, data_dir, instance, tmp_path):
    (drops / "x.csv").write_text("b\nonly-b\n")
    result = drops_job(tmp_path).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert _attempts(result, "default__raw_drops") == 1  # a data error: no step retry
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure is not None and user_failure.description is not None
    message = user_failure.description
    assert "permanent error" in message and "required column(s) a missing (it has b)" in message
    assert not (drops / "x.csv").exists()  # moved to landing quarantine with the reason, not left for ever
    reasons = list((data_dir / "quarantine" / pipeline_ref(DROPS)).glob("*x.csv.reason.txt"))
    assert len(reasons) == 1 and "x.csv refused by the extract: required column(s) a missing" in reasons[0].read_text()
    assert not data_dir.joinpath("lake", *clean_key(DROPS).path).exists()
    assert not (data_dir / "warehouse.duckdb").exists()


def test_quality_below_threshold_blocks_the_load(drops, data_dir, instance, tmp_path):
    (drops / "x.csv").write_text("a,b\n1,ok\nnot-a-number,bad\n")
    result = drops_job(tmp_path).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["quality_score"] is False and checks["rows_conserved"] is True
    # the blocking check stopped the load before any target; only the rows that held it reached the warehouse
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        schemas = {s for (s,) in con.execute("SELECT DISTINCT table_schema FROM information_schema.tables").fetchall()}
        assert schemas == {"quarantine"}
        assert con.execute(f"SELECT a FROM {QUARANTINE_SCHEMA}.{dagster_name(DROPS)}").fetchall() == [("not-a-number",)]


def test_bad_rows_are_quarantined_not_lost(drops, data_dir, instance, tmp_path):
    (drops / "x.csv").write_text("a,b\n1,ok\nnot-a-number,bad\n,null-a\n1,duplicate\n")
    result = drops_job(tmp_path, quality={"threshold": 0.2}).execute_in_process(instance=instance)
    assert result.success
    import duckdb

    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute('SELECT a, b FROM "default".drops').fetchall() == [(1, "ok")]
    quarantined = duckdb.execute(
        "SELECT b, _etl_reasons, _etl_source FROM read_parquet(?) ORDER BY b",
        [str(data_dir / "lake" / "default" / "quarantine_drops" / "_all.parquet")],
    ).fetchall()
    assert quarantined == [
        ("bad", ["type:a"], "x.csv"),
        ("duplicate", ["duplicate_key"], "x.csv"),
        ("null-a", ["not_null:a"], "x.csv"),
    ]
