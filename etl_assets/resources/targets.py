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
  transaction (under the table's lock), so a first load that fails leaves no table. The rows go in by ADBC's Arrow
  ingest (binary COPY) on the same connection, in the same transaction (``autocommit=False``; the ingest does not
  commit): 2 M rows in 2.51 s against 5.81 s for the CSV COPY it replaced (``benchmarks/pg_load.py``, figures in
  docs/sources-sql-files.md). A column the table holds in another type than the Arrow one maps to goes as CSV's
  text through a TEMP staging table and ``INSERT ... SELECT CAST(...)`` in that transaction (4.48 s for all
  columns that way).
* DuckDB warehouse: DuckDB lets one process at a time open the file read-write (an OS file lock held as long as the
  database is open); a load keeps its connection from before the DELETE until after the COMMIT, so a second
  process's load waits in ``_open_waiting_for_lock`` until the first has closed the file. Connections of one process
  share one database and do not exclude each other, so loads in one process also take a per-file thread lock.
  A DuckDB file is one host's: runs on other hosts must reach it through that host (see ARCHITECTURE, Scale-out),
  so in a distributed deployment (``ETL_DEPLOYMENT=distributed``) the warehouse refuses to open for writing.
"""

from __future__ import annotations

import hashlib
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


def _pg_ident(*names: str) -> str:
    """``names`` as one quoted, dotted Postgres identifier (``"schema"."Table"``)."""
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def _fetch(cur, query: str, params: list | None = None) -> list[tuple]:
    cur.execute(query, params)
    return cur.fetchall()


def _pg_columns(cur, schema: str, table: str) -> dict[str, tuple[str, str]] | None:
    """The columns of ``schema.table`` (None when there is no such table), as the latest committed catalog says:
    by name, the column's type with its modifier (``numeric(12,2)``) and without (``numeric``), as ``format_type``
    spells them."""
    rows = _fetch(
        cur,
        "SELECT attname, format_type(atttypid, atttypmod), format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) AND attnum > 0 AND NOT attisdropped",
        [schema, table],
    )
    return {name: (full, base) for name, full, base in rows} or None


def _wire_type(arrow_type: pa.DataType) -> tuple[pa.DataType, str] | None:
    """The Arrow type a column of ``arrow_type`` is sent as in ADBC's binary COPY, and the Postgres type (as
    ``format_type`` spells it) that binary value is; the conversion is lossless. None when there is none: such a
    column is sent as the text the CSV load wrote (Arrow's cast to string) and read with the column type's input
    function, as COPY's CSV did (a float32 as its shortest decimal, a nanosecond timestamp rounded by Postgres)."""
    if pa.types.is_boolean(arrow_type):
        return pa.bool_(), "boolean"
    if pa.types.is_int8(arrow_type) or pa.types.is_int16(arrow_type):
        return pa.int16(), "smallint"
    if pa.types.is_int32(arrow_type):
        return pa.int32(), "integer"
    if arrow_type in (pa.int64(), pa.uint8(), pa.uint16(), pa.uint32()):
        return pa.int64(), "bigint"
    if pa.types.is_float64(arrow_type):
        return pa.float64(), "double precision"
    if pa.types.is_date32(arrow_type):
        return pa.date32(), "date"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return arrow_type, "text"
    if pa.types.is_decimal128(arrow_type) and 0 <= arrow_type.scale <= arrow_type.precision:
        return arrow_type, f"numeric({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit in ("s", "ms", "us"):
        if arrow_type.tz:
            return pa.timestamp("us", tz="UTC"), "timestamp with time zone"
        return pa.timestamp("us"), "timestamp without time zone"
    return None


@dataclass(frozen=True)
class _Column:
    """How one source column reaches its target column: sent as ``wire`` (binary COPY), then, when ``cast_to``,
    converted by ``CAST(... AS cast_to)`` in an INSERT ... SELECT from the staging table."""

    name: str
    wire: pa.DataType
    wire_pg: str
    cast_to: str | None


def _plan(arrow_schema: pa.Schema, target: dict[str, tuple[str, str]]) -> list[_Column]:
    plan = []
    for field in arrow_schema:
        full, base = target[field.name]
        wire = _wire_type(field.type)
        if wire is not None and wire[1] == full:
            plan.append(_Column(field.name, wire[0], wire[1], None))
        elif full == "text":  # anything into a text column: the text CSV wrote, sent as binary text
            plan.append(_Column(field.name, pa.string(), "text", None))
        else:
            # Another type than the one the column has: the CSV text, cast by Postgres. The CAST names the type
            # without its modifier, so the INSERT's assignment applies that (a too long varchar(n) value fails, a
            # numeric(p,s) one is rounded), as the type's input function did for CSV.
            plan.append(_Column(field.name, pa.string(), "text", base))
    return plan


def _wire_batches(
    source: LakeTable, arrow_schema: pa.Schema, plan: list[_Column], extra: dict[str, str], counted: list[int]
) -> pa.RecordBatchReader:
    """``source``'s batches as ``plan`` sends them, followed by a constant text column per ``extra`` item;
    ``counted[0]`` counts the rows sent."""
    out_schema = pa.schema([pa.field(c.name, c.wire) for c in plan] + [pa.field(n, pa.string()) for n in extra])

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in source.arrow_reader():
            if batch.num_rows == 0:
                continue
            batch = _conform(batch, arrow_schema)
            arrays = [
                array if array.type == column.wire else pc.cast(array, column.wire)
                for array, column in zip(batch.columns, plan, strict=True)
            ]
            arrays += [pa.repeat(value, batch.num_rows).cast(pa.string()) for value in extra.values()]
            counted[0] += batch.num_rows
            yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)

    return pa.RecordBatchReader.from_batches(out_schema, batches())


class PostgresTarget(ConfigurableResource):
    """A Postgres database as a serving target. Arrow binary COPY (ADBC); partition replace in one transaction.

    Loads of one (schema, table, partition) are serialized by a transaction-level advisory lock taken before the
    DELETE (``pg_lock_key("partition", schema, table, partition)``), so two at once give the second's rows once,
    on one host or several; DDL is serialized per schema and per table (see the module docstring).

    A load session that stops talking inside its transaction (a hung client, not a dead one: a dead one's
    socket closes and Postgres aborts at once) is ended by Postgres after ``idle_in_transaction_timeout_seconds``,
    releasing its locks; the partition keeps its previous rows and the step's retry loads it again. A load waits
    at most ``lock_timeout_seconds`` for a lock another session holds on the table, or for another load of the same
    partition to end.

    Errors the server reports are raised as psycopg's class for their SQLSTATE (``psycopg.errors.NotNullViolation``,
    ``LockNotAvailable``, ...), with the driver's message, the URL's secrets masked; a failed connection is
    described in the platform's words (libpq's message can quote the URL, password included).

    Attributes:
        url: libpq URL (``postgresql://user@host:5432/db``); bind it with ``EnvVar("ETL_POSTGRES_URL")``.
        idle_in_transaction_timeout_seconds: Postgres' ``idle_in_transaction_session_timeout`` for loads.
        lock_timeout_seconds: Postgres' ``lock_timeout`` for loads.
    """

    url: str | None = None
    idle_in_transaction_timeout_seconds: int = 300
    lock_timeout_seconds: int = 120

    def _libpq_url(self) -> str:
        from etl_assets.redact import userinfo_needs_encoding
        from etl_assets.resources.sql import invalid_url_error

        if not self.url:
            raise RuntimeError("the postgres target has no URL; set ETL_POSTGRES_URL (postgresql://user@host:5432/db)")
        url = self.url.replace("postgresql+psycopg://", "postgresql://")
        if userinfo_needs_encoding(url):
            # refused before libpq parses it: libpq reads such a URL its own way and quotes pieces of it back
            raise invalid_url_error("etl_postgres")
        return url

    def _connect(self):
        """An ADBC connection (``autocommit=False``: every statement runs in the open transaction until
        ``commit()``)."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as pg

        from etl_assets.resources.sql import connect_error

        url = self._libpq_url()
        try:
            return pg.connect(url, autocommit=False)
        except adbc_driver_manager.Error as exc:
            # in the module's own words: libpq's message can quote a piece of the URL (the password included)
            raise connect_error("etl_postgres", url, str(exc)) from None

    def replace_partition(self, schema: str, table: str, source: LakeTable, partition: str, run_id: str) -> LoadResult:
        """Replace ``partition`` of ``schema.table`` with ``source``'s rows via binary COPY, in one transaction."""
        return self._replace(schema, table, source, partition, run_id)

    def _replace(
        self, schema: str, table: str, source: LakeTable, partition: str, run_id: str, staged: bool = False
    ) -> LoadResult:
        """``replace_partition``; ``staged`` sends every load through the staging table (the benchmark's
        variant), not only those whose columns need a cast."""
        import adbc_driver_manager

        started = time.perf_counter()
        conn = self._connect()
        url = self._libpq_url()
        try:
            with conn.cursor() as cur:
                rows, replaced = self._load(conn, cur, schema, table, source, partition, run_id, staged)
        except adbc_driver_manager.Error as exc:
            _rollback_quietly(conn)
            raise _pg_error(exc, url) from _clean_cause(exc, url)
        except BaseException:
            _rollback_quietly(conn)
            raise
        finally:
            _close_quietly(conn)
        return LoadResult(f"{schema}.{table}", partition, rows, replaced, time.perf_counter() - started)

    def _load(
        self, conn, cur, schema: str, table: str, source: LakeTable, partition: str, run_id: str, staged: bool
    ) -> tuple[int, int]:
        import adbc_driver_manager

        arrow_schema = source.schema
        target = _pg_ident(schema, table)
        cur.execute("SET TIME ZONE 'UTC'")
        _fetch(
            cur,
            "SELECT set_config('idle_in_transaction_session_timeout', $1, false), set_config('lock_timeout', $2, false)",
            [f"{self.idle_in_transaction_timeout_seconds}s", f"{self.lock_timeout_seconds}s"],
        )
        # DDL in a short transaction of its own (with the session settings): the schema, and the columns an
        # existing table lacks
        if not _fetch(cur, "SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema]):
            _fetch(cur, "SELECT pg_advisory_xact_lock($1)", [pg_lock_key("schema", schema)])
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_pg_ident(schema)}")
        complete = _ensure_pg_table(cur, schema, table, arrow_schema, create=False)
        conn.commit()
        # the load transaction: first the partition's lock, held until the COMMIT
        try:
            _fetch(cur, "SELECT pg_advisory_xact_lock($1)", [pg_lock_key("partition", schema, table, partition)])
        except adbc_driver_manager.Error as exc:
            if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available
                error = _pg_error(exc, self._libpq_url())
                error.add_note(
                    f"another load of {schema}.{table} partition {partition} held the partition's lock for "
                    f"more than lock_timeout_seconds={self.lock_timeout_seconds}"
                )
                raise error from None
            raise
        # a new table is created here, so that a first load that fails leaves none (a concurrent first load of
        # another partition waits for this one's COMMIT on the table's lock, then finds the table)
        if not complete:
            _ensure_pg_table(cur, schema, table, arrow_schema, create=True)
        columns = _pg_columns(cur, schema, table)
        assert columns is not None  # created or widened above, under the table's lock
        plan = _plan(arrow_schema, columns)
        ((replaced,),) = _fetch(
            cur,
            f"WITH deleted AS (DELETE FROM {target} WHERE {_pg_ident(PARTITION_COLUMN)} = $1 RETURNING 1)"
            " SELECT count(*) FROM deleted",
            [partition],
        )
        counted = [0]
        names = ", ".join(_pg_ident(c.name) for c in plan)
        meta = f"{_pg_ident(PARTITION_COLUMN)}, {_pg_ident(RUN_COLUMN)}"
        if staged or any(c.cast_to is not None for c in plan):
            # a column needs a cast Postgres makes: COPY into a staging table of this transaction, then one
            # INSERT ... SELECT (the rows are written twice; only such loads, and the benchmark's variant)
            defs = ", ".join(f"{_pg_ident(c.name)} {c.wire_pg}" for c in plan)
            cur.execute(f"CREATE TEMP TABLE {_pg_ident(_STAGE_TABLE)} ({defs}) ON COMMIT DROP")
            reader = _wire_batches(source, arrow_schema, plan, {}, counted)
            cur.adbc_ingest(_STAGE_TABLE, reader, mode="append", temporary=True)
            exprs = ", ".join(
                _pg_ident(c.name) if c.cast_to is None else f"CAST({_pg_ident(c.name)} AS {c.cast_to})" for c in plan
            )
            cur.execute(
                f"INSERT INTO {target} ({names}, {meta}) SELECT {exprs}, $1, $2 FROM {_pg_ident(_STAGE_TABLE)}",
                [partition, run_id],
            )
        else:
            reader = _wire_batches(
                source, arrow_schema, plan, {PARTITION_COLUMN: partition, RUN_COLUMN: run_id}, counted
            )
            cur.adbc_ingest(table, reader, mode="append", db_schema_name=schema)
        _test_pause(f"{schema}.{table}", partition, "before COMMIT")
        conn.commit()
        return counted[0], replaced


_STAGE_TABLE = "_etl_load_stage"
_IDLE_TIMEOUT_TEXT = "terminating connection due to idle-in-transaction timeout"


def _pg_error(exc: Exception, url: str) -> Exception:
    """ADBC's error ``exc`` as psycopg's class for its SQLSTATE (``psycopg.OperationalError`` without one: the
    connection was lost), its message with the secrets of ``url`` masked."""
    import psycopg

    from etl_assets.redact import redact, url_secrets

    message = redact(str(exc), url_secrets(url))
    sqlstate = getattr(exc, "sqlstate", None)
    if not sqlstate and _IDLE_TIMEOUT_TEXT in message:
        # ADBC reports no SQLSTATE for a failed COMMIT; the server's FATAL message says why the session ended
        # (in English unless the server's lc_messages says otherwise: then a psycopg.OperationalError, retried alike)
        sqlstate = "25P03"  # idle_in_transaction_session_timeout
    try:
        cls = psycopg.errors.lookup(sqlstate) if sqlstate else psycopg.OperationalError
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)


def _clean_cause(exc: BaseException, url: str) -> BaseException | None:
    from etl_assets.redact import is_clean, url_secrets

    return exc if is_clean(str(exc), url_secrets(url)) else None


def _rollback_quietly(conn) -> None:
    try:
        conn.rollback()
    except Exception:  # a connection the server ended, or a failed COMMIT that ended the transaction already
        pass


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:  # closing a connection the server already dropped
        pass


def _ensure_pg_table(cur, schema: str, table: str, arrow_schema: pa.Schema, create: bool) -> bool:
    """Inside an open transaction: give ``schema.table`` every column of ``arrow_schema`` (creating the table when
    ``create``; otherwise a missing table is left alone). Nothing is locked when nothing is to be done; otherwise the
    table's advisory lock is taken (until the transaction ends) and the catalog read again under it, so two loads
    never both create the table or both add a column. Returns whether the table exists with every column now."""
    existing = _pg_columns(cur, schema, table)
    if existing is None and not create:
        return False
    if existing is not None and all(f.name in existing for f in arrow_schema):
        return True
    _fetch(cur, "SELECT pg_advisory_xact_lock($1)", [pg_lock_key("table", schema, table)])
    existing = _pg_columns(cur, schema, table)
    target = _pg_ident(schema, table)
    if existing is None:
        if not create:
            return False
        column_defs = [f"{_pg_ident(f.name)} {_pg_type(f.type)}" for f in arrow_schema]
        column_defs += [
            f"{_pg_ident(PARTITION_COLUMN)} text NOT NULL",
            f"{_pg_ident(RUN_COLUMN)} text",
            f"{_pg_ident(LOADED_AT_COLUMN)} timestamptz NOT NULL DEFAULT now()",
        ]
        cur.execute(f"CREATE TABLE {target} ({', '.join(column_defs)})")
        return True
    for field in arrow_schema:
        if field.name not in existing:
            cur.execute(f"ALTER TABLE {target} ADD COLUMN {_pg_ident(field.name)} {_pg_type(field.type)}")
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
