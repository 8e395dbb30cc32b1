"""Postgres end to end through Dagster: the customers pipeline reading a real Postgres source (ADBC path) and
a user pipeline loading into a real Postgres target, both configured only through the environment and a spec."""

from __future__ import annotations

import sqlite3

import duckdb
import psycopg
import pytest
from psycopg import sql

from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets_tests.specs import column, definitions_for, pipeline

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def pg_customers(postgres_url, pg_schema, shop_data):
    """The demo customers copied from SQLite into Postgres."""
    with sqlite3.connect(shop_data.sqlite_path) as src:
        rows = src.execute("SELECT customer_id, name, email, country, created_at, updated_at FROM customers").fetchall()
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.customers (customer_id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL,"
                " country text NOT NULL, created_at timestamp NOT NULL, updated_at timestamp NOT NULL)"
            ).format(sql.Identifier(pg_schema))
        )
        with conn.cursor().copy(sql.SQL("COPY {}.customers FROM STDIN").format(sql.Identifier(pg_schema))) as copy:
            for row in rows:
                copy.write_row(row)
    return rows


def test_customers_from_postgres(pg_customers, pg_schema, postgres_url, shop_data, instance, data_dir, monkeypatch):
    monkeypatch.setenv("SHOP_DB_URL", postgres_url + f"?options=-csearch_path%3D{pg_schema}")
    defs = build_definitions()
    result = defs.resolve_job_def(pipeline_job_name(Pipeline("shop", "customers"))).execute_in_process(
        instance=instance
    )
    assert result.success
    raw = result.asset_materializations_for_node("shop__raw_customers")[0].metadata
    assert raw["fast_path"].value == "adbc"
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT customer_id, country, updated_at FROM shop.customers ORDER BY 1").fetchall()
    expected = sorted((r[0], r[3], r[5]) for r in pg_customers)
    assert [(a, b, c.strftime("%Y-%m-%d %H:%M:%S")) for a, b, c in loaded] == expected


def test_pipeline_with_postgres_target(tmp_path, postgres_url, pg_schema, shop_data, instance, monkeypatch):
    catalogue = pipeline(
        "catalogue",
        [
            column("product_id", "BIGINT", nullable=False),
            column("sku", nullable=False),
            column("list_price", "DECIMAL(12,2)", nullable=False),
        ],
        domain=pg_schema,
        primary_key=["product_id"],
        targets=["duckdb", "postgres"],
    )
    landing = shop_data.data_dir / "landing" / pipeline_ref(Pipeline(pg_schema, "catalogue"))
    landing.mkdir(parents=True)
    (landing / "products.csv").write_text((shop_data.landing_dir / "shop.products" / "products.csv").read_text())
    monkeypatch.setenv("ETL_POSTGRES_URL", postgres_url)
    defs = definitions_for(tmp_path / "specs", catalogue)
    for _ in range(2):
        result = defs.resolve_job_def(pipeline_job_name(Pipeline(pg_schema, "catalogue"))).execute_in_process(
            instance=instance
        )
        assert result.success
    expected = duckdb.execute(
        "SELECT count(*), sum(CAST(list_price AS DECIMAL(12,2))) FROM read_csv(?, all_varchar = true)",
        [str(landing / "products.csv")],
    ).fetchall()[0]
    with psycopg.connect(postgres_url) as conn:
        got = conn.execute(
            sql.SQL("SELECT count(*), sum(list_price) FROM {}.catalogue").format(sql.Identifier(pg_schema))
        ).fetchone()
    assert got == (shop_data.products, expected[1]) and expected[0] == shop_data.products
    check = result.get_asset_check_evaluations()
    assert {(c.asset_key.to_user_string(), c.check_name, c.passed) for c in check} >= {
        (f"{pg_schema}/postgres_catalogue", "matches_lake", True)
    }
