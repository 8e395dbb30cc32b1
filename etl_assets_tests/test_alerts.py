"""Protects alert delivery (``etl_assets/monitoring/alerts.py``): each sink against a real HTTP server on loopback
(webhook retries and backoff, Slack through dagster-slack), one failing sink not keeping the others from an alert, the
environment binding of the alert settings, and alerts sent even when the error store cannot write."""

from __future__ import annotations

import json

import duckdb
import pytest
from dagster import EnvVar

from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.monitoring.alerts import (
    Alert,
    AlertDeliveryError,
    AlertSinks,
    SlackSink,
    WebhookSink,
    build_alert_sinks,
)
from etl_assets.monitoring.error_tracking import ErrorStore
from etl_assets.resources.targets import DuckDBWarehouse
from etl_assets_tests.recorder import Recorder

SECRET_PATH = "hooks/T000/B000/s3cr3t-webhook-path"
ORDERS = Pipeline("shop", "orders")


def _alert(**overrides) -> Alert:
    fields = dict(
        kind="run_failure",
        title=f"{pipeline_job_name(ORDERS)} failed (transient)",
        text="Run r1 failed.",
        url="http://127.0.0.1:3000/runs/r1",
        run_id="r1",
        job=pipeline_job_name(ORDERS),
        pipeline=pipeline_ref(ORDERS),
        error_class="transient",
        dedupe_key="run:r1",
        occurred_at="2024-03-05T00:31:00+00:00",
    )
    return Alert(**{**fields, **overrides})


def test_webhook_retries_5xx_with_backoff_then_delivers():
    sleeps = []
    with Recorder(statuses=[503, 502]) as hook:
        WebhookSink(f"{hook.url}/{SECRET_PATH}", max_attempts=4, backoff_seconds=0.2, sleep=sleeps.append).send(
            _alert()
        )
    assert [r["method"] for r in hook.requests] == ["POST"] * 3
    assert all(r["path"] == f"/{SECRET_PATH}" for r in hook.requests)
    assert hook.json_bodies() == [_alert().to_json()] * 3  # the same alert each attempt
    assert hook.requests[0]["headers"]["Content-Type"] == "application/json"
    # exponential backoff with full jitter: attempt n waits at most backoff * 2**(n-1)
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.2 and 0 <= sleeps[1] <= 0.4


def test_webhook_does_not_retry_a_4xx_and_keeps_the_url_out_of_the_error():
    with Recorder(statuses=[400]) as hook:
        with pytest.raises(AlertDeliveryError) as raised:
            WebhookSink(f"{hook.url}/{SECRET_PATH}", max_attempts=4, sleep=lambda s: None).send(_alert())
    assert len(hook.requests) == 1
    assert "HTTP 400" in str(raised.value)
    assert "s3cr3t" not in str(raised.value) and "hooks" not in str(raised.value)


def test_webhook_retries_a_timeout_and_gives_up_after_max_attempts():
    with Recorder(delays=[1.0]) as hook:  # first answer comes too late, the second at once
        WebhookSink(hook.url, timeout_seconds=0.3, max_attempts=3, sleep=lambda s: None).send(_alert())
    assert len(hook.requests) == 2
    with Recorder(default_status=500) as hook:
        with pytest.raises(AlertDeliveryError, match="3 attempts failed, last with HTTP 500"):
            WebhookSink(f"{hook.url}/{SECRET_PATH}", max_attempts=3, sleep=lambda s: None).send(_alert())
    assert len(hook.requests) == 3


def test_slack_sink_posts_through_dagster_slack_with_the_bot_token():
    slack_ok = {"ok": True, "channel": "C123", "ts": "1700000000.000100"}
    with Recorder(body=slack_ok) as slack:
        SlackSink("xoxb-secret-token", "#etl-alerts", api_url=f"{slack.url}/api/").send(_alert())
    request = slack.requests[0]
    assert request["path"] == "/api/chat.postMessage"
    assert request["headers"]["Authorization"] == "Bearer xoxb-secret-token"
    body = json.loads(request["body"])
    assert body["channel"] == "#etl-alerts"
    assert "shop__orders_pipeline failed (transient)" in body["text"]
    assert "<http://127.0.0.1:3000/runs/r1|Open in Dagster>" in body["text"]
    with Recorder(body={"ok": False, "error": "channel_not_found"}) as slack:
        with pytest.raises(AlertDeliveryError, match="channel_not_found") as raised:
            SlackSink("xoxb-secret-token", "#nope", api_url=f"{slack.url}/api/").send(_alert())
    assert "xoxb" not in str(raised.value)


def test_a_failing_sink_does_not_keep_the_others_from_the_alert(tmp_path, caplog):
    with Recorder(statuses=[404]) as hook:
        sinks = AlertSinks(jsonl_path=str(tmp_path / "alerts.jsonl"), webhook_url=f"{hook.url}/{SECRET_PATH}")
        report = sinks.send(_alert())
    assert report.delivered == ["jsonl"] and list(report.failed) == ["webhook"]
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [_alert().to_json()]
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in report.failed["webhook"]


def test_alert_settings_are_bound_from_the_environment_by_name():
    env = {
        "ETL_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/x",
        "SLACK_BOT_TOKEN": "xoxb-1",
        "ETL_ALERT_SLACK_CHANNEL": "#c",
        "ETL_UI_BASE_URL": "http://ui:3000",
    }
    sinks = build_alert_sinks(env.get)
    for field, name in [
        ("webhook_url", "ETL_ALERT_WEBHOOK_URL"),
        ("slack_token", "SLACK_BOT_TOKEN"),
        ("slack_channel", "ETL_ALERT_SLACK_CHANNEL"),
        ("ui_base_url", "ETL_UI_BASE_URL"),
    ]:
        value = getattr(sinks, field)
        assert isinstance(value, EnvVar) and value == name  # the name is bound, not the value
    assert "xoxb-1" not in repr(sinks)
    bare = build_alert_sinks({}.get)
    assert bare.webhook_url is None and bare.slack_token is None and bare.ui_base_url == "http://127.0.0.1:3000"
    assert [s.name for s in bare.sinks()] == ["jsonl"]
    # a token without a channel (or the reverse) does not turn Slack on
    assert build_alert_sinks({"SLACK_BOT_TOKEN": "x"}.get).slack_token is None


@pytest.mark.slow
def test_alerts_never_depend_on_the_error_store(data_dir, tmp_path, instance, monkeypatch):
    """A corrupt warehouse file: a failed run is still alerted (file and webhook), its error record is spooled, and
    once the file is repaired the check-failure sensor's next tick writes it to ``ops.errors``."""
    from dagster import build_sensor_context

    from etl_assets_tests.specs import column, definitions_for, pipeline

    spec = pipeline("empty", [column("a", "INTEGER", nullable=False)], retry={"max_retries": 0})
    monkeypatch.delenv("ETL_ALERT_FILE", raising=False)
    with Recorder() as hook:
        monkeypatch.setenv("ETL_ALERT_WEBHOOK_URL", f"{hook.url}/{SECRET_PATH}")
        defs = definitions_for(tmp_path / "specs", spec)
        assert defs.resources is not None
        resources = {"alerting": defs.resources["alerting"], "warehouse": defs.resources["warehouse"]}

        def tick(name, cursor):
            return defs.resolve_sensor_def(name).evaluate_tick(
                build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs)
            )

        run_cursor = tick("alert_on_run_failure", None).cursor
        check_cursor = tick("alert_on_check_failure", None).cursor
        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        failed = defs.resolve_job_def(pipeline_job_name(Pipeline("default", "empty"))).execute_in_process(
            instance=instance, raise_on_error=False, run_config=quiet
        )
        assert not failed.success
        warehouse = data_dir / "warehouse.duckdb"
        garbage = b"\x00not a duckdb file\xff" * 4096
        warehouse.write_bytes(garbage)

        result = tick("alert_on_run_failure", run_cursor)  # does not raise: the alert went out, the record waits
        assert result.cursor != run_cursor
        alerts = [json.loads(line) for line in (data_dir / "alerts" / "alerts.jsonl").read_text().splitlines()]
        assert [(a["run_id"], a["error_class"]) for a in alerts] == [(failed.run_id, "permanent")]
        assert [json.loads(r["body"])["run_id"] for r in hook.requests] == [failed.run_id]
        store = ErrorStore(DuckDBWarehouse())
        assert store.pending() == 1
        assert warehouse.read_bytes() == garbage  # nothing written into (or over) the broken file

        # still broken: the check sensor's tick retries, keeps the record, and says so
        still = tick("alert_on_check_failure", check_cursor)
        assert still.skip_message is not None and "spooled error records still pending" in still.skip_message
        assert store.pending() == 1

        warehouse.unlink()  # repaired (restored from a backup, here: a fresh file)
        repaired = tick("alert_on_check_failure", still.cursor)
        assert repaired.skip_message is not None and "spooled error records written" in repaired.skip_message
        assert store.pending() == 0
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT run_id, pipeline, step_key, error_class FROM ops.errors").fetchall()
    assert rows == [(failed.run_id, "default.empty", "default__raw_empty", "permanent")]
    assert len((data_dir / "alerts" / "alerts.jsonl").read_text().splitlines()) == 1  # and no second alert for it
