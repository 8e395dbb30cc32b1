"""Builds the Dagster definitions of the pipeline specs: per spec its assets (:mod:`etl_assets.pipelines.assets`),
jobs, schedule and sensors, then the domain jobs and the resources of the specs' connections."""

import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

from dagster import (
    AssetChecksDefinition,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationConditionSensorDefinition,
    BetaWarning,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    EnvVar,
    PreviewWarning,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
    partition_loading_context,
    schedule,
)

from etl_assets.keys import (
    clean_key,
    mart_key,
    pipeline_job_name,
    quarantine_key,
    raw_key,
    revalidate_job_name,
    target_key,
)
from etl_assets.lake import LakeIOManager, LakeStorage
from etl_assets.monitoring.freshness import freshness_checks_for, freshness_sensor_for
from etl_assets.pipelines import sensors as sensors_mod
from etl_assets.pipelines.assets import (
    LAKE_IO_MANAGER,
    extract_asset,
    load_asset,
    source_resource_key,
    transform_asset,
    validate_asset,
)
from etl_assets.pipelines.policy import partitions_def_for, schedule_status_for
from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec
from etl_assets.resources.api import RestApiSource
from etl_assets.resources.api_auth import AuthType, auth_env_vars
from etl_assets.resources.files import LandingFilesSource
from etl_assets.resources.sql import SqlDatabaseSource
from etl_assets.resources.targets import DuckDBWarehouse, PostgresTarget


@dataclass
class BuiltPipelines:
    assets: list[AssetsDefinition]
    jobs: list
    # ScheduleDefinitions, and the partitioned schedules of asset jobs (resolved when the Definitions are)
    schedules: list
    sensors: list
    resources: dict
    asset_checks: list = field(default_factory=list)


def pipeline_keys(spec: PipelineSpec) -> list[AssetKey]:
    """All asset keys one pipeline owns."""
    keys = [raw_key(spec), clean_key(spec), quarantine_key(spec)] if spec.source else [mart_key(spec)]
    return keys + [target_key(t, spec) for t in spec.targets]


def _job_suffix(spec: PipelineSpec) -> str:
    return {"none": "full_refresh", "daily": "daily", "hourly": "hourly"}[spec.partitions.type]


def partitioned_schedule_offsets(spec: PipelineSpec, cron: str, timezone: str) -> dict[str, int] | None:
    """The offsets into each partition at which Dagster's partitioned schedule expresses ``cron``, or None.

    Dagster's builder ticks once per partition, at an offset into the next one, in the partitions' time zone: a
    daily pipeline's ``M H * * *`` and an hourly one's ``M * * * *``, in the partitions' zone, are such schedules.
    Any other cron (weekdays only, twice a day, another zone) keeps a plain schedule that requests the partition
    that has just closed, and so does a pipeline whose partitions end (``partitions.last``): after the end, Dagster's
    would request the last partition again every tick.
    """
    fields = cron.split()
    if spec.partitions.type == "none" or timezone != spec.partitions.timezone or len(fields) != 5:
        return None
    if spec.partitions.last is not None:
        return None
    minute, hour, *rest = fields
    if rest != ["*", "*", "*"] or not minute.isdigit():
        return None
    if spec.partitions.type == "hourly":
        return {"minute_of_hour": int(minute)} if hour == "*" else None
    return {"minute_of_hour": int(minute), "hour_of_day": int(hour)} if hour.isdigit() else None


def _build_schedule(
    spec: PipelineSpec, job, pdef: TimeWindowPartitionsDefinition | None, status: DefaultScheduleStatus
):
    """A cron schedule; for a time-partitioned pipeline each tick requests the partition that has just closed. Where
    Dagster's partitioned schedule can express the cron (:func:`partitioned_schedule_offsets`) it is that one, and the UI shows
    the job's partition set beside it."""
    sched = spec.schedule
    assert sched is not None, f"{spec.ref} has no schedule"
    name, description = f"{spec.dagster_name}_schedule", f"{spec.ref} on '{sched.cron}' ({sched.timezone})."
    offsets = partitioned_schedule_offsets(spec, sched.cron, sched.timezone)
    open_ended = partitions_def_for(spec, open_ended=True)
    if offsets is not None:
        return build_schedule_from_partitioned_job(
            job,
            name=name,
            default_status=status,
            description=description,
            minute_of_hour=offsets.get("minute_of_hour"),
            hour_of_day=offsets.get("hour_of_day"),
        )

    @schedule(
        name=name,
        job=job,
        cron_schedule=sched.cron,
        execution_timezone=sched.timezone,
        default_status=status,
        description=description,
    )
    def _schedule(context: ScheduleEvaluationContext):
        if pdef is None or open_ended is None:
            return RunRequest(run_key=None)
        # the partition that has just closed, as if the partitions had no end: past the end there is none to run
        with partition_loading_context(effective_dt=context.scheduled_execution_time):
            latest = open_ended.get_last_partition_key()
        if latest is None:
            return SkipReason(f"no {spec.ref} partition has closed yet (partitions start {spec.partitions.start})")
        if pdef.end is not None and open_ended.time_window_for_partition_key(latest).start >= pdef.end:
            return SkipReason(
                f"the partitions of {spec.ref} ended with {pdef.get_last_partition_key()} (partitions.last: "
                f"{spec.partitions.last}); {latest}, which has just closed, is past them: nothing to run"
            )
        return RunRequest(run_key=latest, partition_key=latest)

    return _schedule


def build_resources(specs: list[LoadedSpec], env: Callable[[str], str | None]) -> dict:
    """Resources for the specs' connections. Secrets and URLs are bound as ``EnvVar`` when the variable is set.

    Args:
        env: Looks up whether an environment variable is set (``os.environ.get``); only names are bound.
    """
    lake = LakeStorage()
    resources: dict = {
        "lake": lake,
        "landing": LandingFilesSource(),
        "warehouse": DuckDBWarehouse(),
        "postgres_target": PostgresTarget(url=EnvVar("ETL_POSTGRES_URL") if env("ETL_POSTGRES_URL") else None),
    }
    resources[LAKE_IO_MANAGER] = LakeIOManager(lake=lake)
    for loaded in specs:
        src = loaded.spec.source
        if src is None or src.kind == "files":
            continue
        key = source_resource_key(loaded.spec)
        prefix = src.connection.upper()
        url = EnvVar(f"{prefix}_URL") if env(f"{prefix}_URL") else None
        if src.kind == "api":
            # every credential whose variable is set: specs sharing the connection may use different auth types
            credentials: dict[str, Any] = {
                name: EnvVar(var)
                for kind in get_args(AuthType)
                for name, var in auth_env_vars(src.connection, kind).items()
                if env(var)
            }
            resources.setdefault(
                key, RestApiSource(connection=src.connection, default_url=src.default_url, url=url, **credentials)
            )
        else:
            resources.setdefault(
                key, SqlDatabaseSource(connection=src.connection, default_url=src.default_url, url=url)
            )
    return resources


def build_pipelines(specs: list[LoadedSpec], env: Callable[[str], str | None]) -> BuiltPipelines:
    """Assets, jobs, schedules, sensors and the per-pipeline checks (freshness) for every spec, in one pass."""
    with warnings.catch_warnings():
        # backfill_policy is marked beta in Dagster 1.13; single-run backfills rely on it deliberately
        warnings.simplefilter("ignore", BetaWarning)
        # partitioned asset checks (AssetCheckSpec.partitions_def) are preview in 1.13: each partition's result is
        # what a user needs to see; dagster is pinned exactly, and etl_assets_tests/test_checks.py holds the behaviour
        warnings.simplefilter("ignore", PreviewWarning)
        return _build_pipelines(specs, env)


def _build_pipelines(specs: list[LoadedSpec], env: Callable[[str], str | None]) -> BuiltPipelines:
    by_name = {s.spec.ref: s for s in specs}
    assets: list[AssetsDefinition] = []
    groups: dict[tuple, list[AssetKey]] = defaultdict(list)
    jobs = []
    job_by_name = {}
    schedules = []
    sensors = []
    asset_checks: list[AssetChecksDefinition] = []
    for loaded in specs:
        spec = loaded.spec
        pdef = partitions_def_for(spec)
        if spec.source is not None:
            assets += [extract_asset(loaded, pdef), validate_asset(loaded, pdef, by_name)]
        else:
            assets.append(transform_asset(loaded, pdef, by_name))
        assets += [load_asset(loaded, target, pdef) for target in spec.targets]
        asset_checks += freshness_checks_for(spec)
        keys = pipeline_keys(spec)
        groups[(spec.domain, _job_suffix(spec))].extend(keys)
        job = define_asset_job(
            name=pipeline_job_name(spec),
            selection=AssetSelection.assets(*keys),
            description=f"Pipeline {spec.ref} ({loaded.path.name}): extract or build, validate, load.",
        )
        jobs.append(job)
        job_by_name[spec.ref] = job
        if spec.source is not None:
            jobs.append(
                define_asset_job(
                    name=revalidate_job_name(spec),
                    selection=AssetSelection.assets(*[k for k in keys if k != raw_key(spec)]),
                    description=f"Re-validate {spec.ref} from the raw lake (no source call) and reload it: "
                    "the replay of quarantined rows after a contract or upstream fix.",
                )
            )
        if spec.source is not None and spec.source.kind == "files":
            sensors.append(sensors_mod.build_file_sensor(spec, job, pdef))
        if (
            spec.source is not None
            and spec.source.kind == "api"
            and spec.source.incremental
            and spec.source.incremental.watermark_endpoint
        ):
            sensors.append(sensors_mod.build_watermark_sensor(spec, job, pdef, source_resource_key(spec)))
        if spec.schedule is not None:
            schedules.append(_build_schedule(spec, job, pdef, schedule_status_for(spec)))
    for (domain, suffix), keys in sorted(groups.items()):
        jobs.append(
            define_asset_job(
                name=f"{domain}_{suffix}",
                selection=AssetSelection.assets(*keys),
                description=f"Every {suffix.replace('_', ' ')} pipeline of the {domain} domain.",
            )
        )
    for loaded in specs:
        if loaded.spec.after:
            upstream = [job_by_name[loaded.spec.resolve(name)] for name in loaded.spec.after]
            sensors.append(sensors_mod.build_after_sensor(loaded.spec, job_by_name[loaded.spec.ref], upstream))
    if any(s.spec.source is not None and s.spec.source.kind == "files" for s in specs):
        sensors += sensors_mod.build_landing_sensors(s.spec for s in specs)
    sensors += freshness_sensor_for(asset_checks)
    if any(s.spec.automation is not None for s in specs):
        sensors.append(
            AutomationConditionSensorDefinition(
                name="automation_condition_sensor",
                target=AssetSelection.all(),
                default_status=DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=int(env("ETL_AUTOMATION_INTERVAL_SECONDS") or 30),
                description="Evaluates the specs' automation conditions (dependency-driven runs).",
            )
        )
    return BuiltPipelines(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=build_resources(specs, env),
        asset_checks=asset_checks,
    )
