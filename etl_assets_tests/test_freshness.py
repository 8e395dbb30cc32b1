"""Freshness measures the data's time: a daily pipeline is as fresh as the end of its newest loaded partition (a 2024
partition loaded today is stale) unless its partitions end and the last is loaded, an unpartitioned one as its
latest load; Dagster's FreshnessPolicy sits on the target assets; the sensor launches only the checks whose result
may have changed; building the definitions raises no SupersessionWarning."""

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    FreshnessPolicy,
    SupersessionWarning,
    build_sensor_context,
)

from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.monitoring.freshness import FRESHNESS_CHECK_NAME, FRESHNESS_SENSOR, data_time_of, evaluate_freshness
from etl_assets.monitoring.health import compute_health, pipeline_infos
from etl_assets.pipelines.policy import partitions_def_for
from etl_assets_tests.specs import column, definitions_for, files_source, load_spec, pipeline

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DAILY_LAG = 26 * 60  # a daily load at 00:30 with two hours' grace, as the shop's orders
DAILY = pipeline(
    "events",
    [column("a", "INTEGER", nullable=False)],
    source=files_source(glob="events_*.csv", partition_regex=r"events_(?P<partition>\d{4}-\d{2}-\d{2})\.csv$"),
    partitions={"type": "daily", "start": "2024-01-01"},
    freshness={"max_lag_minutes": DAILY_LAG},
)
FLAT = pipeline("flat", [column("a", "INTEGER", nullable=False)], freshness={"max_lag_minutes": 30})
DAILY_CHECK = AssetCheckKey(AssetKey(["default", "warehouse_events"]), FRESHNESS_CHECK_NAME)
FLAT_CHECK = AssetCheckKey(AssetKey(["default", "warehouse_flat"]), FRESHNESS_CHECK_NAME)
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
EVENTS, FLAT_PIPELINE = Pipeline("default", DAILY["name"]), Pipeline("default", FLAT["name"])  # the default domain


@pytest.mark.parametrize(
    ("data_time", "limit", "passed", "lag"),
    [
        (NOW - timedelta(minutes=5), 30, True, 5.0),
        (NOW - timedelta(minutes=30), 30, True, 30.0),  # exactly the limit is still fresh
        (NOW - timedelta(minutes=31), 30, False, 31.0),
        (
            datetime(2024, 3, 2, tzinfo=UTC),
            DAILY_LAG,
            False,
            (NOW - datetime(2024, 3, 2, tzinfo=UTC)).days * 1440 + 720,
        ),
        (datetime(2026, 3, 10, tzinfo=UTC), DAILY_LAG, True, 720.0),  # yesterday's partition ends today 00:00
        (None, 30, False, None),  # never loaded
    ],
)
def test_evaluate_freshness(data_time, limit, passed, lag):
    verdict = evaluate_freshness(data_time, NOW, limit, "2024-03-01" if data_time else None)
    assert (verdict.passed, verdict.lag_minutes, verdict.max_lag_minutes) == (passed, lag, limit)
    assert verdict.fresh_until == (data_time + timedelta(minutes=limit) if passed else None)
    if data_time is not None:
        assert "2024-03-01" in verdict.description and f"limit of {limit} min" in verdict.description


def _land(data_dir: Path, partition: str) -> None:
    landing = data_dir / "landing" / pipeline_ref(EVENTS)
    landing.mkdir(parents=True, exist_ok=True)
    (landing / f"events_{partition}.csv").write_text("a\n1\n2\n")


def _check_result(result, key: AssetCheckKey):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == key]
    return evaluation


def _meta(evaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def _due(defs, instance) -> set[AssetCheckKey]:
    tick = defs.resolve_sensor_def(FRESHNESS_SENSOR).evaluate_tick(
        build_sensor_context(instance=instance, definitions=defs)
    )
    return {k for r in tick.run_requests for k in (r.asset_check_keys or [])}


def test_a_2024_partition_loaded_now_is_stale_and_yesterdays_is_fresh(tmp_path, data_dir, instance):
    defs = definitions_for(tmp_path / "specs", DAILY, FLAT)
    assert _due(defs, instance) == {DAILY_CHECK, FLAT_CHECK}  # never evaluated
    job = defs.resolve_job_def(pipeline_job_name(EVENTS))

    _land(data_dir, "2024-03-01")
    old = job.execute_in_process(instance=instance, partition_key="2024-03-01", run_config=QUIET)
    assert old.success
    stale = _check_result(old, DAILY_CHECK)  # evaluated in the run that loaded it, right after the load
    assert not stale.passed and stale.severity.value == "WARN"
    meta = _meta(stale)
    assert meta["newest_partition"] == "2024-03-01" and meta["max_lag_minutes"] == DAILY_LAG
    assert meta["data_time"] == datetime(2024, 3, 2, tzinfo=UTC).timestamp()
    assert meta["lag_minutes"] > 365 * 24 * 60
    assert "2024-03-01" in (stale.description or "")
    # a failed check waits for the next load; it is not launched again and again
    assert DAILY_CHECK not in _due(defs, instance)

    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    _land(data_dir, yesterday)
    fresh = job.execute_in_process(instance=instance, partition_key=yesterday, run_config=QUIET)
    passed = _check_result(fresh, DAILY_CHECK)
    assert passed.passed, passed.description
    assert _meta(passed)["newest_partition"] == yesterday
    assert 0 <= _meta(passed)["lag_minutes"] <= 24 * 60
    # reloading the old partition now does not make it the newest
    again = job.execute_in_process(instance=instance, partition_key="2024-03-01", run_config=QUIET)
    assert _meta(_check_result(again, DAILY_CHECK))["newest_partition"] == yesterday
    # passing and fresh for hours: not due
    assert DAILY_CHECK not in _due(defs, instance)


def test_an_unpartitioned_pipeline_loaded_now_is_fresh(tmp_path, data_dir, instance):
    landing = data_dir / "landing" / pipeline_ref(FLAT_PIPELINE)
    landing.mkdir(parents=True)
    (landing / "f.csv").write_text("a\n1\n")
    defs = definitions_for(tmp_path / "specs", FLAT)
    result = defs.resolve_job_def(pipeline_job_name(FLAT_PIPELINE)).execute_in_process(
        instance=instance, run_config=QUIET
    )
    evaluation = _check_result(result, FLAT_CHECK)
    assert evaluation.passed, evaluation.description
    assert 0 <= _meta(evaluation)["lag_minutes"] < 5
    assert "newest_partition" not in evaluation.metadata
    assert _due(defs, instance) == set()  # fresh for another half hour
    # the same load, judged 31 minutes later
    data_time, newest = data_time_of(instance, FLAT_CHECK.asset_key, None)
    assert data_time is not None and newest is None
    late = evaluate_freshness(data_time, data_time + timedelta(minutes=31), 30)
    assert not late.passed and late.lag_minutes == 31.0


def test_target_assets_carry_dagsters_freshness_policy(tmp_path, data_dir):
    graph = definitions_for(tmp_path / "specs", DAILY, FLAT).resolve_asset_graph()
    assert graph.get(DAILY_CHECK.asset_key).freshness_policy == FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=DAILY_LAG)
    )
    assert graph.get(FLAT_CHECK.asset_key).freshness_policy == FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=30)
    )
    assert graph.get(AssetKey(["default", "clean_flat"])).freshness_policy is None


def test_building_the_definitions_raises_no_supersession_warning(tmp_path, data_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = definitions_for(tmp_path / "specs", DAILY, FLAT, shop=True)
        defs.resolve_asset_graph()
        defs.resolve_sensor_def(FRESHNESS_SENSOR)
    superseded = [str(w.message) for w in caught if issubclass(w.category, SupersessionWarning)]
    assert superseded == []


def test_pipeline_health_measures_the_same_data_lag_as_the_check(tmp_path, data_dir, instance):
    defs = definitions_for(tmp_path / "specs", DAILY)
    _land(data_dir, "2024-03-01")
    assert (
        defs.resolve_job_def(pipeline_job_name(EVENTS))
        .execute_in_process(instance=instance, partition_key="2024-03-01", run_config=QUIET)
        .success
    )
    infos = pipeline_infos([load_spec(tmp_path / "specs", DAILY)])
    (row,) = compute_health(instance, infos, timedelta(hours=24), {})
    # loaded seconds ago, but its data ends on 2024-03-02: the health table calls it stale, as the check does
    assert row.last_success_at is not None and datetime.now(UTC) - row.last_success_at < timedelta(minutes=10)
    lag = (datetime.now(UTC) - datetime(2024, 3, 2, tzinfo=UTC)).total_seconds() / 60
    assert row.freshness_lag_minutes == pytest.approx(lag, abs=10)
    assert row.stale


def test_partitions_that_end_are_fresh_once_the_last_is_loaded(tmp_path, data_dir, instance):
    # a finished span: no newer partition can come, so old data whose last partition is loaded is as fresh as it gets
    week = {**DAILY, "partitions": {"type": "daily", "start": "2024-01-01", "last": "2024-01-03"}}
    defs = definitions_for(tmp_path / "specs", week)
    job = defs.resolve_job_def(pipeline_job_name(EVENTS))
    _land(data_dir, "2024-01-02")
    before = _check_result(
        job.execute_in_process(instance=instance, partition_key="2024-01-02", run_config=QUIET), DAILY_CHECK
    )
    assert not before.passed and "over the limit" in (before.description or "")
    _land(data_dir, "2024-01-03")
    done = _check_result(
        job.execute_in_process(instance=instance, partition_key="2024-01-03", run_config=QUIET), DAILY_CHECK
    )
    assert done.passed, done.description
    assert (done.description or "").startswith(
        "the last partition 2024-01-03 is loaded: the partitions end with it (partitions.last), so no newer data can come"
    )
    assert _meta(done)["span_complete"] is True and "fresh_until" not in done.metadata
    assert DAILY_CHECK not in _due(defs, instance)  # the verdict stands until a load: not launched again and again
    (row,) = compute_health(instance, pipeline_infos([load_spec(tmp_path / "specs", week)]), timedelta(hours=24), {})
    assert row.complete and not row.stale

    # the span moved back (last: 2024-01-02): the partition past it is no longer the data's newest, nor complete
    shorter = load_spec(tmp_path / "other", {**week, "partitions": {**week["partitions"], "last": "2024-01-02"}})
    pdef = partitions_def_for(shorter.spec)
    assert data_time_of(instance, DAILY_CHECK.asset_key, pdef) == (datetime(2024, 1, 3, tzinfo=UTC), "2024-01-02")
