"""Freshness checks from the specs' ``freshness: {max_lag_minutes: N}``.

Each pipeline with a freshness limit gets a Dagster freshness check (``freshness_check``) on its target assets
(``warehouse/<name>``, ``postgres/<name>``): it passes while the latest materialization is younger than the
limit and fails (severity WARN) once it is older. ``freshness_checks_sensor`` (running by default) evaluates
each check when it may have changed state, so a stale table shows up in the UI and, through
``alert_on_check_failure``, as an alert.
"""

from __future__ import annotations

import warnings
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

from etl_assets.keys import target_key
from etl_assets.pipelines.spec import PipelineSpec

FRESHNESS_SENSOR = "freshness_checks_sensor"
FRESHNESS_CHECK_NAME = "freshness_check"


def freshness_checks_for(spec: PipelineSpec) -> list[AssetChecksDefinition]:
    """The freshness checks of one pipeline: one per target asset when the spec declares ``max_lag_minutes``."""
    if spec.freshness is None or not spec.targets:
        return []
    with warnings.catch_warnings():
        # Dagster marks these builders as superseded by FreshnessPolicy; they are what this platform uses.
        warnings.simplefilter("ignore", SupersessionWarning)
        return list(
            build_last_update_freshness_checks(
                assets=[target_key(t, spec.name) for t in spec.targets],
                lower_bound_delta=timedelta(minutes=spec.freshness.max_lag_minutes),
            )
        )


def freshness_sensor_for(
    checks: Sequence[AssetChecksDefinition], minimum_interval_seconds: int = 60
) -> list[SensorDefinition]:
    """The sensor that evaluates the freshness ``checks`` (none when there are no checks)."""
    if not checks:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupersessionWarning)
        return [
            build_sensor_for_freshness_checks(
                freshness_checks=list(checks),
                name=FRESHNESS_SENSOR,
                default_status=DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=minimum_interval_seconds,
            )
        ]
