"""Protects the MySQL/MariaDB extract (etl_assets/resources/mysql.py, reached through ``SqlDatabaseSource``).

Against the real MariaDB (``mariadb_url``; each test makes its own uniquely named tables in database ``test`` and
drops them): every column type arrives as its Arrow type with the exact value PyMySQL's own converters give
(DECIMAL(65,30) and BIGINT UNSIGNED included); a partition window is applied on ``incremental_column`` with the start
included and the end excluded, for DATETIME and TIMESTAMP columns, for a window in another time zone and for a
``query`` holding a ``%``; batches are ``chunk_size`` rows with one schema; the error classes the retry policy
depends on (a missing table, database or bad password is permanent, a refused port or a connection killed
mid-extract transient) with no password in any message; and a daily partitioned pipeline run end to end into the
DuckDB warehouse, as a user with a password that appears in no event of the run.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb
import pyarrow as pa
import pymysql
import pytest
from dagster import DagsterInstance

from etl_assets.cli import QUIET
from etl_assets.errors import PermanentSourceError, TransientSourceError
from etl_assets.keys import SOURCE_COLUMN, Pipeline, pipeline_job_name
from etl_assets.pipelines.spec import SqlSource
from etl_assets.resources.mysql import connect_kwargs
from etl_assets.resources.sql import SqlDatabaseSource
from etl_assets_tests.specs import column, definitions_for, pipeline

pytestmark = pytest.mark.mariadb

UTC = dt.UTC
JAN_2 = dt.datetime(2024, 1, 2, tzinfo=UTC)
JAN_3 = dt.datetime(2024, 1, 3, tzinfo=UTC)


def _connect(url: str, **extra: Any) -> pymysql.Connection:
    return pymysql.connect(**{**connect_kwargs("test", url), **extra}, autocommit=True)


def _spec(url: str, **fields: Any) -> SqlSource:
    return SqlSource(kind="sql", connection="shop_db", default_url=url, **fields)


def _extract(url: str, window: tuple[dt.datetime, dt.datetime] | None = None, **fields: Any) -> pa.Table:
    return SqlDatabaseSource(connection="shop_db", default_url=url).extract(_spec(url, **fields), window).read_all()


def _with_userinfo(url: str, userinfo: str, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{userinfo}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, path if path is not None else parts.path, parts.query, ""))


@pytest.fixture
def make_table(mariadb_url: str) -> Iterator[Callable[[str, list[tuple]], str]]:
    """``make_table(columns_ddl, rows)`` creates a uniquely named table in ``test`` holding ``rows``; all are dropped
    afterwards."""
    made: list[str] = []

    def make(ddl: str, rows: list[tuple]) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with _connect(mariadb_url) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE `{name}` ({ddl})")
            made.append(name)
            if rows:
                marks = ", ".join(["%s"] * len(rows[0]))
                cur.executemany(f"INSERT INTO `{name}` VALUES ({marks})", rows)
        return name

    yield make
    with _connect(mariadb_url) as conn, conn.cursor() as cur:
        # a connection a failed test left in a transaction on a table would make its DROP wait for good (MariaDB's
        # lock_wait_timeout is a year): it fails after a minute instead, naming the lock
        cur.execute("SET SESSION lock_wait_timeout = 60")
        for name in made:
            cur.execute(f"DROP TABLE IF EXISTS `{name}`")


# ---------------------------------------------------------------------------------------------- types and values

_TYPED_DDL = (
    "id BIGINT NOT NULL, small TINYINT, big_unsigned BIGINT UNSIGNED, quantity INT, price DECIMAL(12,2),"
    " wide DECIMAL(65,30), ratio DOUBLE, born DATE, happened_at DATETIME(6), changed_at TIMESTAMP(6) NULL,"
    " name VARCHAR(50), body TEXT, raw BLOB, doc JSON"
)
_TYPED_ROWS = [
    (
        1,
        -128,
        18446744073709551615,
        2147483647,
        Decimal("9999999999.99"),
        Decimal("12345678901234567890123456789012345.123456789012345678901234567890"),
        0.1,
        dt.date(2024, 2, 29),
        dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        dt.datetime(2024, 1, 2, 3, 4, 5, 1),
        "Zoë, \"quoted\" 'x'",
        "line\nbreak",
        b"\x00\xff\x10",
        '{"a": [1, 2]}',
    ),
    (2, None, None, None, None, None, None, None, None, None, None, None, None, None),
    (
        3,
        0,
        0,
        -1,
        Decimal("-0.01"),
        Decimal("-0.000000000000000000000000000001"),
        -1e300,
        None,
        None,
        None,
        "",
        "",
        b"",
        None,
    ),
]


@pytest.mark.mariadb
def test_every_type_arrives_typed_with_the_value_pymysqls_converters_give(mariadb_url: str, make_table) -> None:
    table = make_table(_TYPED_DDL, _TYPED_ROWS)
    got = _extract(mariadb_url, table=table)
    types = {f.name: f.type for f in got.schema}
    assert types == {
        "id": pa.int64(),
        "small": pa.int8(),
        "big_unsigned": pa.uint64(),
        "quantity": pa.int32(),
        "price": pa.decimal128(12, 2),
        "wide": pa.decimal256(65, 30),
        "ratio": pa.float64(),
        "born": pa.date32(),
        "happened_at": pa.timestamp("us"),
        "changed_at": pa.timestamp("us", tz="UTC"),
        "name": pa.string(),
        "body": pa.string(),
        "raw": pa.binary(),
        "doc": pa.string(),
        SOURCE_COLUMN: pa.string(),
    }
    # the oracle: PyMySQL's own converters (Decimal, datetime, ...) over the same rows, the session in UTC
    with _connect(mariadb_url, init_command="SET time_zone = '+00:00'") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM `{table}` ORDER BY id")
        expected = [dict(zip([d[0] for d in cur.description], row)) for row in cur.fetchall()]
    rows = sorted(got.to_pylist(), key=lambda r: r["id"])
    for row in rows:
        assert row.pop(SOURCE_COLUMN) == table
        if row["changed_at"] is not None:
            row["changed_at"] = row["changed_at"].replace(tzinfo=None)
    assert rows == expected
    assert rows[0]["wide"] == _TYPED_ROWS[0][5] and str(rows[2]["price"]) == "-0.01"


@pytest.mark.mariadb
def test_timestamp_columns_are_read_in_utc_whatever_the_server_zone(mariadb_url: str, make_table) -> None:
    """A TIMESTAMP is stored as UTC and printed in the session's zone: written from a +05:00 session, it still
    arrives as the UTC instant."""
    table = make_table("id INT, changed_at TIMESTAMP NULL", [])
    with _connect(mariadb_url, init_command="SET time_zone = '+05:00'") as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO `{table}` VALUES (1, '2024-01-02 05:00:00')")
    got = _extract(mariadb_url, table=table)
    assert got.column("changed_at").to_pylist() == [dt.datetime(2024, 1, 2, tzinfo=UTC)]


# ---------------------------------------------------------------------------------------------- windows and batches

_EVENTS = [
    (1, "2024-01-01 23:59:59.999999"),
    (2, "2024-01-02 00:00:00"),
    (3, "2024-01-02 12:00:00"),
    (4, "2024-01-02 23:59:59.999999"),
    (5, "2024-01-03 00:00:00"),
]


@pytest.mark.mariadb
@pytest.mark.parametrize("sql_type", ["DATETIME(6)", "TIMESTAMP(6) NULL"])
def test_window_includes_its_start_and_excludes_its_end(mariadb_url: str, make_table, sql_type: str) -> None:
    table = make_table(f"event_id INT, happened_at {sql_type}", [])
    with _connect(mariadb_url, init_command="SET time_zone = '+00:00'") as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO `{table}` VALUES (%s, %s)", _EVENTS)
    got = _extract(mariadb_url, (JAN_2, JAN_3), table=table, incremental_column="happened_at")
    assert sorted(got.column("event_id").to_pylist()) == [2, 3, 4]


@pytest.mark.mariadb
def test_window_in_another_time_zone_is_converted_to_utc(mariadb_url: str, make_table) -> None:
    table = make_table("event_id INT, happened_at DATETIME(6)", _EVENTS)
    paris = dt.timezone(dt.timedelta(hours=1))
    # [2024-01-02 01:00+01:00, 2024-01-03 01:00+01:00) is [2024-01-02 00:00, 2024-01-03 00:00) UTC
    window = (dt.datetime(2024, 1, 2, 1, tzinfo=paris), dt.datetime(2024, 1, 3, 1, tzinfo=paris))
    got = _extract(mariadb_url, window, table=table, incremental_column="happened_at")
    assert sorted(got.column("event_id").to_pylist()) == [2, 3, 4]


@pytest.mark.mariadb
def test_query_with_a_percent_sign_and_a_window(mariadb_url: str, make_table) -> None:
    """PyMySQL fills parameters in with Python's % operator: a LIKE pattern in the query must survive it."""
    table = make_table(
        "event_id INT, label VARCHAR(20), happened_at DATETIME",
        [(1, "keep-a", "2024-01-02 01:00:00"), (2, "drop", "2024-01-02 02:00:00"), (3, "keep-b", "2024-01-05")],
    )
    query = f"SELECT event_id, label, happened_at FROM `{table}` WHERE label LIKE 'keep%'"
    assert _extract(mariadb_url, (JAN_2, JAN_3), query=query, incremental_column="happened_at").column(
        "event_id"
    ).to_pylist() == [1]
    assert sorted(_extract(mariadb_url, query=query).column("event_id").to_pylist()) == [1, 3]


@pytest.mark.mariadb
def test_streams_batches_of_chunk_size_with_one_schema(mariadb_url: str, make_table) -> None:
    rows = [(i, None if i >= 1000 else Decimal(i) / 100) for i in range(2500)]  # the last chunks are all NULL
    table = make_table("id INT, price DECIMAL(10,2)", rows)
    reader = SqlDatabaseSource(connection="shop_db", default_url=mariadb_url).extract(
        _spec(mariadb_url, table=table, chunk_size=1000)
    )
    batches = list(reader)
    assert [b.num_rows for b in batches] == [1000, 1000, 500]
    assert all(b.schema == reader.schema for b in batches) and reader.schema.field("price").type == pa.decimal128(10, 2)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.mariadb
def test_missing_table_is_permanent_and_says_what_to_check(mariadb_url: str) -> None:
    with pytest.raises(PermanentSourceError, match=r"no_such_table.*check `table`"):
        _extract(mariadb_url, table="no_such_table")


@pytest.mark.mariadb
def test_missing_incremental_column_is_permanent(mariadb_url: str, make_table) -> None:
    table = make_table("id INT", [(1,)])
    with pytest.raises(PermanentSourceError, match="nope"):
        _extract(mariadb_url, (JAN_2, JAN_3), table=table, incremental_column="nope")


@pytest.mark.mariadb
def test_missing_database_is_permanent(mariadb_url: str) -> None:
    url = _with_userinfo(mariadb_url, urlsplit(mariadb_url).username or "root", "/no_such_db_etl")
    with pytest.raises(PermanentSourceError, match="database does not exist"):
        _extract(url, table="x")


@pytest.mark.mariadb
def test_wrong_password_is_permanent_and_never_quoted(mariadb_url: str) -> None:
    password = "Wr0ng-Pa55word-xyz"
    url = _with_userinfo(mariadb_url, f"root:{password}")
    with pytest.raises(PermanentSourceError, match="access denied for user 'root'") as caught:
        _extract(url, table="x")
    assert password not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.mariadb
def test_refused_port_is_transient(mariadb_url: str) -> None:
    parts = urlsplit(mariadb_url)
    url = urlunsplit((parts.scheme, f"{parts.username}:S3cret-pw@127.0.0.1:1", parts.path, "", ""))
    with pytest.raises(TransientSourceError, match="127.0.0.1:1") as caught:
        _extract(url, table="x")
    assert "S3cret-pw" not in str(caught.value)


def test_unknown_url_option_is_refused_by_name() -> None:
    with pytest.raises(PermanentSourceError, match=r"option 'sslmode'.*use one of charset"):
        _extract("mysql://root@127.0.0.1:3306/test?sslmode=require", table="x")


def test_url_without_database_says_how_to_write_it() -> None:
    with pytest.raises(PermanentSourceError, match="names no database; write it as mysql://"):
        _extract("mariadb://root@127.0.0.1:3306", table="x")


@pytest.mark.mariadb
def test_connection_killed_mid_extract_is_transient(mariadb_url: str, make_table) -> None:
    table = make_table("id INT, pad VARCHAR(200)", [(i, "x" * 200) for i in range(20_000)])
    reader = SqlDatabaseSource(connection="shop_db", default_url=mariadb_url).extract(
        _spec(mariadb_url, table=table, chunk_size=1000)
    )
    batches = iter(reader)
    try:
        next(batches)
        with _connect(mariadb_url) as admin, admin.cursor() as cur:
            # the extract's connection streams the table's rows; under load the server may show it a moment later
            found: list = []
            deadline = time.monotonic() + 30
            while not found and time.monotonic() < deadline:
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE info LIKE %s AND id <> CONNECTION_ID()",
                    [f"%{table}%"],
                )
                found = list(cur.fetchall())
                if not found:
                    time.sleep(0.2)
            assert found, f"no connection of the extract streaming {table} in the processlist"
            cur.execute("KILL %s", [found[0][0]])
        with pytest.raises(TransientSourceError, match="mid-extract"):
            for _ in batches:
                pass
    finally:
        reader.close()  # a failed test must not leave the extract's connection (and its lock on the table) open


# ---------------------------------------------------------------------------------------------- through the platform


@pytest.mark.mariadb
def test_partitioned_pipeline_from_mariadb_into_the_warehouse(
    tmp_path: Path, data_dir: Path, instance: DagsterInstance, mariadb_url: str, make_table, monkeypatch
) -> None:
    """A daily partitioned ``kind: sql`` pipeline over a MariaDB table, run as a user with a password given through
    ``<CONNECTION>_URL``: each partition lands its day's rows with exact decimals, and the password is in no event."""
    table = make_table(
        "order_id BIGINT PRIMARY KEY, amount DECIMAL(14,4) NOT NULL, ordered_at DATETIME(6) NOT NULL",
        [
            (1, Decimal("1234567890.1234"), "2024-01-02 00:00:00"),
            (2, Decimal("0.0001"), "2024-01-02 23:59:59.999999"),
            (3, Decimal("-5.5000"), "2024-01-03 00:00:00"),
            (4, Decimal("7.0000"), "2024-01-01 12:00:00"),
        ],
    )
    user, password = f"etl_{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    with _connect(mariadb_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", [user, password])
        cur.execute(f"GRANT SELECT ON `test`.`{table}` TO %s@'%%'", [user])
    try:
        monkeypatch.setenv("ORDERS_DB_URL", _with_userinfo(mariadb_url, f"{user}:{password}"))
        spec = pipeline(
            "my_orders",
            [
                column("order_id", "BIGINT", nullable=False),
                column("amount", "DECIMAL(14,4)", nullable=False),
                column("ordered_at", "TIMESTAMP", nullable=False),
            ],
            domain="corpus",
            source={
                "kind": "sql",
                "connection": "orders_db",
                "default_url": "mysql://nobody@127.0.0.1:1/test",
                "table": table,
                "incremental_column": "ordered_at",
            },
            partitions={"type": "daily", "start": "2024-01-01", "column": "ordered_at"},
            primary_key=["order_id"],
            retry={"max_retries": 0},
        )
        defs = definitions_for(tmp_path / "specs", spec)
        texts = []
        for partition in ("2024-01-02", "2024-01-03"):
            result = defs.resolve_job_def(pipeline_job_name(Pipeline(spec["domain"], spec["name"]))).execute_in_process(
                instance=instance, partition_key=partition, run_config=QUIET
            )
            assert result.success
            texts.extend(repr(e) for e in result.all_events)
        raw = [
            e.materialization
            for e in result.get_asset_materialization_events()
            if "fast_path" in e.materialization.metadata
        ]
        assert [m.metadata["fast_path"].value for m in raw] == ["pymysql"]
        with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
            loaded = con.execute(
                "SELECT _etl_partition, order_id, CAST(amount AS VARCHAR) FROM corpus.my_orders ORDER BY order_id"
            ).fetchall()
        assert loaded == [
            ("2024-01-02", 1, "1234567890.1234"),
            ("2024-01-02", 2, "0.0001"),
            ("2024-01-03", 3, "-5.5000"),
        ]
        assert not [t for t in texts if password in t]
    finally:
        with _connect(mariadb_url) as conn, conn.cursor() as cur:
            cur.execute("DROP USER %s@'%%'", [user])


def test_is_mysql_url_takes_pymysql_spellings_only() -> None:
    from etl_assets.resources.mysql import is_mysql_url

    assert is_mysql_url("mysql://u@h/db") and is_mysql_url("mariadb+pymysql://u@h/db")
    assert is_mysql_url("MySQL+PyMySQL://u@h/db")
    assert not is_mysql_url("mysql+mysqldb://u@h/db") and not is_mysql_url("postgresql://u@h/db")
