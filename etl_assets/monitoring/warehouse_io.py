"""Short, lock-aware sessions on the DuckDB warehouse for monitoring writes and reads.

DuckDB lets one process hold a database file for writing, and while it does, no other process can open it at
all. Pipeline loads hold the file for the length of one partition replace (they queue for it through the
``duckdb_warehouse`` pool); monitoring code runs in other processes (the sensor daemon, the health asset's
run) and must not fail a load by holding the file, nor fail itself because a load holds it. So monitoring
opens the warehouse only for one short transaction, through :meth:`DuckDBWarehouse.connect`, and retries the
*open* with backoff while another process has the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import duckdb

from etl_assets.resources.targets import DuckDBWarehouse


class WarehouseBusy(RuntimeError):
    """Another process held the warehouse file for longer than the caller was willing to wait."""


def is_lock_conflict(exc: BaseException) -> bool:
    """True when ``exc`` is DuckDB refusing to open a file another process holds."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


@contextmanager
def warehouse_session(
    warehouse: DuckDBWarehouse, read_only: bool = False, wait_seconds: float = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse for one short unit of work, waiting while another process holds the file.

    Only opening is retried; the body runs once. Keep the body to a single transaction: the file is locked
    against every other process until the block exits.

    Args:
        warehouse: The warehouse resource (its ``connect`` applies the platform's DuckDB settings).
        read_only: Open read-only (still excludes a concurrent writer process, so keep it short too).
        wait_seconds: How long to keep retrying the open before giving up.

    Raises:
        WarehouseBusy: the file stayed locked by another process for ``wait_seconds``.
    """
    with ExitStack() as stack:
        try:  # connect retries the open with backoff while the file is locked
            con = stack.enter_context(warehouse.connect(read_only=read_only, lock_wait_seconds=wait_seconds))
        except duckdb.Error as exc:
            if not is_lock_conflict(exc):
                raise
            raise WarehouseBusy(
                f"the warehouse {warehouse.db_path()} stayed locked by another process for {wait_seconds:.0f}s"
            ) from exc
        yield con


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """True when ``schema.table`` (a table or a view) exists."""
    return (
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
        ).fetchall()[0][0]
        > 0
    )
