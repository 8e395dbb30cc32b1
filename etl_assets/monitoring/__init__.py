"""Monitoring: error tracking, alerts, pipeline health, freshness checks and Prometheus metrics.

:func:`build_monitoring` gives the definitions the code location merges in. Building them touches neither the
network nor the Dagster instance: the sensors, the health asset and the metrics server read the instance when
they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from etl_assets.monitoring.alerts import AlertSinks, build_alert_sinks
from etl_assets.monitoring.freshness import build_freshness
from etl_assets.monitoring.health import build_health, pipeline_infos
from etl_assets.monitoring.sensors import build_check_failure_sensor, build_run_failure_sensor
from etl_assets.monitoring.spec_errors import build_spec_error_sensor
from etl_assets.pipelines.spec import BrokenSpec, LoadedSpec

ALERTING_RESOURCE = "alerting"


@dataclass
class MonitoringDefinitions:
    """What monitoring adds to the code location.

    Attributes:
        assets: ``ops/pipeline_health``.
        asset_checks: Freshness checks of the pipelines that declare ``freshness``.
        sensors: ``alert_on_run_failure``, ``alert_on_check_failure`` and ``freshness_checks_sensor``.
        schedules: ``pipeline_health_schedule`` (hourly, stopped by default).
        jobs: ``pipeline_health_job``.
        resources: ``alerting`` (the alert sinks). The sensors and the health asset also use ``warehouse``,
            which the pipelines' resources provide.
    """

    assets: list = field(default_factory=list)
    asset_checks: list = field(default_factory=list)
    sensors: list = field(default_factory=list)
    schedules: list = field(default_factory=list)
    jobs: list = field(default_factory=list)
    resources: dict = field(default_factory=dict)


def build_monitoring(specs: Sequence[LoadedSpec], env: Callable[[str], str | None],
                     broken: Sequence[BrokenSpec] = ()) -> MonitoringDefinitions:
    """Monitoring definitions for ``specs``.

    Args:
        specs: The loaded pipeline specs of the code location.
        broken: The specs set aside as invalid: the sensor ``invalid_pipeline_specs`` reports them.
        env: Looks up whether an environment variable is set (``os.environ.get``); settings that are set are
            bound with ``EnvVar`` (read when a resource initializes, never logged).
    """
    infos = pipeline_infos(specs)
    names = [i.name for i in infos]
    health_asset, health_job, health_schedule = build_health(infos)
    checks, freshness_sensors = build_freshness(specs)
    return MonitoringDefinitions(
        assets=[health_asset],
        asset_checks=checks,
        sensors=[build_run_failure_sensor(names), build_check_failure_sensor(names), *freshness_sensors,
                 *filter(None, [build_spec_error_sensor(broken, ALERTING_RESOURCE)])],
        schedules=[health_schedule],
        jobs=[health_job],
        resources={ALERTING_RESOURCE: build_alert_sinks(env)},
    )


__all__ = ["AlertSinks", "MonitoringDefinitions", "build_monitoring"]
