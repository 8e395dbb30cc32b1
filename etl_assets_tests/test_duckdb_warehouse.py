"""The DuckDB warehouse target: a partition is replaced in one transaction, re-runs are idempotent, other
partitions are untouched, new columns are added, and a failed load leaves the previous rows."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from etl_assets.lake import LakeStorage
from etl_assets.resources.targets import DuckDBWarehouse


@pytest.fixture
def lake(tmp_path: Path) -> LakeStorage:
    return LakeStorage(root=str(tmp_path / "lake"))


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))


def rows(warehouse: DuckDBWarehouse, sql: str, params=None):
    with duckdb.connect(str(warehouse.db_path()), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_replace_is_idempotent_and_scoped_to_the_partition(lake, warehouse):
    lake.write(["x"], "2024-01-01", pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]}))
    lake.write(["x"], "2024-01-02", pa.table({"id": [4], "v": ["d"]}))
    for _ in range(3):
        first = warehouse.replace_partition("s", "t", lake.table(["x"], ["2024-01-01"]), "2024-01-01", "run-1")
    assert (first.rows, first.rows_replaced) == (3, 3)
    warehouse.replace_partition("s", "t", lake.table(["x"], ["2024-01-02"]), "2024-01-02", "run-2")
    assert rows(warehouse, "SELECT id, v, _etl_partition FROM s.t ORDER BY id") == [
        (1, "a", "2024-01-01"),
        (2, "b", "2024-01-01"),
        (3, "c", "2024-01-01"),
        (4, "d", "2024-01-02"),
    ]
    lake.write(["x"], "2024-01-01", pa.table({"id": [9], "v": ["z"]}))
    warehouse.replace_partition("s", "t", lake.table(["x"], ["2024-01-01"]), "2024-01-01", "run-3")
    assert rows(warehouse, "SELECT id, _etl_run_id FROM s.t ORDER BY id") == [(4, "run-2"), (9, "run-3")]
    assert warehouse.partition_row_count("s", "t", "2024-01-02") == 1
    assert warehouse.partition_row_count("s", "missing", "2024-01-02") == 0


def test_new_source_column_is_added(lake, warehouse):
    lake.write(["x"], "p1", pa.table({"id": [1]}))
    warehouse.replace_partition("s", "t", lake.table(["x"], ["p1"]), "p1", "r")
    lake.write(["x"], "p2", pa.table({"id": [2], "colour": ["red"]}))
    warehouse.replace_partition("s", "t", lake.table(["x"], ["p2"]), "p2", "r")
    assert rows(warehouse, "SELECT id, colour FROM s.t ORDER BY id") == [(1, None), (2, "red")]


def test_failed_load_rolls_back(lake, warehouse):
    lake.write(["x"], "p1", pa.table({"id": [1, 2]}))
    warehouse.replace_partition("s", "t", lake.table(["x"], ["p1"]), "p1", "r1")
    lake.write(["x"], "p1", pa.table({"id": ["not-a-number"]}))
    with pytest.raises(duckdb.Error):
        warehouse.replace_partition("s", "t", lake.table(["x"], ["p1"]), "p1", "r2")
    assert rows(warehouse, "SELECT id, _etl_run_id FROM s.t ORDER BY id") == [(1, "r1"), (2, "r1")]


def test_identifiers_are_validated(lake, warehouse):
    lake.write(["x"], "p1", pa.table({"id": [1]}))
    with pytest.raises(ValueError, match="refusing"):
        warehouse.replace_partition('s"; DROP TABLE t; --', "t", lake.table(["x"], ["p1"]), "p1", "r")
