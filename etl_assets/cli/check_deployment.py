"""``etl-assets check-deployment``: whether this host's environment and Dagster instance make a working deployment.

One line per check, ``OK``, ``WARN`` or ``FAIL``, each failure with its fix; exit status 1 when one fails. Every line
goes through :func:`etl_assets.redact.redact`, so no password or key is printed. Run it on each kind of host
(webserver, daemon, worker) with that host's environment: each reads its own.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from etl_assets.instance import resolve_config_value
from etl_assets.redact import redact
from etl_assets.settings import (
    DEPLOYMENT_ENV,
    DISTRIBUTED,
    DUCKDB_WAREHOUSE_FIX,
    SHARED_STORAGE_ENV,
    DeploymentRefused,
    SettingsError,
    current_settings,
    deployment_mode,
    is_object_storage,
    require_shared_storage,
)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
PROBE_TIMEOUT_SECONDS = 5
POSTGRES_TARGET_ENV = "ETL_POSTGRES_URL"
_INSTANCE_FIX = "copy deploy/dagster.yaml to $DAGSTER_HOME/dagster.yaml (docs/deployment.md)"


@dataclass(frozen=True)
class Check:
    """The result of one check: ``status`` is OK, WARN (works, with a caveat) or FAIL (with ``fix``)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}" + (f". Fix: {self.fix}" if self.fix else "")
        return redact(text)


def _error(exc: BaseException) -> str:
    """An exception in one line, secrets masked (a driver's message can quote its URL)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _s3_client(endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=PROBE_TIMEOUT_SECONDS, read_timeout=PROBE_TIMEOUT_SECONDS, retries={"max_attempts": 1}
    )
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def bucket_problem(bucket: str, endpoint_url: str | None = None) -> str | None:
    """Why ``bucket`` cannot be reached with this host's AWS settings (None when ``HeadBucket`` answers)."""
    try:
        _s3_client(endpoint_url).head_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - whatever boto3 raises (no credentials, no route, 403, 404) is the answer
        return _error(exc)
    return None


def _endpoint(explicit: str | None = None) -> str:
    where = explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" at {where}" if where else ""


def check_mode() -> Check:
    try:
        mode = deployment_mode()
    except SettingsError as exc:
        return Check("deployment mode", FAIL, str(exc))
    where = "work spread over several hosts" if mode == DISTRIBUTED else "everything on one host"
    return Check("deployment mode", OK, f"{DEPLOYMENT_ENV}={mode} ({where})")


def check_instance_file() -> tuple[Check, bool]:
    """The ``dagster.yaml`` of ``$DAGSTER_HOME``, and whether the instance can be opened at all."""
    from etl_assets.instance import (
        InstanceConfigError,
        check_instance_home,
        instance_file,
        read_instance_file,
        unset_variables,
    )

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        fix = f"export DAGSTER_HOME=<dir>, then {_INSTANCE_FIX}"
        return Check("instance", FAIL, "DAGSTER_HOME is not set", fix), False
    path = instance_file(home)
    if path is None:
        return Check("instance", FAIL, f"{home} has no dagster.yaml (Dagster's defaults: SQLite)", _INSTANCE_FIX), True
    missing = unset_variables(read_instance_file(path) or {})
    if missing:
        detail = f"{path} reads variables that are not set here: {', '.join(dict.fromkeys(missing))}"
        return Check("instance", FAIL, detail, "export them (deploy/dagster.yaml says what each one is)"), False
    try:
        check_instance_home(home)
    except InstanceConfigError as exc:
        return Check("instance", FAIL, str(exc)), True
    return Check("instance", OK, str(path)), True


def check_storage(instance, distributed: bool) -> Check:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from etl_assets.instance import WORKING_DRIVER, WORKING_SCHEME, selected_driver

    parts = {
        "run": (instance.run_storage, PostgresRunStorage),
        "event log": (instance.event_log_storage, PostgresEventLogStorage),
        "schedule": (instance.schedule_storage, PostgresScheduleStorage),
    }
    elsewhere = [f"{name} storage is {type(s).__name__}" for name, (s, cls) in parts.items() if not isinstance(s, cls)]
    if elsewhere:
        detail = ", ".join(elsewhere)
        if distributed:
            return Check(
                "instance storage",
                FAIL,
                f"{detail}: files under $DAGSTER_HOME on this host, which other hosts do not see",
                f"use Postgres storage: {_INSTANCE_FIX}",
            )
        return Check("instance storage", OK, f"{detail} (one host's files, enough for {DEPLOYMENT_ENV}=single-host)")
    urls = sorted({s.postgres_url for s, _ in parts.values()})
    for url in urls:
        problem = _postgres_storage_problem(url)
        driver = selected_driver(url)
        if driver != WORKING_DRIVER:
            outcome = (
                f"the event log's NOTIFY fails: {problem}" if problem else "dagster-postgres is written for psycopg2"
            )
            return Check(
                "instance storage",
                FAIL,
                f"Postgres at {redact(url)}: SQLAlchemy selects the driver {driver}, and {outcome}",
                f"use the scheme {WORKING_SCHEME} (as the instance line says)",
            )
        if problem:
            return Check(
                "instance storage",
                FAIL,
                f"Postgres at {redact(url)} did not answer: {problem}",
                "check DAGSTER_PG_HOST/PORT/USER/PASSWORD/DB and that this host reaches Postgres",
            )
    shown = ", ".join(redact(u) for u in urls)
    return Check("instance storage", OK, f"Postgres at {shown}: runs, events and schedules, reachable")


def _postgres_storage_problem(url: str) -> str | None:
    """Why Dagster's storage engine cannot use ``url`` (None when it can). Sends the kind of statement the event log
    sends with each event (a NOTIFY with a bound value, on a channel of its own), which psycopg 3 refuses."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT_SECONDS})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
            conn.execute(sqlalchemy.text("NOTIFY etl_assets_check_deployment, :payload"), {"payload": "probe"})
    except Exception as exc:  # noqa: BLE001 - the driver's error, whichever, is what the operator needs
        return _error(exc)
    finally:
        engine.dispose()
    return None


def check_run_coordinator(instance) -> Check:
    from dagster import QueuedRunCoordinator

    coordinator = instance.run_coordinator
    if not isinstance(coordinator, QueuedRunCoordinator):
        return Check(
            "run coordinator",
            FAIL,
            f"{type(coordinator).__name__}: runs start as they are submitted, past the run limit",
            "use the QueuedRunCoordinator (deploy/dagster.yaml)",
        )
    config = instance.get_concurrency_config()
    runs = config.run_queue_config.max_concurrent_runs if config.run_queue_config else "no limit"
    pools = config.pool_config
    granularity = pools.pool_granularity.value if pools.pool_granularity else "Dagster's default"
    limit = pools.default_pool_limit if pools.default_pool_limit is not None else "none"
    return Check(
        "run coordinator",
        OK,
        f"QueuedRunCoordinator: at most {runs} runs at once; pools: granularity {granularity}, default limit {limit}",
    )


def check_run_launcher(instance, distributed: bool) -> Check:
    try:
        launcher = instance.run_launcher
    except Exception as exc:  # noqa: BLE001 - a launcher whose config or dependency is missing
        return Check("run launcher", FAIL, f"it does not load: {_error(exc)}", "fix run_launcher in dagster.yaml")
    from dagster import DefaultRunLauncher

    name = type(launcher).__name__
    if isinstance(launcher, DefaultRunLauncher) and distributed:
        return Check("run launcher", OK, f"{name}: each run starts as a process on the daemon's host")
    return Check("run launcher", OK, name)


def check_run_monitoring(instance) -> Check:
    if not instance.run_monitoring_enabled:
        return Check(
            "run monitoring",
            FAIL,
            "disabled: a run whose worker died stays STARTED and keeps its pool slots",
            "enable run_monitoring as in deploy/dagster.yaml",
        )
    return Check(
        "run monitoring",
        OK,
        f"start timeout {instance.run_monitoring_start_timeout_seconds} s, cancel timeout"
        f" {instance.run_monitoring_cancel_timeout_seconds} s, polled every {instance.run_monitoring_poll_interval_seconds} s",
    )


def check_run_retries(instance) -> Check:
    if not instance.run_retries_enabled:
        return Check(
            "run retries",
            FAIL,
            "disabled: a run whose worker died is not re-executed",
            "enable run_retries as in deploy/dagster.yaml",
        )
    return Check("run retries", OK, f"up to {instance.run_retries_max_retries} per run, from failure")


def check_compute_logs(instance, distributed: bool) -> Check:
    from dagster_aws.s3 import S3ComputeLogManager

    manager = instance.compute_log_manager
    name = type(manager).__name__
    if isinstance(manager, S3ComputeLogManager):
        config = manager.inst_data.config_dict if manager.inst_data else {}
        bucket = resolve_config_value(config.get("bucket"))
        prefix = resolve_config_value(config.get("prefix")) or "dagster"
        endpoint = resolve_config_value(config.get("endpoint_url"))
        problem = bucket_problem(bucket, endpoint)
        where = f"s3://{bucket}/{prefix}{_endpoint(endpoint)}"
        if problem:
            return Check(
                "compute logs",
                FAIL,
                f"{where} is not reachable: {problem}",
                "create the bucket, or fix ETL_COMPUTE_LOG_BUCKET and the AWS_* variables",
            )
        return Check("compute logs", OK, f"S3ComputeLogManager, {where}")
    if name == "LocalComputeLogManager" and distributed:
        return Check(
            "compute logs",
            FAIL,
            "LocalComputeLogManager: step logs stay on the disk of the host that ran the step, out of the UI's sight",
            "use the S3ComputeLogManager of deploy/dagster.yaml",
        )
    return Check("compute logs", OK, name)


def check_shared_storage(kind: str) -> Check:
    name = SHARED_STORAGE_ENV[kind]
    url = os.environ.get(name) or None
    try:
        require_shared_storage(kind, url)
    except DeploymentRefused as exc:
        return Check(kind, FAIL, exc.problem, exc.fix)
    if url is None:
        settings = current_settings()
        local = settings.lake_dir if kind == "lake" else settings.landing_dir
        return Check(kind, OK, f"the local directory {local} ({name} is not set)")
    if not is_object_storage(url):
        return Check(kind, OK, f"{name}={url} (not object storage: one host's)")
    bucket = urlsplit(url).netloc
    problem = bucket_problem(bucket)
    if problem:
        return Check(
            kind,
            FAIL,
            f"{name}={url}: bucket {bucket}{_endpoint()} is not reachable: {problem}",
            f"create the bucket, or fix {name} and the AWS_* variables",
        )
    return Check(kind, OK, f"{name}={url}, bucket {bucket}{_endpoint()} reachable")


def check_pipelines(distributed: bool) -> Iterator[Check]:
    """The specs as the code location loads them: the warehouse rule, the Postgres target and any other invalid one."""
    from etl_assets.pipelines.spec import load_specs_isolated

    try:
        specs, broken = load_specs_isolated()
    except Exception as exc:  # noqa: BLE001 - the loader's own error (e.g. ETL_PIPELINES_DIR missing) is the answer
        yield Check("pipeline specs", FAIL, _error(exc), "run etl-assets validate")
        return
    refused = [b for b in broken if b.field == "targets"]
    invalid = [b for b in broken if b.field != "targets"]
    if refused:
        names = ", ".join(
            f"{b.name} ({b.message.splitlines()[0].removeprefix('invalid pipeline spec ').rstrip(':')})"
            for b in refused
        )
        yield Check(
            "warehouse",
            FAIL,
            f"{len(refused)} pipeline(s) load into the DuckDB warehouse, which {DEPLOYMENT_ENV}={DISTRIBUTED} refuses"
            f" (each would write a file of its own on every host): {names}",
            DUCKDB_WAREHOUSE_FIX,
        )
    elif distributed:
        yield Check("warehouse", OK, "no pipeline loads into the DuckDB warehouse")
    else:
        yield Check("warehouse", OK, f"DuckDB warehouse {current_settings().warehouse_path} (this host's file)")
    if distributed:
        yield Check(
            "monitoring tables",
            WARN,
            "ops.errors and ops.pipeline_health are DuckDB warehouse tables, not written in a distributed deployment:"
            " failed runs' error records stay spooled under $ETL_DATA_DIR/ops on the daemon's host and"
            " pipeline_health_job fails; alerts still go out",
        )
    on_postgres = [s.spec.ref for s in specs if "postgres" in s.spec.targets]
    yield _check_postgres_target(on_postgres, distributed)
    if invalid:
        yield Check(
            "pipeline specs",
            FAIL,
            f"{len(specs)} loaded, {len(invalid)} set aside as invalid: {', '.join(str(b.path) for b in invalid)}",
            "run etl-assets validate, which prints each one's field and fix",
        )
    else:
        yield Check("pipeline specs", OK, f"{len(specs)} loaded")


def _check_postgres_target(pipelines: list[str], distributed: bool) -> Check:
    url = os.environ.get(POSTGRES_TARGET_ENV)
    if not url:
        if pipelines or distributed:
            why = (
                f"{len(pipelines)} pipeline(s) load into it"
                if pipelines
                else "the shared warehouse of a distributed deployment"
            )
            return Check(
                "postgres target",
                FAIL,
                f"{POSTGRES_TARGET_ENV} is not set ({why})",
                f"set {POSTGRES_TARGET_ENV} to the postgresql:// URL of the warehouse database every host reaches",
            )
        return Check(
            "postgres target", OK, f"not used ({POSTGRES_TARGET_ENV} is not set, no pipeline loads into Postgres)"
        )
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return Check(
            "postgres target",
            FAIL,
            f"{redact(url)} did not answer: {_error(exc)}",
            f"fix {POSTGRES_TARGET_ENV} or the server",
        )
    return Check("postgres target", OK, f"{redact(url)} reachable, {len(pipelines)} pipeline(s) load into it")


def run_checks(emit: Callable[[Check], None]) -> list[Check]:
    """Run every check in order, handing each result to ``emit`` as it is known; the results."""
    results: list[Check] = []

    def add(check: Check) -> None:
        results.append(check)
        emit(check)

    add(check_mode())
    if results[-1].status == FAIL:
        return results  # every other rule depends on the mode
    distributed = deployment_mode() == DISTRIBUTED
    instance_line, can_open = check_instance_file()
    add(instance_line)
    if can_open:
        from dagster import DagsterInstance

        try:
            instance = DagsterInstance.get()
        except Exception as exc:  # noqa: BLE001 - a storage that cannot connect, a class that does not load
            add(Check("instance storage", FAIL, f"the instance did not open: {_error(exc)}", _INSTANCE_FIX))
        else:
            with instance:
                add(check_storage(instance, distributed))
                add(check_run_coordinator(instance))
                add(check_run_launcher(instance, distributed))
                add(check_run_monitoring(instance))
                add(check_run_retries(instance))
                add(check_compute_logs(instance, distributed))
    for kind in SHARED_STORAGE_ENV:
        add(check_shared_storage(kind))
    for check in check_pipelines(distributed):
        add(check)
    return results


def command(args: argparse.Namespace) -> int:
    results = run_checks(lambda check: print(check.line(), flush=True))
    failed = [c for c in results if c.status == FAIL]
    print(
        redact(
            f"{len(results)} checks, {len(failed)} failed"
            + (f": {', '.join(c.name for c in failed)}" if failed else "")
        )
    )
    return 1 if failed else 0
