"""Alerting sensors: one alert per failed run (with its error recorded) and one per failed asset check.

Both are exactly-once per event:

* ``alert_on_run_failure`` is a run-failure sensor: Dagster's cursor moves past each failed run once. On top of
  that, the run gets the tag ``etl/alert_sent`` after its alert went out, and a run carrying that tag is never
  alerted again (a daemon that died between sending and saving its cursor, or a second sensor, repeats
  nothing).
* ``alert_on_check_failure`` reads ``ASSET_CHECK_EVALUATION`` events from the instance's event log after the
  storage id in its cursor, so each evaluation is looked at once.
"""


from collections.abc import Iterable
from datetime import datetime, timezone

from dagster import (
    AssetCheckEvaluation,
    DagsterEventType,
    DefaultSensorStatus,
    EventRecordsFilter,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from etl_assets.monitoring.alerts import (
    CHECK_FAILURE,
    RUN_FAILURE,
    Alert,
    AlertDeliveryError,
    AlertSinks,
    asset_checks_url,
    run_url,
)
from etl_assets.monitoring.error_tracking import ErrorRecord, ErrorStore, pipeline_for_asset, records_for_failed_run
from etl_assets.resources.targets import DuckDBWarehouse

TAG_ALERT_SENT = "etl/alert_sent"
RUN_FAILURE_SENSOR = "alert_on_run_failure"
CHECK_FAILURE_SENSOR = "alert_on_check_failure"
CHECKS_PER_TICK = 200


def run_failure_alert(records: list[ErrorRecord], run, ui_base_url: str) -> Alert:
    """The alert for a failed run, summarizing its classified failures."""
    first = records[0]
    classes = sorted({r.error_class for r in records})
    steps = "; ".join(f"{r.step_key} ({r.error_class}): {r.message.splitlines()[0] if r.message else ''}"
                      for r in records)
    partition = f" partition {first.partition}" if first.partition else ""
    return Alert(
        kind=RUN_FAILURE,
        title=f"{run.job_name}{partition} failed ({', '.join(classes)})",
        text=f"Run {run.run_id} of {run.job_name}{partition} failed. {steps}",
        url=run_url(ui_base_url, run.run_id),
        run_id=run.run_id,
        job=run.job_name,
        pipeline=first.pipeline,
        asset=first.asset_key,
        partition=first.partition,
        error_class=first.error_class,
        occurred_at=first.failed_at.isoformat(),
        dedupe_key=f"run:{run.run_id}",
    )


def build_run_failure_sensor(pipelines: Iterable[str]):
    """``alert_on_run_failure``: classify the failed run, record it in ``ops.errors``, alert every sink.

    Args:
        pipelines: The code location's pipeline (spec) names, to name the pipeline a failed step belongs to.
    """
    names = sorted(pipelines)

    @run_failure_sensor(
        name=RUN_FAILURE_SENSOR,
        monitor_all_code_locations=True,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15,
        description="For every failed run: classify the failure, record it in ops.errors and send one alert "
                    "(file, webhook, Slack) linking to the run.",
    )
    def alert_on_run_failure(context: RunFailureSensorContext, alerting: AlertSinks, warehouse: DuckDBWarehouse):
        # Returning None (not a SkipReason) lets Dagster go on to the next failed run in the same tick.
        run = context.dagster_run
        if run.tags.get(TAG_ALERT_SENT):
            context.log.info(f"run {run.run_id} was already alerted at {run.tags[TAG_ALERT_SENT]}")
            return None
        record = context.instance.get_run_record_by_id(run.run_id)
        failed_at = datetime.fromtimestamp(record.end_time, timezone.utc) if record and record.end_time else None
        records = records_for_failed_run(
            context.instance, run, context.get_step_failure_events(), context.failure_event.message or "", names,
            failed_at)
        stored = ErrorStore(warehouse).record(records)
        if not stored:
            context.log.warning(f"run {run.run_id}: warehouse busy; {len(records)} error record(s) spooled for the next write")
        report = alerting.send(run_failure_alert(records, run, alerting.ui_base_url))
        context.instance.add_run_tags(run.run_id, {TAG_ALERT_SENT: datetime.now(timezone.utc).isoformat()})
        context.log.info(f"run {run.run_id}: {', '.join(r.error_class for r in records)}; alert sent to "
                         f"{', '.join(report.delivered) or 'no sink'}")
        if report.failed:
            # Fails the tick so the problem shows in the UI; the run is tagged, so it is not alerted twice.
            raise AlertDeliveryError("; ".join(f"{name}: {why}" for name, why in sorted(report.failed.items())))
        return None

    return alert_on_run_failure


def _latest_check_storage_id(instance) -> int:
    latest = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION), limit=1, ascending=False)
    return latest[0].storage_id if latest else 0


def check_failure_alert(evaluation: AssetCheckEvaluation, run_id: str, job: str, partition: str, timestamp: float,
                        pipelines: Iterable[str], ui_base_url: str) -> Alert:
    """The alert for one failed asset check evaluation."""
    asset = evaluation.asset_key.to_user_string()
    severity = getattr(evaluation.severity, "value", str(evaluation.severity))
    description = evaluation.description or ""
    part = f" partition {partition}" if partition else ""
    url = run_url(ui_base_url, run_id) if run_id else asset_checks_url(ui_base_url, list(evaluation.asset_key.path))
    return Alert(
        kind=CHECK_FAILURE,
        title=f"check {evaluation.check_name} on {asset}{part} failed ({severity})",
        text=f"Asset check {evaluation.check_name} on {asset}{part} did not pass. {description}".strip(),
        url=url,
        run_id=run_id,
        job=job,
        pipeline=pipeline_for_asset(evaluation.asset_key, pipelines) or "",
        asset=asset,
        partition=partition,
        error_class="data_quality",
        check=evaluation.check_name,
        severity=severity,
        occurred_at=datetime.fromtimestamp(timestamp, timezone.utc).isoformat(),
        dedupe_key=f"check:{run_id or 'runless'}:{asset}:{evaluation.check_name}:{partition}",
    )


def build_check_failure_sensor(pipelines: Iterable[str]):
    """``alert_on_check_failure``: one alert per failed asset check evaluation, read through a cursor.

    The first tick starts at the newest evaluation (no alert storm for history); later ticks read at most
    200 evaluations after the cursor.
    """
    names = sorted(pipelines)

    @sensor(
        name=CHECK_FAILURE_SENSOR,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="One alert (file, webhook, Slack) per failed asset check evaluation, with a link to its run.",
    )
    def alert_on_check_failure(context: SensorEvaluationContext, alerting: AlertSinks):
        instance = context.instance
        if context.cursor is None:
            start = _latest_check_storage_id(instance)
            return SensorResult(cursor=str(start), skip_reason=SkipReason(
                f"first tick: watching asset check evaluations after storage id {start}"))
        after = int(context.cursor)
        records = instance.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
            limit=CHECKS_PER_TICK, ascending=True)
        runs: dict = {}
        sent, problems = 0, []
        for record in records:
            after = record.storage_id
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            if not isinstance(evaluation, AssetCheckEvaluation) or evaluation.passed:
                continue
            run_id = record.run_id or ""
            if run_id and run_id not in runs:
                runs[run_id] = instance.get_run_by_id(run_id)
            run = runs.get(run_id)
            partition = evaluation.partition or (run.tags.get("dagster/partition", "") if run else "") or ""
            alert = check_failure_alert(evaluation, run_id, run.job_name if run else "", partition, record.timestamp,
                                        names, alerting.ui_base_url)
            report = alerting.send(alert)
            sent += 1
            problems += [f"{alert.dedupe_key} -> {name}: {why}" for name, why in sorted(report.failed.items())]
        for problem in problems:
            context.log.error(f"alert delivery failed: {problem}")
        message = f"{sent} failed check(s) alerted out of {len(records)} evaluation(s)"
        if problems:
            message += f"; {len(problems)} delivery failure(s): {problems[0]}"
        return SensorResult(cursor=str(after), skip_reason=SkipReason(message))

    return alert_on_check_failure
