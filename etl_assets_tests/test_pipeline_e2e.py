"""The whole reference shop pipeline on embedded defaults: API, SQLite and landing files through the lake into
the DuckDB warehouse, checked against figures computed independently from the generated source data."""

from __future__ import annotations

import json
import sqlite3
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import instance_for_test

from etl_assets.cli.demo import DAILY_JOB, run_reference
from etl_assets.definitions import build_definitions
from etl_assets.resources.files import LandingFilesSource
from etl_assets_demo import DemoApiServer, generate_shop_data
from etl_assets_tests.conftest import SMALL_DAYS, SMALL_ORDERS

pytestmark = [pytest.mark.slow]


def _fx_rates_file(manifest) -> Path:
    """The demo's rates file: in landing, or in the archive once the demo's run loaded it."""
    landed = manifest.landing_dir / "shop.fx_rates" / "fx_rates.json"
    if landed.exists():
        return landed
    (archived,) = LandingFilesSource(root=str(manifest.landing_dir)).archive_dir("shop.fx_rates").glob("*fx_rates.json")
    return archived


def _expected_revenue(manifest) -> pd.DataFrame:
    orders = pd.read_parquet(manifest.orders_path)
    with sqlite3.connect(manifest.sqlite_path) as conn:
        customers = pd.read_sql_query("SELECT customer_id, country FROM customers", conn)
    rates = {r["currency"]: Decimal(str(r["rate_to_usd"])) for r in json.loads(_fx_rates_file(manifest).read_text())}
    orders = orders[orders["status"] != "cancelled"].merge(customers, on="customer_id", how="left")
    orders["order_date"] = orders["ordered_at"].dt.strftime("%Y-%m-%d")
    orders["usd"] = [
        (Decimal(q) * Decimal(p) * rates[c]).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        for q, p, c in zip(orders["quantity"], orders["unit_price"], orders["currency"])
    ]
    grouped = orders.groupby(["order_date", "country"]).agg(
        orders=("order_id", "count"), units=("quantity", "sum"), revenue=("usd", "sum")
    )
    return grouped.reset_index()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One reference run shared by this module's tests (a full run costs tens of seconds)."""
    root = tmp_path_factory.mktemp("e2e")
    (root / "home").mkdir()
    with pytest.MonkeyPatch.context() as mp, instance_for_test(temp_dir=str(root / "home")) as instance:
        data_dir = root / "data"
        mp.setenv("ETL_DATA_DIR", str(data_dir))
        mp.delenv("ETL_PIPELINES_DIR", raising=False)
        manifest = generate_shop_data(data_dir, orders=SMALL_ORDERS, days=SMALL_DAYS)
        with DemoApiServer(manifest.orders_path) as server:
            mp.setenv("SHOP_API_URL", server.url)
            defs = build_definitions()
            runs = run_reference(defs, instance, manifest.partition_keys)
            assert [r.success for r in runs] == [True] * (1 + len(manifest.partition_keys)), runs
            yield defs, manifest, instance, data_dir


@pytest.fixture
def loaded(world):
    return world[0]


@pytest.fixture
def shop_data(world):
    return world[1]


@pytest.fixture
def instance(world):
    return world[2]


@pytest.fixture
def data_dir(world):
    return world[3]


def test_warehouse_matches_source_data(shop_data, data_dir):
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    source = pd.read_parquet(shop_data.orders_path)
    count, id_sum, qty_sum = con.execute("SELECT count(*), sum(order_id), sum(quantity) FROM shop.orders").fetchall()[0]
    assert (count, id_sum, qty_sum) == (len(source), sum(source["order_id"].tolist()), sum(source["quantity"].tolist()))
    assert (
        con.execute("SELECT count(*) FROM shop.orders_enriched WHERE country IS NULL OR amount_usd IS NULL").fetchall()[
            0
        ][0]
        == 0
    )
    with sqlite3.connect(shop_data.sqlite_path) as conn:
        n_customers = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
    assert con.execute("SELECT count(*) FROM shop.customers").fetchall()[0][0] == n_customers == shop_data.customers
    assert con.execute("SELECT count(*) FROM shop.products").fetchall()[0][0] == shop_data.products
    assert con.execute("SELECT count(*) FROM shop.inventory").fetchall()[0][0] == shop_data.products * shop_data.days

    actual = con.execute(
        "SELECT strftime(order_date, '%Y-%m-%d') AS order_date, country, orders, units, revenue_usd FROM shop.daily_revenue"
        " ORDER BY 1, 2"
    ).df()
    expected = _expected_revenue(shop_data)
    assert list(actual["order_date"]) == list(expected["order_date"])
    assert list(actual["country"]) == list(expected["country"])
    assert list(actual["orders"]) == list(expected["orders"])
    assert list(actual["units"]) == list(expected["units"])
    assert [Decimal(str(v)) for v in actual["revenue_usd"]] == list(expected["revenue"])
    # every warehouse row records the partition and the run that loaded it
    partitions = {r[0] for r in con.execute("SELECT DISTINCT _etl_partition FROM shop.orders").fetchall()}
    assert partitions == set(shop_data.partition_keys)


def test_rerunning_a_partition_replaces_it(loaded, shop_data, instance, data_dir):
    warehouse = data_dir / "warehouse.duckdb"

    def snapshot():
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return {
                t: con.execute(f"SELECT * EXCLUDE (_etl_run_id, _etl_loaded_at) FROM shop.{t} ORDER BY ALL").fetchall()
                for t in ("orders", "orders_enriched", "daily_revenue", "inventory")
            }

    before = snapshot()
    partition = shop_data.partition_keys[1]
    for _ in range(2):
        result = loaded.resolve_job_def(DAILY_JOB).execute_in_process(instance=instance, partition_key=partition)
        assert result.success
    assert snapshot() == before
    with duckdb.connect(str(warehouse), read_only=True) as con:
        runs = con.execute(
            "SELECT DISTINCT _etl_run_id FROM shop.orders WHERE _etl_partition = ?", [partition]
        ).fetchall()
    assert runs == [(result.run_id,)]


def test_materializations_carry_metadata(instance):
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey(["shop", "clean_orders"]))
    meta = event.asset_materialization.metadata
    assert meta["rows_in"].value == meta["rows_valid"].value + meta["rows_quarantined"].value
    assert meta["dagster/row_count"].value == meta["rows_valid"].value
    raw = instance.get_latest_materialization_event(AssetKey(["shop", "raw_orders"])).asset_materialization.metadata
    assert raw["pages"].value >= 1 and raw["records_extracted"].value == raw["dagster/row_count"].value
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key
    from dagster import AssetCheckKey

    latest = checks([AssetCheckKey(AssetKey(["shop", "clean_orders"]), "rows_conserved")])
    assert latest and next(iter(latest.values())).status.value == "SUCCEEDED"
