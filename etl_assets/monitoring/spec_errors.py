"""Invalid pipeline specs, made visible while the rest of the code location runs.

A spec that is invalid is set aside when the location loads (:func:`etl_assets.pipelines.spec.load_specs_isolated`);
the other pipelines, their sensors and the alerting keep working. This sensor then fails every tick with each set-aside
file's error (file, field, fix), so the UI shows it on the Automation page and the daemon's log says it, and it
sends one alert per distinct set of errors. Its description holds the same errors, so its page in the UI shows them
as soon as the location loads, with or without a daemon.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, sensor

from etl_assets.monitoring.alerts import Alert
from etl_assets.pipelines.spec import BrokenSpec, SpecError

SPEC_ERRORS_SENSOR = "invalid_pipeline_specs"
# Where the digest of the errors last alerted is kept. A sensor's own cursor is not stored when its tick fails, and
# this one's ticks fail on purpose, so it uses the instance's key-value store (the one Dagster's daemons use).
_ALERTED_KEY = "etl_assets/invalid_pipeline_specs/alerted"


def spec_errors_text(broken: Sequence[BrokenSpec]) -> str:
    """Every set-aside spec's error, one after the other."""
    head = f"{len(broken)} pipeline spec(s) could not be loaded and were left out of the code location:"
    return "\n\n".join([head, *(b.message for b in broken)])


def build_spec_error_sensor(broken: Sequence[BrokenSpec], alerting_key: str) -> SensorDefinition | None:
    """The sensor reporting ``broken`` (None when every spec loaded)."""
    if not broken:
        return None
    text = spec_errors_text(broken)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]

    @sensor(
        name=SPEC_ERRORS_SENSOR,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        required_resource_keys={alerting_key},
        # the errors are known when the location loads: the sensor's page shows them before any tick (no daemon)
        description="Fails while a pipeline spec is invalid, with each file's error; alerts once per change.\n\n"
        + text,
    )
    def invalid_pipeline_specs(context: SensorEvaluationContext):
        storage = context.instance.run_storage
        if storage.get_cursor_values({_ALERTED_KEY}).get(_ALERTED_KEY) != digest:
            alerting = getattr(context.resources, alerting_key)
            report = alerting.send(
                Alert(
                    kind="spec_error",
                    title=f"{len(broken)} pipeline spec(s) invalid, left out of the code location",
                    text=text,
                    url=f"{alerting.ui_base_url.rstrip('/')}/automation",
                    dedupe_key=f"spec_error:{digest}",
                )
            )
            if report.delivered:
                storage.set_cursor_values({_ALERTED_KEY: digest})
        raise SpecError(text)

    return invalid_pipeline_specs
