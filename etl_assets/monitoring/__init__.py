"""Monitoring: error tracking, alerts, pipeline health, freshness checks (built with each pipeline, see
:func:`etl_assets.monitoring.freshness.freshness_checks_for`) and Prometheus metrics.

:func:`build_monitoring` gives the definitions the code location merges in. Building them touches neither the
network nor the Dagster instance: the sensors, the health asset and the metrics server read the instance when
they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dagster import Definitions

from etl_assets.monitoring.alerts import AlertSinks, build_alert_sinks
from etl_assets.monitoring.health import build_health, pipeline_infos
from etl_assets.monitoring.sensors import build_check_failure_sensor, build_run_failure_sensor
from etl_assets.monitoring.spec_errors import build_spec_error_sensor
from etl_assets.pipelines.spec import BrokenSpec, LoadedSpec

ALERTING_RESOURCE = "alerting"


def build_monitoring(
    specs: Sequence[LoadedSpec], env: Callable[[str], str | None], broken: Sequence[BrokenSpec] = ()
) -> Definitions:
    """Monitoring definitions for ``specs``.

    Args:
        specs: The loaded pipeline specs of the code location.
        broken: The specs set aside as invalid: the sensor ``invalid_pipeline_specs`` reports them.
        env: Looks up whether an environment variable is set (``os.environ.get``); settings that are set are
            bound with ``EnvVar`` (read when a resource initializes, never logged).

    Returns:
        The asset ``ops/pipeline_health``, its job ``pipeline_health_job`` and its hourly
        ``pipeline_health_schedule`` (stopped by default); the sensors ``alert_on_run_failure``,
        ``alert_on_check_failure`` and, when a spec is invalid, ``invalid_pipeline_specs``; and the resource
        ``alerting`` (the alert sinks). The sensors and the health asset also use ``warehouse``, which the
        pipelines' resources provide.
    """
    infos = pipeline_infos(specs)
    names = [i.name for i in infos]
    health_asset, health_job, health_schedule = build_health(infos)
    return Definitions(
        assets=[health_asset],
        sensors=[
            build_run_failure_sensor(names),
            build_check_failure_sensor(names),
            *filter(None, [build_spec_error_sensor(broken, ALERTING_RESOURCE)]),
        ],
        schedules=[health_schedule],
        jobs=[health_job],
        resources={ALERTING_RESOURCE: build_alert_sinks(env)},
    )


__all__ = ["AlertSinks", "build_monitoring"]
