"""Opening the DuckDB warehouse while another process holds its file: ``DuckDBWarehouse.connect`` waits with backoff
for the holder to let go, and ``warehouse_session`` (monitoring's short sessions) turns a wait that ran out into
``WarehouseBusy`` naming the file. The holder is a real second process, since DuckDB's file lock is per process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from etl_assets.monitoring.warehouse_io import WarehouseBusy, warehouse_session
from etl_assets.resources.targets import DuckDBWarehouse

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextmanager
def _held(path: Path, seconds: float) -> Iterator[subprocess.Popen]:
    """Another process holding the file for ``seconds`` (from when this yields); killed on the way out."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # opened with stdout=PIPE
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_connect_waits_for_another_process_to_release_the_file(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    with _held(path, 1.5) as holder:
        started = time.monotonic()
        with DuckDBWarehouse(path=str(path)).connect(lock_wait_seconds=30) as con:
            waited = time.monotonic() - started
            assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert waited > 1.0  # it opened once the holder let go (1.5 s after it took the file), not before
        assert holder.wait(timeout=10) == 0


def test_connect_without_waiting_raises_the_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    with _held(path, 30), pytest.raises(duckdb.IOException, match="(?i)lock"):
        with DuckDBWarehouse(path=str(path)).connect(lock_wait_seconds=0):
            pass


def test_a_session_that_waits_too_long_says_the_warehouse_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    with _held(path, 30):
        started = time.monotonic()
        with pytest.raises(WarehouseBusy, match=f"{path}.*stayed locked by another process"):
            with warehouse_session(DuckDBWarehouse(path=str(path)), wait_seconds=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 5
