"""What a spec's settings become in Dagster: partitions, retries, automation, backfills, pools and schedule status."""

from __future__ import annotations

from datetime import timedelta

from dagster import (
    AutomationCondition,
    BackfillPolicy,
    Backoff,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    HourlyPartitionsDefinition,
    Jitter,
    RetryPolicy,
    TimeWindowPartitionsDefinition,
)

from etl_assets.pipelines.spec import PipelineSpec


def partitions_def_for(spec: PipelineSpec, open_ended: bool = False) -> TimeWindowPartitionsDefinition | None:
    """The spec's daily or hourly partitions (``None`` for an unpartitioned pipeline), from ``partitions.start`` to
    ``partitions.last`` when it is set.

    Args:
        open_ended: Leave out the spec's ``partitions.last``: the partitions the pipeline would have without an end
            (a schedule tells with them whether the partition that has just closed is past the end).
    """
    p = spec.partitions
    if p.type == "none":
        return None
    assert p.start is not None  # the spec's validation requires it of a partitioned pipeline
    # Dagster's end_date is exclusive: the day after the spec's (inclusive) last partition date
    end = None if p.last is None or open_ended else p.last + timedelta(days=1)
    if p.type == "daily":
        return DailyPartitionsDefinition(
            start_date=p.start.isoformat(), end_date=end.isoformat() if end else None, timezone=p.timezone
        )
    return HourlyPartitionsDefinition(
        start_date=f"{p.start.isoformat()}-00:00",
        end_date=f"{end.isoformat()}-00:00" if end else None,
        timezone=p.timezone,
    )


def automation_for(spec: PipelineSpec) -> AutomationCondition | None:
    """The spec's dependency-driven condition; ``eager`` follows Dagster's (latest time partition only)."""
    if spec.automation is None:
        return None
    if spec.automation.condition == "eager":
        return AutomationCondition.eager()
    assert spec.automation.cron is not None  # the spec's validation requires it of on_cron
    return AutomationCondition.on_cron(spec.automation.cron)


def retry_policy_for(spec: PipelineSpec) -> RetryPolicy:
    """The step retries of every asset of the pipeline."""
    r = spec.retry
    return RetryPolicy(
        max_retries=r.max_retries,
        delay=r.delay_seconds,
        backoff=Backoff.EXPONENTIAL if r.backoff == "exponential" else Backoff.LINEAR,
        jitter={"full": Jitter.FULL, "plus_minus": Jitter.PLUS_MINUS, "none": None}[r.jitter],
    )


def source_pool(spec: PipelineSpec) -> str | None:
    """The Dagster pool an API source's extracts run in: one per connection, so a backfill's many runs (one per
    partition) ask the API at most the pool's limit at a time (`dagster.yaml` default 1; raise it with
    ``dagster instance concurrency set api_<connection> N``)."""
    if spec.source is not None and spec.source.kind == "api":
        return f"api_{spec.source.connection}"
    return None


def backfill_policy_for(spec: PipelineSpec) -> BackfillPolicy | None:
    """At most ``partitions.max_per_run`` partitions per run of a backfill; unset, database, file and transform
    pipelines backfill a range in one run, API sources one partition per run.

    An API source defaults to one partition per run so that a window the API refuses fails its own run alone, and a
    backfill re-executes just that partition. A run of several partitions extracts them one after the other in one
    process (no process start-up and code location load per partition); a failure then fails the run's range.
    """
    if spec.partitions.type == "none":
        return None
    if spec.partitions.max_per_run is not None:
        return BackfillPolicy.multi_run(max_partitions_per_run=spec.partitions.max_per_run)
    if spec.source is not None and spec.source.kind == "api":
        return BackfillPolicy.multi_run(max_partitions_per_run=1)
    return BackfillPolicy.single_run()


def schedule_status_for(spec: PipelineSpec) -> DefaultScheduleStatus:
    """Whether the spec's schedule starts running or stopped."""
    assert spec.schedule is not None
    return DefaultScheduleStatus.RUNNING if spec.schedule.default_status == "running" else DefaultScheduleStatus.STOPPED
