"""Protects ``PostgresTarget.replace_partition`` (etl_assets/resources/targets.py), the Postgres serving load.

Lake partitions are real Parquet files written by ``LakeStorage``; they are loaded with ADBC's binary COPY into a
real Postgres (``postgres_url``/``pg_schema`` fixtures) and read back with psycopg. Guarded here: every value
round-trips exactly (bigint, smallint, numeric(12,2), numeric(38,10) at its limits, numeric(18,0), text with
quotes, commas, newlines, backslashes, every UTF-8 length and '' kept apart from NULL, timestamptz and timestamp
before 1970 and 2000 and at year 9999, date, boolean, double precision) with the column types the Arrow types map
to; a table whose columns have other types (integer, varchar(n), jsonb, numeric, numeric(6,1), a text column for
an integer) gets the values COPY's CSV gave it, and a value its column cannot hold fails the load and leaves the
previous rows; the staging-table path leaves the same rows as the direct COPY; an empty partition empties the
partition; loading one partition three times leaves one copy; replacing one partition leaves the others
untouched; a column that first appears in a later partition is added to the table; mixed-case names work because
they are quoted as identifiers; a load session hung inside its transaction is ended by Postgres with its locks
released; and a load that fails part-way (a NOT NULL violated by a row in the second batch) leaves the partition's
previous rows.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from etl_assets.lake import LakeStorage, LakeTable
from etl_assets.resources.targets import LOADED_AT_COLUMN, PARTITION_COLUMN, RUN_COLUMN, PostgresTarget

pytestmark = [pytest.mark.postgres]

UTC = dt.UTC
KEY = ["shop", "order_items"]
P1, P2 = "2024-01-01", "2024-01-02"

TEXTS = [
    "plain",
    'she said "hi"',
    "a,b,,c",
    "line one\nline two",
    "",  # empty string: must stay '' ...
    None,  # ... and NULL must stay NULL
    "crlf\r\nend",
    "back\\slash \\N and \\.",
    "line\n\\.\nafter an end-of-data marker",
    "\\.",
    "NULL",
    "  padded  ",
    "ünïcödé ✓ 😀",
]


def _rich_table(first_id: int = 1) -> pa.Table:
    n = len(TEXTS)
    ids = list(range(first_id, first_id + n))
    amounts = [Decimal("1234567890.12"), Decimal("-0.05"), Decimal("0.00"), Decimal("9999999999.99"), None]
    stamps = [
        dt.datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        None,
    ]
    days = [dt.date(2024, 2, 29), dt.date(1999, 12, 31), None]
    flags = [True, False, None]
    return pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "quantity": pa.array([i * 1_000_000_007 for i in range(n)], pa.int64()),
            "amount": pa.array([amounts[i % len(amounts)] for i in range(n)], pa.decimal128(12, 2)),
            "note": pa.array(TEXTS, pa.string()),
            "ordered_at": pa.array([stamps[i % len(stamps)] for i in range(n)], pa.timestamp("us", tz="UTC")),
            # Stored with another zone: the instant must survive, whatever zone the CSV text carries.
            "shipped_at": pa.array(
                [stamps[(i + 1) % len(stamps)] for i in range(n)], pa.timestamp("us", tz="Asia/Kolkata")
            ),
            "ship_date": pa.array([days[i % len(days)] for i in range(n)], pa.date32()),
            "gift": pa.array([flags[i % len(flags)] for i in range(n)], pa.bool_()),
        }
    )


@pytest.fixture
def lake(tmp_path: Path) -> LakeStorage:
    return LakeStorage(root=str(tmp_path / "lake"))


@pytest.fixture
def target(postgres_url: str) -> PostgresTarget:
    return PostgresTarget(url=postgres_url)


def _partition(lake: LakeStorage, partition: str, data: pa.Table, key: list[str] = KEY) -> LakeTable:
    lake.write(key, partition, data)
    return lake.table(key, [partition])


def _rows(url: str, schema: str, table: str, columns: list[str], partition: str | None = None) -> list[tuple]:
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(schema, table)
    )
    params: list[object] = []
    if partition is not None:
        query += sql.SQL(" WHERE {} = %s").format(sql.Identifier(PARTITION_COLUMN))
        params.append(partition)
    query += sql.SQL(" ORDER BY 1")
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def _column_types(url: str, schema: str, table: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            [sql.Identifier(schema, table).as_string(conn)],
        ).fetchall()
    return dict(rows)


def test_values_round_trip_exactly(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    data = _rich_table()
    result = target.replace_partition(pg_schema, "order_items", _partition(lake, P1, data), P1, "run-1")

    assert (result.rows, result.rows_replaced, result.partition) == (len(TEXTS), 0, P1)
    assert _column_types(postgres_url, pg_schema, "order_items") == {
        "item_id": "bigint",
        "quantity": "bigint",
        "amount": "numeric(12,2)",
        "note": "text",
        "ordered_at": "timestamp with time zone",
        "shipped_at": "timestamp with time zone",
        "ship_date": "date",
        "gift": "boolean",
        PARTITION_COLUMN: "text",
        RUN_COLUMN: "text",
        LOADED_AT_COLUMN: "timestamp with time zone",
    }
    columns = data.column_names
    got = _rows(postgres_url, pg_schema, "order_items", columns)
    expected = [tuple(row[c] for c in columns) for row in data.to_pylist()]
    assert got == expected
    notes = [row[3] for row in got]
    assert notes[4] == "" and notes[5] is None  # '' and NULL stay apart
    assert notes[3] == "line one\nline two" and notes[1] == 'she said "hi"'
    assert all(isinstance(row[2], Decimal) for row in got if row[2] is not None)  # numeric, never float

    meta = _rows(postgres_url, pg_schema, "order_items", ["item_id", PARTITION_COLUMN, RUN_COLUMN, LOADED_AT_COLUMN])
    assert {(p, r) for _, p, r, _ in meta} == {(P1, "run-1")}
    assert all(loaded is not None for *_, loaded in meta)


def test_reloading_a_partition_three_times_leaves_one_copy(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    source = _partition(lake, P1, _rich_table())
    results = [target.replace_partition(pg_schema, "order_items", source, P1, f"run-{i}") for i in (1, 2, 3)]

    assert [r.rows_replaced for r in results] == [0, len(TEXTS), len(TEXTS)]
    rows = _rows(postgres_url, pg_schema, "order_items", ["item_id", RUN_COLUMN])
    assert rows == [(i, "run-3") for i in range(1, len(TEXTS) + 1)]


def test_replacing_one_partition_leaves_the_others_untouched(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    target.replace_partition(pg_schema, "order_items", _partition(lake, P1, _rich_table(1)), P1, "run-a")
    target.replace_partition(pg_schema, "order_items", _partition(lake, P2, _rich_table(100)), P2, "run-b")
    everything = [
        "item_id",
        "quantity",
        "amount",
        "note",
        "ordered_at",
        "ship_date",
        "gift",
        RUN_COLUMN,
        LOADED_AT_COLUMN,
    ]
    p2_before = _rows(postgres_url, pg_schema, "order_items", everything, P2)

    smaller = pa.table(
        {
            "item_id": pa.array([1, 2], pa.int64()),
            "quantity": pa.array([5, 6], pa.int64()),
            "amount": pa.array([Decimal("1.50"), None], pa.decimal128(12, 2)),
            "note": pa.array(["replaced", ""]),
            "ordered_at": pa.array([dt.datetime(2024, 1, 1, 8, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")),
            "shipped_at": pa.array([None, None], pa.timestamp("us", tz="Asia/Kolkata")),
            "ship_date": pa.array([dt.date(2024, 1, 1)] * 2, pa.date32()),
            "gift": pa.array([False, True]),
        }
    )
    result = target.replace_partition(pg_schema, "order_items", _partition(lake, P1, smaller), P1, "run-c")

    assert (result.rows, result.rows_replaced) == (2, len(TEXTS))
    assert _rows(postgres_url, pg_schema, "order_items", ["item_id", "note", "amount", RUN_COLUMN], P1) == [
        (1, "replaced", Decimal("1.50"), "run-c"),
        (2, "", None, "run-c"),
    ]
    assert _rows(postgres_url, pg_schema, "order_items", everything, P2) == p2_before
    assert len(p2_before) == len(TEXTS)


def test_a_column_new_in_a_later_partition_is_added(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    first = pa.table({"item_id": pa.array([1, 2], pa.int64()), "note": ["a", "b"]})
    later = pa.table(
        {
            "item_id": pa.array([3, 4], pa.int64()),
            "note": ["c", None],
            "discount": pa.array([Decimal("0.10"), None], pa.decimal128(12, 2)),
            "coupon": ["WELCOME", ""],
        }
    )
    target.replace_partition(pg_schema, "order_items", _partition(lake, P1, first), P1, "run-1")
    assert "discount" not in _column_types(postgres_url, pg_schema, "order_items")

    target.replace_partition(pg_schema, "order_items", _partition(lake, P2, later), P2, "run-2")
    types = _column_types(postgres_url, pg_schema, "order_items")
    assert types["discount"] == "numeric(12,2)" and types["coupon"] == "text"
    assert _rows(
        postgres_url, pg_schema, "order_items", ["item_id", "note", "discount", "coupon", PARTITION_COLUMN]
    ) == [
        (1, "a", None, None, P1),
        (2, "b", None, None, P1),
        (3, "c", Decimal("0.10"), "WELCOME", P2),
        (4, None, None, "", P2),
    ]

    # Re-loading the older partition (without the new columns) still works and leaves them NULL.
    result = target.replace_partition(pg_schema, "order_items", _partition(lake, P1, first), P1, "run-3")
    assert (result.rows, result.rows_replaced) == (2, 2)
    assert _rows(postgres_url, pg_schema, "order_items", ["item_id", "discount", RUN_COLUMN], P1) == [
        (1, None, "run-3"),
        (2, None, "run-3"),
    ]


def test_mixed_case_identifiers_are_quoted(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    data = pa.table(
        {
            "ItemId": pa.array([1, 2], pa.int64()),
            "unitPrice": pa.array([Decimal("2.50"), Decimal("3.00")], pa.decimal128(12, 2)),
        }
    )
    source = _partition(lake, P1, data, key=["shop", "OrderItems"])
    target.replace_partition(pg_schema, "OrderItems", source, P1, "run-1")
    target.replace_partition(pg_schema, "OrderItems", source, P1, "run-2")

    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [pg_schema]
        ).fetchall()
    assert tables == [("OrderItems",)], "the table must keep its case, not fold to orderitems"
    assert set(_column_types(postgres_url, pg_schema, "OrderItems")) >= {"ItemId", "unitPrice"}
    assert _rows(postgres_url, pg_schema, "OrderItems", ["ItemId", "unitPrice", RUN_COLUMN]) == [
        (1, Decimal("2.50"), "run-2"),
        (2, Decimal("3.00"), "run-2"),
    ]


def test_failure_mid_load_keeps_the_previous_rows(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    n = 70_000  # more than one 65,536-row batch of the lake reader: the bad row goes out in the second COPY chunk
    good = pa.table({"item_id": pa.array(range(n), pa.int64()), "note": pa.array([f"v1 {i}" for i in range(n)])})
    target.replace_partition(pg_schema, "order_items", _partition(lake, P1, good), P1, "run-good")
    target.replace_partition(pg_schema, "order_items", _partition(lake, P2, good.slice(0, 10)), P2, "run-other")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN note SET NOT NULL").format(sql.Identifier(pg_schema, "order_items"))
        )

    notes: list[str | None] = [f"v2 {i}" for i in range(n)]
    notes[-1] = None
    bad_source = _partition(lake, P1, pa.table({"item_id": pa.array(range(n), pa.int64()), "note": pa.array(notes)}))
    assert sum(1 for _ in bad_source.arrow_reader()) > 1
    with pytest.raises(psycopg.errors.NotNullViolation):
        target.replace_partition(pg_schema, "order_items", bad_source, P1, "run-bad")

    with psycopg.connect(postgres_url) as conn:
        per_run = conn.execute(
            sql.SQL("SELECT {p}, {r}, count(*), min(note), max(note) FROM {t} GROUP BY 1, 2 ORDER BY 1").format(
                p=sql.Identifier(PARTITION_COLUMN),
                r=sql.Identifier(RUN_COLUMN),
                t=sql.Identifier(pg_schema, "order_items"),
            )
        ).fetchall()
    assert per_run == [
        (P1, "run-good", n, "v1 0", "v1 9999"),
        (P2, "run-other", 10, "v1 0", "v1 9"),
    ]


def test_a_load_session_hung_inside_its_transaction_is_ended_by_postgres(
    lake: LakeStorage, postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops talking mid-transaction (hung, not dead) must not hold the table's locks for ever."""
    target = PostgresTarget(url=postgres_url, idle_in_transaction_timeout_seconds=1)
    target.replace_partition(pg_schema, "order_items", _partition(lake, P1, _rich_table()), P1, "run-1")
    before = _rows(postgres_url, pg_schema, "order_items", ["item_id", RUN_COLUMN])
    # the test-only hook holds the load after its DELETE and COPY, before COMMIT: longer than the timeout
    monkeypatch.setenv("ETL_TEST_PAUSE_IN_LOAD_SECONDS", "3")
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        target.replace_partition(pg_schema, "order_items", _partition(lake, P1, _rich_table(first_id=100)), P1, "run-2")
    assert _rows(postgres_url, pg_schema, "order_items", ["item_id", RUN_COLUMN]) == before
    with psycopg.connect(postgres_url) as conn:  # nothing is left holding a lock on the table
        locks = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND pid <> pg_backend_pid()",
            [sql.Identifier(pg_schema, "order_items").as_string(conn)],
        ).fetchall()[0][0]
    assert locks == 0


def _edge_table() -> pa.Table:
    """Values at the edges of each binary encoding: 38-digit decimals, dates and instants before 1970 and 2000
    (Postgres counts from 2000-01-01, Arrow from 1970-01-01), the last microsecond of a second, and text in every
    UTF-8 length."""
    return pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "big": pa.array(
                [
                    Decimal("9999999999999999999999999999.9999999999"),
                    Decimal("-9999999999999999999999999999.9999999999"),
                    Decimal("0.0000000001"),
                    None,
                ],
                pa.decimal128(38, 10),
            ),
            "cents": pa.array(
                [Decimal("-0.01"), Decimal("100000000.00"), Decimal("0.00"), Decimal("-1.10")], pa.decimal128(12, 2)
            ),
            "whole": pa.array([Decimal("12345678901234567"), Decimal("-1"), Decimal("0"), None], pa.decimal128(18, 0)),
            "at": pa.array(
                [
                    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                    dt.datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
                    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "wall": pa.array(
                [dt.datetime(1900, 3, 1, 12), dt.datetime(2024, 2, 29, 0, 0, 0, 5), None, dt.datetime(1, 1, 1)],
                pa.timestamp("us"),
            ),
            "day": pa.array(
                [dt.date(1969, 12, 31), dt.date(1999, 12, 31), dt.date(1, 1, 1), dt.date(9999, 12, 31)], pa.date32()
            ),
            "text": pa.array(["a", "é ß ñ", "€ 中文 ✓", "😀 𝄞 e\u0301"], pa.string()),
            "small": pa.array([-32768, 32767, 0, None], pa.int16()),
            "ratio": pa.array([0.1, -1e308, float("inf"), None], pa.float64()),
        }
    )


def test_edge_values_round_trip_exactly(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    data = _edge_table()
    target.replace_partition(pg_schema, "edges", _partition(lake, P1, data, key=["shop", "edges"]), P1, "run-1")
    types = _column_types(postgres_url, pg_schema, "edges")
    assert (types["big"], types["whole"], types["wall"], types["small"]) == (
        "numeric(38,10)",
        "numeric(18,0)",
        "timestamp without time zone",
        "smallint",
    )
    columns = data.column_names
    assert _rows(postgres_url, pg_schema, "edges", columns) == [tuple(r[c] for c in columns) for r in data.to_pylist()]
    with psycopg.connect(postgres_url) as conn:  # as Postgres prints them, not only as psycopg parses them
        printed = conn.execute(
            sql.SQL("SELECT big::text, cents::text, at::text, day::text FROM {} ORDER BY id").format(
                sql.Identifier(pg_schema, "edges")
            )
        ).fetchall()
    assert printed[0] == (
        "9999999999999999999999999999.9999999999",
        "-0.01",
        "1969-12-31 23:59:59.999999+00",
        "1969-12-31",
    )
    assert printed[2] == ("0.0000000001", "0.00", "2000-01-01 00:00:00.000001+00", "0001-01-01")


def test_columns_of_another_type_are_cast_by_postgres_as_csv_did(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    """A table whose columns differ from the ones a load would create (made by hand, or by an older partition with
    narrower types): each value reaches its column as its text would have through COPY's CSV."""
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id integer, code varchar(3), doc jsonb, amount numeric, price numeric(6,1),"
                " ratio double precision, huge numeric(20,0), tag text, _etl_partition text NOT NULL,"
                " _etl_run_id text, _etl_loaded_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(pg_schema, "typed"))
        )
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),  # bigint into integer
            "code": pa.array(["abc", "xy"]),  # text into varchar(3)
            "doc": pa.array(['{"a": [1, 2]}', "null"]),  # text into jsonb
            "amount": pa.array([Decimal("1.23"), Decimal("-0.50")], pa.decimal128(12, 2)),  # into numeric
            "price": pa.array([Decimal("1.25"), Decimal("2.35")], pa.decimal128(12, 2)),  # rounded to one place
            "ratio": pa.array([0.1, 2.5], pa.float32()),  # float32: its shortest decimal, as the CSV text
            "huge": pa.array([2**64 - 1, 0], pa.uint64()),
            "tag": pa.array([7, None], pa.int32()),  # an integer into a text column
        }
    )
    source = _partition(lake, P1, data, key=["shop", "typed"])
    result = target.replace_partition(pg_schema, "typed", source, P1, "run-1")
    assert (result.rows, result.rows_replaced) == (2, 0)
    with psycopg.connect(postgres_url) as conn:
        got = conn.execute(
            sql.SQL(
                "SELECT id, code, doc, amount, price, ratio, huge, tag, _etl_partition, _etl_run_id FROM {} ORDER BY id"
            ).format(sql.Identifier(pg_schema, "typed"))
        ).fetchall()
    assert got == [
        (1, "abc", {"a": [1, 2]}, Decimal("1.23"), Decimal("1.3"), 0.1, Decimal(2**64 - 1), "7", P1, "run-1"),
        (2, "xy", None, Decimal("-0.50"), Decimal("2.4"), 2.5, Decimal(0), None, P1, "run-1"),
    ]

    # a value the column cannot hold fails the load, which leaves the partition's previous rows
    too_long = data.set_column(1, "code", pa.array(["abcd", "x"]))
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        target.replace_partition(pg_schema, "typed", _partition(lake, P1, too_long, key=["shop", "typed"]), P1, "run-2")
    assert _rows(postgres_url, pg_schema, "typed", ["id", "code", RUN_COLUMN]) == [
        (1, "abc", "run-1"),
        (2, "xy", "run-1"),
    ]


def test_the_staged_load_gives_the_same_rows(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    """The staging-table path (a COPY into a temporary table, then INSERT ... SELECT: the loads that need a cast,
    and the benchmark's variant) leaves what the direct COPY leaves."""
    for table, data in (("order_items", _rich_table()), ("edges", _edge_table())):
        source = _partition(lake, P1, data, key=["shop", table])
        direct = target.replace_partition(pg_schema, table, source, P1, "run-1")
        before = _rows(postgres_url, pg_schema, table, [*data.column_names, PARTITION_COLUMN, RUN_COLUMN])
        staged = target._replace(pg_schema, table, source, P1, "run-1", staged=True)
        assert (staged.rows, staged.rows_replaced) == (direct.rows, direct.rows)
        assert _rows(postgres_url, pg_schema, table, [*data.column_names, PARTITION_COLUMN, RUN_COLUMN]) == before


def test_an_empty_partition_empties_the_partition(
    lake: LakeStorage, target: PostgresTarget, postgres_url: str, pg_schema: str
) -> None:
    data = _rich_table()
    target.replace_partition(pg_schema, "order_items", _partition(lake, P1, data), P1, "run-1")
    result = target.replace_partition(pg_schema, "order_items", _partition(lake, P1, data.slice(0, 0)), P1, "run-2")
    assert (result.rows, result.rows_replaced) == (0, len(TEXTS))
    assert _rows(postgres_url, pg_schema, "order_items", ["item_id"]) == []
