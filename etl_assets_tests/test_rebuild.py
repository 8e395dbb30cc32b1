"""Protects data recovery by rebuild (``etl_assets/recovery/rebuild.py``): `etl-assets rebuild` re-derives clean
data, quarantine, targets and marts from the raw lake alone (the sources are gone), gives the same tables as the
original runs, and can be repeated; a rebuild of an expired partition, or of a pipeline that is not a source, says
what to do."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pytest

from etl_assets.cli import main as cli
from etl_assets.cli.demo import run_reference
from etl_assets.definitions import build_definitions

TABLES = ["shop.orders", "shop.orders_enriched", "shop.daily_revenue", "shop.customers", "quarantine.shop__orders"]


def snapshot(data_dir: Path) -> dict[str, list[tuple]]:
    """Every row of the tables, without the columns that name the run that wrote them."""
    out = {}
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        for table in TABLES:
            out[table] = con.execute(
                f"SELECT * EXCLUDE (_etl_run_id, _etl_loaded_at) FROM {table} ORDER BY ALL"
            ).fetchall()
    return out


@pytest.mark.slow
def test_rebuild_from_raw_without_sources(shop_data, api_server, data_dir, instance, monkeypatch, capsys):
    runs = run_reference(build_definitions(), instance, shop_data.partition_keys)
    assert all(r.success for r in runs), runs
    before = snapshot(data_dir)
    assert len(before["shop.orders"]) > 0 and len(before["shop.daily_revenue"]) > 0

    # everything but the raw lake is lost, and no source can be asked again
    (data_dir / "warehouse.duckdb").unlink()
    for stored in (data_dir / "lake" / "shop").iterdir():
        if not stored.name.startswith("raw_"):
            shutil.rmtree(stored)
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
    assert "shop/marts_daily_revenue" in out
    # one progress line per partition, with what it wrote
    lines = [line for line in out.splitlines() if line.startswith("[") and f"] shop.orders {last} " in line]
    assert len(lines) == 2 and lines[0].startswith(f"[{len(shop_data.partition_keys)}/{len(shop_data.partition_keys)}]")
    assert re.search(rf"\] shop\.orders {last} ok, [\d,]+ rows, .*: .*shop/warehouse_orders \d+", lines[0]), lines[0]
    assert "not rebuilt (other partitioning" in out  # customers' daily downstream is named, not silently skipped

    # a partition whose raw input is gone: the command says which and how to get it back
    (data_dir / "lake" / "shop" / "raw_orders" / f"{first}.parquet").unlink()
    assert cli(["rebuild", "orders", "--from", first, "--to", last]) == 2
    err = capsys.readouterr().err
    assert f"shop/raw_orders has no lake data for partition(s) {first}" in err and "--select shop/raw_orders" in err
    assert snapshot(data_dir) == before  # nothing was half-done


def test_rebuild_of_an_unknown_pipeline_names_the_choices(data_dir, capsys):
    assert cli(["rebuild", "daily_revenue"]) == 2
    assert (
        "shop.daily_revenue is not a source pipeline; rebuild one of: shop.customers, shop.fx_rates, shop.inventory, "
        "shop.orders" in capsys.readouterr().err
    )
