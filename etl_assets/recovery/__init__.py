"""Recovery: the run-worker watchdog (crashed local runs get retried) and retention of raw inputs.

:func:`build_recovery` gives the definitions the code location merges in. The operator commands that recover data
by hand (`etl-assets rebuild`, `reexecute`, `replay`) live with the CLI, in :mod:`etl_assets.cli`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dagster import Definitions

from etl_assets.pipelines.spec import LoadedSpec
from etl_assets.recovery.retention import build_retention
from etl_assets.recovery.sensors import build_watchdog_sensor


def build_recovery(specs: Sequence[LoadedSpec], env: Callable[[str], str | None]) -> Definitions:
    """Recovery definitions: ``run_worker_watchdog``, ``lake_retention_job`` and its daily schedule.

    ``ETL_WATCHDOG_INTERVAL_SECONDS`` (default 30) sets how often dead workers are looked for.
    """
    retention_job, retention_schedule = build_retention(specs)
    interval = int(env("ETL_WATCHDOG_INTERVAL_SECONDS") or 30)
    return Definitions(sensors=[build_watchdog_sensor(interval)], jobs=[retention_job], schedules=[retention_schedule])


__all__ = ["build_recovery"]
