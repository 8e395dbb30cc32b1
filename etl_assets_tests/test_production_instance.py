"""The production instance (``deploy/dagster.yaml``) works as written, and a Postgres URL that cannot work is refused
at start with what to write instead.

Real parts: Postgres (a database of its own per test, where dagster-postgres creates its tables), the S3 API of
``moto_server`` on loopback (boto3 and dagster-aws talk to it as to any endpoint), the ``dagster`` CLI running a job
of this code location in a subprocess, and ``etl-assets check-deployment``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, QueuedRunCoordinator, job, op
from dagster_aws.s3 import S3ComputeLogManager
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from etl_assets.cli import main
from etl_assets.instance import InstanceConfigError, check_instance_home

REPO = Path(__file__).resolve().parent.parent
DEPLOY_INSTANCE = REPO / "deploy" / "dagster.yaml"
LOCAL_INSTANCE = REPO / "dagster.yaml"
LOG_PREFIX = "dagster/compute-logs"
HEALTH_JOB = "pipeline_health_job"  # a job of this code location that needs nothing but the instance
DAGSTER = str(Path(sys.executable).parent / "dagster")


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[dict[str, str]]:
    """A new, empty Postgres database (dropped afterwards, its sessions ended): the connection parts of it."""
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = conninfo_to_dict(postgres_url)
    yield {
        "user": str(parts.get("user") or "postgres"),
        "password": str(parts.get("password") or ""),
        "host": str(parts.get("host") or "127.0.0.1"),
        "port": str(parts.get("port") or "5432"),
        "dbname": name,
    }
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _query(db: dict[str, str], statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(
        host=db["host"], port=db["port"], user=db["user"], password=db["password"] or None, dbname=db["dbname"]
    ) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]  # statements are literals here


@pytest.fixture
def secret_password(pg_database: dict[str, str]) -> str:
    """The password the instance is given: the test server's own, or (a server that trusts loopback) a made-up one,
    so that the tests can look for it in what is printed."""
    return pg_database["password"] or f"pg-pass-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def production_home(
    tmp_path: Path,
    data_dir: Path,
    pg_database: dict[str, str],
    secret_password: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A DAGSTER_HOME holding a copy of deploy/dagster.yaml, with the variables it reads pointing at the test's
    database and bucket (and the AWS variables at the loopback S3 server)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_INSTANCE, home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USER": pg_database["user"],
        "DAGSTER_PG_PASSWORD": secret_password,
        "DAGSTER_PG_HOST": pg_database["host"],
        "DAGSTER_PG_PORT": pg_database["port"],
        "DAGSTER_PG_DB": pg_database["dbname"],
        "ETL_COMPUTE_LOG_BUCKET": s3_bucket,
        "ETL_COMPUTE_LOG_PREFIX": LOG_PREFIX,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("ETL_DEPLOYMENT", "ETL_LAKE_URL", "ETL_LANDING_URL", "ETL_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


def _run_job(job_name: str) -> subprocess.CompletedProcess:
    """``dagster job execute -m etl_assets -j <job>`` with this test's environment (the instance of DAGSTER_HOME)."""
    return subprocess.run(
        [DAGSTER, "job", "execute", "-m", "etl_assets", "-j", job_name],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_a_job_of_the_code_location_runs_on_the_production_instance(
    production_home: Path, pg_database: dict[str, str], s3_bucket: str
):
    done = _run_job(HEALTH_JOB)
    assert done.returncode == 0, done.stderr[-3000:]

    # the run and its events are rows of Postgres tables in the instance's database
    runs = _query(pg_database, "SELECT run_id, pipeline_name, status FROM runs")
    assert len(runs) == 1 and runs[0][1:] == (HEALTH_JOB, "SUCCESS"), runs
    run_id = runs[0][0]
    events = {
        kind
        for (kind,) in _query(
            pg_database, "SELECT DISTINCT dagster_event_type FROM event_logs WHERE run_id = %s", (run_id,)
        )
    }
    assert {
        "PIPELINE_START",  # run start and success keep their older names in the table
        "STEP_START",
        "ASSET_MATERIALIZATION",
        "STEP_SUCCESS",
        "LOGS_CAPTURED",
        "PIPELINE_SUCCESS",
    } <= events

    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.get_run_by_id(run_id) is not None

        # the queue and the limits are the local instance's
        local = yaml.safe_load(LOCAL_INSTANCE.read_text())
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == local["concurrency"]["runs"]["max_concurrent_runs"]
        assert concurrency.pool_config.pool_granularity is not None
        assert concurrency.pool_config.pool_granularity.value == local["concurrency"]["pools"]["granularity"]
        assert concurrency.pool_config.default_pool_limit == local["concurrency"]["pools"]["default_limit"]
        # run monitoring and run retries as in the local instance
        monitoring = local["run_monitoring"]
        assert instance.run_monitoring_enabled is monitoring["enabled"] is True
        assert instance.run_monitoring_start_timeout_seconds == monitoring["start_timeout_seconds"]
        assert instance.run_monitoring_cancel_timeout_seconds == monitoring["cancel_timeout_seconds"]
        assert instance.run_monitoring_max_resume_run_attempts == monitoring["max_resume_run_attempts"]
        assert instance.run_monitoring_poll_interval_seconds == monitoring["poll_interval_seconds"]
        retries = local["run_retries"]
        assert instance.run_retries_enabled is retries["enabled"] is True
        assert instance.run_retries_max_retries == retries["max_retries"]
        assert instance.run_retries_retry_on_asset_or_op_failure is retries["retry_on_asset_or_op_failure"]

        # the step's logs are objects in the bucket, and the instance reads them back from there
        manager = instance.compute_log_manager
        assert isinstance(manager, S3ComputeLogManager)
        keys = [
            o["Key"]
            for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix=LOG_PREFIX).get("Contents", [])
        ]
        assert keys and all(k.startswith(f"{LOG_PREFIX}/storage/{run_id}/compute_logs/") for k in keys), keys
        stderr_key = next(k for k in keys if k.endswith(".err"))
        stored = boto3.client("s3").get_object(Bucket=s3_bucket, Key=stderr_key)["Body"].read()
        assert b"pipeline_health" in stored  # the step's log lines, as the worker printed them

        captured = instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED)
        file_key = captured[0].get_dagster_event().logs_captured_data.file_key
        log_key = manager.build_log_key_for_run(run_id, file_key)
        staged = Path(manager.local_manager.get_captured_local_path(log_key, "err"))
        assert not staged.exists()  # the worker's staged copy was removed once uploaded: the bucket's is the one
        assert manager.get_log_data(log_key).stderr == stored
        assert staged.read_bytes() == stored  # downloaded from the bucket to be read
        manager.local_manager.delete_logs(log_key=log_key)


@op
def say_hello() -> int:
    return 1


@job
def hello_job():
    say_hello()


@pytest.mark.postgres
def test_a_bare_postgresql_url_really_fails_on_the_first_event_write(
    tmp_path: Path, pg_database: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    """The trap the start-up check exists for, as measured (dagster-postgres 0.29, SQLAlchemy 2.1): when this fails,
    dagster-postgres works with psycopg 3 and the check in etl_assets.instance can be relaxed."""
    home = tmp_path / "home"
    home.mkdir()
    db = pg_database
    (home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: postgresql://{db['user']}@{db['host']}:{db['port']}/{db['dbname']}\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance, pytest.raises(Exception, match=r"NOTIFY run_events"):
        hello_job.execute_in_process(instance=instance)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_bare_postgresql_url_is_refused_at_start_saying_what_to_write(
    production_home: Path, pg_database: dict[str, str], secret_password: str
):
    db = pg_database
    url = f"postgresql://{db['user']}:{secret_password}@{db['host']}:{db['port']}/{db['dbname']}"
    (production_home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {url}\n")
    fix = f"postgres_url: postgresql+psycopg2://***@{db['host']}:{db['port']}/{db['dbname']}"

    with pytest.raises(InstanceConfigError) as refused:
        check_instance_home()
    assert fix in str(refused.value) and secret_password not in str(refused.value)

    # the code location refuses to load, before any run exists
    done = _run_job(HEALTH_JOB)
    assert done.returncode != 0
    assert "InstanceConfigError" in done.stderr and fix in done.stderr, done.stderr[-3000:]
    assert secret_password not in done.stderr + done.stdout
    assert _query(db, "SELECT count(*) FROM runs") == [(0,)]

    # the URL written as the message says works end to end
    (production_home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {url.replace('postgresql://', 'postgresql+psycopg2://')}\n"
    )
    check_instance_home()
    done = _run_job(HEALTH_JOB)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _query(db, "SELECT status FROM runs") == [("SUCCESS",)]


def _home_with(tmp_path: Path, text: str) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(text)
    return home


@pytest.mark.parametrize(
    ("storage", "fix"),
    [
        (
            "storage:\n  postgres:\n    postgres_url: postgresql://u:pw-secret@db.internal:5432/dagster\n",
            "Fix: write postgres_url: postgresql+psycopg2://***@db.internal:5432/dagster",
        ),
        (
            "storage:\n  postgres:\n    postgres_url: postgresql+psycopg://u:pw-secret@db.internal/dagster\n",
            "Fix: write postgres_url: postgresql+psycopg2://***@db.internal/dagster",
        ),
        (
            "storage:\n  postgres:\n    postgres_url:\n      env: MY_DAGSTER_PG_URL\n",
            "Fix: set MY_DAGSTER_PG_URL=postgresql+psycopg2://***@db.internal:5432/dagster",
        ),
        (
            "storage:\n  postgres:\n    postgres_db:\n      username: u\n      password: pw-secret\n"
            "      hostname: db.internal\n      db_name: dagster\n",
            "Fix: add `scheme: postgresql+psycopg2` under storage.postgres.postgres_db",
        ),
        (
            "event_log_storage:\n  module: dagster_postgres.event_log\n  class: PostgresEventLogStorage\n"
            "  config:\n    postgres_url: postgresql://u:pw-secret@db.internal:5432/dagster\n",
            "Fix: write postgres_url: postgresql+psycopg2://***@db.internal:5432/dagster",
        ),
    ],
    ids=["postgres_url", "psycopg3_named", "url_from_variable", "postgres_db_default_scheme", "event_log_storage"],
)
def test_each_form_of_a_storage_url_that_selects_psycopg3_is_refused(
    tmp_path: Path, storage: str, fix: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MY_DAGSTER_PG_URL", "postgresql://u:pw-secret@db.internal:5432/dagster")
    home = _home_with(tmp_path, storage)
    with pytest.raises(InstanceConfigError) as refused:
        check_instance_home(home)
    message = str(refused.value)
    assert fix in message and str(home / "dagster.yaml") in message and "NOTIFY run_events" in message
    assert "pw-secret" not in message


@pytest.mark.parametrize(
    "storage",
    [
        "storage:\n  postgres:\n    postgres_url: postgresql+psycopg2://u@db.internal:5432/dagster\n",
        DEPLOY_INSTANCE.read_text(),
        LOCAL_INSTANCE.read_text(),  # SQLite: nothing to check
        "storage:\n  postgres:\n    postgres_url:\n      env: UNSET_VARIABLE_OF_THIS_TEST\n",  # Dagster names it
    ],
    ids=["psycopg2_url", "deploy_instance", "local_instance", "unset_variable"],
)
def test_a_working_storage_config_passes_the_start_up_check(tmp_path: Path, storage: str):
    check_instance_home(_home_with(tmp_path, storage))


def test_the_code_location_loader_runs_the_check(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from etl_assets import definitions

    home = _home_with(tmp_path, "storage:\n  postgres:\n    postgres_url: postgresql://u@db.internal:5432/dagster\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with pytest.raises(InstanceConfigError, match=r"postgresql\+psycopg2://\*\*\*@db\.internal:5432/dagster"):
        definitions.defs()


# --- etl-assets check-deployment --------------------------------------------------------------------------------


def _check_deployment(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str], str]:
    """Run the command in this process: its exit status, the line of each check by name, and everything printed."""
    status = main(["check-deployment"])
    out, err = capsys.readouterr()
    lines = {}
    for line in out.splitlines()[:-1]:  # the last line is the summary
        state, rest = line.split(maxsplit=1)
        name = rest.split(":", 1)[0]
        lines[name] = f"{state} {rest}"
    return status, lines, out + err


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    assert "etl-test-secret-value" not in text  # the S3 server's secret key (etl_assets_tests.s3server)


@pytest.mark.postgres
def test_check_deployment_passes_on_the_production_instance(
    production_home: Path, secret_password: str, capsys: pytest.CaptureFixture[str]
):
    status, lines, text = _check_deployment(capsys)
    assert status == 0, text
    assert all(line.startswith("OK ") for line in lines.values()), text
    assert lines["instance storage"].startswith("OK instance storage: Postgres at postgresql+psycopg2://***@")
    assert (
        "QueuedRunCoordinator: at most 3 runs at once; pools: granularity op, default limit 1"
        in lines["run coordinator"]
    )
    assert f"S3ComputeLogManager, s3://{os.environ['ETL_COMPUTE_LOG_BUCKET']}/{LOG_PREFIX}" in lines["compute logs"]
    assert {"run monitoring", "run retries", "run launcher", "lake", "landing", "warehouse"} <= set(lines)
    _assert_no_secret(text, secret_password)


@pytest.mark.postgres
def test_check_deployment_fails_naming_each_problem_and_its_fix(
    production_home: Path,
    secret_password: str,
    postgres_url: str,
    s3_server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    lake_bucket = s3_server.new_bucket()
    target_password = f"target-pass-{uuid.uuid4().hex[:8]}"
    parts = conninfo_to_dict(postgres_url)
    target = f"postgresql://{parts.get('user', 'postgres')}:{target_password}@{parts.get('host')}:{parts.get('port', 5432)}/{parts.get('dbname')}"
    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    monkeypatch.setenv("ETL_LAKE_URL", f"s3://{lake_bucket}/lake")  # reachable
    monkeypatch.setenv("ETL_COMPUTE_LOG_BUCKET", "no-such-bucket")  # not
    monkeypatch.setenv("ETL_POSTGRES_URL", target)
    status, lines, text = _check_deployment(capsys)
    assert status == 1, text
    assert lines["deployment mode"].startswith("OK deployment mode: ETL_DEPLOYMENT=distributed")
    assert lines["instance storage"].startswith("OK")
    assert lines["compute logs"].startswith("FAIL compute logs: s3://no-such-bucket/")
    assert "Fix: create the bucket" in lines["compute logs"]
    assert lines["lake"].startswith(f"OK lake: ETL_LAKE_URL=s3://{lake_bucket}/lake")
    assert lines["landing"].startswith("FAIL landing: ETL_DEPLOYMENT=distributed needs the landing zone on object")
    assert "Fix: set ETL_LANDING_URL=s3://<bucket>/<prefix>" in lines["landing"]
    # the packaged shop pipelines load into the DuckDB warehouse: each is named, with the fix
    assert lines["warehouse"].startswith("FAIL warehouse: 7 pipeline(s) load into the DuckDB warehouse")
    assert (
        "shop.orders (" in lines["warehouse"]  # each by its reference, <domain>.<name>
        and "Fix: use `targets: [postgres]` with ETL_POSTGRES_URL" in lines["warehouse"]
    )
    assert lines["postgres target"].startswith("OK postgres target: postgresql://***@")
    assert text.splitlines()[-1] == "14 checks, 3 failed: compute logs, landing, warehouse"
    _assert_no_secret(text, secret_password, target_password)


def test_check_deployment_without_a_working_instance_fails_and_names_the_fix(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("ETL_DEPLOYMENT", "everywhere")
    status, lines, text = _check_deployment(capsys)
    assert status == 1
    assert lines["deployment mode"].startswith("FAIL deployment mode: ETL_DEPLOYMENT='everywhere' is not a deployment")
    monkeypatch.delenv("ETL_DEPLOYMENT")
    status, lines, text = _check_deployment(capsys)
    assert status == 1
    assert lines["instance"] == (
        "FAIL instance: DAGSTER_HOME is not set. Fix: export DAGSTER_HOME=<dir>, then copy deploy/dagster.yaml to"
        " $DAGSTER_HOME/dagster.yaml (docs/deployment.md)"
    )
    assert lines["warehouse"].startswith("OK warehouse: DuckDB warehouse ")

    # the production instance on a host where its variables are not set: each is named, before opening it
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY_INSTANCE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in (
        "DAGSTER_PG_USER",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_DB",
        "DAGSTER_PG_PORT",
        "ETL_COMPUTE_LOG_BUCKET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_PG_HOST", "db.internal")
    status, lines, text = _check_deployment(capsys)
    assert status == 1
    assert lines["instance"].startswith(
        f"FAIL instance: {home / 'dagster.yaml'} reads variables that are not set here:"
    )
    assert (
        "DAGSTER_PG_USER, DAGSTER_PG_PASSWORD, DAGSTER_PG_DB, DAGSTER_PG_PORT, ETL_COMPUTE_LOG_BUCKET"
        in lines["instance"]
    )
    assert "DAGSTER_PG_HOST" not in lines["instance"] and "instance storage" not in lines
