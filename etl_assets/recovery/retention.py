"""Retention of raw inputs: raw lake partitions and archived landing files older than a spec allows are removed.

Raw inputs are what a rebuild starts from (`etl-assets rebuild`), so nothing is removed unless a spec says so
(``retention: {raw_days: N, archive_days: N}``). Clean data, quarantines and targets are never touched.
"""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import (
    DefaultScheduleStatus,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    job,
    op,
)

from etl_assets.keys import raw_key
from etl_assets.lake import LakeStorage
from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec
from etl_assets.resources.files import LandingFilesSource

RETENTION_JOB = "lake_retention_job"
RETENTION_SCHEDULE = "lake_retention_schedule"


@dataclass(frozen=True)
class Expired:
    """One removed raw input."""

    pipeline: str
    kind: str  # "raw_partition" or "archived_file"
    name: str


def partition_date(partition: str) -> dt.date:
    """The day a daily (``2024-01-31``) or hourly (``2024-01-31-05:00``) partition key falls on."""
    return dt.date.fromisoformat(partition[:10])


def expire_raw_inputs(
    specs: Sequence[PipelineSpec], lake: LakeStorage, landing: LandingFilesSource, now: dt.datetime
) -> list[Expired]:
    """Remove the raw partitions and archived files that the specs' ``retention`` no longer keeps.

    A raw partition is removed when its day is more than ``raw_days`` before ``now``'s day; an archived file
    when it was last modified more than ``archive_days`` before ``now``.
    """
    removed: list[Expired] = []
    for spec in specs:
        keep = spec.retention
        if keep.raw_days is not None:
            cutoff = now.date() - dt.timedelta(days=keep.raw_days)
            for partition in lake.partitions(raw_key(spec).path):
                if partition is not None and partition_date(partition) < cutoff:
                    # under the partition's lock: never under a writer or reader of it that holds the lock
                    if lake.remove(raw_key(spec).path, partition):
                        removed.append(Expired(spec.ref, "raw_partition", partition))
        if keep.archive_days is not None:
            oldest = now.timestamp() - keep.archive_days * 86400
            for name in landing.expire_archived(spec.ref, oldest):
                removed.append(Expired(spec.ref, "archived_file", name))
    return removed


def build_retention(specs: Sequence[LoadedSpec]):
    """The retention job and its daily schedule (running by default: it removes only what specs allow)."""
    pipeline_specs = [s.spec for s in specs]
    configured = [s.ref for s in pipeline_specs if s.retention.raw_days or s.retention.archive_days]

    @op(required_resource_keys={"lake", "landing"})
    def expire_raw(context: OpExecutionContext):
        removed = expire_raw_inputs(
            pipeline_specs, context.resources.lake, context.resources.landing, dt.datetime.now(dt.UTC)
        )
        for item in removed:
            context.log.info(f"retention: removed {item.kind} {item.pipeline}/{item.name}")
        yield Output(
            len(removed),
            metadata={
                "removed": len(removed),
                "removed_items": MetadataValue.json([f"{i.pipeline}:{i.kind}:{i.name}" for i in removed][:500]),
                "pipelines_with_retention": MetadataValue.json(configured),
            },
        )

    @job(
        name=RETENTION_JOB,
        description="Remove raw lake partitions and archived landing files older than the "
        "specs' `retention` (nothing when no spec sets it).",
    )
    def lake_retention_job():
        expire_raw()

    schedule = ScheduleDefinition(
        name=RETENTION_SCHEDULE,
        job=lake_retention_job,
        cron_schedule="15 3 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Daily at 03:15 UTC: apply the specs' retention of raw inputs.",
    )
    return lake_retention_job, schedule
