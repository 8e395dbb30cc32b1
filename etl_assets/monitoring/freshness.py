"""Freshness from the specs' ``freshness: {max_lag_minutes: N}``: Dagster's freshness policy and a data-time check.

Each target asset of such a pipeline (``<domain>/warehouse_<name>``, ``<domain>/postgres_<name>``) gets two things:

* Dagster's ``FreshnessPolicy.time_window(fail_window=N minutes)``
  (:func:`with_freshness_policies`, applied where the code location is assembled): Dagster's freshness daemon marks the asset fresh or stale in the UI (asset
  health). The policy measures when the asset was last *materialized*, any partition: reloading a 2024 partition
  today makes it fresh.
* The check ``freshness_check`` (severity WARN), which measures the *data's* time (:func:`data_time_of`): for a
  daily or hourly pipeline the end of the newest partition that has been materialized, so a 2024 partition loaded
  today is not fresh; for an unpartitioned one the latest materialization (or its
  ``dagster/last_updated_timestamp`` when it states one). It fails once now minus that time exceeds the limit,
  with the lag, the limit, the newest partition and the data time as metadata; ``alert_on_check_failure`` alerts
  on it. A pipeline whose partitions end (``partitions.last``) is complete once its last partition is loaded: no
  newer data can come, so the check passes however old the data is.

The check runs in every pipeline run that loads its asset, and the sensor ``freshness_checks_sensor`` (running by
default) launches it when its result may have changed (:func:`checks_due`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    DagsterInstance,
    DefaultSensorStatus,
    FreshnessPolicy,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    TimestampMetadataValue,
    TimeWindowPartitionsDefinition,
    apply_freshness_policy,
    asset_check,
    sensor,
)

from etl_assets.keys import target_key
from etl_assets.pipelines.policy import partitions_def_for
from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec

FRESHNESS_SENSOR = "freshness_checks_sensor"
FRESHNESS_CHECK_NAME = "freshness_check"
# Metadata of a passing evaluation: when the data will be older than the limit (the sensor re-checks then).
FRESH_UNTIL = "fresh_until"
# Dagster's metadata key for "the data of this materialization dates from", honoured for unpartitioned assets.
LAST_UPDATED = "dagster/last_updated_timestamp"
# Metadata of a passing evaluation: the last partition of partitions that end is loaded (the result stays until a load).
SPAN_COMPLETE = "span_complete"


@dataclass(frozen=True)
class FreshnessVerdict:
    """The outcome of :func:`evaluate_freshness`."""

    passed: bool
    description: str
    max_lag_minutes: int
    lag_minutes: float | None
    data_time: datetime | None
    newest_partition: str | None
    fresh_until: datetime | None
    complete: bool = False


def evaluate_freshness(
    data_time: datetime | None,
    now: datetime,
    max_lag_minutes: int,
    newest_partition: str | None = None,
    complete: bool = False,
) -> FreshnessVerdict:
    """Whether data dating from ``data_time`` is fresh at ``now`` under a limit of ``max_lag_minutes``.

    Args:
        data_time: The data's time: the end of the newest materialized partition, or the last materialization of
            an unpartitioned asset; ``None`` when nothing has been materialized (not fresh).
        now: The time of the evaluation.
        max_lag_minutes: The spec's ``freshness.max_lag_minutes``.
        newest_partition: The partition ``data_time`` is the end of, named in the description.
        complete: The last partition of partitions that end is loaded (:func:`partitions_complete`).

    Returns:
        Passed while ``now - data_time`` is at most the limit, and whenever ``complete``.
    """
    of = f" (newest partition {newest_partition})" if newest_partition else ""
    if data_time is None:
        return FreshnessVerdict(
            False, f"never loaded; the limit is {max_lag_minutes} min", max_lag_minutes, None, None, None, None
        )
    lag = round((now - data_time).total_seconds() / 60, 2)
    if complete:
        description = (
            f"the last partition{f' {newest_partition}' if newest_partition else ''} is loaded: the partitions end "
            f"with it (partitions.last), so no newer data can come (data from {data_time.isoformat()}, {lag} min old)"
        )
        return FreshnessVerdict(True, description, max_lag_minutes, lag, data_time, newest_partition, None, True)
    until = data_time + timedelta(minutes=max_lag_minutes)
    passed = lag <= max_lag_minutes
    state = "within" if passed else "over"
    description = f"data from {data_time.isoformat()}{of} is {lag} min old, {state} the limit of {max_lag_minutes} min"
    return FreshnessVerdict(
        passed, description, max_lag_minutes, lag, data_time, newest_partition, until if passed else None
    )


def data_time_of(
    instance: DagsterInstance, key: AssetKey, pdef: TimeWindowPartitionsDefinition | None
) -> tuple[datetime | None, str | None]:
    """The time the data of ``key`` dates from, and the newest partition it is the end of.

    A time-partitioned asset's data time is the end of its newest materialized partition, whenever that was
    loaded (one of its partitions now: not one past a ``partitions.last`` moved back since); an unpartitioned
    asset's is its latest materialization, or the ``dagster/last_updated_timestamp`` that materialization states.
    """
    if pdef is not None:
        loaded = [k for k in instance.get_materialized_partitions(key) if pdef.has_partition_key(k)]
        if not loaded:
            return None, None
        newest = max(loaded, key=lambda k: pdef.time_window_for_partition_key(k).end)
        return pdef.time_window_for_partition_key(newest).end.astimezone(UTC), newest
    event = instance.get_latest_materialization_event(key)
    if event is None:
        return None, None
    stated = event.asset_materialization.metadata.get(LAST_UPDATED) if event.asset_materialization else None
    stamp = stated.value if isinstance(stated, TimestampMetadataValue) else event.timestamp
    return datetime.fromtimestamp(stamp, UTC), None


def partitions_complete(data_time: datetime | None, pdef: TimeWindowPartitionsDefinition | None) -> bool:
    """Whether data dating from ``data_time`` (:func:`data_time_of`) reaches the end of partitions that end
    (``partitions.last``): their last partition is loaded, and no newer one can come."""
    return data_time is not None and pdef is not None and pdef.end is not None and data_time >= pdef.end


def freshness_policy_for(spec: PipelineSpec) -> FreshnessPolicy | None:
    """Dagster's freshness policy for the spec's target assets: materialized within ``max_lag_minutes``."""
    if spec.freshness is None:
        return None
    return FreshnessPolicy.time_window(fail_window=timedelta(minutes=spec.freshness.max_lag_minutes))


def with_freshness_policies(specs: Sequence[LoadedSpec], assets: Sequence[AssetsDefinition]) -> list[AssetsDefinition]:
    """``assets`` with each spec's freshness policy on the spec's target assets (the others unchanged)."""
    policies = {
        target_key(t, s.spec): policy
        for s in specs
        if (policy := freshness_policy_for(s.spec)) is not None
        for t in s.spec.targets
    }

    def apply(spec: AssetSpec) -> AssetSpec:
        policy = policies.get(spec.key)
        return spec if policy is None else apply_freshness_policy(spec, policy)

    return [a.map_asset_specs(apply) if policies.keys() & set(a.keys) else a for a in assets]


def _freshness_check(key: AssetKey, pdef: TimeWindowPartitionsDefinition | None, max_lag: int) -> AssetChecksDefinition:
    measured = "the end of the newest loaded partition" if pdef is not None else "the latest load"
    # the check is unpartitioned: one verdict about the asset as a whole, also in a partitioned pipeline's run

    @asset_check(
        asset=key,
        name=FRESHNESS_CHECK_NAME,
        description=f"Fresh while {measured} is at most {max_lag} minutes old.",
    )
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        data_time, newest = data_time_of(context.instance, key, pdef)
        verdict = evaluate_freshness(
            data_time, datetime.now(UTC), max_lag, newest, partitions_complete(data_time, pdef)
        )
        metadata: dict = {"max_lag_minutes": max_lag}
        if verdict.lag_minutes is not None:
            metadata["lag_minutes"] = verdict.lag_minutes
        if verdict.data_time is not None:
            metadata["data_time"] = MetadataValue.timestamp(verdict.data_time)
        if verdict.newest_partition is not None:
            metadata["newest_partition"] = verdict.newest_partition
        if verdict.fresh_until is not None:
            metadata[FRESH_UNTIL] = MetadataValue.timestamp(verdict.fresh_until)
        if verdict.complete:
            metadata[SPAN_COMPLETE] = True
        return AssetCheckResult(
            passed=verdict.passed,
            severity=AssetCheckSeverity.WARN,
            description=verdict.description,
            metadata=metadata,
        )

    return _check


def freshness_checks_for(spec: PipelineSpec) -> list[AssetChecksDefinition]:
    """The freshness checks of one pipeline: one per target asset when the spec declares ``max_lag_minutes``."""
    if spec.freshness is None or not spec.targets:
        return []
    pdef = partitions_def_for(spec)
    return [_freshness_check(target_key(t, spec), pdef, spec.freshness.max_lag_minutes) for t in spec.targets]


def checks_due(instance: DagsterInstance, check_keys: Sequence[AssetCheckKey], now: datetime) -> list[AssetCheckKey]:
    """The freshness checks whose result may differ from their latest evaluation.

    A check is due when it has never been evaluated, its asset was materialized after its latest evaluation, or
    its latest evaluation passed and ``now`` is past that evaluation's ``fresh_until``. A failed check stays
    failed until its asset is loaded again, and so does a passed one whose partitions are complete
    (``span_complete``); one being evaluated (planned in a run) is not due.
    """
    due = []
    for key in check_keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is None:
            due.append(key)
            continue
        evaluation = (
            record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
        )
        if not isinstance(evaluation, AssetCheckEvaluation) or record.event is None:
            continue  # planned: a run is evaluating it
        latest = instance.get_latest_materialization_event(key.asset_key)
        if latest is not None and latest.timestamp > record.event.timestamp:
            due.append(key)
        elif evaluation.passed and not getattr(evaluation.metadata.get(SPAN_COMPLETE), "value", False):
            until = evaluation.metadata.get(FRESH_UNTIL)
            if not isinstance(until, TimestampMetadataValue) or now.timestamp() >= until.value:
                due.append(key)
    return due


def freshness_sensor_for(
    checks: Sequence[AssetChecksDefinition], minimum_interval_seconds: int = 60
) -> list[SensorDefinition]:
    """The sensor ``freshness_checks_sensor`` that evaluates the freshness ``checks`` (none when there are none).

    Each tick requests one run of the checks :func:`checks_due` finds. It keeps no cursor: what it decides from is
    the instance's latest evaluations and materializations, so a restarted daemon decides the same.
    """
    if not checks:
        return []
    keys = sorted((k for c in checks for k in c.check_keys), key=lambda k: k.to_user_string())

    @sensor(
        name=FRESHNESS_SENSOR,
        asset_selection=AssetSelection.checks(*keys),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Evaluates the freshness checks whose result may have changed: never evaluated, the asset "
        "loaded since, or a passing result's data now older than the limit.",
    )
    def _sensor(context: SensorEvaluationContext):
        due = checks_due(context.instance, keys, datetime.now(UTC))
        if not due:
            return SkipReason(f"none of {len(keys)} freshness check(s) can have changed since its last evaluation")
        return RunRequest(asset_check_keys=due)

    return [_sensor]
