"""Run the reference pipelines in this process against a Dagster instance (used by `etl-assets demo` and tests)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import DagsterInstance, Definitions

FULL_REFRESH_JOB = "shop_full_refresh"
DAILY_JOB = "shop_daily"


@dataclass(frozen=True)
class RunSummary:
    job: str
    partition: str | None
    run_id: str
    success: bool
    seconds: float


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_reference(
    defs: Definitions, instance: DagsterInstance, partitions: Sequence[str], quiet: bool = True
) -> list[RunSummary]:
    """Materialize the shop domain: the unpartitioned datasets once, then each daily partition in turn.

    Returns:
        One summary per run; the first failure stops the sequence.
    """
    summaries = []
    plan: list[tuple[str, str | None]] = [(FULL_REFRESH_JOB, None)] + [(DAILY_JOB, p) for p in partitions]
    for job_name, partition in plan:
        started = time.perf_counter()
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET if quiet else None
        )
        summaries.append(RunSummary(job_name, partition, result.run_id, result.success, time.perf_counter() - started))
        if not result.success:
            break
    return summaries
