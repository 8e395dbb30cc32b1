"""Data recovery: `etl-assets rebuild` re-derives clean data, quarantine, targets and marts from the raw lake alone
(the sources are gone), gives the same tables as the original runs, and can be repeated; retention removes only
raw inputs older than a spec allows, and a rebuild of an expired partition says what to do."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance

from etl_assets.cli import main as cli
from etl_assets.definitions import build_definitions
from etl_assets.lake import LakeStorage
from etl_assets.pipelines.spec import SpecError, load_specs
from etl_assets.recovery.retention import expire_raw_inputs
from etl_assets.resources.files import LandingFilesSource
from etl_assets.runner import run_reference
from etl_assets_tests.specs import column, definitions_for, files_source, load_spec, pipeline, shop_specs, write_spec

TABLES = ["shop.orders", "shop.orders_enriched", "shop.daily_revenue", "shop.customers", "quarantine.orders"]


def snapshot(data_dir: Path) -> dict[str, list[tuple]]:
    """Every row of the tables, without the columns that name the run that wrote them."""
    out = {}
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        for table in TABLES:
            out[table] = con.execute(
                f"SELECT * EXCLUDE (_etl_run_id, _etl_loaded_at) FROM {table} ORDER BY ALL").fetchall()
    return out


def test_rebuild_from_raw_without_sources(shop_data, api_server, data_dir, instance, monkeypatch, capsys):
    runs = run_reference(build_definitions(), instance, shop_data.partition_keys)
    assert all(r.success for r in runs), runs
    before = snapshot(data_dir)
    assert len(before["shop.orders"]) > 0 and len(before["shop.daily_revenue"]) > 0

    # everything but the raw lake is lost, and no source can be asked again
    (data_dir / "warehouse.duckdb").unlink()
    for stage in ("clean", "quarantine", "marts"):
        shutil.rmtree(data_dir / "lake" / stage)
    monkeypatch.setenv("SHOP_API_URL", "http://127.0.0.1:9")  # nothing listens there
    shop_data.sqlite_path.rename(shop_data.sqlite_path.with_suffix(".gone"))
    shutil.rmtree(data_dir / "landing")
    api_requests = api_server.requests_total

    first, last = shop_data.partition_keys[0], shop_data.partition_keys[-1]
    for _ in range(2):  # a rebuild can be repeated and changes nothing
        for pipeline in ("customers", "products", "fx_rates"):
            assert cli(["rebuild", pipeline]) == 0
        assert cli(["rebuild", "orders", "--from", first, "--to", last]) == 0
        assert snapshot(data_dir) == before
    assert api_server.requests_total == api_requests
    out = capsys.readouterr().out
    assert "marts/daily_revenue" in out and f"orders[{last}] ok" in out
    assert "not rebuilt (other partitioning" in out  # customers' daily downstream is named, not silently skipped

    # a partition whose raw input is gone: the command says which and how to get it back
    (data_dir / "lake" / "raw" / "orders" / f"{first}.parquet").unlink()
    assert cli(["rebuild", "orders", "--from", first, "--to", last]) == 2
    err = capsys.readouterr().err
    assert f"raw/orders has no lake data for partition(s) {first}" in err and "--select raw/orders" in err
    assert snapshot(data_dir) == before  # nothing was half-done


def test_rebuild_of_an_unknown_pipeline_names_the_choices(data_dir, capsys):
    assert cli(["rebuild", "daily_revenue"]) == 2
    assert "daily_revenue is not a source pipeline; rebuild one of: customers, fx_rates, inventory, orders" \
        in capsys.readouterr().err


RETAINED = pipeline("clicks", [column("click_id", "BIGINT", nullable=False)], domain="web",
                    source=files_source(glob="clicks_*.csv"), partitions={"type": "daily", "start": "2024-01-01"},
                    retention={"raw_days": 2, "archive_days": 10})


def test_retention_removes_only_expired_raw_inputs(tmp_path, data_dir):
    lake, landing = LakeStorage(), LandingFilesSource()
    days = [f"2024-01-0{d}" for d in range(1, 6)]
    for day in days:
        for stage in ("raw", "clean"):
            lake.write([stage, "clicks"], day, duckdb.sql("SELECT 1 AS click_id"))
        lake.write(["raw", "orders"], day, duckdb.sql("SELECT 1 AS order_id"))  # no retention in its spec
    archive = data_dir / "archive" / "clicks"
    archive.mkdir(parents=True)
    now = dt.datetime(2024, 1, 5, 12, tzinfo=dt.timezone.utc)
    for age_days, name in ((30, "clicks_old.csv"), (3, "clicks_recent.csv")):
        path = archive / name
        path.write_text("click_id\n1\n")
        stamp = now.timestamp() - age_days * 86400
        os.utime(path, (stamp, stamp))

    specs_loaded = [s.spec for s in [*shop_specs(), load_spec(tmp_path / "specs", RETAINED)]]
    removed = expire_raw_inputs(specs_loaded, lake, landing, now)
    assert sorted((r.pipeline, r.kind, r.name) for r in removed) == [
        ("clicks", "archived_file", "clicks_old.csv"),
        ("clicks", "raw_partition", "2024-01-01"), ("clicks", "raw_partition", "2024-01-02")]
    assert lake.partitions(["raw", "clicks"]) == days[2:]
    assert lake.partitions(["clean", "clicks"]) == days  # clean data and targets are never touched
    assert lake.partitions(["raw", "orders"]) == days
    assert [p.name for p in archive.iterdir()] == ["clicks_recent.csv"]
    assert expire_raw_inputs(specs_loaded, lake, landing, now) == []


def test_retention_job_runs_in_dagster(tmp_path, data_dir, instance):
    old = (dt.date.today() - dt.timedelta(days=30)).isoformat()
    LakeStorage().write(["raw", "clicks"], old, duckdb.sql("SELECT 1 AS click_id"))
    LakeStorage().write(["raw", "clicks"], dt.date.today().isoformat(), duckdb.sql("SELECT 1 AS click_id"))
    result = definitions_for(tmp_path / "specs", RETAINED).resolve_job_def("lake_retention_job").execute_in_process(
        instance=instance)
    assert result.success
    assert result.output_for_node("expire_raw") == 1
    assert LakeStorage().partitions(["raw", "clicks"]) == [dt.date.today().isoformat()]


@pytest.mark.parametrize("retention, field", [
    ({"raw_days": 3}, "retention.raw_days"),        # unpartitioned: nothing to expire
    ({"archive_days": 0}, "retention.archive_days"),  # must be at least a day
])
def test_retention_spec_errors_name_the_field(tmp_path, retention, field):
    spec = write_spec(tmp_path, pipeline("bad", [column("id", "BIGINT")], retention=retention))
    with pytest.raises(SpecError) as err:
        load_specs([tmp_path])
    assert str(spec) in str(err.value) and field in str(err.value)
