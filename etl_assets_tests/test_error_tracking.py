"""Protects error tracking (``etl_assets/monitoring/error_tracking.py``): how a failure is classified, and the
error store's spool while another process holds the DuckDB warehouse file (records wait, are never lost and never
duplicated)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import duckdb
import pytest

from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.monitoring.error_tracking import ErrorRecord, ErrorStore, classify_error
from etl_assets.resources.targets import DuckDBWarehouse

ORDERS = Pipeline("shop", "orders")


@pytest.mark.parametrize(
    "error, metadata, expected",
    [
        (None, {"error_class": SimpleNamespace(value="permanent")}, "permanent"),  # Failure metadata wins
        (
            SimpleNamespace(
                cls_name="DagsterExecutionStepExecutionError",
                context=None,
                cause=SimpleNamespace(cls_name="TransientSourceError", cause=None, context=None),
            ),
            {},
            "transient",
        ),
        (SimpleNamespace(cls_name="ContractError", cause=None, context=None), {}, "data_quality"),
        (SimpleNamespace(cls_name="DagsterAssetCheckFailedError", cause=None, context=None), {}, "data_quality"),
        (SimpleNamespace(cls_name="EtlError", cause=None, context=None), {}, "infrastructure"),
        (SimpleNamespace(cls_name="BinderException", cause=None, context=None), {}, "infrastructure"),
        (None, {}, "infrastructure"),
    ],
)
def test_classify_error(error, metadata, expected):
    assert classify_error(error, metadata) == expected


def test_error_records_wait_in_the_spool_while_another_process_holds_the_warehouse(data_dir):
    warehouse = DuckDBWarehouse()
    path = warehouse.db_path()
    duckdb.connect(str(path)).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " sys.stdin.read(); con.close()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None  # opened with PIPE
    try:
        assert holder.stdout.readline().strip() == "held"
        store = ErrorStore(warehouse, wait_seconds=0.5)
        record = ErrorRecord(
            "run-1",
            pipeline_job_name(ORDERS),
            pipeline_ref(ORDERS),
            "shop__raw_orders",
            "shop/raw_orders",
            "2024-01-01",
            "transient",
            "shop_api: GET /orders failed 6 times",
            datetime.now(UTC),
        )
        started = time.monotonic()
        assert store.record([record]) is False  # busy: spooled, not lost, and the sensor did not hang
        assert time.monotonic() - started < 5
        assert store.pending() == 1
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert store.flush() is True
    assert store.pending() == 0
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT run_id, pipeline, error_class, partition_key FROM ops.errors").fetchall()
        summary = con.execute("SELECT pipeline, error_class, errors, runs FROM ops.error_summary").fetchall()
    assert rows == [("run-1", "shop.orders", "transient", "2024-01-01")]
    assert summary == [("shop.orders", "transient", 1, 1)]
    assert store.record([record]) is True  # recording the same run again replaces, never duplicates
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.errors").fetchall() == [(1,)]
