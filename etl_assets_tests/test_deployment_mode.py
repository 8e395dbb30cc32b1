"""The warehouse never splits: with ``ETL_DEPLOYMENT=distributed`` nothing writes a DuckDB warehouse file, and the lake
and landing zone must be on object storage.

A pipeline loading into DuckDB is set aside at start with its file, the field ``targets`` and the fix, while the
others load and run; the warehouse resource refuses a write at run time too (a worker whose environment says
distributed runs a location built without the rule), and that failure is not retried.

Real parts: spec files on disk loaded as the code location loads them, DuckDB files, a real Dagster instance running
the jobs, the spec-error sensor's tick, the CLI's ``validate``, and Postgres for the pipeline that is allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterEventType, Failure, build_sensor_context
from psycopg import sql

from etl_assets.cli import main
from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref, target_key
from etl_assets.lake import LakeTable
from etl_assets.monitoring.error_tracking import ErrorRecord, ErrorStore
from etl_assets.monitoring.health import write_health_table
from etl_assets.monitoring.spec_errors import SPEC_ERRORS_SENSOR
from etl_assets.pipelines.spec import SpecError, load_specs, load_specs_isolated
from etl_assets.resources.targets import DuckDBWarehouse
from etl_assets.settings import (
    DeploymentRefused,
    SettingsError,
    deployment_mode,
    duckdb_connection,
    require_shared_storage,
)
from etl_assets_tests.specs import column, pipeline, transform, write_spec

REFUSAL = "ETL_DEPLOYMENT=distributed refuses it: the DuckDB warehouse is a file on the disk of the host"
FIX = "Fix: use `targets: [postgres]` with ETL_POSTGRES_URL set"


def test_the_mode_is_single_host_unless_the_variable_says_distributed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ETL_DEPLOYMENT", raising=False)
    assert deployment_mode() == "single-host"
    for value, mode in [("distributed", "distributed"), (" Distributed ", "distributed"), ("", "single-host")]:
        monkeypatch.setenv("ETL_DEPLOYMENT", value)  # read at each call, not at import
        assert deployment_mode() == mode


def test_an_unknown_mode_is_a_clear_error_wherever_it_is_read(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ETL_DEPLOYMENT", "multi-host")
    expected = (
        r"ETL_DEPLOYMENT='multi-host' is not a deployment mode; set ETL_DEPLOYMENT to single-host .* or distributed"
    )
    with pytest.raises(SettingsError, match=expected):
        deployment_mode()
    with pytest.raises(SettingsError, match=expected):
        build_definitions()  # the code location does not load on a value it cannot read


@pytest.mark.parametrize(
    ("mode", "kind", "url", "refused"),
    [
        ("single-host", "lake", None, None),
        ("single-host", "landing", "/srv/landing", None),
        ("distributed", "lake", "s3://lake-bucket/etl/lake", None),
        ("distributed", "landing", "S3://landing-bucket", None),
        ("distributed", "lake", None, "ETL_LAKE_URL is not set, so the lake is the local directory {data}/lake"),
        ("distributed", "landing", "", "ETL_LANDING_URL is not set, so the landing zone is the local directory"),
        ("distributed", "lake", "/mnt/shared/lake", "ETL_LAKE_URL='/mnt/shared/lake'"),
        ("distributed", "lake", "file:///srv/lake", "ETL_LAKE_URL='file:///srv/lake'"),
        ("distributed", "lake", "s3://", "ETL_LAKE_URL='s3://'"),  # no bucket
    ],
)
def test_a_distributed_deployment_needs_the_lake_and_landing_zone_on_object_storage(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str, kind: str, url: str | None, refused: str | None
):
    monkeypatch.setenv("ETL_DEPLOYMENT", mode)
    if refused is None:
        require_shared_storage(kind, url)
        return
    with pytest.raises(DeploymentRefused) as raised:
        require_shared_storage(kind, url)
    message = str(raised.value)
    assert refused.format(data=data_dir) in message
    variable = "ETL_LAKE_URL" if kind == "lake" else "ETL_LANDING_URL"
    assert f"Fix: set {variable}=s3://<bucket>/<prefix>" in message
    assert raised.value.fix.startswith(f"set {variable}=s3://")


def test_an_unknown_storage_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="'warehouse' is not a storage kind"):
        require_shared_storage("warehouse", "s3://b")


@pytest.fixture
def user_specs(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of specs in ETL_PIPELINES_DIR: one loading into Postgres only, one into DuckDB by default, one into
    both, and a Postgres mart over the DuckDB-default one."""
    folder = tmp_path / "specs"
    write_spec(folder, pipeline("on_postgres", targets=["postgres"]))
    write_spec(folder, pipeline("on_default"))
    write_spec(folder, pipeline("on_both", targets=["duckdb", "postgres"]))
    write_spec(folder, transform("mart_of_default", "mart_of_default.sql", ["on_default"], targets=["postgres"]))
    (folder / "mart_of_default.sql").write_text("SELECT a FROM on_default")
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(folder))
    return folder


def test_a_distributed_deployment_sets_aside_each_pipeline_loading_into_duckdb(
    user_specs: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("ETL_DEPLOYMENT", raising=False)
    loaded, broken = load_specs_isolated()
    assert not broken and {"on_postgres", "on_default", "on_both", "mart_of_default", "orders"} <= {
        s.spec.name for s in loaded
    }

    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    loaded, broken = load_specs_isolated()
    assert [s.spec.name for s in loaded] == ["on_postgres"]  # the packaged shop pipelines load into DuckDB too
    by_name = {b.name: b for b in broken}  # each set aside under its reference, <domain>.<name>
    assert {
        "default.on_default",
        "default.on_both",
        "default.mart_of_default",
        "shop.orders",
        "shop.daily_revenue",
    } <= set(by_name)

    default = by_name["default.on_default"]
    assert default.field == "targets" and default.path == user_specs / "on_default.yaml"
    assert default.message.startswith(
        f"invalid pipeline spec {user_specs / 'on_default.yaml'}:\n  field 'targets': the pipeline loads into the"
        " DuckDB warehouse (targets: [duckdb], the default), and "
    )
    assert REFUSAL in default.message and FIX in default.message
    assert "(targets: [duckdb, postgres])" in by_name["default.on_both"].message
    orders = by_name["shop.orders"]
    assert orders.field == "targets" and ", line " in orders.message  # a defs.yaml document
    # the mart reads a pipeline set aside: it says which, and is not blamed for DuckDB
    mart = by_name["default.mart_of_default"]
    assert mart.field is None
    assert f"'default.on_default' is declared in {user_specs / 'on_default.yaml'}, which is invalid" in mart.message

    with pytest.raises(SpecError, match="field 'targets': the pipeline loads into the DuckDB warehouse"):
        load_specs()  # the strict loader refuses as well


def test_the_location_loads_the_others_and_reports_the_refused_ones(
    user_specs: Path, instance, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    defs = build_definitions()
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"default/raw_on_postgres", "default/clean_on_postgres", "default/postgres_on_postgres"} <= keys
    assert not [k for k in keys if "/warehouse_" in k]
    assert not [k for k in keys if "on_default" in k or "on_both" in k or "orders" in k]
    sensor = defs.resolve_sensor_def(SPEC_ERRORS_SENSOR)
    assert defs.resources is not None
    context = build_sensor_context(instance=instance, resources={"alerting": defs.resources["alerting"]})
    with pytest.raises(Exception) as raised:
        sensor.evaluate_tick(context)
    text = str(raised.value)
    assert str(user_specs / "on_default.yaml") in text and "field 'targets'" in text and FIX in text


def test_validate_fails_on_a_pipeline_the_distributed_deployment_refuses(
    user_specs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert f"invalid pipeline spec {user_specs / 'on_both.yaml'}:\n  field 'targets'" in err and FIX in err


def _lake_table(folder: Path) -> LakeTable:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part.parquet"
    with duckdb_connection() as con:
        con.execute(f"COPY (SELECT 1 AS a UNION ALL SELECT 2) TO '{path}' (FORMAT parquet)")
    return LakeTable(name="lake/t", paths=(str(path),), partitions=("p",))


def test_the_warehouse_refuses_to_open_for_writing_in_a_distributed_deployment(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("ETL_DEPLOYMENT", raising=False)
    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh" / "warehouse.duckdb"))
    source = _lake_table(tmp_path / "lake")
    assert warehouse.replace_partition("shop", "t", source, "p1", "run-1").rows == 2

    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    with pytest.raises(Failure) as raised:
        warehouse.replace_partition("shop", "t", source, "p2", "run-2")
    failure = raised.value
    assert failure.description is not None
    assert failure.description.startswith(f"the DuckDB warehouse {warehouse.db_path()} was not opened for writing")
    assert REFUSAL in failure.description and FIX in failure.description
    assert failure.allow_retries is False  # another attempt on this host would be refused the same way
    with pytest.raises(Failure):
        with warehouse.connect():
            pass
    # reading is not writing: the file is still readable, unchanged
    with warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT _etl_partition, count(*) FROM shop.t GROUP BY ALL").fetchall() == [("p1", 2)]


def test_a_worker_whose_environment_says_distributed_fails_the_load_without_retrying(
    tmp_path: Path, data_dir: Path, instance, monkeypatch: pytest.MonkeyPatch, s3_server, s3_bucket
):
    """The location was built on a host without the rule (single-host); the run executes where it is distributed
    (its lake and landing zone on S3, as a distributed deployment requires)."""
    monkeypatch.delenv("ETL_DEPLOYMENT", raising=False)
    folder = tmp_path / "specs"
    write_spec(folder, pipeline("drops", [column("a", "INTEGER")], retry={"max_retries": 2, "delay_seconds": 0}))
    defs = build_definitions(specs=load_specs([folder]))
    drops = Pipeline("default", "drops")
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"landing/{pipeline_ref(drops)}/x.csv", Body=b"a\n1\n2\n")
    monkeypatch.setenv("ETL_LAKE_URL", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("ETL_LANDING_URL", f"s3://{s3_bucket}/landing")

    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    result = defs.resolve_job_def(pipeline_job_name(drops)).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == [target_key("duckdb", drops).to_python_identifier()]
    error = failures[0].step_failure_data.error
    assert error is not None and REFUSAL in error.message and FIX in error.message
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    succeeded = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_SUCCESS}
    assert {
        "default__raw_drops",
        f"validate_{dagster_name(drops)}",
    } <= succeeded  # the steps before the load ran, on the S3 lake
    assert (
        not (data_dir / "warehouse.duckdb").exists() and not (data_dir / "lake").exists()
    )  # nothing was written to a warehouse file on this host


def test_monitoring_writes_are_refused_too_and_error_records_wait_in_the_spool(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    store = ErrorStore(warehouse, spool_path=tmp_path / "errors_pending.jsonl", wait_seconds=0)
    now = datetime.now(UTC)
    record = ErrorRecord("run-1", "default__drops_pipeline", "default.drops", "load", "", "", "permanent", "boom", now)
    assert store.record([record]) is False
    assert store.last_problem is not None and REFUSAL in store.last_problem
    assert store.pending() == 1
    with pytest.raises(Failure, match="was not opened for writing"):
        write_health_table(warehouse, [], window=timedelta(hours=1), computed_at=now, wait_seconds=0)
    assert not (tmp_path / "warehouse.duckdb").exists()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_pipeline_loading_into_postgres_runs_in_a_distributed_deployment(
    tmp_path: Path,
    data_dir: Path,
    instance,
    postgres_url: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    s3_server,
    s3_bucket,
):
    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    monkeypatch.setenv("ETL_POSTGRES_URL", postgres_url)
    monkeypatch.setenv("ETL_LAKE_URL", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("ETL_LANDING_URL", f"s3://{s3_bucket}/landing")
    folder = tmp_path / "specs"
    write_spec(
        folder, pipeline("drops", [column("a", "INTEGER", nullable=False)], domain=pg_schema, targets=["postgres"])
    )
    specs, broken = load_specs_isolated([folder])
    assert not broken
    drops = Pipeline(pg_schema, "drops")
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"landing/{pipeline_ref(drops)}/x.csv", Body=b"a\n1\n2\n")
    job = build_definitions(specs=specs).resolve_job_def(pipeline_job_name(drops))
    result = job.execute_in_process(instance=instance)
    assert result.success
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT a FROM {} ORDER BY a").format(sql.Identifier(pg_schema, "drops"))
        ).fetchall()
    assert rows == [(1,), (2,)]
    assert not (data_dir / "warehouse.duckdb").exists() and not (data_dir / "lake").exists()


def test_a_distributed_deployment_can_leave_the_packaged_duckdb_pipelines_out(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """The packaged shop domain loads into DuckDB, so a distributed deployment sets it aside (and its spec-error
    sensor fails each tick); ETL_PACKAGED_PIPELINES=off leaves it out, so only the deployment's own pipelines load."""
    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    folder = tmp_path / "specs"
    write_spec(folder, pipeline("drops", [column("a", "INTEGER")], targets=["postgres"]))
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(folder))
    specs, broken = load_specs_isolated()
    assert "drops" in [s.spec.name for s in specs] and len(broken) >= 1
    assert all("targets" in b.message for b in broken)
    monkeypatch.setenv("ETL_PACKAGED_PIPELINES", "off")
    specs, broken = load_specs_isolated()
    assert [s.spec.name for s in specs] == ["drops"] and broken == []
    assert main(["validate"]) == 0
    monkeypatch.setenv("ETL_PACKAGED_PIPELINES", "maybe")
    specs, broken = load_specs_isolated()
    assert specs == [] and len(broken) == 1
    assert "ETL_PACKAGED_PIPELINES='maybe' is not on or off" in broken[0].message
