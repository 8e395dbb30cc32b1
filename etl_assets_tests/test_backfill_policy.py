"""Protects how many partitions one run of a backfill takes (``partitions.max_per_run``, etl_assets/pipelines/policy.py).

Unset, a files (or database, transform) pipeline backfills a whole range in one run and an API pipeline one partition
per run; ``max_per_run`` bounds either. A multi-day range of the real shop orders pipeline (demo REST API on
loopback) then runs as one in-process run that extracts, validates and loads each day on its own, with exactly the
API's orders of those days in the warehouse, and each partition materialized. ``max_per_run`` on an unpartitioned
pipeline is refused with the field and the fix.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from etl_assets.cli import QUIET
from etl_assets.cli.demo import FULL_REFRESH_JOB
from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets.pipelines.spec import Partitioning, SpecError
from etl_assets.settings import current_settings
from etl_assets_demo import DemoApiServer, DemoManifest
from etl_assets_tests.specs import column, load_spec, pipeline, shop_specs

DAILY = {"type": "daily", "start": "2024-01-01"}


def _policy(defs, key: list[str]):
    return defs.resolve_asset_graph().get(AssetKey(key)).backfill_policy


@pytest.mark.parametrize(
    ("partitions", "max_per_run"),
    [(DAILY, None), ({**DAILY, "max_per_run": 5}, 5)],
)
def test_a_files_pipeline_backfills_a_range_in_one_run_unless_bounded(
    tmp_path: Path, data_dir: Path, partitions: dict, max_per_run: int | None
) -> None:
    loaded = load_spec(tmp_path, pipeline("drops", domain="lab", partitions=partitions))
    policy = _policy(build_definitions([loaded]), ["lab", "raw_drops"])
    assert policy is not None and policy.max_partitions_per_run == max_per_run


@pytest.mark.parametrize(("max_per_run", "expected"), [(None, 1), (7, 7)])
def test_an_api_pipeline_backfills_one_partition_per_run_unless_told(
    data_dir: Path, max_per_run: int | None, expected: int
) -> None:
    specs = _shop_orders_in_runs_of(max_per_run)
    defs = build_definitions(specs)
    for stage in ("raw", "clean", "warehouse"):
        policy = _policy(defs, ["shop", f"{stage}_orders"])
        assert policy is not None and policy.max_partitions_per_run == expected, stage


def _shop_orders_in_runs_of(max_per_run: int | None):
    specs = []
    for loaded in shop_specs():
        spec = loaded.spec
        if spec.ref == "shop.orders":
            partitions = Partitioning.model_validate({**spec.partitions.model_dump(), "max_per_run": max_per_run})
            loaded = loaded.model_copy(update={"spec": spec.model_copy(update={"partitions": partitions})})
        specs.append(loaded)
    return specs


def test_a_multi_day_range_of_an_api_pipeline_is_one_run(
    shop_data: DemoManifest, api_server: DemoApiServer, data_dir: Path, instance: DagsterInstance
) -> None:
    defs = build_definitions(_shop_orders_in_runs_of(7))
    assert defs.resolve_job_def(FULL_REFRESH_JOB).execute_in_process(instance=instance, run_config=QUIET).success
    days = shop_data.partition_keys
    assert len(days) > 1
    job = defs.resolve_job_def(pipeline_job_name(Pipeline("shop", "orders")))
    tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
    result = job.execute_in_process(instance=instance, run_config=QUIET, tags=tags)
    assert result.success
    for stage in ("raw", "clean", "warehouse"):
        key = AssetKey(["shop", f"{stage}_orders"])
        assert instance.get_materialized_partitions(key) == set(days), stage
    source = pd.read_parquet(shop_data.orders_path)
    source["day"] = source["ordered_at"].dt.strftime("%Y-%m-%d")
    in_range = source[source["day"].isin(days)]
    expected = {day: (len(group), sum(group["order_id"].tolist())) for day, group in in_range.groupby("day", sort=True)}
    with duckdb.connect(str(current_settings().warehouse_path), read_only=True) as con:
        got = con.execute(
            "SELECT strftime(ordered_at, '%Y-%m-%d') AS day, count(*), sum(order_id) FROM shop.orders GROUP BY day"
        ).fetchall()
    assert {day: (count, total) for day, count, total in got} == expected


def test_max_per_run_needs_partitions(tmp_path: Path) -> None:
    spec = pipeline("drops", columns=[column("a", "INTEGER")], partitions={"type": "none", "max_per_run": 3})
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path, spec)
    message = str(caught.value)
    assert "field 'partitions.max_per_run'" in message and "not partitioned" in message, message
