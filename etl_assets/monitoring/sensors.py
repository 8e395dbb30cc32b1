"""Alerting sensors: one alert per failed run (with its error recorded) and one per failed asset check.

Both are exactly-once per event:

* ``alert_on_run_failure`` is a run-failure sensor: Dagster's cursor moves past each failed run once. On top of
  that, the run gets the tag ``etl/alert_sent`` after its alert went out, and a run carrying that tag is never
  alerted again (a daemon that died between sending and saving its cursor, or a second sensor, repeats
  nothing).
* ``alert_on_check_failure`` follows run-finished events through a storage-id cursor and reads each finished
  run's ``ASSET_CHECK_EVALUATION`` events from the instance's event log once.

Alerts never depend on the error store: a failed run's alert is sent first, then its error records are written to
``ops.errors``; when the warehouse cannot take them (locked, corrupt), they wait in the error store's spool and
``alert_on_check_failure`` retries them every tick.
"""

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from dagster import (
    AssetCheckEvaluation,
    DagsterEventType,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusChangeRecordsFilter,
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
from etl_assets.redact import redact
from etl_assets.resources.targets import DuckDBWarehouse

TAG_ALERT_SENT = "etl/alert_sent"
RUN_FAILURE_SENSOR = "alert_on_run_failure"
CHECK_FAILURE_SENSOR = "alert_on_check_failure"
RUNS_PER_TICK = 50
# How long a check-sensor tick waits for the warehouse to write spooled error records (a load may hold it).
SPOOL_FLUSH_WAIT_SECONDS = 2.0
CHECKS_PER_RUN = 10_000
FINISHED_EVENTS = (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)


def run_failure_alert(records: list[ErrorRecord], run, ui_base_url: str) -> Alert:
    """The alert for a failed run, summarizing its classified failures.

    Args:
        records: The run's error records (at least one), from :func:`records_for_failed_run`.
        run: The failed ``DagsterRun``.
        ui_base_url: Base URL of the Dagster UI, for the link to the run.
    """
    first = records[0]
    classes = sorted({r.error_class for r in records})
    steps = "; ".join(
        f"{r.step_key} ({r.error_class}): {r.message.splitlines()[0] if r.message else ''}" for r in records
    )
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


def _record(context, store: ErrorStore, records: list[ErrorRecord], run_id: str) -> None:
    """Record ``records`` in ``ops.errors``; a failure is logged (the records wait in the spool for a later write)."""
    try:
        stored = store.record(records)
    except Exception as exc:  # noqa: BLE001 - the spool itself failed (disk full): say so, the alert is out already
        context.log.error(
            f"run {run_id}: {len(records)} error record(s) could not be recorded nor spooled "
            f"({type(exc).__name__}: {redact(str(exc))}): "
            + redact(json.dumps([r.to_json() for r in records], sort_keys=True))
        )
        return
    if not stored:
        context.log.warning(
            f"run {run_id}: {len(records)} error record(s) spooled in {store.spool_path}, to be "
            f"written to ops.errors later; the warehouse could not take them: {store.last_problem}"
        )


def flush_spooled_errors(context, store: ErrorStore) -> str:
    """Write spooled error records to ``ops.errors`` if there are any; returns what happened, for the tick's message."""
    if not store.has_pending():
        return ""
    try:
        written = store.flush()
    except Exception as exc:  # noqa: BLE001 - a broken spool must not stop check alerts
        context.log.error(f"spooled error records could not be read: {type(exc).__name__}: {redact(str(exc))}")
        return "; spooled error records unreadable"
    if written:
        context.log.info("spooled error records written to ops.errors")
        return "; spooled error records written"
    context.log.warning(f"spooled error records still pending: {store.last_problem}")
    return "; spooled error records still pending"


def build_run_failure_sensor(pipelines: Iterable[str]):
    """``alert_on_run_failure``: classify the failed run, alert every sink, then record it in ``ops.errors``.

    Args:
        pipelines: The code location's pipeline (spec) names, to name the pipeline a failed step belongs to.
    """
    names = sorted(pipelines)

    @run_failure_sensor(
        name=RUN_FAILURE_SENSOR,
        monitor_all_code_locations=True,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15,
        description="For every failed run: classify the failure, send one alert (file, webhook, Slack) linking to "
        "the run, then record it in ops.errors (spooled while the warehouse cannot take it).",
    )
    def alert_on_run_failure(context: RunFailureSensorContext, alerting: AlertSinks, warehouse: DuckDBWarehouse):
        # Returning None (not a SkipReason) lets Dagster go on to the next failed run in the same tick.
        run = context.dagster_run
        if run.tags.get(TAG_ALERT_SENT):
            context.log.info(f"run {run.run_id} was already alerted at {run.tags[TAG_ALERT_SENT]}")
            return None
        record = context.instance.get_run_record_by_id(run.run_id)
        failed_at = datetime.fromtimestamp(record.end_time, UTC) if record and record.end_time else None
        records = records_for_failed_run(
            context.instance,
            run,
            context.get_step_failure_events(),
            context.failure_event.message or "",
            names,
            failed_at,
        )
        # The alert goes out first: it must never depend on the error store (a corrupt or locked warehouse).
        report = alerting.send(run_failure_alert(records, run, alerting.ui_base_url))
        context.instance.add_run_tags(run.run_id, {TAG_ALERT_SENT: datetime.now(UTC).isoformat()})
        context.log.info(
            f"run {run.run_id}: {', '.join(r.error_class for r in records)}; alert sent to "
            f"{', '.join(report.delivered) or 'no sink'}"
        )
        _record(context, ErrorStore(warehouse), records, run.run_id)
        if report.failed:
            # Fails the tick so the problem shows in the UI; the run is tagged, so it is not alerted twice.
            raise AlertDeliveryError("; ".join(f"{name}: {why}" for name, why in sorted(report.failed.items())))
        return None

    return alert_on_run_failure


def _run_finished_events(instance, after: int | None, limit: int) -> tuple[list, int | None]:
    """Run-finished events (success, failure, cancellation) after storage id ``after``, oldest first.

    Returns:
        ``(records, safe_cursor)``: the records up to ``safe_cursor``, the highest storage id below which no
        finished run has been left out (each event type is fetched separately, each up to ``limit``).
    """
    batches = []
    for event_type in FINISHED_EVENTS:
        result = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=after), limit=limit, ascending=True
        )
        batches.append(result.records)
    records = sorted((r for batch in batches for r in batch), key=lambda r: r.storage_id)
    full = [batch[-1].storage_id for batch in batches if len(batch) >= limit]
    safe = min(full) if full else (records[-1].storage_id if records else after)
    return [r for r in records if r.storage_id <= safe], safe


def _latest_run_finished_storage_id(instance) -> int:
    latest = [
        instance.fetch_run_status_changes(RunStatusChangeRecordsFilter(event_type=t), limit=1, ascending=False)
        for t in FINISHED_EVENTS
    ]
    return max([r.records[0].storage_id for r in latest if r.records], default=0)


def check_failure_alert(
    evaluation: AssetCheckEvaluation,
    run_id: str,
    job: str,
    partition: str,
    timestamp: float,
    pipelines: Iterable[str],
    ui_base_url: str,
) -> Alert:
    """The alert for one failed asset check evaluation.

    Args:
        evaluation: The failed evaluation.
        run_id: The run that evaluated it ("" for a runless report; the link then goes to the asset's checks).
        job: That run's job name.
        partition: The partition checked, if any.
        timestamp: When the evaluation was stored (Unix time).
        pipelines: The code location's pipeline names.
        ui_base_url: Base URL of the Dagster UI.
    """
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
        occurred_at=datetime.fromtimestamp(timestamp, UTC).isoformat(),
        dedupe_key=f"check:{run_id or 'runless'}:{asset}:{evaluation.check_name}:{partition}",
    )


def build_check_failure_sensor(pipelines: Iterable[str]):
    """``alert_on_check_failure``: one alert per failed asset check evaluation of every finished run.

    The cursor is the storage id of the last run-finished event handled (Dagster's run status change index,
    the same one run status sensors use); each finished run's ``ASSET_CHECK_EVALUATION`` events are read once.
    The first tick starts at the newest finished run (no alert storm for history). Check results reported
    outside any run (``report_runless_asset_event``) are not covered.
    """
    names = sorted(pipelines)

    @sensor(
        name=CHECK_FAILURE_SENSOR,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="One alert (file, webhook, Slack) per failed asset check evaluation, with a link to its run.",
    )
    def alert_on_check_failure(context: SensorEvaluationContext, alerting: AlertSinks, warehouse: DuckDBWarehouse):
        instance = context.instance
        # error records spooled when the warehouse could not take them are retried here, every tick
        flushed = flush_spooled_errors(context, ErrorStore(warehouse, wait_seconds=SPOOL_FLUSH_WAIT_SECONDS))
        if context.cursor is None:
            start = _latest_run_finished_storage_id(instance)
            return SensorResult(
                cursor=str(start),
                skip_reason=SkipReason(
                    f"first tick: watching asset checks of runs finishing after storage id {start}{flushed}"
                ),
            )
        finished, cursor = _run_finished_events(instance, int(context.cursor), RUNS_PER_TICK)
        sent, problems = 0, []
        for record in finished:
            run = instance.get_run_by_id(record.run_id)
            evaluations = instance.get_records_for_run(
                record.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION, limit=CHECKS_PER_RUN
            ).records
            for entry in (e.event_log_entry for e in evaluations):
                evaluation = entry.get_dagster_event().event_specific_data
                if not isinstance(evaluation, AssetCheckEvaluation) or evaluation.passed:
                    continue
                partition = evaluation.partition or (run.tags.get("dagster/partition", "") if run else "") or ""
                alert = check_failure_alert(
                    evaluation,
                    record.run_id,
                    run.job_name if run else "",
                    partition,
                    entry.timestamp,
                    names,
                    alerting.ui_base_url,
                )
                report = alerting.send(alert)
                sent += 1
                problems += [f"{alert.dedupe_key} -> {name}: {why}" for name, why in sorted(report.failed.items())]
        for problem in problems:
            context.log.error(f"alert delivery failed: {problem}")
        message = f"{sent} failed check(s) alerted from {len(finished)} finished run(s)"
        if problems:
            message += f"; {len(problems)} delivery failure(s), first: {problems[0]}"
        message += flushed
        return SensorResult(cursor=str(cursor), skip_reason=SkipReason(message))

    return alert_on_check_failure
