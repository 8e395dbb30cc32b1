"""Freshness checks from the specs' ``freshness: {max_lag_minutes: N}``.

Each pipeline with a freshness limit gets a Dagster freshness check (``freshness_check``) on its target assets
(``warehouse/<name>``, ``postgres/<name>``): it passes while the latest materialization is younger than the
limit and fails (severity WARN) once it is older. ``freshness_checks_sensor`` (running by default) evaluates
each check when it may have changed state, so a stale table shows up in the UI and, through
``alert_on_check_failure``, as an alert.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

from dagster import (
    AssetChecksDefinition,
    DefaultSensorStatus,
    SensorDefinition,
    SupersessionWarning,
    build_last_update_freshness_checks,
    build_sensor_for_freshness_checks,
)

from etl_assets.monitoring.health import PipelineInfo

FRESHNESS_SENSOR = "freshness_checks_sensor"
FRESHNESS_CHECK_NAME = "freshness_check"


def build_freshness(pipelines: Sequence[PipelineInfo], minimum_interval_seconds: int = 60
                    ) -> tuple[list[AssetChecksDefinition], list[SensorDefinition]]:
    """Freshness checks for every pipeline with ``max_lag_minutes``, and the sensor that evaluates them.

    Returns:
        ``(checks, sensors)``; both empty when no pipeline declares freshness.
    """
    by_lag: dict[int, list] = defaultdict(list)
    for info in pipelines:
        if info.max_lag_minutes is not None and info.targets:
            by_lag[info.max_lag_minutes].extend(info.targets)
    if not by_lag:
        return [], []
    checks: list[AssetChecksDefinition] = []
    with warnings.catch_warnings():
        # Dagster marks these builders as superseded by FreshnessPolicy; they are what this platform uses.
        warnings.simplefilter("ignore", SupersessionWarning)
        for lag, keys in sorted(by_lag.items()):
            checks += build_last_update_freshness_checks(assets=keys, lower_bound_delta=timedelta(minutes=lag))
        sensor = build_sensor_for_freshness_checks(
            freshness_checks=checks, name=FRESHNESS_SENSOR, default_status=DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=minimum_interval_seconds,
        )
    return checks, [sensor]
