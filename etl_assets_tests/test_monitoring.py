"""Monitoring against a real Dagster instance with real runs, one successful and four failing (one per error
class): error tracking in the warehouse, one alert per failed run through every sink (a JSON-lines file, a
webhook and Slack, both real HTTP servers on loopback), failed-check alerts, freshness checks, the pipeline
health asset and its chart, and the Prometheus endpoint scraped over HTTP from a separate process."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    MetadataValue,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.monitoring.health import PipelineHealth, health_markdown
from etl_assets.monitoring.sensors import TAG_ALERT_SENT
from etl_assets_tests.recorder import Recorder
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline, transform

pytestmark = [pytest.mark.slow]

UI = "http://127.0.0.1:3999"
SLACK_TOKEN = "xoxb-monitoring-test-token-never-logged"
HOOK_SECRET = "hook-s3cr3t-3f9a"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DROPS_ROWS, DROPS_BAD = 40, 1


def ref(name: str) -> str:
    """How monitoring names test pipeline ``name`` (the default domain): ``default.<name>``."""
    return pipeline_ref(Pipeline("default", name))


def job(name: str) -> str:
    """The job of test pipeline ``name``: ``default__<name>_pipeline``."""
    return pipeline_job_name(Pipeline("default", name))


FAILING = {  # pipeline -> (failed step, its asset, error class, words of the message)
    "empty": ("default__raw_empty", "default/raw_empty", "permanent", "no files matching"),
    # a contract column holding objects: the extract reads it, validation refuses it
    "shapeless": (
        f"validate_{dagster_name(Pipeline('default', 'shapeless'))}",
        "default/clean_shapeless",
        "data_quality",
        "nested values",
    ),
    "flaky": ("default__raw_flaky", "default/raw_flaky", "transient", "failed 6 times, last with http_503"),
    "broken": ("default__marts_broken", "default/marts_broken", "infrastructure", "no_such_column"),
}
FAILING_BY_REF = {ref(name): name for name in FAILING}
SHOP_PIPELINES = ("orders", "customers", "products", "fx_rates", "inventory", "orders_enriched", "daily_revenue")
SHOP = {pipeline_ref(Pipeline("shop", name)) for name in SHOP_PIPELINES}  # the packaged ones, loaded beside
FRESHNESS = AssetCheckKey(AssetKey(["default", "warehouse_drops"]), "freshness_check")


def _specs(flaky_url: str) -> list[dict]:
    never_retried = {"retry": {"max_retries": 0}}
    return [
        pipeline(
            "drops",
            [column("a", "INTEGER", nullable=False), column("b")],
            primary_key=["a"],
            freshness={"max_lag_minutes": 30},
            **never_retried,
        ),
        pipeline("empty", [column("a", "INTEGER", nullable=False)], **never_retried),
        pipeline(
            "shapeless",
            [column("a", "INTEGER", nullable=False), column("b")],
            source=files_source("ndjson"),
            **never_retried,
        ),
        pipeline(
            "flaky",
            [column("id", "BIGINT", nullable=False)],
            source={"kind": "api", "connection": "flaky_api", "default_url": flaky_url, "endpoint": "/records"},
            **never_retried,
        ),
        transform("broken", "broken.sql", ["drops"], **never_retried),
    ]


@dataclass
class World:
    instance: DagsterInstance
    defs: Definitions
    home: Path
    data: Path
    runs: dict
    webhook: Recorder
    slack: Recorder
    run_cursor: str | None
    check_cursor: str | None

    def sensor_context(self, cursor):
        assert self.defs.resources is not None
        resources = {"alerting": self.defs.resources["alerting"], "warehouse": self.defs.resources["warehouse"]}
        return build_sensor_context(instance=self.instance, cursor=cursor, resources=resources, definitions=self.defs)

    def tick(self, name: str, cursor):
        return self.defs.resolve_sensor_def(name).evaluate_tick(self.sensor_context(cursor))

    def alerts(self) -> list[dict]:
        path = self.data / "alerts" / "alerts.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def query(self, sql: str, params=None) -> list[tuple]:
        with duckdb.connect(str(self.data / "warehouse.duckdb"), read_only=True) as con:
            return con.execute(sql, params or []).fetchall()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("monitoring")
    data, specs, home = root / "data", root / "specs", root / "dagster_home"
    for d in (data, specs, home):
        d.mkdir()
    slack_ok = {"ok": True, "channel": "C0ALERTS", "ts": "1700000000.000100"}
    with (
        pytest.MonkeyPatch.context() as mp,
        Recorder() as webhook,
        Recorder(body=slack_ok) as slack,
        Recorder(default_status=503, headers={"Retry-After": "0"}) as flaky_api,
    ):
        mp.setenv("ETL_DATA_DIR", str(data))
        mp.delenv("ETL_ENV", raising=False)
        mp.delenv("ETL_ALERT_FILE", raising=False)
        mp.setenv("ETL_UI_BASE_URL", UI)
        mp.setenv("ETL_ALERT_WEBHOOK_URL", f"{webhook.url}/{HOOK_SECRET}")
        mp.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
        mp.setenv("ETL_ALERT_SLACK_CHANNEL", "#etl-alerts")
        mp.setenv("ETL_ALERT_SLACK_API_URL", f"{slack.url}/api/")
        (specs / "broken.sql").write_text("SELECT no_such_column FROM drops\n")
        landing = data / "landing"
        (landing / ref("drops")).mkdir(parents=True)
        rows = "".join(f"{i},row{i}\n" for i in range(1, DROPS_ROWS - DROPS_BAD + 1)) + "not-a-number,bad\n"
        (landing / ref("drops") / "d.csv").write_text("a,b\n" + rows)
        (landing / ref("shapeless")).mkdir()
        (landing / ref("shapeless") / "s.ndjson").write_text('{"a": {"nested": 1}, "b": "x"}\n')
        with instance_for_test(temp_dir=str(home)) as instance:
            defs = definitions_for(specs, *_specs(flaky_api.url), shop=True)
            world = World(instance, defs, home, data, {}, webhook, slack, "", "")
            # first ticks only set the cursors (no alerts for history); they must precede the runs
            world.run_cursor = world.tick("alert_on_run_failure", None).cursor
            world.check_cursor = world.tick("alert_on_check_failure", None).cursor
            for name in ["drops", *FAILING]:
                world.runs[name] = defs.resolve_job_def(job(name)).execute_in_process(
                    instance=instance, raise_on_error=False, run_config=QUIET
                )
            assert world.runs["drops"].success, "the successful pipeline failed; see its events"
            assert not any(world.runs[name].success for name in FAILING)
            yield world


def _run_alerts_until_quiet(world: World) -> list:
    """Evaluate the run-failure sensor from the initial cursor until it has nothing left; return the ticks."""
    ticks, cursor = [], world.run_cursor
    for _ in range(5):
        result = world.tick("alert_on_run_failure", cursor)
        ticks.append(result)
        if result.cursor == cursor:
            break
        cursor = result.cursor
    return ticks


def test_each_failed_run_is_classified_recorded_and_alerted_exactly_once(world, caplog):
    ticks = _run_alerts_until_quiet(world)
    assert len(ticks) >= 2 and ticks[-1].cursor == ticks[-2].cursor  # the last tick found nothing new
    # replaying from the very first cursor (a daemon that lost its cursor) alerts nobody again
    _run_alerts_until_quiet(world)

    failed = {name: world.runs[name].run_id for name in FAILING}
    rows = world.query(
        "SELECT run_id, job_name, pipeline, step_key, asset_key, partition_key, error_class, message,"
        " failed_at FROM ops.errors ORDER BY pipeline"
    )
    assert sorted((r[2], r[1], r[3], r[4], r[6]) for r in rows) == sorted(
        (ref(name), job(name), step, asset, cls) for name, (step, asset, cls, _) in FAILING.items()
    )
    for run_id, _, owner, *_, message, failed_at in rows:
        name = FAILING_BY_REF[owner]
        assert run_id == failed[name]
        assert FAILING[name][3] in message, message
        record = world.instance.get_run_record_by_id(run_id)
        assert abs(failed_at.timestamp() - record.end_time) < 1
    summary = world.query("SELECT pipeline, error_class, errors, runs, last_seen IS NOT NULL FROM ops.error_summary")
    assert sorted(summary) == sorted((ref(name), cls, 1, 1, True) for name, (_, _, cls, _) in FAILING.items())

    alerts = [a for a in world.alerts() if a["kind"] == "run_failure"]
    assert sorted(a["run_id"] for a in alerts) == sorted(failed.values())  # one per failed run, none for drops
    for alert in alerts:
        name = FAILING_BY_REF[alert["pipeline"]]
        assert alert["url"] == f"{UI}/runs/{failed[name]}"
        assert alert["error_class"] == FAILING[name][2] and alert["job"] == job(name)
        assert alert["asset"] == FAILING[name][1]
        assert world.instance.get_run_by_id(failed[name]).tags.get(TAG_ALERT_SENT)

    hooks = [r for r in world.webhook.requests]
    assert [r["path"] for r in hooks] == [f"/{HOOK_SECRET}"] * len(alerts)
    assert sorted(json.loads(r["body"])["run_id"] for r in hooks) == sorted(failed.values())
    posts = world.slack.requests
    assert [p["path"] for p in posts] == ["/api/chat.postMessage"] * len(alerts)
    assert all(p["headers"]["Authorization"] == f"Bearer {SLACK_TOKEN}" for p in posts)
    texts = sorted(json.loads(p["body"])["text"] for p in posts)
    assert all(any(f"{UI}/runs/{run_id}" in t for t in texts) for run_id in failed.values())

    # the token and the webhook's secret path appear in no log line and no alert
    everything = caplog.text + json.dumps(world.alerts())
    assert SLACK_TOKEN not in everything and HOOK_SECRET not in everything


def _freshness_check(world: World):
    assert world.defs.asset_checks is not None
    checks = [c for c in world.defs.asset_checks if FRESHNESS in c.check_keys]
    result = materialize(checks, instance=world.instance, selection=AssetSelection.checks(FRESHNESS), run_config=QUIET)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def _report_update(world: World, minutes_ago: float | None) -> None:
    """A materialization of default/warehouse_drops; with ``minutes_ago``, stating that its data dates from then."""
    metadata = {}
    if minutes_ago is not None:
        stamp = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).timestamp()
        metadata["dagster/last_updated_timestamp"] = MetadataValue.timestamp(stamp)
    world.instance.report_runless_asset_event(AssetMaterialization(FRESHNESS.asset_key, metadata=metadata))


def test_freshness_check_fails_when_the_last_update_is_older_than_the_lag(world):
    # the check belongs to the pipeline's assets, so the pipeline's own run evaluated it right after the load
    in_run = {
        c.check_name: c.passed
        for c in world.runs["drops"].get_asset_check_evaluations()
        if c.asset_key == FRESHNESS.asset_key
    }
    assert in_run["freshness_check"] is True
    # the sensor asks for checks never evaluated (the shop's), not for one that is fresh for another 30 minutes
    sensor_result = world.tick("freshness_checks_sensor", None)
    requested = {k for r in sensor_result.run_requests for k in (r.asset_check_keys or [])}
    assert {k.asset_key.path[1] for k in requested} == {
        "warehouse_orders",
        "warehouse_customers",
        "warehouse_daily_revenue",
    }

    fresh = _freshness_check(world)  # shortly after the real run that loaded default/warehouse_drops
    assert fresh.passed, fresh.description

    _report_update(world, minutes_ago=31)  # newest materialization holds data 31 minutes old; the lag is 30
    stale = _freshness_check(world)
    assert not stale.passed
    assert stale.description is not None and "over the limit of 30 min" in stale.description
    limits = {k: stale.metadata[k].value for k in ("lag_minutes", "max_lag_minutes")}
    assert isinstance(limits["lag_minutes"], float) and limits["lag_minutes"] >= 31 and limits["max_lag_minutes"] == 30

    _report_update(world, minutes_ago=None)  # a new materialization now
    again = _freshness_check(world)
    assert again.passed, again.description


def test_failed_check_evaluations_are_alerted_once_each(world):
    _report_update(world, minutes_ago=45)
    assert not _freshness_check(world).passed
    _report_update(world, minutes_ago=None)

    # every failed check evaluation of the runs that finished since the sensor started, read independently
    expected = []
    for run in world.instance.get_runs():
        for record in world.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records:
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            if not evaluation.passed:
                expected.append((run.run_id, evaluation.asset_key.to_user_string(), evaluation.check_name))
    assert any(check == "freshness_check" for _, _, check in expected)

    first = world.tick("alert_on_check_failure", world.check_cursor)
    second = world.tick("alert_on_check_failure", first.cursor)
    assert int(first.cursor) > int(world.check_cursor) and second.cursor == first.cursor
    assert "0 failed check(s)" in second.skip_message

    alerts = [a for a in world.alerts() if a["kind"] == "check_failure"]
    assert sorted((a["run_id"], a["asset"], a["check"]) for a in alerts) == sorted(expected)
    fresh_alerts = [a for a in alerts if a["check"] == "freshness_check"]
    assert all(a["asset"] == "default/warehouse_drops" and a["pipeline"] == ref("drops") for a in fresh_alerts)
    assert all(a["url"] == f"{UI}/runs/{a['run_id']}" and a["severity"] == "WARN" for a in fresh_alerts)


def test_pipeline_health_asset(world):
    _run_alerts_until_quiet(world)  # errors are recorded (idempotent when an earlier test did it)
    result = world.defs.resolve_job_def("pipeline_health_job").execute_in_process(
        instance=world.instance, run_config={**QUIET, "ops": {"ops__pipeline_health": {"config": {"window_hours": 24}}}}
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("ops__pipeline_health")
    metadata = materialization.metadata

    columns = [
        "pipeline",
        "runs",
        "succeeded",
        "failed",
        "success_rate",
        "p50_seconds",
        "p95_seconds",
        "rows_loaded",
        "records_per_hour",
        "failures_transient",
        "failures_permanent",
        "failures_data_quality",
        "failures_infrastructure",
        "freshness_lag_minutes",
        "max_lag_minutes",
        "stale",
        "window_hours",
    ]
    table = {
        r[0]: dict(zip(columns, r, strict=True))
        for r in world.query(f"SELECT {', '.join(columns)} FROM ops.pipeline_health")
    }
    assert set(table) == {ref("drops"), *FAILING_BY_REF, *SHOP}

    drops = table[ref("drops")]
    run = world.instance.get_run_record_by_id(world.runs["drops"].run_id)
    loaded = DROPS_ROWS - DROPS_BAD
    assert (drops["runs"], drops["succeeded"], drops["failed"], drops["success_rate"]) == (1, 1, 0, 1.0)
    assert 0 < drops["p50_seconds"] == drops["p95_seconds"] <= run.end_time - run.start_time
    assert drops["rows_loaded"] == loaded and drops["records_per_hour"] == pytest.approx(loaded / 24, abs=1e-3)
    assert drops["window_hours"] == 24 and drops["max_lag_minutes"] == 30
    assert 0 <= drops["freshness_lag_minutes"] < 10 and drops["stale"] is False
    for name, (_, _, cls, _) in FAILING.items():
        row = table[ref(name)]
        assert (row["runs"], row["failed"], row["success_rate"], row[f"failures_{cls}"]) == (1, 1, 0.0, 1), row
        assert sum(row[f"failures_{c}"] for c in ("transient", "permanent", "data_quality", "infrastructure")) == 1
    # the transform ran no step of drops: drops counts only its own run
    orders = table["shop.orders"]
    assert orders["runs"] == 0 and orders["success_rate"] is None
    assert orders["stale"] is True  # declares a max lag and was never loaded

    summary = metadata["summary"].value
    assert "| default.drops | 1 | 100.0% |" in summary
    assert "| default.empty | 1 | 0.0% |" in summary and "permanent 1" in summary
    chart = Path(metadata["chart_path"].value)
    assert chart == world.data / "reports" / "pipeline_health.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    # the asset page shows the chart itself: the same PNG, inline in Markdown
    embedded = metadata["chart"].value
    prefix = "![pipeline health](data:image/png;base64,"
    assert embedded.startswith(prefix) and embedded.endswith(")")
    assert base64.b64decode(embedded[len(prefix) : -1]) == chart.read_bytes()
    # each pipeline's figures are numbers Dagster can plot
    assert metadata["default.drops.success_rate"].value == 1.0 and metadata["default.drops.runs"].value == 1.0
    assert metadata["default.drops.records_per_hour"].value == pytest.approx(loaded / 24, abs=1e-3)
    assert "shop.orders.success_rate" not in metadata  # no run in the window: no point rather than a false 0


def test_rows_per_hour_of_a_pipeline_with_few_rows_is_not_shown_as_zero():
    rows = [PipelineHealth(pipeline="rare", runs=1, succeeded=1, rows_loaded=12, records_per_hour=12 / 168)]
    assert "| rare | 1 | – | – | – | 0.0714 |" in health_markdown(rows, timedelta(hours=168))
    rows = [PipelineHealth(pipeline="busy", runs=1, succeeded=1, rows_loaded=12_345 * 24, records_per_hour=12_345.0)]
    assert "| busy | 1 | – | – | – | 12,345 |" in health_markdown(rows, timedelta(hours=24))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(url: str, deadline: float) -> str:
    while True:
        try:
            response = httpx.get(url, timeout=10)
            if response.status_code == 200:
                return response.text
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no metrics at {url}")
        time.sleep(0.3)


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_prometheus_endpoint_serves_metrics_from_the_instance(world):
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(world.home)}
    code = "import sys; from etl_assets.monitoring.prometheus import main; sys.exit(main(sys.argv[1:]))"
    server = subprocess.Popen(
        [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        samples = _samples(_scrape(url, time.monotonic() + 90))
        drops_job = job("drops")
        assert samples[f'etl_runs_total{{job="{drops_job}",status="SUCCESS"}}'] == 1
        for name in FAILING:
            assert samples[f'etl_runs_total{{job="{job(name)}",status="FAILURE"}}'] == 1
        assert f'etl_runs_total{{job="{drops_job}",status="FAILURE"}}' not in samples

        loaded = DROPS_ROWS - DROPS_BAD
        assert samples['etl_rows_loaded_total{pipeline="default.drops",target="warehouse"}'] == loaded
        assert samples['etl_rows_quarantined_total{pipeline="default.drops"}'] == DROPS_BAD
        assert samples.get('etl_rows_quarantined_total{pipeline="default.empty"}', 0) == 0  # never got to validation

        run = world.instance.get_run_record_by_id(world.runs["drops"].run_id)
        assert samples[f'etl_run_duration_seconds_count{{job="{drops_job}"}}'] == 1
        assert samples[f'etl_run_duration_seconds_sum{{job="{drops_job}"}}'] == pytest.approx(
            run.end_time - run.start_time, abs=1e-6
        )
        assert samples[f'etl_run_duration_seconds_bucket{{job="{drops_job}",le="+Inf"}}'] == 1
        latest = world.instance.get_latest_materialization_event(AssetKey(["default", "warehouse_drops"])).timestamp
        assert samples['etl_last_success_timestamp_seconds{pipeline="default.drops"}'] == pytest.approx(
            latest, abs=1e-3
        )

        # a new failed run shows up in the next scrape (the collector reads only what changed)
        again = world.defs.resolve_job_def(job("empty")).execute_in_process(
            instance=world.instance, raise_on_error=False, run_config=QUIET
        )
        assert not again.success
        samples = _samples(_scrape(url, time.monotonic() + 30))
        assert samples[f'etl_runs_total{{job="{job("empty")}",status="FAILURE"}}'] == 2
        assert samples[f'etl_runs_total{{job="{drops_job}",status="SUCCESS"}}'] == 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, err = server.communicate()
    assert server.returncode == 0, err
    assert f"serving Prometheus metrics on http://127.0.0.1:{port}/metrics" in out
