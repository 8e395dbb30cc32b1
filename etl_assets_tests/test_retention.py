"""Protects retention of raw inputs (``etl_assets/recovery/retention.py``): only raw lake partitions and archived
landing files older than a spec allows are removed (never clean data, targets, or another pipeline's inputs), the
retention job does it in Dagster, and a retention field that cannot apply is refused naming the field."""

from __future__ import annotations

import datetime as dt
import os

import duckdb
import pytest

from etl_assets.lake import LakeStorage
from etl_assets.pipelines.spec import SpecError, load_specs
from etl_assets.recovery.retention import expire_raw_inputs
from etl_assets.resources.files import LandingFilesSource
from etl_assets_tests.specs import column, definitions_for, files_source, load_spec, pipeline, shop_specs, write_spec

RETAINED = pipeline(
    "clicks",
    [column("click_id", "BIGINT", nullable=False)],
    domain="web",
    source=files_source(glob="clicks_*.csv"),
    partitions={"type": "daily", "start": "2024-01-01"},
    retention={"raw_days": 2, "archive_days": 10},
)


def test_retention_removes_only_expired_raw_inputs(tmp_path, data_dir):
    lake, landing = LakeStorage(), LandingFilesSource()
    days = [f"2024-01-0{d}" for d in range(1, 6)]
    for day in days:
        for stage in ("raw", "clean"):
            lake.write(["web", f"{stage}_clicks"], day, duckdb.sql("SELECT 1 AS click_id"))
        lake.write(["shop", "raw_orders"], day, duckdb.sql("SELECT 1 AS order_id"))  # no retention in its spec
    archive = data_dir / "archive" / "web.clicks"  # a pipeline's archive folder is its reference
    archive.mkdir(parents=True)
    now = dt.datetime(2024, 1, 5, 12, tzinfo=dt.UTC)
    for age_days, name in ((30, "clicks_old.csv"), (3, "clicks_recent.csv")):
        path = archive / name
        path.write_text("click_id\n1\n")
        stamp = now.timestamp() - age_days * 86400
        os.utime(path, (stamp, stamp))

    specs_loaded = [s.spec for s in [*shop_specs(), load_spec(tmp_path / "specs", RETAINED)]]
    removed = expire_raw_inputs(specs_loaded, lake, landing, now)
    assert sorted((r.pipeline, r.kind, r.name) for r in removed) == [
        ("web.clicks", "archived_file", "clicks_old.csv"),
        ("web.clicks", "raw_partition", "2024-01-01"),
        ("web.clicks", "raw_partition", "2024-01-02"),
    ]
    assert lake.partitions(["web", "raw_clicks"]) == days[2:]
    assert lake.partitions(["web", "clean_clicks"]) == days  # clean data and targets are never touched
    assert lake.partitions(["shop", "raw_orders"]) == days
    assert [p.name for p in archive.iterdir()] == ["clicks_recent.csv"]
    assert expire_raw_inputs(specs_loaded, lake, landing, now) == []


def test_retention_job_runs_in_dagster(tmp_path, data_dir, instance):
    old = (dt.date.today() - dt.timedelta(days=30)).isoformat()
    LakeStorage().write(["web", "raw_clicks"], old, duckdb.sql("SELECT 1 AS click_id"))
    LakeStorage().write(["web", "raw_clicks"], dt.date.today().isoformat(), duckdb.sql("SELECT 1 AS click_id"))
    result = (
        definitions_for(tmp_path / "specs", RETAINED)
        .resolve_job_def("lake_retention_job")
        .execute_in_process(instance=instance)
    )
    assert result.success
    assert result.output_for_node("expire_raw") == 1
    assert LakeStorage().partitions(["web", "raw_clicks"]) == [dt.date.today().isoformat()]


@pytest.mark.parametrize(
    "retention, field",
    [
        ({"raw_days": 3}, "retention.raw_days"),  # unpartitioned: nothing to expire
        ({"archive_days": 0}, "retention.archive_days"),  # must be at least a day
    ],
)
def test_retention_spec_errors_name_the_field(tmp_path, retention, field):
    spec = write_spec(tmp_path, pipeline("bad", [column("id", "BIGINT")], retention=retention))
    with pytest.raises(SpecError) as err:
        load_specs([tmp_path])
    assert str(spec) in str(err.value) and field in str(err.value)
