"""Protects error recovery (issue #5): idempotent re-runs, crash recovery of loads, and retried extracts.

* Idempotency: three runs of the same partitions (an API source with quarantined rows into DuckDB and Postgres,
  a mart built from it, a file source) leave every lake file, every warehouse table (``quarantine.<ds>``
  included) and the Postgres table with the same rows as one run, compared row by row without ``_etl_run_id``
  and ``_etl_loaded_at``, while the run ids show that every row was replaced.
* Crash recovery: a real ``dagster job execute`` process is SIGKILLed inside a load transaction (after the DELETE
  and the INSERT, before the COMMIT; ``ETL_TEST_PAUSE_IN_LOAD_SECONDS`` holds it there). The DuckDB warehouse
  and the Postgres table then show each partition's previous rows, never a mix; the dead run is failed and its
  pool slot freed, as run monitoring does, and a re-execution from failure in a new process completes with
  exact rows (for Postgres: once the killed backend's transaction is gone, nothing blocks the re-run).
* Mid-extract failures: an API page that fails a few times is retried per request; a page whose request retries
  run out fails the step, whose RetryPolicy re-runs it from page 1; a Postgres backend terminated while its
  ADBC stream is read is a transient error and the step retry completes. Each ends with the source rows
  exactly once in the raw lake and the warehouse.

Everything is real: the demo API on loopback, a real Postgres, DuckDB files, Dagster instances and processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import httpx
import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from psycopg import sql

from etl_assets.definitions import build_definitions
from etl_assets.demo import DemoApiServer, DemoManifest, FaultConfig
from etl_assets.resources.targets import TEST_PAUSE_IN_LOAD_ENV, WAREHOUSE_POOL
from etl_assets_tests.recovery_child import JOB_ENV

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_SPECIFIC = ("_etl_run_id", "_etl_loaded_at")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# RestApiSource.max_attempts: requests per page before a transient failure is given up on and the step fails.
REQUEST_ATTEMPTS = 6

# ---------------------------------------------------------------------------------------------- helpers


def digest(rows: Iterable[tuple]) -> tuple[int, str]:
    """Row count and an order-independent hash of the rows (duplicates count)."""
    lines = sorted(repr(tuple(r)) for r in rows)
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def lake_snapshot(lake: Path) -> dict[str, tuple[int, str]]:
    """Every file under the lake with the digest of its rows; no temporary file may be left behind."""
    snapshot = {}
    for path in sorted(lake.rglob("*")):
        relative = path.relative_to(lake).as_posix()
        if path.is_dir():
            continue
        assert not any(part.startswith(".") for part in path.relative_to(lake).parts), f"leftover {relative}"
        rel = duckdb.read_parquet(str(path))
        columns = [duckdb.ColumnExpression(c) for c in rel.columns if c not in RUN_SPECIFIC]
        snapshot[relative] = digest(rel.select(*columns).fetchall())
    return snapshot


def warehouse_snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """Every table of the DuckDB warehouse with the digest of its rows."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2").fetchall()
        snapshot = {}
        for schema, table in tables:
            columns = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?"
                " ORDER BY ordinal_position", [schema, table]).fetchall() if r[0] not in RUN_SPECIFIC]
            select = ", ".join(f'"{c}"' for c in columns)
            snapshot[f"{schema}.{table}"] = digest(con.execute(f'SELECT {select} FROM "{schema}"."{table}"').fetchall())
    return snapshot


def pg_rows(url: str, schema: str, table: str, columns: list[str] | None = None) -> list[tuple]:
    with psycopg.connect(url) as conn:
        if columns is None:
            columns = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                " ORDER BY ordinal_position", [schema, table]).fetchall() if r[0] not in RUN_SPECIFIC]
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(schema, table))
        return conn.execute(query).fetchall()


def pg_table_exists(url: str, schema: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}"."{table}"']).fetchone()[0]


def source_orders(manifest: DemoManifest, day: str) -> list[tuple]:
    """(order_id, status) of the demo orders of one UTC day, from the file the API serves."""
    return duckdb.execute(
        "SELECT order_id, status FROM read_parquet(?) WHERE ordered_at >= CAST(? AS TIMESTAMPTZ)"
        " AND ordered_at < CAST(? AS TIMESTAMPTZ) + INTERVAL 1 DAY",
        [str(manifest.orders_path), f"{day} 00:00:00+00", f"{day} 00:00:00+00"]).fetchall()


def raw_order_ids(data_dir: Path, dataset: str, day: str) -> list[int]:
    path = data_dir / "lake" / "raw" / dataset / f"{day}.parquet"
    return [int(r[0]) for r in duckdb.execute("SELECT order_id FROM read_parquet(?)", [str(path)]).fetchall()]


def step_events(result, step_key: str, kind: DagsterEventType) -> list:
    return [e for e in result.all_events if e.step_key == step_key and e.event_type == kind]


def orders_spec(domain: str, style: str = "cursor", page_size: int = 50, targets: str = "[duckdb]") -> str:
    """The demo orders as an API pipeline whose cancelled orders break the contract (they go to quarantine)."""
    return textwrap.dedent(f"""
        name: rec_orders
        domain: {domain}
        source:
          kind: api
          connection: rec_api
          default_url: http://127.0.0.1:9
          endpoint: /orders
          records_path: data
          pagination: {{style: {style}, page_size: {page_size}}}
          window_params: [ordered_from, ordered_to]
          timeout_seconds: 10
        partitions: {{type: daily, start: 2024-01-01, column: ordered_at}}
        columns:
          - {{name: order_id, type: BIGINT, nullable: false}}
          - {{name: customer_id, type: BIGINT, nullable: false}}
          - {{name: product_id, type: BIGINT, nullable: false}}
          - {{name: quantity, type: INTEGER, nullable: false, min: 1}}
          - {{name: unit_price, type: "DECIMAL(12,2)", nullable: false}}
          - {{name: currency, type: VARCHAR, nullable: false}}
          - {{name: status, type: VARCHAR, nullable: false, accepted_values: [placed, shipped]}}
          - {{name: ordered_at, type: TIMESTAMPTZ, nullable: false}}
          - {{name: updated_at, type: TIMESTAMPTZ, nullable: false}}
        primary_key: [order_id]
        quality: {{threshold: 0.5}}
        targets: {targets}
        retry: {{max_retries: 2, delay_seconds: 0}}
    """)


@pytest.fixture
def specs_dir(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "specs"
    path.mkdir()
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(path))
    return path


@pytest.fixture
def rec_api(shop_data: DemoManifest, monkeypatch: pytest.MonkeyPatch):
    """Start the demo API with given faults; REC_API_URL points at it."""
    servers: list[DemoApiServer] = []

    def start(faults: FaultConfig | None = None) -> DemoApiServer:
        server = DemoApiServer(shop_data.orders_path, faults=faults).start()
        servers.append(server)
        monkeypatch.setenv("REC_API_URL", server.url)
        return server

    yield start
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------------------------- 3. idempotency


def test_three_runs_of_the_same_partitions_leave_lake_warehouse_and_postgres_as_one_run(
        specs_dir, shop_data, rec_api, instance, data_dir, postgres_url, pg_schema, monkeypatch):
    (specs_dir / "rec_orders.yaml").write_text(orders_spec(pg_schema, targets="[duckdb, postgres]"))
    (specs_dir / "rec_daily.sql").write_text(
        "SELECT CAST(ordered_at AS DATE) AS order_date, currency, count(*) AS orders,"
        " CAST(sum(quantity) AS BIGINT) AS units, sum(quantity * unit_price) AS amount FROM rec_orders GROUP BY ALL")
    (specs_dir / "rec_daily.yaml").write_text(textwrap.dedent(f"""
        name: rec_daily
        domain: {pg_schema}
        transform: {{sql: rec_daily.sql, inputs: [rec_orders]}}
        partitions: {{type: daily, start: 2024-01-01}}
        targets: [duckdb]
    """))
    (specs_dir / "rec_catalog.yaml").write_text(textwrap.dedent(f"""
        name: rec_catalog
        domain: {pg_schema}
        source: {{kind: files, format: csv, glob: "products*.csv"}}
        columns:
          - {{name: product_id, type: BIGINT, nullable: false}}
          - {{name: sku, type: VARCHAR, nullable: false}}
          - {{name: list_price, type: "DECIMAL(12,2)", nullable: false, min: 0}}
        primary_key: [product_id]
    """))
    landing = data_dir / "landing" / "rec_catalog"
    landing.mkdir(parents=True)
    shutil.copy(shop_data.landing_dir / "products" / "products.csv", landing / "products.csv")
    monkeypatch.setenv("ETL_POSTGRES_URL", postgres_url)
    rec_api()
    defs = build_definitions()
    days = shop_data.partition_keys[:2]
    plan = [(f"{pg_schema}_daily", day) for day in days] + [(f"{pg_schema}_full_refresh", None)]

    snapshots, run_ids = [], []
    for _ in range(3):
        ids = {}
        for job, partition in plan:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, partition_key=partition, run_config=QUIET)
            assert result.success
            ids[partition] = result.run_id
        run_ids.append(ids)
        snapshots.append({
            "lake": lake_snapshot(data_dir / "lake"),
            "warehouse": warehouse_snapshot(data_dir / "warehouse.duckdb"),
            "postgres": digest(pg_rows(postgres_url, pg_schema, "rec_orders")),
        })

    assert snapshots[1] == snapshots[0] and snapshots[2] == snapshots[0]
    # What one run gives: every order of the two days once, cancelled ones in the quarantine, the mart, the catalogue.
    orders = [o for day in days for o in source_orders(shop_data, day)]
    cancelled = sum(1 for _, status in orders if status == "cancelled")
    assert cancelled > 0
    first = snapshots[0]
    assert first["warehouse"][f"{pg_schema}.rec_orders"][0] == len(orders) - cancelled
    assert first["warehouse"]["quarantine.rec_orders"][0] == cancelled
    assert first["warehouse"]["quarantine.rec_catalog"][0] == 0
    assert first["warehouse"][f"{pg_schema}.rec_catalog"][0] == shop_data.products
    assert first["warehouse"][f"{pg_schema}.rec_daily"][0] >= 2
    assert first["postgres"][0] == len(orders) - cancelled
    assert set(first["lake"]) == {f"{stage}/{name}/{day}.parquet" for stage in ("raw", "clean", "quarantine")
                                  for name in ("rec_orders",) for day in days} \
        | {f"marts/rec_daily/{day}.parquet" for day in days} \
        | {f"{stage}/rec_catalog/_all.parquet" for stage in ("raw", "clean", "quarantine")}
    # The rows were replaced by each run, not kept from the first: they carry the last run's id.
    last = run_ids[2]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute(f'SELECT DISTINCT _etl_partition, _etl_run_id FROM "{pg_schema}".rec_orders'
                             " UNION SELECT DISTINCT _etl_partition, _etl_run_id FROM quarantine.rec_orders").fetchall()
    assert sorted(loaded) == sorted((day, last[day]) for day in days)
    assert sorted(set(pg_rows(postgres_url, pg_schema, "rec_orders", ["_etl_partition", "_etl_run_id"]))) == \
        sorted((day, last[day]) for day in days)
