"""Strict casts and the rules that keep a value from being silently altered on its way to a target.

Protects ``etl_assets/pipelines/validation.py`` (``typed_value``, ``contract_rules``, ``flagged_sql``,
``clean_select``, ``quarantine_sql``, ``check_column_names``) and their use in ``steps.validate.validate_batch``:

* every leniency of DuckDB's TRY_CAST (hex/binary/underscore integers, spaces, rounding into DECIMAL or an integer,
  dates with times, ``epoch``/``infinity``, year 0, hour 24, a 7th fractional digit, zone names, overflow to
  infinity, ...) is either an exact value or quarantined as ``type:<col>``, run through the real validation SQL
  (the batch statements, the flagged rows and the clean view's SELECT list) in DuckDB, text and typed (Parquet)
  alike; where a value is accepted, the clean view's plain cast equals the checked one;
* a row the files source could not parse (``_etl_read_error``) is quarantined as ``malformed_row`` only;
* raw column names no SQL can take fail the run at once as a contract error, not a retried bug;
* end to end: a files pipeline into the DuckDB warehouse (rows conserved, values exact), a NUL in text quarantined
  as ``storable:<col>`` for a pipeline with the real Postgres target (the other rows load), and records outside
  their partition's window quarantined as ``out_of_window`` from a real SQLite source.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckSeverity, DagsterEventType, DailyPartitionsDefinition, Definitions
from psycopg import sql

from etl_assets.cli import QUIET
from etl_assets.errors import ContractError
from etl_assets.keys import SOURCE_COLUMN, Pipeline, dagster_name, pipeline_job_name, pipeline_ref, revalidate_job_name
from etl_assets.lake import LakeStorage
from etl_assets.pipelines import validation
from etl_assets.pipelines.spec import Column
from etl_assets.pipelines.steps.load import QUARANTINE_SCHEMA
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

UTC = UTC
Q = "quarantined"  # the expected outcome of a value that must not land: type:<col>

# ----------------------------------------------------------------------------------------------------------------
# The validation SQL over a hand-made raw partition


class Validated:
    """What the batch statements made of a raw partition: the flagged rows' reasons, the clean rows (through the
    clean view's SELECT list) and the quarantine rows (``quarantine_sql``)."""

    def __init__(
        self,
        errors: dict[int, list[str]],
        warnings: dict[int, list[str]],
        clean: dict[int, dict],
        quarantine: list[dict],
        clean_columns: list[str],
        rules: list[validation.Rule],
    ):
        self.errors, self.warnings, self.clean, self.quarantine = errors, warnings, clean, quarantine
        self.clean_columns, self.rules = clean_columns, rules


def run_validation(
    tmp_path: Path,
    columns: list[Column],
    table: pa.Table,
    *,
    primary_key: list[str] | None = None,
    targets: tuple[str, ...] = (),
    window: validation.PartitionWindow | None = None,
) -> Validated:
    """Validate ``table`` (a raw partition; ``_etl_source`` is added unless present) the way ``_validate`` does:
    from a Parquet file, with ``__etl_row`` its file position, the rules, the batch statements, then the clean view's
    SELECT list minus the quarantined positions, and the quarantine's SELECT."""
    if SOURCE_COLUMN not in table.column_names:
        table = table.append_column(SOURCE_COLUMN, pa.array(["input.parquet"] * table.num_rows, pa.string()))
    path = tmp_path / f"raw_{uuid.uuid4().hex}.parquet"
    pq.write_table(table, path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        rel = con.read_parquet(str(path))
        raw_columns = rel.columns
        raw_types = dict(zip(raw_columns, map(str, rel.types)))
        validation.check_column_names("t", raw_columns)
        con.register(
            "raw",
            con.sql(
                f"SELECT *, file_row_number AS {validation.ROW_COLUMN}"
                f" FROM read_parquet('{path}', file_row_number = true)"
            ),
        )
        primary_key = primary_key or []
        rules, params = validation.contract_rules(
            columns, primary_key, raw_columns, False, targets=targets, raw_types=raw_types, window=window
        )
        for _, statement in validation.batch_statements(columns, primary_key, rules, raw_columns, raw_types):
            con.execute(statement, validation.params_for(statement, params))
        flagged = con.sql(
            f"SELECT {validation.ROW_COLUMN}, {validation.ERRORS_COLUMN}, {validation.WARNINGS_COLUMN}"
            f" FROM {validation.FLAGGED}"
        ).fetchall()
        errors = {row: list(e) for row, e, _ in flagged if e}
        warnings = {row: list(w) for row, _, w in flagged if w}
        select = validation.clean_select(columns, raw_columns, raw_types)
        clean_rel = con.sql(
            f"SELECT {validation.ROW_COLUMN}, {select} FROM raw WHERE {validation.ROW_COLUMN}"
            f" NOT IN ({validation.quarantined_positions_sql()})"
        )
        clean = {r[0]: dict(zip(clean_rel.columns[1:], r[1:])) for r in clean_rel.fetchall()}
        q_rel = con.sql(validation.quarantine_sql(raw_columns), params={"run_id": "run", "partition": "p"})
        quarantine = [dict(zip(q_rel.columns, r)) for r in q_rel.fetchall()]
        return Validated(errors, warnings, clean, quarantine, clean_rel.columns[1:], rules)
    finally:
        con.close()


def assert_exact(got: object, expected: object) -> None:
    """``got`` is ``expected``: the same type and value (a Decimal with the same scale, a timestamp in UTC)."""
    assert type(got) is type(expected), f"{got!r} is not a {type(expected).__name__} like {expected!r}"
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(got, float) and math.isnan(got)
    elif isinstance(expected, Decimal):
        assert isinstance(got, Decimal)
        assert got == expected and got.as_tuple().exponent == expected.as_tuple().exponent, (got, expected)
    elif isinstance(expected, float):
        assert isinstance(got, float)
        assert got == expected and math.copysign(1, got) == math.copysign(1, expected), (got, expected)
    elif isinstance(expected, datetime):
        assert isinstance(got, datetime)
        assert got == expected and (got.utcoffset() is None) == (expected.utcoffset() is None), (got, expected)
        if got.utcoffset() is not None:
            assert got.utcoffset() == timedelta(0), f"{got!r} is not in UTC"
    else:
        assert got == expected, (got, expected)


def _ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ----------------------------------------------------------------------------------------------------------------
# Text values: (contract type, text as delivered, exact value or Q)

TEXT_CASES = [
    # integers: sign and digits, a fraction of zeros; nothing DuckDB would reinterpret
    ("BIGINT", "16", 16),
    ("BIGINT", "-5", -5),
    ("BIGINT", "+5", 5),
    ("BIGINT", "-0", 0),
    ("BIGINT", "007", 7),
    ("BIGINT", "1.0", 1),
    ("BIGINT", "1.00", 1),
    ("BIGINT", "1.", 1),
    ("BIGINT", "0x10", Q),
    ("BIGINT", "0X1f", Q),
    ("BIGINT", "0b101", Q),
    ("BIGINT", "1_000", Q),
    ("BIGINT", " 5", Q),
    ("BIGINT", "5 ", Q),
    ("BIGINT", "\t5\n", Q),
    ("BIGINT", "1.5", Q),
    ("BIGINT", "2.5", Q),
    ("BIGINT", ".5", Q),
    ("BIGINT", "1e3", Q),
    ("BIGINT", "1E2", Q),
    ("BIGINT", "1,000", Q),
    ("BIGINT", "inf", Q),
    ("BIGINT", "true", Q),
    ("BIGINT", "\uff11\uff12", Q),
    ("BIGINT", "\u0663", Q),
    ("BIGINT", "0o17", Q),
    ("BIGINT", "9223372036854775807", 9223372036854775807),
    ("BIGINT", "-9223372036854775808", -9223372036854775808),
    ("BIGINT", "9223372036854775808", Q),
    ("BIGINT", "9223372036854775807.5", Q),
    ("INTEGER", "2147483647", 2147483647),
    ("INTEGER", "2147483648", Q),
    ("INTEGER", "1e3", Q),
    ("SMALLINT", "32767", 32767),
    ("SMALLINT", "32768", Q),
    ("SMALLINT", "0x7fff", Q),
    ("SMALLINT", "1_0", Q),
    # DECIMAL(12,2): at most two fractional digits besides trailing zeros; exponent notation when exact
    ("DECIMAL(12,2)", "1.50", Decimal("1.50")),
    ("DECIMAL(12,2)", "1.5", Decimal("1.50")),
    ("DECIMAL(12,2)", "1.500", Decimal("1.50")),
    ("DECIMAL(12,2)", ".5", Decimal("0.50")),
    ("DECIMAL(12,2)", "5.", Decimal("5.00")),
    ("DECIMAL(12,2)", "+1.5", Decimal("1.50")),
    ("DECIMAL(12,2)", "-0.50", Decimal("-0.50")),
    ("DECIMAL(12,2)", "12", Decimal("12.00")),
    ("DECIMAL(12,2)", "1e2", Decimal("100.00")),
    ("DECIMAL(12,2)", "1E+5", Decimal("100000.00")),
    ("DECIMAL(12,2)", "125e-2", Decimal("1.25")),
    ("DECIMAL(12,2)", "1.255e1", Decimal("12.55")),
    ("DECIMAL(12,2)", "-1.25E+1", Decimal("-12.50")),
    ("DECIMAL(12,2)", "100e-2", Decimal("1.00")),
    ("DECIMAL(12,2)", "9999999999.99", Decimal("9999999999.99")),
    ("DECIMAL(12,2)", "1.005", Q),
    ("DECIMAL(12,2)", "1.004", Q),
    ("DECIMAL(12,2)", "1.0050", Q),
    ("DECIMAL(12,2)", "0.001", Q),
    ("DECIMAL(12,2)", "1.23456789", Q),
    ("DECIMAL(12,2)", "1.2555e1", Q),
    ("DECIMAL(12,2)", "1E-7", Q),
    ("DECIMAL(12,2)", "1_000.5", Q),
    ("DECIMAL(12,2)", " 1.5", Q),
    ("DECIMAL(12,2)", "0x10", Q),
    ("DECIMAL(12,2)", "nan", Q),
    ("DECIMAL(12,2)", "inf", Q),
    ("DECIMAL(12,2)", "1,5", Q),
    ("DECIMAL(12,2)", "9999999999.995", Q),
    ("DECIMAL(12,2)", "10000000000", Q),
    ("DECIMAL(12,2)", "1e20", Q),
    ("DECIMAL(38,10)", "1E-7", Decimal("0.0000001000")),
    ("DECIMAL(38,10)", "1E-11", Q),
    ("DECIMAL(38,10)", "0.12345678901234567891", Q),
    ("DECIMAL(5,0)", "12", Decimal("12")),
    ("DECIMAL(5,0)", "12.0", Decimal("12")),
    ("DECIMAL(5,0)", "12.5", Q),
    # DOUBLE/REAL: the nearest value of the type; not a finite text turned infinite, nor a non-zero one zero
    ("DOUBLE", "1.5", 1.5),
    ("DOUBLE", "0.1", 0.1),
    ("DOUBLE", "1e3", 1000.0),
    ("DOUBLE", ".5", 0.5),
    ("DOUBLE", "5.", 5.0),
    ("DOUBLE", "-0", -0.0),
    ("DOUBLE", "+2.5E-3", 0.0025),
    ("DOUBLE", "0e10", 0.0),
    ("DOUBLE", "4.9e-324", 5e-324),
    ("DOUBLE", "1.7976931348623157e308", 1.7976931348623157e308),
    ("DOUBLE", "inf", math.inf),
    ("DOUBLE", "-Infinity", -math.inf),
    ("DOUBLE", "NaN", math.nan),
    ("DOUBLE", "1_000", Q),
    ("DOUBLE", "0x10", Q),
    ("DOUBLE", " 1.5", Q),
    ("DOUBLE", "1.5 ", Q),
    ("DOUBLE", "1e400", Q),
    ("DOUBLE", "-1e400", Q),
    ("DOUBLE", "1e-400", Q),
    ("DOUBLE", "1,5", Q),
    ("DOUBLE", "1d", Q),
    ("DOUBLE", "0b1", Q),
    ("DOUBLE", "-nan", Q),
    ("REAL", "0.5", 0.5),
    ("REAL", "16777217", 16777216.0),
    ("REAL", "3.5e38", Q),
    ("REAL", "1e-50", Q),
    # DATE: YYYY-MM-DD, years 0001 to 9999
    ("DATE", "2024-01-05", date(2024, 1, 5)),
    ("DATE", "2024-02-29", date(2024, 2, 29)),
    ("DATE", "0001-01-01", date(1, 1, 1)),
    ("DATE", "9999-12-31", date(9999, 12, 31)),
    ("DATE", "0024-01-05", date(24, 1, 5)),
    ("DATE", "2024-01-05 13:00", Q),
    ("DATE", "2024-01-05T00:00:00", Q),
    ("DATE", "2024-01-05 00:00:00", Q),
    ("DATE", "epoch", Q),
    ("DATE", "infinity", Q),
    ("DATE", "-infinity", Q),
    ("DATE", "today", Q),
    ("DATE", "0000-01-01", Q),
    ("DATE", "10000-01-01", Q),
    ("DATE", "24-01-05", Q),
    ("DATE", "2024-1-5", Q),
    ("DATE", "2024-01-5", Q),
    ("DATE", "2024/01/05", Q),
    ("DATE", "20240105", Q),
    ("DATE", " 2024-01-05", Q),
    ("DATE", "2024-02-30", Q),
    ("DATE", "2023-02-29", Q),
    ("DATE", "2024-01-05 (BC)", Q),
    ("DATE", "2024-01-05Z", Q),
    # TIMESTAMP (naive UTC): hours 00-23, up to 6 fractional digits, Z or a numeric offset (converted to UTC)
    ("TIMESTAMP", "2024-01-05 12:00:00", datetime(2024, 1, 5, 12)),
    ("TIMESTAMP", "2024-01-05T12:00:00", datetime(2024, 1, 5, 12)),
    ("TIMESTAMP", "2024-01-05 12:00", datetime(2024, 1, 5, 12)),
    ("TIMESTAMP", "2024-01-05 23:59:59.999999", datetime(2024, 1, 5, 23, 59, 59, 999999)),
    ("TIMESTAMP", "2024-01-05 12:00:00.123456", datetime(2024, 1, 5, 12, 0, 0, 123456)),
    ("TIMESTAMP", "2024-01-05 12:00:00.1234560", datetime(2024, 1, 5, 12, 0, 0, 123456)),
    ("TIMESTAMP", "2024-01-05 12:00:00.5", datetime(2024, 1, 5, 12, 0, 0, 500000)),
    ("TIMESTAMP", "2024-01-05T12:00:00Z", datetime(2024, 1, 5, 12)),
    ("TIMESTAMP", "2024-01-05T12:00:00+02:00", datetime(2024, 1, 5, 10)),
    ("TIMESTAMP", "2024-01-05T12:00:00+0530", datetime(2024, 1, 5, 6, 30)),
    ("TIMESTAMP", "2024-01-05T12:00:00-02", datetime(2024, 1, 5, 14)),
    ("TIMESTAMP", "2024-01-05 12:00:00+00", datetime(2024, 1, 5, 12)),  # DuckDB's own text of a TIMESTAMPTZ
    ("TIMESTAMP", "2024-01-05 24:00:00", Q),
    ("TIMESTAMP", "2024-01-05T24:00:00Z", Q),
    ("TIMESTAMP", "2024-01-05 23:59:60", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00.1234567", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00.1234565", Q),
    ("TIMESTAMP", "2024-01-05", Q),
    ("TIMESTAMP", "2024-01-05 12", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00 Europe/Paris", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00 EST", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00 UTC", Q),
    ("TIMESTAMP", "allballs", Q),
    ("TIMESTAMP", "epoch", Q),
    ("TIMESTAMP", "infinity", Q),
    ("TIMESTAMP", "-infinity", Q),
    ("TIMESTAMP", "now", Q),
    ("TIMESTAMP", "2024-01-05 1:2:3", Q),
    ("TIMESTAMP", "2024-1-5 12:00:00", Q),
    ("TIMESTAMP", "24-01-05 12:00:00", Q),
    ("TIMESTAMP", "0000-01-01 00:00:00", Q),
    ("TIMESTAMP", "0001-01-01 00:30:00+01:00", Q),
    ("TIMESTAMP", "9999-12-31 23:30:00-01:00", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00 BC", Q),
    ("TIMESTAMP", "2024-01-05 12:34:5.", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00+52", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00z", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00 +02:00", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00+02:00:30", Q),
    ("TIMESTAMP", " 2024-01-05 12:00:00", Q),
    ("TIMESTAMP", "2024-01-05  2:00:00", Q),
    ("TIMESTAMP", "2024-01-05 12:00:00.", Q),
    # TIMESTAMPTZ: the same forms; a value without a zone is UTC
    ("TIMESTAMPTZ", "2024-01-05T12:00:00Z", _ts(2024, 1, 5, 12)),
    ("TIMESTAMPTZ", "2024-01-05T12:00:00.123456Z", _ts(2024, 1, 5, 12, 0, 0, 123456)),
    ("TIMESTAMPTZ", "2024-01-05 12:00:00", _ts(2024, 1, 5, 12)),
    ("TIMESTAMPTZ", "2024-06-01T12:00:00-05:00", _ts(2024, 6, 1, 17)),
    ("TIMESTAMPTZ", "2024-01-05T12:00:00.5+05:30", _ts(2024, 1, 5, 6, 30, 0, 500000)),
    ("TIMESTAMPTZ", "2024-03-10 02:30:00", _ts(2024, 3, 10, 2, 30)),  # not in America/New_York, fine in UTC
    ("TIMESTAMPTZ", "2024-01-05 12:00:00 Europe/Paris", Q),
    ("TIMESTAMPTZ", "2024-03-31 02:30:00 Europe/Paris", Q),  # a DST gap a zone name would shift silently
    ("TIMESTAMPTZ", "2024-01-05 24:00:00", Q),
    ("TIMESTAMPTZ", "epoch", Q),
    ("TIMESTAMPTZ", "-infinity", Q),
    ("TIMESTAMPTZ", "2024-01-05T12:00:00.1234567Z", Q),
    ("TIMESTAMPTZ", "2024-01-05", Q),
    # BOOLEAN: DuckDB's words, nothing else
    ("BOOLEAN", "true", True),
    ("BOOLEAN", "FALSE", False),
    ("BOOLEAN", "t", True),
    ("BOOLEAN", "f", False),
    ("BOOLEAN", "yes", True),
    ("BOOLEAN", "no", False),
    ("BOOLEAN", "Y", True),
    ("BOOLEAN", "n", False),
    ("BOOLEAN", "1", True),
    ("BOOLEAN", "0", False),
    ("BOOLEAN", "2", Q),
    ("BOOLEAN", " true", Q),
    ("BOOLEAN", "on", Q),
    ("BOOLEAN", "1.0", Q),
    ("BOOLEAN", "truee", Q),
    # VARCHAR: as delivered (a DuckDB-only pipeline stores a NUL)
    ("VARCHAR", "  padded  ", "  padded  "),
    ("VARCHAR", "a\x00b", "a\x00b"),
    ("VARCHAR", "0x10", "0x10"),
]


def _case_id(case: tuple) -> str:
    type_name, text, expected = case
    return f"{type_name}-{text!r}-{'quarantined' if expected is Q else 'lands'}"


@pytest.mark.parametrize(("type_name", "text", "expected"), TEXT_CASES, ids=[_case_id(c) for c in TEXT_CASES])
def test_text_value_lands_exactly_or_is_quarantined(
    tmp_path: Path, type_name: str, text: str, expected: object
) -> None:
    columns = [Column(name="id", type="INTEGER", nullable=False), Column(name="v", type=type_name)]
    out = run_validation(tmp_path, columns, pa.table({"id": ["1"], "v": [text]}))
    if expected is Q:
        assert out.errors == {0: ["type:v"]} and out.clean == {}
        assert out.quarantine[0]["v"] == text and out.quarantine[0]["_etl_reasons"] == ["type:v"]
    else:
        assert out.errors == {}, out.errors
        assert_exact(out.clean[0]["v"], expected)


@pytest.mark.parametrize(("type_name", "text", "expected"), TEXT_CASES, ids=[_case_id(c) for c in TEXT_CASES])
def test_the_clean_views_plain_cast_equals_the_checked_value(type_name: str, text: str, expected: object) -> None:
    """The clean view types with the plain cast (no re-check): it must equal the checked value wherever that is not
    NULL, and the checked value is NULL exactly for the quarantined cases."""
    checked = validation.typed_value("x", type_name)
    plain = validation._cast("x", type_name)[0]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got_checked, got_plain = con.execute(
        f"SELECT {checked}, {plain} FROM (SELECT CAST(? AS VARCHAR) AS x)", [text]
    ).fetchall()[0]
    assert (got_checked is None) == (expected is Q)
    if got_checked is not None:
        assert_exact(got_plain, got_checked)


# ----------------------------------------------------------------------------------------------------------------
# Values that arrive typed (Parquet files, Postgres through ADBC): they must convert back to what arrived


def _micros(*args: int) -> int:
    return int((datetime(*args, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


TYPED_CASES = [
    # (id, Arrow array of one value, contract type, exact value or Q)
    ("double-1.005-into-decimal", pa.array([1.005]), "DECIMAL(12,2)", Q),
    ("double-1.5-into-decimal", pa.array([1.5]), "DECIMAL(12,2)", Decimal("1.50")),
    ("double-0.1-into-decimal", pa.array([0.1]), "DECIMAL(12,2)", Decimal("0.10")),
    ("double-nan-into-decimal", pa.array([math.nan]), "DECIMAL(12,2)", Q),
    ("double-inf-into-decimal", pa.array([math.inf]), "DECIMAL(12,2)", Q),
    ("decimal38-1.005-into-decimal12", pa.array([Decimal("1.0050000000")], pa.decimal128(38, 10)), "DECIMAL(12,2)", Q),
    (
        "decimal38-1.5-into-decimal12",
        pa.array([Decimal("1.5000000000")], pa.decimal128(38, 10)),
        "DECIMAL(12,2)",
        Decimal("1.50"),
    ),
    ("decimal-too-large-for-decimal", pa.array([Decimal("12345678901.00")], pa.decimal128(14, 2)), "DECIMAL(12,2)", Q),
    ("bigint-past-2^31-into-integer", pa.array([3_000_000_000], pa.int64()), "INTEGER", Q),
    ("bigint-min-int32-into-integer", pa.array([-(2**31)], pa.int64()), "INTEGER", -(2**31)),
    ("int32-past-int16-into-smallint", pa.array([40_000], pa.int32()), "SMALLINT", Q),
    ("uint64-max-into-bigint", pa.array([2**64 - 1], pa.uint64()), "BIGINT", Q),
    ("double-1.5-into-bigint", pa.array([1.5]), "BIGINT", Q),
    ("double-2.0-into-bigint", pa.array([2.0]), "BIGINT", 2),
    ("double-1e19-into-bigint", pa.array([1e19]), "BIGINT", Q),
    ("bigint-past-2^53-into-double", pa.array([9007199254740993], pa.int64()), "DOUBLE", 9007199254740992.0),
    ("double-1e300-into-real", pa.array([1e300]), "REAL", Q),
    ("double-1e-50-into-real", pa.array([1e-50]), "REAL", Q),
    ("float-1.5-into-real", pa.array([1.5], pa.float32()), "REAL", 1.5),
    ("bigint-2-into-boolean", pa.array([2], pa.int64()), "BOOLEAN", Q),
    ("bigint-1-into-boolean", pa.array([1], pa.int64()), "BOOLEAN", True),
    ("boolean-into-bigint", pa.array([True]), "BIGINT", Q),
    ("boolean-into-decimal", pa.array([True]), "DECIMAL(5,2)", Q),
    ("boolean-into-varchar", pa.array([True]), "VARCHAR", "true"),
    ("timestamp-with-time-into-date", pa.array([datetime(2024, 1, 5, 13)], pa.timestamp("us")), "DATE", Q),
    ("timestamp-midnight-into-date", pa.array([datetime(2024, 1, 5)], pa.timestamp("us")), "DATE", date(2024, 1, 5)),
    (
        "timestamptz-paris-midnight-into-date",
        pa.array([_micros(2024, 1, 4, 23)], pa.timestamp("us", tz="Europe/Paris")),
        "DATE",
        Q,
    ),  # midnight in Paris is 23:00 UTC: no UTC date
    (
        "timestamp-ns-into-timestamp",
        pa.array([_micros(2024, 1, 5, 13) * 1000 + 123_456_789], pa.timestamp("ns")),
        "TIMESTAMP",
        Q,
    ),
    (
        "timestamp-ns-whole-micros-into-timestamp",
        pa.array([_micros(2024, 1, 5, 13) * 1000 + 123_456_000], pa.timestamp("ns")),
        "TIMESTAMP",
        datetime(2024, 1, 5, 13, 0, 0, 123456),
    ),
    (
        "timestamptz-paris-into-timestamp",
        pa.array([_micros(2024, 1, 5, 12)], pa.timestamp("us", tz="Europe/Paris")),
        "TIMESTAMP",
        datetime(2024, 1, 5, 12),
    ),  # the instant, as naive UTC
    (
        "timestamp-into-timestamptz",
        pa.array([datetime(2024, 1, 5, 12)], pa.timestamp("us")),
        "TIMESTAMPTZ",
        _ts(2024, 1, 5, 12),
    ),
    ("date-into-timestamp", pa.array([date(2024, 1, 5)], pa.date32()), "TIMESTAMP", datetime(2024, 1, 5)),
    ("date-year-0-into-date", pa.array([-719_163 - 366], pa.int32()).cast(pa.date32()), "DATE", Q),
    ("date-0001-01-01-into-date", pa.array([-719_162], pa.int32()).cast(pa.date32()), "DATE", date(1, 1, 1)),
    (
        "timestamp-year-10000-into-timestamp",
        pa.array([253_402_300_800_000_000], pa.int64()).cast(pa.timestamp("us")),
        "TIMESTAMP",
        Q,
    ),
    ("date-into-bigint", pa.array([date(2024, 1, 5)], pa.date32()), "BIGINT", Q),
    ("double-into-varchar", pa.array([1.5]), "VARCHAR", "1.5"),
]


@pytest.mark.parametrize(
    ("arrived", "type_name", "expected"), [c[1:] for c in TYPED_CASES], ids=[c[0] for c in TYPED_CASES]
)
def test_typed_value_lands_exactly_or_is_quarantined(
    tmp_path: Path, arrived: pa.Array, type_name: str, expected: object
) -> None:
    columns = [Column(name="id", type="INTEGER", nullable=False), Column(name="v", type=type_name)]
    out = run_validation(tmp_path, columns, pa.table({"id": pa.array([1], pa.int32()), "v": arrived}))
    if expected is Q:
        assert out.errors == {0: ["type:v"]} and out.clean == {}
    else:
        assert out.errors == {}, out.errors
        assert_exact(out.clean[0]["v"], expected)


def test_a_column_of_nothing_but_nulls_is_null_not_a_type_error(tmp_path: Path) -> None:
    columns = [Column(name="id", type="INTEGER", nullable=False), Column(name="v", type="BIGINT")]
    out = run_validation(tmp_path, columns, pa.table({"id": pa.array([1, 2], pa.int32()), "v": pa.nulls(2)}))
    assert out.errors == {} and [r["v"] for r in out.clean.values()] == [None, None]


def test_a_key_written_two_ways_is_one_key(tmp_path: Path) -> None:
    """Strict typing decides the key: ``7`` and ``007`` are one key (the second row a duplicate), ``0x7`` is no key
    at all (a type error that takes no valid row's key)."""
    columns = [Column(name="id", type="BIGINT", nullable=False)]
    out = run_validation(tmp_path, columns, pa.table({"id": ["0x7", "7", "007"]}), primary_key=["id"])
    assert out.errors == {0: ["type:id"], 2: ["duplicate_key"]}
    assert [r["id"] for r in out.clean.values()] == [7]


# ----------------------------------------------------------------------------------------------------------------
# Rows the source could not parse; names no SQL can take


def test_a_malformed_row_breaks_malformed_row_only(tmp_path: Path) -> None:
    columns = [
        Column(name="id", type="INTEGER", nullable=False),
        Column(name="name", type="VARCHAR", nullable=False, accepted_values=["a", "c"]),
    ]
    error = "line 3: too many columns (Expected Number of Columns: 2 Found: 3): 2,b,extra"
    table = pa.table(
        {
            "id": ["1", None, "3"],
            "name": ["a", None, "c"],
            SOURCE_COLUMN: ["f.csv"] * 3,
            validation.READ_ERROR_COLUMN: [None, error, None],
        }
    )
    out = run_validation(tmp_path, columns, table, primary_key=["id"])
    assert out.errors == {1: ["malformed_row"]} and out.warnings == {}
    assert sorted(out.clean) == [0, 2] and validation.READ_ERROR_COLUMN not in out.clean_columns
    (row,) = out.quarantine
    assert row[validation.READ_ERROR_COLUMN] == error and row["_etl_reasons"] == ["malformed_row"]
    assert row["_etl_record"] is None and row[SOURCE_COLUMN] == "f.csv"  # its line is in the read error
    assert next(r for r in out.rules if r.name == "malformed_row").family == "valid_type"


def test_malformed_rows_through_the_pipeline(tmp_path: Path, data_dir: Path, instance) -> None:
    """A files pipeline's raw partition written directly (two malformed rows among good ones), re-validated and
    loaded by ``<domain>__<name>_revalidate``: the malformed rows are quarantined as ``malformed_row`` with their
    ``_etl_read_error`` (in the warehouse's quarantine too), the warehouse table has no such column, and
    ``schema_change`` does not count it."""
    defs = _defs(
        tmp_path,
        "parsed",
        [column("id", "INTEGER", nullable=False), column("name", nullable=False)],
        primary_key=["id"],
        quality={"threshold": 0},
    )
    errors = ["line 3: too few columns (...): 2", "line 5: invalid encoding (...): 4,caf\\xe9"]
    raw = pa.table(
        {
            "id": ["1", "3", None, None],
            "name": ["a", "c", None, None],
            SOURCE_COLUMN: ["f.csv"] * 4,
            validation.READ_ERROR_COLUMN: [None, None, *errors],
        }
    )
    LakeStorage(root=str(data_dir / "lake")).write(["corpus", "raw_parsed"], None, raw)
    result = defs.resolve_job_def(revalidate_job_name(Pipeline(CORPUS, "parsed"))).execute_in_process(
        instance=instance, run_config=QUIET
    )
    assert result.success
    checks = {
        c.check_name: c for c in result.get_asset_check_evaluations() if c.asset_key.path[-1].startswith("clean_")
    }
    assert checks["schema_change"].passed and checks["schema_change"].metadata["new_columns"].value == []
    # the two malformed rows were quarantined: the check fails as a WARN, the load goes on
    assert not checks["valid_type"].passed and checks["valid_type"].severity == AssetCheckSeverity.WARN
    assert checks["valid_type"].metadata["rows_quarantined"].value == 2
    by_rule = checks["valid_type"].metadata["by_rule"].value
    assert isinstance(by_rule, dict) and by_rule["malformed_row"] == 2
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.sql("SELECT * FROM corpus.parsed ORDER BY id")
        assert validation.READ_ERROR_COLUMN not in loaded.columns
        assert [r[:2] for r in loaded.fetchall()] == [(1, "a"), (3, "c")]
        quarantined = con.execute(
            f"SELECT _etl_read_error, _etl_reasons FROM {_quarantine('parsed')} ORDER BY 1"
        ).fetchall()
    assert quarantined == [(e, ["malformed_row"]) for e in errors]


@pytest.mark.parametrize(
    ("columns", "named"),
    [
        (["id", "bad col"], ["'bad col'"]),
        (["id", "1st"], ["'1st'"]),
        (["id", "x" * 64], ["'" + "x" * 64 + "'"]),
        (["id", "_etl_extra"], ["_etl_extra"]),
        (["id", "_ETL_Extra"], ["_ETL_Extra"]),
        (["id", "__etl_row"], ["__etl_row"]),
        (["id", "__typed_id"], ["__typed_id"]),
        (["id", "filename"], ["filename"]),
        (["id", "File_Row_Number"], ["File_Row_Number"]),
        (["id", "Id"], ["id and Id"]),
        (["id", "bad col", "Filename"], ["'bad col'", "Filename"]),
    ],
)
def test_column_names_no_sql_can_take_are_a_contract_error(columns: list[str], named: list[str]) -> None:
    with pytest.raises(ContractError) as raised:
        validation.check_column_names("items", [*columns, SOURCE_COLUMN])
    message = str(raised.value)
    assert message.startswith("items: the source delivered ") and "Rename these columns in the source" in message
    assert all(n in message for n in named), message


def test_the_platforms_own_columns_are_allowed() -> None:
    validation.check_column_names("items", ["id", "name_1", "_private", SOURCE_COLUMN, validation.READ_ERROR_COLUMN])


def test_a_bad_column_name_fails_the_run_without_retries(tmp_path: Path, data_dir: Path, instance) -> None:
    defs = _defs(
        tmp_path,
        "named",
        [column("id", "BIGINT", nullable=False)],
        source=files_source("parquet"),
        retry={"max_retries": 2, "delay_seconds": 0},
    )
    raw = pa.table({"id": [1, 2], "bad col": ["x", "y"], "_etl_batch": [1, 1], SOURCE_COLUMN: ["f.parquet"] * 2})
    LakeStorage(root=str(data_dir / "lake")).write(["corpus", "raw_named"], None, raw)
    result = defs.resolve_job_def(revalidate_job_name(Pipeline(CORPUS, "named"))).execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == [f"validate_{dagster_name(Pipeline(CORPUS, 'named'))}"]
    user_failure = failures[0].step_failure_data.user_failure_data
    assert user_failure is not None and user_failure.description is not None
    message = user_failure.description
    assert message.startswith(
        "data_quality error: corpus.named: the source delivered column name(s) 'bad col' are not SQL"
    )
    assert "_etl_batch" in message and "Rename these columns in the source" in message
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]


def test_a_bad_column_name_from_a_sql_source_fails_at_validation(tmp_path: Path, data_dir: Path, instance) -> None:
    """A real SQLite table with a column named ``bad col`` and one named ``_etl_batch``: the extract writes raw, and
    validation fails at once naming both (a data_quality error, not an SQL error from quoting the name)."""
    db = data_dir / "items.sqlite"
    with sqlite3.connect(db) as con:
        con.execute('CREATE TABLE items (id INTEGER, "bad col" TEXT, _etl_batch INTEGER)')
        con.execute("INSERT INTO items VALUES (1, 'x', 1)")
    defs = _defs(
        tmp_path,
        "items",
        [column("id", "BIGINT", nullable=False)],
        source={"kind": "sql", "connection": "items_db", "default_url": f"sqlite:///{db}", "table": "items"},
    )
    result = defs.resolve_job_def(pipeline_job_name(Pipeline(CORPUS, "items"))).execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == [f"validate_{dagster_name(Pipeline(CORPUS, 'items'))}"]
    user_failure = failures[0].step_failure_data.user_failure_data
    assert user_failure is not None and user_failure.description is not None
    message = user_failure.description
    assert (
        "'bad col'" in message and "_etl_batch" in message and message.startswith("data_quality error: corpus.items:")
    )


# ----------------------------------------------------------------------------------------------------------------
# Out of window and not storable, at the SQL level


def _window(partition: str, timezone_name: str = "UTC") -> tuple[datetime, datetime]:
    tw = DailyPartitionsDefinition(start_date="2024-01-01", timezone=timezone_name).time_window_for_partition_key(
        partition
    )
    return tw.start, tw.end


@pytest.mark.parametrize(
    ("type_name", "timezone_name", "values", "outside"),
    [
        # a naive TIMESTAMP is compared as UTC: the window [2024-01-02 00:00, 2024-01-03 00:00) UTC
        (
            "TIMESTAMP",
            "UTC",
            [
                "2024-01-02 00:00:00",
                "2024-01-02 23:59:59.999999",
                "2024-01-01 23:59:59.999999",
                "2024-01-03 00:00:00",
                "2024-01-02T00:30:00+01:00",
                None,
            ],
            [2, 3, 4],
        ),
        # TIMESTAMPTZ against a Paris day: [2024-01-01 23:00, 2024-01-02 23:00) UTC
        (
            "TIMESTAMPTZ",
            "Europe/Paris",
            [
                "2024-01-01T23:00:00Z",
                "2024-01-02T23:30:00+01:00",
                "2024-01-01T22:59:59Z",
                "2024-01-02 23:00:00",
                "2024-01-02T18:30:00-05:00",
                "2024-01-02T12:00:00-05:00",
            ],
            [2, 3, 4],
        ),
        # a DATE is compared as a date: the partition's local day
        ("DATE", "Europe/Paris", ["2024-01-02", "2024-01-01", "2024-01-03"], [1, 2]),
    ],
)
def test_records_outside_the_partitions_window_are_out_of_window(
    tmp_path: Path, type_name: str, timezone_name: str, values: list, outside: list[int]
) -> None:
    columns = [Column(name="id", type="INTEGER", nullable=False), Column(name="at", type=type_name)]
    start, end = _window("2024-01-02", timezone_name)
    out = run_validation(
        tmp_path,
        columns,
        pa.table({"id": [str(i) for i in range(len(values))], "at": values}),
        window=validation.PartitionWindow("at", start, end),
    )
    assert out.errors == {i: ["out_of_window"] for i in outside}
    assert next(r for r in out.rules if r.name == "out_of_window").family == "partition_window"


def test_a_nul_in_text_is_not_storable_for_postgres_only(tmp_path: Path) -> None:
    columns = [Column(name="id", type="INTEGER", nullable=False), Column(name="name", type="VARCHAR")]
    table = pa.table(
        {
            "id": ["1", "2", "3"],
            "name": ["a\x00b", "ok", "fine"],
            "note": ["x", "y\x00", None],
            "n": pa.array([1, 2, 3], pa.int64()),
        }
    )
    to_postgres = run_validation(tmp_path, columns, table, targets=("duckdb", "postgres"))
    assert to_postgres.errors == {0: ["storable:name"], 1: ["storable:note"]}
    assert [r.family for r in to_postgres.rules if r.name.startswith("storable:")] == ["valid_type", "valid_type"]
    only_duckdb = run_validation(tmp_path, columns, table, targets=("duckdb",))
    assert only_duckdb.errors == {} and only_duckdb.clean[0]["name"] == "a\x00b"


# ----------------------------------------------------------------------------------------------------------------
# End to end


CORPUS = "corpus"  # the domain of the end-to-end pipelines, unless a test gives another


def _defs(tmp_path: Path, name: str, columns: list[dict], *, domain: str = CORPUS, **fields) -> Definitions:
    """The definitions of the one pipeline ``name`` (a CSV files source unless ``source`` is given), never retried
    unless ``retry`` says otherwise."""
    fields.setdefault("retry", {"max_retries": 0})
    return definitions_for(tmp_path / "specs", pipeline(name, columns, domain=domain, **fields))


def _landing(data_dir: Path, name: str, domain: str = CORPUS) -> Path:
    """The landing folder of pipeline ``name``, created: ``landing/<domain>.<name>/``."""
    folder = data_dir / "landing" / pipeline_ref(Pipeline(domain, name))
    folder.mkdir(parents=True)
    return folder


def _quarantine(name: str, domain: str = CORPUS) -> str:
    """The warehouse's quarantine table of pipeline ``name``: ``quarantine.<domain>__<name>``."""
    return f"{QUARANTINE_SCHEMA}.{dagster_name(Pipeline(domain, name))}"


def _csv(header: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(c, "") for c in header])
    return buf.getvalue().encode("utf-8")


E2E_COLUMNS = {
    "i": "BIGINT",
    "d": "DECIMAL(12,2)",
    "f": "DOUBLE",
    "day": "DATE",
    "ts": "TIMESTAMP",
    "tz": "TIMESTAMPTZ",
    "b": "BOOLEAN",
}
E2E_VALID = {
    "i": "7",
    "d": "1.50",
    "f": "0.25",
    "day": "2024-01-05",
    "ts": "2024-01-05 12:00:00",
    "tz": "2024-01-05T12:00:00Z",
    "b": "true",
}
# (tag, the values that differ from E2E_VALID, the column that breaks, or the exact values that land)
E2E_ROWS = [
    (
        "valid",
        {},
        {
            "i": 7,
            "d": Decimal("1.50"),
            "f": 0.25,
            "day": date(2024, 1, 5),
            "ts": datetime(2024, 1, 5, 12),
            "tz": _ts(2024, 1, 5, 12),
            "b": True,
        },
    ),
    (
        "accepted_forms",
        {
            "i": "+007",
            "d": "2.5",
            "f": "1e3",
            "ts": "2024-01-05T14:00:00+02:00",
            "tz": "2024-01-05 12:00:00.000001",
            "b": "N",
        },
        {
            "i": 7,
            "d": Decimal("2.50"),
            "f": 1000.0,
            "ts": datetime(2024, 1, 5, 12),
            "tz": _ts(2024, 1, 5, 12, 0, 0, 1),
            "b": False,
        },
    ),
    ("decimal_exponent", {"d": "1.25E+2"}, {"d": Decimal("125.00")}),
    ("hex_integer", {"i": "0x10"}, "i"),
    ("underscore_integer", {"i": "1_000"}, "i"),
    ("binary_integer", {"i": "0b101"}, "i"),
    ("decimal_rounding", {"d": "1.005"}, "d"),
    ("double_overflow", {"f": "1e400"}, "f"),
    ("date_with_time", {"day": "2024-01-05 13:00"}, "day"),
    ("date_epoch", {"day": "epoch"}, "day"),
    ("date_infinity", {"day": "infinity"}, "day"),
    ("date_year_0", {"day": "0000-01-01"}, "day"),
    ("timestamp_hour_24", {"ts": "2024-01-05 24:00:00"}, "ts"),
    ("timestamp_7_digits", {"ts": "2024-01-05 12:00:00.1234567"}, "ts"),
    ("timestamptz_zone_name", {"tz": "2024-01-05 12:00:00 Europe/Paris"}, "tz"),
    ("boolean_on", {"b": "on"}, "b"),
]


def test_files_pipeline_lands_exact_values_and_quarantines_the_rest(tmp_path: Path, data_dir: Path, instance) -> None:
    columns = [
        column("id", "INTEGER", nullable=False),
        column("tag", nullable=False),
        *(column(n, t) for n, t in E2E_COLUMNS.items()),
    ]
    defs = _defs(tmp_path, "strict", columns, quality={"threshold": 0}, primary_key=["id"])
    header = ["id", "tag", *E2E_COLUMNS]
    rows = [{"id": str(n), "tag": tag, **E2E_VALID, **values} for n, (tag, values, _) in enumerate(E2E_ROWS, 1)]
    landing = _landing(data_dir, "strict")
    (landing / "values.csv").write_bytes(_csv(header, rows))
    result = defs.resolve_job_def(pipeline_job_name(Pipeline(CORPUS, "strict"))).execute_in_process(
        instance=instance, run_config=QUIET
    )
    assert result.success
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        loaded_rel = con.sql("SELECT * FROM corpus.strict")
        loaded = {r["tag"]: r for r in (dict(zip(loaded_rel.columns, v)) for v in loaded_rel.fetchall())}
        quarantined = dict(con.execute(f"SELECT tag, _etl_reasons FROM {_quarantine('strict')}").fetchall())
    assert len(loaded) + len(quarantined) == len(rows)  # conserved: every row in is in one of the two
    conserved = next(c for c in result.get_asset_check_evaluations() if c.check_name == "rows_conserved")
    assert conserved.passed and conserved.metadata["rows_in"].value == len(rows)
    for tag, _, outcome in E2E_ROWS:
        if isinstance(outcome, str):
            assert quarantined.get(tag) == [f"type:{outcome}"], (tag, quarantined.get(tag))
            assert tag not in loaded
        else:
            assert tag in loaded, f"{tag} not loaded (quarantined: {quarantined.get(tag)})"
            for name, value in outcome.items():
                assert_exact(loaded[tag][name], value)


@pytest.mark.postgres
def test_nul_in_text_is_quarantined_for_the_postgres_target(
    tmp_path: Path, data_dir: Path, instance, monkeypatch, postgres_url: str, pg_schema: str
) -> None:
    """Postgres text cannot hold a NUL: such a row is quarantined as ``storable:<col>`` before any target (for a
    contract column and for a column beyond the contract alike), and the other rows load into both targets."""
    monkeypatch.setenv("ETL_POSTGRES_URL", postgres_url)
    defs = _defs(
        tmp_path,
        "notes",
        [column("id", "BIGINT", nullable=False), column("name")],
        domain=pg_schema,
        primary_key=["id"],
        quality={"threshold": 0},
        targets=["duckdb", "postgres"],
    )
    rows = [
        {"id": "1", "name": "plain", "note": "n1"},
        {"id": "2", "name": "a\x00b", "note": "n2"},
        {"id": "3", "name": "ctrl \x07\x1b ok", "note": "x\x00"},
        {"id": "4", "name": "", "note": ""},
    ]
    landing = _landing(data_dir, "notes", pg_schema)
    (landing / "notes.csv").write_bytes(_csv(["id", "name", "note"], rows))
    result = defs.resolve_job_def(pipeline_job_name(Pipeline(pg_schema, "notes"))).execute_in_process(
        instance=instance, run_config=QUIET
    )
    assert result.success
    with psycopg.connect(postgres_url) as conn:
        in_postgres = conn.execute(
            sql.SQL("SELECT id, name, note FROM {}.notes ORDER BY id").format(sql.Identifier(pg_schema))
        ).fetchall()
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        in_duckdb = con.execute(f'SELECT id, name, note FROM "{pg_schema}".notes ORDER BY id').fetchall()
        quarantined = con.execute(
            f"SELECT id, name, note, _etl_reasons FROM {_quarantine('notes', pg_schema)} ORDER BY id"
        ).fetchall()
    assert in_postgres == in_duckdb == [(1, "plain", "n1"), (4, None, None)]
    assert quarantined == [
        ("2", "a\x00b", "n2", ["storable:name"]),
        ("3", "ctrl \x07\x1b ok", "x\x00", ["storable:note"]),
    ]
    assert len(in_postgres) + len(quarantined) == len(rows)
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    # two rows quarantined: valid_type fails (as a WARN, it holds nothing) and the load still matches the lake
    assert (
        checks[(f"{pg_schema}/clean_notes", "valid_type")] is False
        and checks[(f"{pg_schema}/postgres_notes", "matches_lake")]
    )


@pytest.mark.slow
def test_records_outside_their_partition_from_a_sql_source(tmp_path: Path, data_dir: Path, instance) -> None:
    """A SQLite table extracted by its update time (``incremental_column``) and partitioned on the event time
    (``partitions.column``): rows updated on the day whose event lies outside it are ``out_of_window``; each
    partition of a range of runs gets its own window."""
    db = data_dir / "events.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE events (event_id INTEGER, happened_at TEXT, updated_at TEXT)")
        con.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [
                (1, "2024-01-02 00:00:00", "2024-01-02 10:00:00"),  # first instant: in
                (2, "2024-01-02 23:59:59.999999", "2024-01-02 10:00:00"),  # last instant: in
                (3, "2024-01-01 23:59:59", "2024-01-02 10:00:00"),  # the day before
                (4, "2024-01-03 00:00:00", "2024-01-02 10:00:00"),  # the end is not in the window
                (5, "2024-01-02T00:30:00+01:00", "2024-01-02 10:00:00"),  # 2024-01-01 23:30 UTC
                (6, "2024-01-03 08:00:00", "2024-01-03 09:00:00"),  # the next day's, in its own partition
                (7, "2024-01-02 08:00:00", "2024-01-03 09:00:00"),  # updated on the 3rd, happened on the 2nd
            ],
        )
    columns = [
        column("event_id", "BIGINT", nullable=False),
        column("happened_at", "TIMESTAMP", nullable=False),
        column("updated_at", "TIMESTAMP", nullable=False),
    ]
    defs = _defs(
        tmp_path,
        "events",
        columns,
        source={
            "kind": "sql",
            "connection": "events_db",
            "default_url": f"sqlite:///{db}",
            "table": "events",
            "incremental_column": "updated_at",
        },
        partitions={"type": "daily", "start": "2024-01-01", "column": "happened_at"},
        primary_key=["event_id"],
        quality={"threshold": 0},
    )
    reasons, loaded = {}, {}
    for partition in ("2024-01-02", "2024-01-03"):
        result = defs.resolve_job_def(pipeline_job_name(Pipeline(CORPUS, "events"))).execute_in_process(
            instance=instance, partition_key=partition, run_config=QUIET
        )
        assert result.success
        check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "partition_window")
        assert not check.passed and check.severity == AssetCheckSeverity.WARN and check.partition == partition
        assert check.metadata["by_rule"].value == {"out_of_window": {"2024-01-02": 3, "2024-01-03": 1}[partition]}
        with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
            reasons[partition] = dict(
                con.execute(
                    f"SELECT CAST(event_id AS BIGINT), _etl_reasons FROM {_quarantine('events')}"
                    " WHERE _etl_partition = ?",
                    [partition],
                ).fetchall()
            )
            loaded[partition] = [
                r[0]
                for r in con.execute(
                    "SELECT event_id FROM corpus.events WHERE _etl_partition = ? ORDER BY 1", [partition]
                ).fetchall()
            ]
    assert reasons == {
        "2024-01-02": {3: ["out_of_window"], 4: ["out_of_window"], 5: ["out_of_window"]},
        "2024-01-03": {7: ["out_of_window"]},
    }
    assert loaded == {"2024-01-02": [1, 2], "2024-01-03": [6]}
