"""Protects ``SqlDatabaseSource`` (etl_assets/resources/sql.py), the extract side of every ``kind: sql`` pipeline.

SQLite (the SQLAlchemy path, values delivered as text): a whole table, a ``query`` instead of a ``table``, a
partition window pushed into the WHERE on ``incremental_column`` with the start boundary included and the end
excluded (also for a window given in another time zone), batches of ``chunk_size`` rows, and a missing table or
database file failing as a permanent error with a message that says what to fix.

Postgres (the ADBC fast path, typed Arrow): a windowed extract of a 50k-row table compared with what psycopg
counts and sums for the same window, streamed in several record batches with int64/int32/timestamp types kept,
``postgresql+psycopg://`` URLs accepted, and the error classes the step's retry policy depends on: a backend
terminated mid-stream is a ``TransientSourceError``; a missing table, a missing database or a query failing
mid-stream is a ``PermanentSourceError``.

Everything runs against real files (a SQLite file under ``tmp_path``, the demo's ``shop.sqlite``) and a real
Postgres (the ``postgres_url``/``pg_schema`` fixtures).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from etl_assets.errors import PermanentSourceError, TransientSourceError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.pipelines.spec import SqlSource
from etl_assets.resources.sql import SqlDatabaseSource
from etl_assets_demo import DemoManifest

UTC = dt.UTC
JAN_2 = dt.datetime(2024, 1, 2, tzinfo=UTC)
JAN_3 = dt.datetime(2024, 1, 3, tzinfo=UTC)

# ---------------------------------------------------------------------------------------------- helpers


def _spec(url: str, **fields: Any) -> SqlSource:
    return SqlSource(kind="sql", connection="shop_db", default_url=url, **fields)


def _source(url: str) -> SqlDatabaseSource:
    return SqlDatabaseSource(connection="shop_db", default_url=url)


def _extract(url: str, window: tuple[dt.datetime, dt.datetime] | None = None, **fields: Any) -> pa.Table:
    return _source(url).extract(_spec(url, **fields), window=window).read_all()


def _with_query_param(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), (key, value)])
    return urlunsplit(parts._replace(query=query))


# ---------------------------------------------------------------------------------------------- SQLite

EVENTS = [
    # (id, happened_at) as stored: SQLite TEXT, 'YYYY-MM-DD HH:MM:SS', UTC.
    (1, "2024-01-01 23:59:59"),  # one second before the window
    (2, "2024-01-02 00:00:00"),  # exactly the window start: included
    (3, "2024-01-02 00:00:01"),
    (4, "2024-01-02 12:00:00"),
    (5, "2024-01-02 23:59:59"),  # last second inside
    (6, "2024-01-03 00:00:00"),  # exactly the window end: excluded
    (7, "2024-01-03 00:00:01"),
    (8, None),  # no timestamp: never in a window
]


@pytest.fixture
def events_db(tmp_path: Path) -> str:
    """A SQLite file with an ``events`` table whose rows sit on and around the 2024-01-02 window's boundaries."""
    path = tmp_path / "events.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, happened_at TEXT, note TEXT)")
        con.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(i, ts, None if i == 8 else f'note, "{i}"\nline two') for i, ts in EVENTS],
        )
    con.close()
    return f"sqlite:///{path}"


def test_sqlite_full_table_matches_the_demo_database(shop_data: DemoManifest) -> None:
    url = f"sqlite:///{shop_data.sqlite_path}"
    table = _extract(url, table="customers")

    with sqlite3.connect(shop_data.sqlite_path) as con:
        expected = con.execute("SELECT * FROM customers ORDER BY customer_id").fetchall()
    con.close()
    assert table.column_names == ["customer_id", "name", "email", "country", "created_at", "updated_at", SOURCE_COLUMN]
    assert table.num_rows == shop_data.customers == len(expected)
    # The SQLAlchemy path delivers text; the contract types it later.
    assert all(field.type == pa.string() for field in table.schema)
    rows = sorted(table.to_pylist(), key=lambda r: int(r["customer_id"]))
    got = [(int(r["customer_id"]), r["name"], r["email"], r["country"], r["created_at"], r["updated_at"]) for r in rows]
    assert got == expected
    assert set(table.column(SOURCE_COLUMN).to_pylist()) == {"customers"}


def test_sqlite_default_url_expands_data_dir(shop_data: DemoManifest) -> None:
    """The packaged spec's URL is ``sqlite:///{data_dir}/sources/shop.sqlite``; it must reach the demo file."""
    url = "sqlite:///{data_dir}/sources/shop.sqlite"
    assert _extract(url, table="customers").num_rows == shop_data.customers


def test_sqlite_query_instead_of_table(shop_data: DemoManifest) -> None:
    url = f"sqlite:///{shop_data.sqlite_path}"
    table = _extract(
        url, query="SELECT customer_id, upper(country) AS country_uc FROM customers WHERE customer_id % 3 = 0"
    )

    with sqlite3.connect(shop_data.sqlite_path) as con:
        expected = con.execute(
            "SELECT customer_id, upper(country) FROM customers WHERE customer_id % 3 = 0 ORDER BY customer_id"
        ).fetchall()
    con.close()
    assert table.column_names == ["customer_id", "country_uc", SOURCE_COLUMN]
    got = sorted((int(r["customer_id"]), r["country_uc"]) for r in table.to_pylist())
    assert got == expected and len(got) == shop_data.customers // 3
    assert set(table.column(SOURCE_COLUMN).to_pylist()) == {"query"}


def test_sqlite_window_on_the_demo_customers(shop_data: DemoManifest) -> None:
    """The window on ``updated_at`` returns exactly the customers a Python filter of all rows selects."""
    url = f"sqlite:///{shop_data.sqlite_path}"
    # A quarter before the data's first day: the demo's customers were updated across two years of history.
    end = dt.datetime.combine(shop_data.start, dt.time(), tzinfo=UTC)
    window = (end - dt.timedelta(days=91), end)
    table = _extract(url, window, table="customers", incremental_column="updated_at")

    everything = _extract(url, table="customers").to_pylist()
    expected = sorted(
        int(r["customer_id"])
        for r in everything
        if window[0] <= dt.datetime.fromisoformat(r["updated_at"]).replace(tzinfo=UTC) < window[1]
    )
    assert expected, "the demo data should have customers updated in the quarter before its first day"
    assert len(expected) < len(everything)
    assert sorted(int(i) for i in table.column("customer_id").to_pylist()) == expected


def test_sqlite_window_boundaries(events_db: str) -> None:
    table = _extract(events_db, (JAN_2, JAN_3), table="events", incremental_column="happened_at")

    assert sorted(int(i) for i in table.column("id").to_pylist()) == [2, 3, 4, 5]
    by_id = {int(r["id"]): r for r in table.to_pylist()}
    assert by_id[2]["happened_at"] == "2024-01-02 00:00:00"
    assert by_id[2]["note"] == 'note, "2"\nline two'


def test_sqlite_window_in_another_time_zone_is_converted_to_utc(events_db: str) -> None:
    """A partition in UTC+05:00 covering 2024-01-02 05:00..2024-01-03 05:00 local is 00:00..00:00 UTC."""
    plus5 = dt.timezone(dt.timedelta(hours=5))
    window = (dt.datetime(2024, 1, 2, 5, tzinfo=plus5), dt.datetime(2024, 1, 3, 5, tzinfo=plus5))
    table = _extract(events_db, window, table="events", incremental_column="happened_at")
    assert sorted(int(i) for i in table.column("id").to_pylist()) == [2, 3, 4, 5]


def test_sqlite_query_with_window(events_db: str) -> None:
    table = _extract(
        events_db,
        (JAN_2, JAN_3),
        query="SELECT id, happened_at FROM events WHERE id <> 4",
        incremental_column="happened_at",
    )
    assert sorted(int(i) for i in table.column("id").to_pylist()) == [2, 3, 5]


def test_sqlite_streams_batches_of_chunk_size(tmp_path: Path) -> None:
    path = tmp_path / "many.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")
        con.executemany("INSERT INTO items VALUES (?, ?)", ((i, f"item {i}") for i in range(1, 2501)))
    con.close()
    url = f"sqlite:///{path}"
    reader = _source(url).extract(_spec(url, table="items", chunk_size=1000))

    sizes = [batch.num_rows for batch in reader]
    assert sizes == [1000, 1000, 500]


def test_sqlite_missing_table_is_permanent_and_says_what_to_check(events_db: str) -> None:
    with pytest.raises(PermanentSourceError) as info:
        _extract(events_db, table="no_such_table")
    message = str(info.value)
    assert "shop_db" in message and "no_such_table" in message and "`table`" in message


def test_sqlite_missing_incremental_column_is_permanent(events_db: str) -> None:
    with pytest.raises(PermanentSourceError, match="no_such_column"):
        _extract(events_db, (JAN_2, JAN_3), table="events", incremental_column="no_such_column")


def test_window_without_incremental_column_is_permanent(events_db: str) -> None:
    with pytest.raises(PermanentSourceError, match="incremental_column"):
        _extract(events_db, (JAN_2, JAN_3), table="events")


def test_sqlite_missing_file_is_permanent(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "shop.sqlite"
    with pytest.raises(PermanentSourceError) as info:
        _extract(f"sqlite:///{missing}", table="customers")
    assert str(missing) in str(info.value) and "demo generate" in str(info.value)
    assert not missing.exists(), "the extract must not create an empty database where the real one is missing"


# ---------------------------------------------------------------------------------------------- Postgres

PG_ROWS = 50_000
# Row g is stamped 2024-01-01 00:00 UTC + g minutes, so 2024-01-02..2024-01-03 holds g in [1440, 2880) and the
# wider window 2024-01-02..2024-01-30 holds g in [1440, 41760).
PG_WINDOW = (JAN_2, dt.datetime(2024, 1, 30, tzinfo=UTC))
PG_WINDOW_IDS = range(1440, 41760)


@pytest.fixture
def pg_events(postgres_url: str, pg_schema: str) -> str:
    """``<pg_schema>.events``: 50k rows generated server side, ~640 bytes each so the result spans several of
    ADBC's record batches (its default batch size hint is 16 MB)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} AS SELECT g::bigint AS id, (g %% 7)::int AS k, (g * 1.25)::numeric(12,2) AS amount,"
                " 'event ' || g AS label, TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 minute' AS happened_at,"
                " TIMESTAMP '2024-01-01 00:00:00' + g * INTERVAL '1 minute' AS local_at, repeat(md5(g::text), 20) AS pad"
                " FROM generate_series(0, %s - 1) AS g"
            ).format(sql.Identifier(pg_schema, "events")),
            [PG_ROWS],
        )
    return f"{pg_schema}.events"


@pytest.mark.postgres
def test_postgres_window_matches_psycopg_and_streams_typed_batches(postgres_url: str, pg_events: str) -> None:
    source = _source(postgres_url)
    assert source.is_postgres()
    reader = source.extract(_spec(postgres_url, table=pg_events, incremental_column="happened_at"), window=PG_WINDOW)

    schema = reader.schema
    batches = list(reader)
    assert len(batches) > 1, "the ADBC path must stream record batches, not load the result as one"
    table = pa.Table.from_batches(batches, schema=schema)

    assert schema.field("id").type == pa.int64()
    assert schema.field("k").type == pa.int32()
    assert schema.field("label").type == pa.string()
    assert schema.field("happened_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("local_at").type == pa.timestamp("us")
    # numeric arrives as its exact decimal text (an opaque extension over strings), never as a float.
    amount_type = schema.field("amount").type
    assert getattr(amount_type, "storage_type", amount_type) == pa.string()
    assert schema.field(SOURCE_COLUMN).type == pa.string()

    ids = table.column("id").to_pylist()
    assert sorted(ids) == list(PG_WINDOW_IDS)  # start boundary row 1440 in, end boundary row 41760 out
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), sum(id), sum(k), sum(amount), min(happened_at), max(happened_at) FROM {}"
                " WHERE happened_at >= %s AND happened_at < %s"
            ).format(sql.Identifier(*pg_events.split("."))),
            list(PG_WINDOW),
        ).fetchone()
    assert row is not None
    count, id_sum, k_sum, amount_sum, first, last = row
    assert table.num_rows == count == len(PG_WINDOW_IDS)
    assert sum(ids) == id_sum
    assert sum(table.column("k").to_pylist()) == k_sum
    amounts = [a for chunk in table.column("amount").chunks for a in getattr(chunk, "storage", chunk).to_pylist()]
    # ids 1440, 1441: scale 2 kept (by id: a scan without ORDER BY may start anywhere in the table, as Postgres
    # synchronizes a sequential scan with one already running)
    by_id = dict(zip(ids, amounts))
    assert (by_id[1440], by_id[1441]) == ("1800.00", "1801.25")
    assert sum(Decimal(a) for a in amounts) == amount_sum
    stamps = table.column("happened_at").to_pylist()
    assert (min(stamps), max(stamps)) == (first, last) == (JAN_2, PG_WINDOW[1] - dt.timedelta(minutes=1))
    assert set(table.column(SOURCE_COLUMN).to_pylist()) == {pg_events}
    row = next(r for r in table.to_pylist() if r["id"] == 1440)
    assert row["label"] == "event 1440" and row["local_at"] == dt.datetime(2024, 1, 2)


@pytest.mark.postgres
def test_postgres_driver_qualified_url(postgres_url: str, pg_events: str) -> None:
    """``postgresql+psycopg://`` (the SQLAlchemy spelling users copy around) reaches the same database."""
    scheme, rest = postgres_url.split("://", 1)
    url = "postgresql+psycopg://" + rest
    window = (JAN_2, JAN_3)
    source = _source(url)
    assert source.is_postgres()
    table = source.extract(_spec(url, table=pg_events, incremental_column="happened_at"), window=window).read_all()
    assert sorted(table.column("id").to_pylist()) == list(range(1440, 2880))


@pytest.mark.postgres
def test_postgres_query_with_window(postgres_url: str, pg_events: str) -> None:
    schema_name = pg_events.split(".")[0]
    query = sql.SQL("SELECT id, happened_at FROM {} WHERE k = 0").format(sql.Identifier(schema_name, "events"))
    with psycopg.connect(postgres_url) as conn:
        query_text = query.as_string(conn)
    table = _extract(postgres_url, (JAN_2, JAN_3), query=query_text, incremental_column="happened_at")
    assert table.column_names == ["id", "happened_at", SOURCE_COLUMN]
    assert sorted(table.column("id").to_pylist()) == [g for g in range(1440, 2880) if g % 7 == 0]


@pytest.mark.postgres
def test_postgres_missing_table_is_permanent(postgres_url: str, pg_schema: str) -> None:
    with pytest.raises(PermanentSourceError) as info:
        _extract(postgres_url, table=f"{pg_schema}.no_such_table")
    assert "no_such_table" in str(info.value) and "`table`" in str(info.value)


@pytest.mark.postgres
def test_postgres_missing_database_is_permanent(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(path="/etl_no_such_db_" + uuid.uuid4().hex[:8]))
    with pytest.raises(PermanentSourceError, match="does not exist"):
        _extract(url, query="SELECT 1 AS one")


@pytest.mark.postgres
def test_postgres_query_failing_mid_stream_is_permanent(postgres_url: str) -> None:
    """A division by zero at row 150,000, after the first batches were delivered: a retry cannot fix it."""
    query = "SELECT g AS id, repeat('x', 200) AS pad, 1 / (g - 150000) AS boom FROM generate_series(1, 300000) AS g"
    reader = _source(postgres_url).extract(_spec(postgres_url, query=query))
    delivered = 0
    with pytest.raises(PermanentSourceError, match="division by zero"):
        for batch in reader:
            delivered += batch.num_rows
    assert 0 < delivered < 150_000


@pytest.mark.postgres
def test_postgres_backend_terminated_mid_extract_is_transient(postgres_url: str) -> None:
    """``pg_terminate_backend`` from a second connection while the result streams: retryable, not a raw driver error."""
    app = "etl_extract_" + uuid.uuid4().hex[:10]
    url = _with_query_param(postgres_url, "application_name", app)
    query = "SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 5000000) AS g"
    reader = _source(url).extract(_spec(url, query=query))
    batches: Iterator[pa.RecordBatch] = iter(reader)
    first = next(batches)
    assert first.num_rows > 0

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        terminated = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [app]
        ).fetchall()
    assert terminated == [(True,)], "the extract's backend should be found by its application_name"

    delivered = first.num_rows
    with pytest.raises(TransientSourceError) as info:
        for batch in batches:
            delivered += batch.num_rows
    assert delivered < 5_000_000
    assert "shop_db" in str(info.value)
