"""Serving targets: the DuckDB warehouse (default) and Postgres. Each load replaces one partition atomically.

Every target table carries ``_etl_partition`` (the partition key, ``_all`` when unpartitioned), ``_etl_run_id``
and ``_etl_loaded_at``. A load deletes the partition's rows and inserts the new ones in one transaction, so a
re-run, a retry or a backfill leaves the same rows, and a crash mid-load leaves the previous ones.

Two loads of one partition at once (two runs, on one host or several) give the result of one of them, never the
rows twice: each target serializes them before the DELETE.

* Postgres: the load transaction takes a transaction-level advisory lock keyed by (schema, table, partition)
  before its DELETE; a second load of that partition waits there until the first commits or rolls back, then
  deletes the first one's rows. DDL (CREATE SCHEMA, ALTER TABLE ADD COLUMN) runs under advisory locks keyed by the
  schema and by the table in a short transaction of its own before the load's, so loads of different partitions
  that create or widen one table at once do not fail on Postgres' catalog unique indexes, and the ACCESS EXCLUSIVE
  lock an ADD COLUMN takes is not held through a COPY. A table that does not exist yet is created inside the load
  transaction (under the table's lock), so a first load that fails leaves no table.
* DuckDB warehouse: DuckDB lets one process at a time open the file read-write (an OS file lock held as long as the
  database is open); a load keeps its connection from before the DELETE until after the COMMIT, so a second
  process's load waits in ``_open_waiting_for_lock`` until the first has closed the file. Connections of one process
  share one database and do not exclude each other, so loads in one process also take a per-file thread lock.
  A DuckDB file is one host's: runs on other hosts must reach it through that host (see ARCHITECTURE, Scale-out),
  so in a distributed deployment (``ETL_DEPLOYMENT=distributed``) the warehouse refuses to open for writing.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from dagster import ConfigurableResource, Failure, get_dagster_logger

from etl_assets.errors import META_ERROR_CLASS, ContractError
from etl_assets.lake import LakeTable, pause_for_test
from etl_assets.settings import DeploymentRefused, current_settings, duckdb_connection, require_single_host_warehouse
from etl_assets.sqlutil import qualified, quote_ident, quote_literal

PARTITION_COLUMN = "_etl_partition"
RUN_COLUMN = "_etl_run_id"
LOADED_AT_COLUMN = "_etl_loaded_at"
META_COLUMNS = (PARTITION_COLUMN, RUN_COLUMN, LOADED_AT_COLUMN)
# A reader (a sensor, the metrics of a run) may hold the file for a moment; wait this long before giving up.
LOCK_WAIT_SECONDS = 30.0
# All DuckDB warehouse writes run in this Dagster pool; dagster.yaml gives it a single slot.
WAREHOUSE_POOL = "duckdb_warehouse"
# Test-only hook, off unless set: seconds every load sleeps inside its transaction, after the DELETE and the
# INSERT and before the COMMIT (and, for DuckDB, again after the COMMIT, before closing the connection checkpoints
# the WAL), so the crash tests (etl_assets_tests/test_recovery.py) can SIGKILL it there. The pause ends early once
# the file named by ``ETL_TEST_PAUSE_RELEASE_FILE`` exists (see etl_assets.lake.pause_for_test).
TEST_PAUSE_IN_LOAD_ENV = "ETL_TEST_PAUSE_IN_LOAD_SECONDS"


@dataclass(frozen=True)
class RowGuard:
    """A condition the INSERT itself checks on every row it inserts: a row for which ``broken`` (SQL over the
    source's columns, bind parameters ``$name`` in ``params``) is TRUE aborts the statement, so the transaction
    rolls back and nothing is written. Costs an expression per row, not another pass over the table."""

    broken: str
    params: dict[str, object]


class GuardTripped(ContractError):
    """A row being inserted met a ``RowGuard``'s ``broken``; the load was rolled back."""


# error()'s text: how a failed INSERT is told apart from any other DuckDB error
_GUARD_MARK = "etl_assets: a row being loaded breaks the load's row guard"


@dataclass(frozen=True)
class LoadResult:
    table: str
    partition: str
    rows: int
    rows_replaced: int
    seconds: float


class DuckDBWarehouse(ConfigurableResource):
    """The embedded DuckDB warehouse file.

    Attributes:
        path: Database file; empty means ``$ETL_DATA_DIR/warehouse.duckdb``.
    """

    path: str = ""

    def db_path(self) -> Path:
        return Path(self.path).expanduser().resolve() if self.path else current_settings().warehouse_path

    @contextmanager
    def connect(
        self,
        read_only: bool = False,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the warehouse. Writers must hold the ``duckdb_warehouse`` pool slot (assets declare it).

        Args:
            read_only: Open read-only.
            lock_wait_seconds: How long to retry while another process holds the file (0: fail at once).
            on_wait: Called once if another process holds the file and the open has to wait.

        Raises:
            Failure: Opening for writing in a distributed deployment (not retried: the spec loader refuses such
                pipelines at start, so this is a host whose environment differs, or a monitoring write).
        """
        path = self.db_path()
        if not read_only:
            try:
                require_single_host_warehouse(path)
            except DeploymentRefused as exc:
                raise Failure(
                    description=str(exc), metadata={META_ERROR_CLASS: exc.error_class}, allow_retries=False
                ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        con = _open_waiting_for_lock(str(path), read_only, lock_wait_seconds, on_wait)
        try:
            yield con
        finally:
            con.close()

    def replace_partition(self, schema: str, table: str, source: LakeTable, partition: str, run_id: str) -> LoadResult:
        """Replace ``partition`` of ``schema.table`` with the rows of ``source``, in one transaction."""
        return self.replace_partitions([(schema, table, source)], partition, run_id)[0]

    def replace_partitions(
        self,
        tables: list[tuple[str, str, LakeTable]],
        partition: str,
        run_id: str,
        verify: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
        guards: dict[str, RowGuard] | None = None,
    ) -> list[LoadResult]:
        """Replace ``partition`` of each ``(schema, table, source)`` in one transaction: a dataset and its
        quarantine change together or not at all.

        Args:
            verify: Called inside the transaction after the inserts, before the COMMIT; raising rolls it all back.
            guards: Per ``schema.table``, a row guard its INSERT checks on every row.

        Raises:
            GuardTripped: A row met its table's guard (everything rolled back).
        """
        started = time.perf_counter()
        results = []
        names = ", ".join(f"{schema}.{table}" for schema, table, _ in tables)
        # Another process's load waits for the file in connect() (DuckDB's lock, held until this connection closes,
        # after the COMMIT); another thread's load of this process waits here, as its connection would not exclude it.
        path = self.db_path()

        def waiting() -> None:
            get_dagster_logger().warning(
                f"{names} partition {partition}: waiting for another process to release the"
                f" warehouse {path} (DuckDB's single-writer file lock)"
            )

        with _process_write_lock(path), self.connect(on_wait=waiting) as con:
            # rows of a partition have no order in the warehouse; not keeping the source's lets DuckDB insert in
            # parallel without re-sequencing (about a third faster on 10 M rows here)
            con.execute("SET preserve_insertion_order = false")
            con.execute("BEGIN TRANSACTION")
            try:
                for schema, table, source in tables:
                    guard = (guards or {}).get(f"{schema}.{table}")
                    rows, replaced = _replace_in(con, schema, table, source, partition, run_id, guard)
                    results.append(LoadResult(f"{schema}.{table}", partition, rows, replaced, 0.0))
                if verify is not None:
                    verify(con)
                _test_pause(names, partition, "before COMMIT")
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:  # a failed COMMIT has already ended the transaction; keep its error
                    pass
                raise
            _test_pause(names, partition, "after COMMIT, before the checkpoint on close")
        seconds = time.perf_counter() - started
        return [LoadResult(r.table, r.partition, r.rows, r.rows_replaced, seconds) for r in results]

    def partition_row_count(self, schema: str, table: str, partition: str) -> int:
        """Rows of ``partition`` in the table (0 when the table does not exist)."""
        with self.connect(read_only=True) as con:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                [schema, table],
            ).fetchall()[0][0]
            if not exists:
                return 0
            return con.execute(
                f"SELECT count(*) FROM {qualified(schema, table)} WHERE {PARTITION_COLUMN} = ?", [partition]
            ).fetchall()[0][0]


_SOURCE_VIEW = "__etl_load_source"
_PROCESS_WRITE_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_WRITE_LOCKS_GUARD = threading.Lock()


def _process_write_lock(path: Path) -> threading.Lock:
    """The lock the loads of this process into the DuckDB file ``path`` hold. DuckDB's file lock keeps other processes
    out, but connections of one process share the database, and two transactions that both delete a partition's rows
    and insert new ones would both commit (the partition twice)."""
    with _PROCESS_WRITE_LOCKS_GUARD:
        return _PROCESS_WRITE_LOCKS.setdefault(str(path), threading.Lock())


def _replace_in(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    source: LakeTable,
    partition: str,
    run_id: str,
    guard: RowGuard | None = None,
) -> tuple[int, int]:
    """Inside an open transaction: create or widen ``schema.table`` for ``source``, delete ``partition``'s rows,
    insert ``source``'s (each meeting ``guard``, when given). Returns the partition's rows after, and the rows it
    replaced."""
    target = qualified(schema, table)
    con.register(_SOURCE_VIEW, source.relation(con))  # lake files or a lake view, columns unified by name
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    incoming = [
        (name, type_name)
        for name, type_name, *_ in con.execute(f"DESCRIBE SELECT * FROM {_SOURCE_VIEW}").fetchall()
        if name not in META_COLUMNS  # a quarantine file carries its own run and partition; ours win
    ]
    select = ", ".join(quote_ident(name) for name, _ in incoming)
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {target} AS SELECT {select}, CAST(NULL AS VARCHAR) AS {PARTITION_COLUMN},"
        f" CAST(NULL AS VARCHAR) AS {RUN_COLUMN}, CAST(NULL AS TIMESTAMPTZ) AS {LOADED_AT_COLUMN}"
        f" FROM {_SOURCE_VIEW} LIMIT 0"
    )
    existing = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()
    }
    for name, type_name in incoming:
        if name not in existing:
            con.execute(f"ALTER TABLE {target} ADD COLUMN {quote_ident(name)} {type_name}")
    replaced = con.execute(f"DELETE FROM {target} WHERE {PARTITION_COLUMN} = ?", [partition]).fetchall()[0][0]
    params: dict[str, object] = {"etl_partition": partition, "etl_run_id": run_id}
    where = ""
    if guard is not None:
        where = f" WHERE CASE WHEN {guard.broken} THEN error({quote_literal(_GUARD_MARK)}) ELSE true END"
        params.update(guard.params)
    try:
        # the partition's rows were all deleted above: the rows it has now are the ones inserted
        rows = con.execute(
            f"INSERT INTO {target} BY NAME SELECT {select}, CAST($etl_partition AS VARCHAR) AS {PARTITION_COLUMN},"
            f" CAST($etl_run_id AS VARCHAR) AS {RUN_COLUMN}, now() AS {LOADED_AT_COLUMN} FROM {_SOURCE_VIEW}{where}",
            params,
        ).fetchall()[0][0]
    except duckdb.Error as exc:  # the transaction is aborted; the caller rolls it back
        if _GUARD_MARK in str(exc):
            raise GuardTripped(f"{schema}.{table} partition {partition}: a row being loaded breaks the guard") from exc
        raise
    con.unregister(_SOURCE_VIEW)
    return rows, replaced


def _test_pause(table: str, partition: str, moment: str) -> None:
    """Sleep ``$ETL_TEST_PAUSE_IN_LOAD_SECONDS`` at ``moment`` of a load (crash tests only; unset: no-op)."""
    value = os.environ.get(TEST_PAUSE_IN_LOAD_ENV)
    if not value:
        return
    seconds = float(value)
    get_dagster_logger().warning(
        f"{TEST_PAUSE_IN_LOAD_ENV}: {table} partition {partition} written, pausing {seconds:g}s {moment}"
    )
    pause_for_test(seconds)


def _open_waiting_for_lock(
    path: str, read_only: bool, wait_seconds: float, on_wait: Callable[[], None] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, retrying with jittered backoff while another process holds DuckDB's file lock; the lock
    error is raised once ``wait_seconds`` have passed. ``on_wait`` is called once, when the first attempt finds the
    file locked."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            return duckdb_connection(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            if on_wait is not None:
                on_wait()
                on_wait = None
            time.sleep(min(delay * (0.5 + random.random()), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)


_PG_TYPES: list[tuple[Callable[[pa.DataType], bool], LiteralString]] = [
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_int8, "smallint"),
    (pa.types.is_int16, "smallint"),
    (pa.types.is_int32, "integer"),
    (pa.types.is_integer, "bigint"),
    (pa.types.is_floating, "double precision"),
    (pa.types.is_date, "date"),
    (pa.types.is_string, "text"),
    (pa.types.is_large_string, "text"),
]


def _pg_type(arrow_type: pa.DataType) -> LiteralString:
    if pa.types.is_decimal(arrow_type):
        return cast(LiteralString, f"numeric({arrow_type.precision},{arrow_type.scale})")  # two integers
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    for test, name in _PG_TYPES:
        if test(arrow_type):
            return name
    return "text"


def pg_lock_key(*names: str) -> int:
    """A Postgres advisory lock key (signed 64 bits) for ``names``: the first 8 bytes of their BLAKE2b hash.

    Distinct names can share a key (about 1 in 2**64 for a pair; another application's advisory locks in the same
    database could also use it): such loads then only wait for one another, as if they were one table's partition;
    neither correctness nor progress depends on keys being unique.
    """
    digest = hashlib.blake2b("\x1f".join(("etl_assets", *names)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _pg_columns(cur, schema: str, table: str) -> set[str] | None:
    """The columns of ``schema.table`` (None when there is no such table), as the latest committed catalog says."""
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))"
        " AND attnum > 0 AND NOT attisdropped",
        [schema, table],
    )
    return {r[0] for r in cur.fetchall()} or None


class PostgresTarget(ConfigurableResource):
    """A Postgres database as a serving target. Bulk COPY; partition replace in one transaction.

    Loads of one (schema, table, partition) are serialized by a transaction-level advisory lock taken before the
    DELETE (``pg_lock_key("partition", schema, table, partition)``), so two at once give the second's rows once,
    on one host or several; DDL is serialized per schema and per table (see the module docstring).

    A load session that stops talking inside its transaction (a hung client, not a dead one: a dead one's
    socket closes and Postgres aborts at once) is ended by Postgres after ``idle_in_transaction_timeout_seconds``,
    releasing its locks; the partition keeps its previous rows and the step's retry loads it again. A load waits
    at most ``lock_timeout_seconds`` for a lock another session holds on the table, or for another load of the same
    partition to end.

    Attributes:
        url: libpq URL (``postgresql://user@host:5432/db``); bind it with ``EnvVar("ETL_POSTGRES_URL")``.
        idle_in_transaction_timeout_seconds: Postgres' ``idle_in_transaction_session_timeout`` for loads.
        lock_timeout_seconds: Postgres' ``lock_timeout`` for loads.
    """

    url: str | None = None
    idle_in_transaction_timeout_seconds: int = 300
    lock_timeout_seconds: int = 120

    def _connect(self):
        import psycopg

        from etl_assets.redact import userinfo_needs_encoding
        from etl_assets.resources.sql import connect_error, invalid_url_error

        if not self.url:
            raise RuntimeError("the postgres target has no URL; set ETL_POSTGRES_URL (postgresql://user@host:5432/db)")
        url = self.url.replace("postgresql+psycopg://", "postgresql://")
        if userinfo_needs_encoding(url):
            # refused before libpq parses it: libpq reads such a URL its own way and quotes pieces of it back
            raise invalid_url_error("etl_postgres")
        try:
            return psycopg.connect(url)
        except psycopg.OperationalError as exc:
            # in the module's own words: libpq's message can quote a piece of the URL (the password included)
            raise connect_error("etl_postgres", url, str(exc)) from None

    def replace_partition(self, schema: str, table: str, source: LakeTable, partition: str, run_id: str) -> LoadResult:
        """Replace ``partition`` of ``schema.table`` with ``source``'s rows via COPY, in one transaction."""
        import psycopg
        from psycopg import sql

        started = time.perf_counter()
        arrow_schema = source.schema
        ident = sql.Identifier(schema, table)
        columns = [f.name for f in arrow_schema] + [PARTITION_COLUMN, RUN_COLUMN]
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false),"
                " set_config('lock_timeout', %s, false)",
                [f"{self.idle_in_transaction_timeout_seconds}s", f"{self.lock_timeout_seconds}s"],
            )
            # DDL in a short transaction of its own (with the session settings): the schema, and the columns an
            # existing table lacks
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
            if not cur.fetchall():
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [pg_lock_key("schema", schema)])
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            complete = _ensure_pg_table(cur, schema, table, arrow_schema, create=False)
            conn.commit()
            # the load transaction: first the partition's lock, held until the COMMIT
            try:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [pg_lock_key("partition", schema, table, partition)])
            except psycopg.errors.LockNotAvailable as exc:
                exc.add_note(
                    f"another load of {schema}.{table} partition {partition} held the partition's lock for "
                    f"more than lock_timeout_seconds={self.lock_timeout_seconds}"
                )
                raise
            # a new table is created here, so that a first load that fails leaves none (a concurrent first load of
            # another partition waits for this one's COMMIT on the table's lock, then finds the table)
            if not complete:
                _ensure_pg_table(cur, schema, table, arrow_schema, create=True)
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE {} = %s").format(ident, sql.Identifier(PARTITION_COLUMN)), [partition]
            )
            replaced = cur.rowcount
            copy_stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            )
            rows = 0
            with cur.copy(copy_stmt) as copy:
                for batch in source.arrow_reader():
                    if batch.num_rows == 0:
                        continue
                    batch = _conform(batch, arrow_schema)
                    extra = [
                        pa.array([partition] * batch.num_rows, pa.string()),
                        pa.array([run_id] * batch.num_rows, pa.string()),
                    ]
                    out = pa.RecordBatch.from_arrays([*batch.columns, *extra], names=columns)
                    buf = io.BytesIO()
                    pacsv.write_csv(out, buf, pacsv.WriteOptions(include_header=False))
                    copy.write(buf.getvalue())
                    rows += batch.num_rows
            _test_pause(f"{schema}.{table}", partition, "before COMMIT")  # the connection block commits on exit
        return LoadResult(f"{schema}.{table}", partition, rows, replaced, time.perf_counter() - started)


def _ensure_pg_table(cur, schema: str, table: str, arrow_schema: pa.Schema, create: bool) -> bool:
    """Inside an open transaction: give ``schema.table`` every column of ``arrow_schema`` (creating the table when
    ``create``; otherwise a missing table is left alone). Nothing is locked when nothing is to be done; otherwise the
    table's advisory lock is taken (until the transaction ends) and the catalog read again under it, so two loads
    never both create the table or both add a column. Returns whether the table exists with every column now."""
    from psycopg import sql

    existing = _pg_columns(cur, schema, table)
    if existing is None and not create:
        return False
    if existing is not None and all(f.name in existing for f in arrow_schema):
        return True
    cur.execute("SELECT pg_advisory_xact_lock(%s)", [pg_lock_key("table", schema, table)])
    existing = _pg_columns(cur, schema, table)
    ident = sql.Identifier(schema, table)
    if existing is None:
        if not create:
            return False
        column_defs = [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(_pg_type(f.type))) for f in arrow_schema]
        column_defs += [
            sql.SQL("{} text NOT NULL").format(sql.Identifier(PARTITION_COLUMN)),
            sql.SQL("{} text").format(sql.Identifier(RUN_COLUMN)),
            sql.SQL("{} timestamptz NOT NULL DEFAULT now()").format(sql.Identifier(LOADED_AT_COLUMN)),
        ]
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(column_defs)))
        return True
    for field in arrow_schema:
        if field.name not in existing:
            cur.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    ident, sql.Identifier(field.name), sql.SQL(_pg_type(field.type))
                )
            )
    return True


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Order and type ``batch``'s columns as ``schema`` (partitions may differ in column order or nullness)."""
    arrays = []
    for field in schema:
        if field.name in batch.schema.names:
            array = batch.column(field.name)
            arrays.append(array if array.type == field.type else pc.cast(array, field.type))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
