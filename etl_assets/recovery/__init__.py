"""Recovery: the run-worker watchdog (crashed local runs get retried), retention of raw inputs and rebuilds.

:func:`build_recovery` gives the definitions the code location merges in; :mod:`etl_assets.recovery.rebuild`
backs `etl-assets rebuild`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from etl_assets.pipelines.spec import LoadedSpec
from etl_assets.recovery.retention import build_retention
from etl_assets.recovery.sensors import build_watchdog_sensor


@dataclass
class RecoveryDefinitions:
    """What recovery adds: ``run_worker_watchdog``, ``lake_retention_job`` and its daily schedule."""

    sensors: list = field(default_factory=list)
    jobs: list = field(default_factory=list)
    schedules: list = field(default_factory=list)


def build_recovery(specs: Sequence[LoadedSpec], env: Callable[[str], str | None]) -> RecoveryDefinitions:
    """Recovery definitions; ``ETL_WATCHDOG_INTERVAL_SECONDS`` (default 30) sets how often dead workers are looked for."""
    retention_job, retention_schedule = build_retention(specs)
    interval = int(env("ETL_WATCHDOG_INTERVAL_SECONDS") or 30)
    return RecoveryDefinitions(sensors=[build_watchdog_sensor(interval)], jobs=[retention_job],
                               schedules=[retention_schedule])


__all__ = ["RecoveryDefinitions", "build_recovery"]
