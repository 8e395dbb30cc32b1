"""Row-level contract validation as DuckDB SQL.

Pure functions building SQL text from a validated spec. Identifiers are quoted; values from the spec (accepted
values, bounds, patterns) are bind parameters, returned next to the SQL.

A batch is validated in a few streaming passes over the raw partition (registered as ``raw``, with each row's
position in its file as ``__etl_row``), none of which writes or sorts the whole batch (``batch_statements``):

1. ``duplicate_keys_sql``: key tuples that occur more than once (a narrow GROUP BY; a small result);
2. ``flagged_sql``: the rows breaking any rule, with the names of the rules (a small table when most rows are good),
   then ``first_duplicate_wins_sql``: of the rows sharing a key, the first keeps it;
3. the outputs: the clean data is stored as a lake view, ``clean_select`` over the raw file minus
   ``quarantined_positions_sql`` (typed when read, with the cast the rules accepted: see ``typed_value``);
   ``quarantine_sql``: the flagged rows with an ERROR rule, as delivered.

``errors_not_excluded`` then checks the view as written. The loads re-check the rows they insert: the value rules
as a guard of the INSERT itself (``load_guard``; ``value_violations`` names the rules when it trips), and key
uniqueness with ``loaded_duplicate_keys``, before they commit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from etl_assets.errors import ContractError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.pipelines.spec import Column, PipelineSpec
from etl_assets.sqlutil import is_identifier, is_reserved_column, quote_ident, quote_literal

ERRORS_COLUMN = "_etl_errors"
WARNINGS_COLUMN = "_etl_warnings"
_TYPED_PREFIX = "__typed_"
OTHER_BATCHES = "__other_batches"
ROW_COLUMN = "__etl_row"  # a raw row's position in its Parquet file (DuckDB's file_row_number)
DUPLICATE_KEYS = "__etl_duplicate_keys"  # key tuples occurring more than once in the batch (NULLs included)
FLAGGED = "__etl_flagged"  # rows breaking any rule: values as delivered, position, rule lists
DUPLICATE_KEY = "duplicate_key"
# A row the files source could not parse (CSV: too few/many fields, invalid UTF-8) has this column set (line number,
# reason and the line as delivered) and every other column NULL; NULL for every row read fine.
READ_ERROR_COLUMN = "_etl_read_error"
MALFORMED_ROW = "malformed_row"
OUT_OF_WINDOW = "out_of_window"
# The platform's own columns a raw partition may carry; any other _etl_* column is refused (check_column_names).
PLATFORM_COLUMNS = (SOURCE_COLUMN, READ_ERROR_COLUMN)

# Check families generated from the contract, in a stable order.
FAMILIES = (
    "valid_type",
    "not_null",
    "unique",
    "accepted_values",
    "range",
    "format",
    "relationship",
    "partition_window",
)


def reference_view(dataset: str) -> str:
    """Name of the view holding a referenced dataset's keys during validation (``dataset`` as the column's
    ``references`` writes it): ``__ref_<name>`` for a name (which the spec keeps short enough), and for a
    ``<domain>.<name>``, which may be longer than an identifier, ``__ref_`` and a digest of it."""
    if "." not in dataset:
        return f"__ref_{dataset}"
    return "__ref_" + hashlib.sha256(dataset.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Rule:
    """One row-level rule: ``expr`` is TRUE when a row breaks it."""

    name: str
    family: str
    severity: str
    expr: str


def _typed(name: str) -> str:
    return quote_ident(_TYPED_PREFIX + name)


def check_column_names(dataset: str, raw_columns: list[str]) -> None:
    """Fail when a delivered column cannot be used as one: a name that is not an SQL identifier (``bad col``), one of
    the platform's own names (``_etl_*`` other than ``_etl_source`` and ``_etl_read_error``, ``__etl*``,
    ``__typed_*``, ``filename``, ``file_row_number``), or two names that differ only in case (DuckDB folds case).

    Raises:
        ContractError: naming the columns and the fix; nothing has been validated or written.
    """
    problems = []
    bad = [c for c in raw_columns if not is_identifier(c)]
    if bad:
        problems.append(
            f"column name(s) {', '.join(repr(c) for c in bad)} are not SQL identifiers (letters, digits "
            "and underscores, not starting with a digit, at most 63 characters)"
        )
    reserved = [c for c in raw_columns if c not in PLATFORM_COLUMNS and is_identifier(c) and is_reserved_column(c)]
    if reserved:
        problems.append(
            f"column name(s) {', '.join(reserved)} are the platform's own (_etl_*, __etl*, __typed_*, "
            "filename, file_row_number)"
        )
    folded: dict[str, list[str]] = {}
    for c in raw_columns:
        folded.setdefault(c.lower(), []).append(c)
    clashes = [" and ".join(names) for names in folded.values() if len(names) > 1]
    if clashes:
        problems.append(f"column names {'; '.join(clashes)} differ only in case, which SQL does not tell apart")
    if problems:
        raise ContractError(
            f"{dataset}: the source delivered "
            + "; ".join(problems)
            + ". Rename these columns in the source (or its query) and run again"
        )


def check_required_columns(dataset: str, columns: list[Column], raw_columns: list[str]) -> None:
    """Fail when a non-nullable contract column is missing from the delivered data.

    Raises:
        ContractError: naming the missing columns; nothing has been written.
    """
    missing = [c.name for c in columns if not c.nullable and c.name not in raw_columns]
    if missing:
        raise ContractError(
            f"{dataset}: required column(s) {', '.join(missing)} missing from the source data "
            f"(it has {', '.join(raw_columns)}); fix the source or mark them nullable in the spec"
        )


def check_castable_types(dataset: str, columns: list[Column], raw_types: dict[str, str]) -> None:
    """Fail when a contract column arrives as a nested value (a list, struct or map) that no scalar cast can take.

    JSON counts as nested: the files source keeps a column as JSON only when it holds objects or arrays.

    Raises:
        ContractError: naming the column and the type that arrived.
    """
    for column in columns:
        arrived = raw_types.get(column.name)
        if arrived is not None and arrived.upper() == "JSON":
            raise ContractError(
                f"{dataset}: column {column.name} arrived as JSON holding objects or arrays (nested values), which "
                f"cannot be cast to {column.type}; fix the source or the contract"
            )
        if arrived is not None and any(marker in arrived.upper() for marker in ("STRUCT", "MAP(", "[]", "UNION")):
            raise ContractError(
                f"{dataset}: column {column.name} arrived as {arrived}, which cannot be cast to {column.type}; "
                "fix the source or the contract"
            )


@dataclass(frozen=True)
class PartitionWindow:
    """The time window of the partition being validated: a record whose ``column`` lies outside ``[start, end)``
    breaks ``out_of_window``. ``start``/``end`` are tz-aware (Dagster's ``time_window_for_partition_key``); None
    when only the rule's existence matters (the checks declared for a spec)."""

    column: str
    start: datetime | None = None
    end: datetime | None = None


_WINDOW_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMPTZ")


def partition_window_column(spec: PipelineSpec) -> str | None:
    """The column whose value must lie in its partition's window (``out_of_window``), or None.

    That is ``partitions.column`` of a time-partitioned source pipeline, when it is a DATE, TIMESTAMP or TIMESTAMPTZ
    column: an api/sql source must name it (it decides which records a partition extracts); a files source is
    partitioned by file name and is held to it only when its spec sets ``partitions.column`` too.
    """
    p = spec.partitions
    if spec.source is None or p.type == "none" or p.column is None:
        return None
    column = next((c for c in spec.columns if c.name == p.column), None)
    return column.name if column is not None and column.type in _WINDOW_TYPES else None


def _window_bounds(window: PartitionWindow, type_name: str) -> tuple[object, object, str, str]:
    """The window's bounds as bind values for a column of ``type_name``, and the comparisons (``<`` or ``<=`` for
    the end): TIMESTAMPTZ as UTC instants, TIMESTAMP (naive, read as UTC) as naive UTC, DATE as the partition's
    local dates from the first to the last one the window touches."""
    start, end = window.start, window.end
    if start is None or end is None:
        return None, None, ">=", "<"
    if type_name == "DATE":
        return start.date(), (end - timedelta(microseconds=1)).date(), ">=", "<="
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if type_name == "TIMESTAMP":
        return start.replace(tzinfo=None), end.replace(tzinfo=None), ">=", "<"
    return start, end, ">=", "<"


def contract_rules(
    columns: list[Column],
    primary_key: list[str],
    raw_columns: list[str],
    check_other_batches: bool,
    *,
    targets: Sequence[str] = (),
    raw_types: dict[str, str] | None = None,
    window: PartitionWindow | None = None,
) -> tuple[list[Rule], dict[str, object]]:
    """The rules of a contract and their bind parameters.

    Args:
        columns: The contract.
        primary_key: Key columns; duplicates within the batch (the repeated keys in ``__etl_duplicate_keys``), and
            (``check_other_batches``) with rows already in other partitions (their keys in ``__other_batches``),
            break ``unique``.
        raw_columns: Columns that arrived.
        check_other_batches: Whether the ``__other_batches`` table exists.
        targets: The spec's targets. With ``postgres``, a text value holding a NUL character (which Postgres text
            cannot store) breaks ``storable:<col>``, for contract and extra columns alike.
        raw_types: The DuckDB types the columns arrived as (extra columns are checked for NUL only when text).
        window: The partition's time window: a record whose ``window.column`` lies outside it breaks
            ``out_of_window``.

    A row the source could not parse (``_etl_read_error`` set) breaks ``malformed_row`` and, by ``flagged_sql``,
    nothing else.
    """
    present = set(raw_columns)
    raw_types = raw_types or {}
    rules: list[Rule] = []
    params: dict[str, object] = {}

    def param(value: object) -> str:
        name = f"p{len(params)}"
        params[name] = value
        return f"${name}"

    if READ_ERROR_COLUMN in present:
        rules.append(Rule(MALFORMED_ROW, "valid_type", "ERROR", f"{quote_ident(READ_ERROR_COLUMN)} IS NOT NULL"))
    to_postgres = "postgres" in targets
    for column in columns:
        q, t = quote_ident(column.name), _typed(column.name)
        if column.name in present:
            rules.append(Rule(f"type:{column.name}", "valid_type", "ERROR", f"{q} IS NOT NULL AND {t} IS NULL"))
            if to_postgres and column.type == "VARCHAR":
                rules.append(Rule(f"storable:{column.name}", "valid_type", "ERROR", f"contains({t}, chr(0))"))
        if not column.nullable:
            source = q if column.name in present else "NULL"
            rules.append(Rule(f"not_null:{column.name}", "not_null", "ERROR", f"{source} IS NULL"))
        sev = column.severity
        if column.accepted_values is not None:
            values = [str(v) for v in column.accepted_values]
            rules.append(
                Rule(
                    f"accepted_values:{column.name}",
                    "accepted_values",
                    sev,
                    f"{t} IS NOT NULL AND NOT list_contains({param(values)}::VARCHAR[], CAST({t} AS VARCHAR))",
                )
            )
        if column.min is not None:
            rules.append(
                Rule(f"min:{column.name}", "range", sev, f"{t} < CAST({param(str(column.min))} AS {column.type})")
            )
        if column.max is not None:
            rules.append(
                Rule(f"max:{column.name}", "range", sev, f"{t} > CAST({param(str(column.max))} AS {column.type})")
            )
        if column.regex is not None:
            rules.append(
                Rule(
                    f"regex:{column.name}",
                    "format",
                    sev,
                    f"{t} IS NOT NULL AND NOT regexp_full_match(CAST({t} AS VARCHAR), {param(column.regex)})",
                )
            )
        if column.max_length is not None:
            rules.append(
                Rule(
                    f"max_length:{column.name}",
                    "format",
                    sev,
                    f"length(CAST({t} AS VARCHAR)) > {param(column.max_length)}",
                )
            )
        if column.references is not None:
            ref = quote_ident(reference_view(column.references.dataset))
            rules.append(
                Rule(
                    f"relationship:{column.name}",
                    "relationship",
                    sev,
                    f"{t} IS NOT NULL AND {t} NOT IN (SELECT {quote_ident(column.references.column)} FROM {ref})",
                )
            )
    if to_postgres:
        contract = {c.name for c in columns}
        for name in raw_columns:
            if (
                name not in contract
                and name not in (SOURCE_COLUMN, READ_ERROR_COLUMN)
                and raw_types.get(name, "VARCHAR").upper() == "VARCHAR"
            ):
                rules.append(Rule(f"storable:{name}", "valid_type", "ERROR", f"contains({quote_ident(name)}, chr(0))"))
    if window is not None:
        column = next(c for c in columns if c.name == window.column)
        low, high, ge, lt = _window_bounds(window, column.type)
        t = _typed(column.name)
        rules.append(
            Rule(
                OUT_OF_WINDOW,
                "partition_window",
                "ERROR",
                f"{t} IS NOT NULL AND NOT ({t} {ge} CAST({param(low)} AS {column.type})"
                f" AND {t} {lt} CAST({param(high)} AS {column.type}))",
            )
        )
    if primary_key:
        # every row whose key (without NULLs) occurs more than once; first_duplicate_wins_sql then clears the first
        match = " AND ".join(f"d.{_typed(k)} = typed.{_typed(k)}" for k in primary_key)
        rules.append(
            Rule(DUPLICATE_KEY, "unique", "ERROR", f"EXISTS (SELECT 1 FROM {DUPLICATE_KEYS} AS d WHERE {match})")
        )
        if check_other_batches:
            match = " AND ".join(f"o.{quote_ident(k)} = typed.{_typed(k)}" for k in primary_key)
            rules.append(
                Rule(
                    "duplicate_key_across_batches",
                    "unique",
                    "ERROR",
                    f"EXISTS (SELECT 1 FROM {OTHER_BATCHES} AS o WHERE {match})",
                )
            )
    return rules, params


def params_for(sql: str, params: dict[str, object]) -> dict[str, object] | None:
    """The subset of ``params`` that ``sql`` uses (DuckDB refuses unused named parameters)."""
    used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}
    return used or None


_INTEGER_TYPES = ("SMALLINT", "INTEGER", "BIGINT")
_FLOAT_TYPES = ("DOUBLE", "REAL")
_NUMERIC_TYPES = (*_INTEGER_TYPES, *_FLOAT_TYPES)
_TEMPORAL_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMPTZ")
# DuckDB's names of the types values arrive as, where they differ from the contract's
_RAW_ALIASES = {"FLOAT": "REAL", "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ", "INT": "INTEGER", "BOOL": "BOOLEAN"}
_RAW_NUMERIC = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "DOUBLE",
    "FLOAT",
)
_TEXT_RAW = ("VARCHAR",)

# The accepted text of each type (RE2, matched whole by regexp_full_match). Groups are non-capturing: RE2 answers a
# full match without submatches faster.
_INTEGER_TEXT = r"[+-]?[0-9]+(?:\.0*)?"
_DECIMAL_EXPONENT_TEXT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][+-]?[0-9]+"
_FLOAT_TEXT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_FLOAT_SPECIAL_TEXT = r"(?i)[+-]?inf(?:inity)?|nan"
_TIMESTAMP_TEXT = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6}0*)?)?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)?"
)
# Years 1 to 9999 (as ISO 8601 writes them), every target's range; DuckDB's year 0 is 1 BC.
_TEMPORAL_RANGE = {
    "DATE": ("DATE '0001-01-01'", "DATE '9999-12-31'"),
    "TIMESTAMP": ("TIMESTAMP '0001-01-01 00:00:00'", "TIMESTAMP '9999-12-31 23:59:59.999999'"),
    "TIMESTAMPTZ": ("TIMESTAMPTZ '0001-01-01 00:00:00+00'", "TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'"),
}


def _is_numeric(type_name: str) -> bool:
    return type_name in _NUMERIC_TYPES or type_name.startswith("DECIMAL")


def _matches(expr: str, pattern: str) -> str:
    return f"regexp_full_match({expr}, {quote_literal(pattern)})"


def _in_range(value: str, type_name: str) -> str:
    low, high = _TEMPORAL_RANGE[type_name]
    return f"{value} BETWEEN {low} AND {high}"


def _decimal_scale(type_name: str) -> int:
    return int(type_name[type_name.index(",") + 1 : -1])


def _decimal_text(scale: int) -> str:
    """Plain decimal notation with at most ``scale`` fractional digits (trailing zeros beyond them allowed)."""
    if scale == 0:
        return r"[+-]?(?:[0-9]+(?:\.0*)?|\.0+)"
    return rf"[+-]?(?:[0-9]+(?:\.[0-9]{{0,{scale}}}0*)?|\.[0-9]{{1,{scale}}}0*)"


def _exponent_exact(expr: str, scale: int) -> str:
    """TRUE when ``expr``, a number in exponent notation (``1.25E+2``), has at most ``scale`` fractional digits: its
    mantissa's digits D (trailing zeros z of them) times 10^(e - f), f the mantissa's fractional digits, need
    max(0, f - z - e) of them. Only the rows in exponent notation get here."""
    mantissa = f"regexp_extract({expr}, '^[+-]?([0-9.]*)', 1)"
    digits = f"replace({mantissa}, '.', '')"
    fraction = f"length(regexp_extract({mantissa}, '[.]([0-9]*)$', 1))"
    zeros = f"(length({digits}) - length(rtrim({digits}, '0')))"
    exponent = f"TRY_CAST(regexp_extract({expr}, '[eE]([+-]?[0-9]+)$', 1) AS BIGINT)"
    return f"(rtrim({digits}, '0') = '' OR {fraction} - {zeros} - {exponent} <= {scale})"


def _text_cast(x: str, type_name: str) -> tuple[str, str | None]:
    """(value, accepted) for text ``x``; see ``typed_value``."""
    if type_name == "VARCHAR":
        return x, None
    if type_name == "TIMESTAMP":  # a zoned value is converted to UTC (the session time zone), then the zone dropped
        value = f"TRY_CAST(TRY_CAST({x} AS TIMESTAMPTZ) AS TIMESTAMP)"
    else:
        value = f"TRY_CAST({x} AS {type_name})"
    if type_name in _INTEGER_TYPES:
        # the value's own text is the common case (one cheap comparison); the pattern decides the others
        return value, f"(CAST({value} AS VARCHAR) = {x} OR {_matches(x, _INTEGER_TEXT)})"
    if type_name.startswith("DECIMAL"):
        scale = _decimal_scale(type_name)
        return value, (
            f"(CAST({value} AS VARCHAR) = {x} OR {_matches(x, _decimal_text(scale))}"
            f" OR ({_matches(x, _DECIMAL_EXPONENT_TEXT)} AND {_exponent_exact(x, scale)}))"
        )
    if type_name in _FLOAT_TYPES:
        # the nearest value of the type, as IEEE 754 rounds; refused: a finite text overflowing to infinity, or a
        # non-zero one underflowing to zero
        finite = (
            f"({_matches(x, _FLOAT_TEXT)} AND NOT isinf({value})"
            f" AND NOT ({value} = 0 AND regexp_matches({x}, '^[^eE]*[1-9]')))"
        )
        return value, f"({finite} OR {_matches(x, _FLOAT_SPECIAL_TEXT)})"
    if type_name == "DATE":
        # a date's own text is exactly the accepted form, YYYY-MM-DD
        return value, f"(CAST({value} AS VARCHAR) = {x} AND {_in_range(value, 'DATE')})"
    if type_name in ("TIMESTAMP", "TIMESTAMPTZ"):
        return value, f"({_matches(x, _TIMESTAMP_TEXT)} AND {_in_range(value, type_name)})"
    return value, None  # BOOLEAN: DuckDB's own words (true/false, t/f, yes/no, y/n, 1/0, any case) are the form


def _typed_cast(x: str, type_name: str, raw: str) -> tuple[str, str | None]:
    """(value, accepted) for ``x`` arriving typed as ``raw`` (not text); see ``typed_value``."""
    same = _RAW_ALIASES.get(raw, raw)
    if raw == '"NULL"':  # a column of nothing but NULLs
        return f"CAST(NULL AS {type_name})", None
    if same == type_name:
        return x, (_in_range(x, type_name) if type_name in _TEMPORAL_TYPES else None)
    if type_name == "VARCHAR":
        return f"CAST({x} AS VARCHAR)", None
    if raw == "BOOLEAN" and _is_numeric(type_name):
        return f"CAST(NULL AS {type_name})", None  # true is no number: every non-NULL value is a type error
    value = f"TRY_CAST({x} AS {type_name})"
    if type_name in _FLOAT_TYPES:
        if raw in _RAW_NUMERIC or raw.startswith("DECIMAL"):
            return value, f"NOT ({value} = 0 AND {x} <> 0)"  # overflow is NULL already; underflow to 0 is refused
        return value, None
    accepted = f"TRY_CAST({value} AS {raw}) = {x}"  # the value converts back to exactly what arrived
    if type_name in _TEMPORAL_TYPES:
        accepted += f" AND {_in_range(value, type_name)}"
    return value, f"({accepted})"


def _cast(expr: str, type_name: str, raw_type: str = "VARCHAR") -> tuple[str, str | None]:
    """``expr`` cast to the contract type as (value, accepted): ``value`` is DuckDB's TRY_CAST (or NULL), and
    ``accepted`` (None: always) is TRUE when that value is exactly what arrived."""
    raw = raw_type.upper()
    if raw in _TEXT_RAW:
        return _text_cast(expr, type_name)
    if raw.startswith("ENUM"):
        return _text_cast(f"CAST({expr} AS VARCHAR)", type_name)
    return _typed_cast(expr, type_name, raw)


def typed_value(expr: str, type_name: str, raw_type: str = "VARCHAR") -> str:
    """``expr`` cast to the contract type, NULL when it does not fit exactly (then ``type:<col>`` quarantines it).

    DuckDB's TRY_CAST is lenient: it reads ``0x10`` and ``1_000`` as integers, rounds ``1.005`` into DECIMAL(12,2)
    and ``1.5`` into an integer, takes ``2024-01-05 13:00`` as a date, ``epoch``/``infinity`` as dates and
    timestamps, rolls ``24:00:00`` over to the next day, truncates a seventh fractional digit of a second, shifts
    a time zone name's DST gap, drops a zoned value's offset when cast to TIMESTAMP and turns a BOOLEAN into a
    number. So a text value is accepted only in a strict form that reads back as the same value:

    * integers: optional sign, ASCII digits, and at most a fraction of zeros (``-12``, ``007``, ``1.0``); no
      exponent, separators, hex or binary, or spaces;
    * DECIMAL(p,s): plain notation with at most ``s`` fractional digits besides trailing zeros (``1.5``, ``.50``,
      ``+2``, ``1.500``), or exponent notation whose value needs at most ``s`` (``1E+5``, ``125e-2``);
    * DOUBLE/REAL: decimal or exponent notation, taken as the nearest value of the type (IEEE 754 binary
      floating point), or ``inf``/``infinity``/``nan`` in any case; refused: a finite text overflowing to
      infinity or a non-zero one underflowing to zero;
    * DATE: ``YYYY-MM-DD``;
    * TIMESTAMP/TIMESTAMPTZ: ``YYYY-MM-DD``, ``T`` or a space, ``HH:MM`` (hours 00 to 23), optional ``:SS`` and
      up to 6 fractional digits, optional ``Z`` or an offset ``+HH``, ``+HHMM``, ``+HH:MM`` (no zone names). A
      zoned value is converted to UTC (a TIMESTAMP holds it as naive UTC), one without a zone is UTC;
    * dates and timestamps lie in the years 0001 to 9999 (after conversion to UTC), which every target stores;
    * BOOLEAN: DuckDB's words, ``true``/``false``, ``t``/``f``, ``yes``/``no``, ``y``/``n``, ``1``/``0``, any case.

    A value that arrives typed (Parquet files, Postgres through ADBC) must convert back to exactly what arrived
    (a DOUBLE 1.005 is no DECIMAL(12,2), a BIGINT past 2^31 no INTEGER, a TIMESTAMP with a time no DATE, nanoseconds
    no TIMESTAMP); into DOUBLE/REAL it takes the nearest value unless a non-zero one underflows to zero. A BOOLEAN
    is no number.

    The result is always ``CASE WHEN <accepted> THEN <TRY_CAST> END``: where it is not NULL it equals the plain
    cast, which is what the clean view types its rows with (``clean_select``).

    Args:
        expr: The raw value.
        type_name: The contract type.
        raw_type: The DuckDB type the value arrived as (text from most sources; Parquet files keep theirs).
    """
    value, accepted = _cast(expr, type_name, raw_type)
    return value if accepted is None else f"CASE WHEN {accepted} THEN {value} END"


def _typed_expr(column: Column, raw_types: dict[str, str], checked: bool = True) -> str:
    """A contract column's typed value (NULL when the column did not arrive): ``typed_value``, or with
    ``checked=False`` its plain cast, which equals it on every row the type rule lets through."""
    if column.name not in raw_types:
        return f"CAST(NULL AS {column.type})"
    if checked:
        return typed_value(quote_ident(column.name), column.type, raw_types[column.name])
    return _cast(quote_ident(column.name), column.type, raw_types[column.name])[0]


def _typed_columns(columns: list[Column], raw_types: dict[str, str], names: list[str] | None = None) -> list[str]:
    """``<typed value> AS "__typed_<col>"`` for the contract columns (``names`` only, when given)."""
    return [f"{_typed_expr(c, raw_types)} AS {_typed(c.name)}" for c in columns if names is None or c.name in names]


def _flag_list(rules: list[Rule]) -> str:
    if not rules:
        return "CAST([] AS VARCHAR[])"
    cases = ", ".join(f"CASE WHEN {r.expr} THEN '{r.name}' END" for r in rules)
    return f"list_filter(list_value({cases}), lambda x: x IS NOT NULL)"


def duplicate_keys_sql(columns: list[Column], primary_key: list[str], raw_types: dict[str, str]) -> str:
    """Key tuples (typed) that occur more than once in ``raw``, NULLs included; one narrow GROUP BY."""
    keys = _typed_columns(columns, raw_types, primary_key)
    return f"SELECT {', '.join(keys)} FROM raw GROUP BY ALL HAVING count(*) > 1"


def first_duplicate_wins_sql(columns: list[Column], primary_key: list[str], raw_types: dict[str, str]) -> str:
    """Of the flagged rows sharing a key (all of a key's rows are flagged ``duplicate_key``), the first by
    (``_etl_source``, position in the file) keeps its key: the rule is taken off its list. A window over the
    flagged rows only."""
    keys = _typed_columns(columns, raw_types, primary_key)
    partition = ", ".join(_typed(k) for k in primary_key)
    row, source = quote_ident(ROW_COLUMN), quote_ident(SOURCE_COLUMN)
    first = (
        f"SELECT {row} FROM (SELECT {row}, {source}, {', '.join(keys)} FROM {FLAGGED}"
        f" WHERE list_contains({ERRORS_COLUMN}, '{DUPLICATE_KEY}'))"
        f" QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {source}, {row}) = 1"
    )
    return (
        f"UPDATE {FLAGGED} SET {ERRORS_COLUMN} = list_filter({ERRORS_COLUMN}, lambda x: x <> '{DUPLICATE_KEY}')"
        f" WHERE {row} IN ({first})"
    )


def key_bounds_sql(columns: list[Column], primary_key: list[str], raw_types: dict[str, str]) -> str:
    """The smallest and largest value of the first key column in ``raw``: kept with the clean view, so a later batch
    reads only the partitions whose range overlaps its own, and of those only the keys within it."""
    first = _typed_expr(next(c for c in columns if c.name == primary_key[0]), raw_types)
    return f"SELECT min({first}), max({first}) FROM raw"


def other_batch_keys_sql(primary_key: list[str], relation: str) -> str:
    """Distinct keys of other partitions' clean data (``relation``) whose first column lies between two bind
    parameters (the batch's ``key_bounds_sql``); NULL bounds (a batch without keys) give none."""
    keys = ", ".join(quote_ident(k) for k in primary_key)
    return f"SELECT DISTINCT {keys} FROM {relation} WHERE {quote_ident(primary_key[0])} BETWEEN ? AND ?"


def flagged_sql(columns: list[Column], rules: list[Rule], raw_columns: list[str], raw_types: dict[str, str]) -> str:
    """Rows of ``raw`` breaking any rule: their values as delivered, their position (``__etl_row``), ``_etl_errors``
    (rules that quarantine the row) and ``_etl_warnings`` (WARN rules, which only flag it).

    The rule lists are built for the flagged rows only; a batch without bad rows gives an empty table. A row the
    source could not parse (``malformed_row``) has that rule alone: its other columns are NULL because it was not
    read, so no other rule is about it.
    """
    typed = _typed_columns(columns, raw_types)
    malformed = [r for r in rules if r.name == MALFORMED_ROW]
    rules = [r for r in rules if r.name != MALFORMED_ROW]
    errors = [r for r in rules if r.severity == "ERROR"]
    warnings = [r for r in rules if r.severity == "WARN"]
    keep = [quote_ident(n) for n in raw_columns] + [quote_ident(ROW_COLUMN)]
    broken = " OR ".join(f"({r.expr})" for r in [*malformed, *rules]) or "false"
    error_list, warning_list = _flag_list(errors), _flag_list(warnings)
    if malformed:
        unread = malformed[0].expr
        error_list = f"CASE WHEN {unread} THEN ['{MALFORMED_ROW}'] ELSE {error_list} END"
        warning_list = f"CASE WHEN {unread} THEN CAST([] AS VARCHAR[]) ELSE {warning_list} END"
    return (
        f"WITH typed AS (SELECT *, {', '.join(typed)} FROM raw)"
        f" SELECT {', '.join(keep)}, {error_list} AS {ERRORS_COLUMN}, {warning_list} AS {WARNINGS_COLUMN}"
        f" FROM typed WHERE {broken}"
    )


def clean_select(columns: list[Column], raw_columns: list[str], raw_types: dict[str, str]) -> str:
    """The SELECT list of the clean data over the raw columns: contract columns typed, extra source columns as
    delivered, then ``_etl_source`` (``_etl_read_error``, NULL on every clean row, is left out). The clean partition
    is stored as this list over the raw partition (a lake view).

    A contract column is typed with the plain cast of ``typed_value`` (``CASE WHEN <accepted> THEN <cast> END``)
    without re-checking its accepted form: a row whose value is not accepted breaks ``type:<col>`` and is not in the
    view, and on every other row the two are equal. So the view holds the values the rules saw, and reading it
    (every load does) does not pay for the strict forms again.
    """
    contract = {c.name for c in columns}
    out = [f"{_typed_expr(c, raw_types, checked=False)} AS {quote_ident(c.name)}" for c in columns]
    out += [quote_ident(n) for n in raw_columns if n not in contract and n not in (SOURCE_COLUMN, READ_ERROR_COLUMN)]
    out.append(quote_ident(SOURCE_COLUMN))
    return ", ".join(out)


def quarantined_positions_sql() -> str:
    """The raw positions of the rows flagged with an ERROR rule (the rows the clean view leaves out), in order."""
    row = quote_ident(ROW_COLUMN)
    return f"SELECT CAST({row} AS BIGINT) AS position FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0 ORDER BY 1"


def valid_sql(
    columns: list[Column], raw_columns: list[str], raw_types: dict[str, str], any_quarantined: bool = True
) -> str:
    """The clean data: rows of ``raw`` not flagged with an ERROR rule, typed as ``clean_select``. Streams ``raw``
    once (an anti-join on the few quarantined positions)."""
    sql = f"SELECT {clean_select(columns, raw_columns, raw_types)} FROM raw"
    if any_quarantined:
        row = quote_ident(ROW_COLUMN)
        sql += f" WHERE {row} NOT IN (SELECT {row} FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0)"
    return sql


RECORD_COLUMN = "_etl_record"


def quarantine_sql(raw_columns: list[str], relation: str = "raw") -> str:
    """Rows breaking a rule: original values as text, the rules broken, where they came from, run and partition.

    Where they came from is ``_etl_source`` (file name, API page, table) and ``_etl_record``, the row's 1-based
    number within that source (the record in the file or page): the raw partition holds each source's rows
    together and in delivery order, so it is the row's raw position less the first position of its source, which
    one narrow aggregate over ``relation`` finds for the few sources that have quarantined rows. A row the source
    could not parse has no record number (NULL); its ``_etl_read_error`` names the line.
    ``$run_id`` and ``$partition`` are bind parameters.
    """
    row, source = quote_ident(ROW_COLUMN), quote_ident(SOURCE_COLUMN)
    record = f"f.{row} - firsts.first_row + 1"
    if READ_ERROR_COLUMN in raw_columns:
        record = f"CASE WHEN f.{quote_ident(READ_ERROR_COLUMN)} IS NULL THEN {record} END"
    out = [f"CAST(f.{quote_ident(n)} AS VARCHAR) AS {quote_ident(n)}" for n in raw_columns if n != SOURCE_COLUMN]
    out += [
        f"f.{source}",
        f"{record} AS {RECORD_COLUMN}",
        f"f.{ERRORS_COLUMN} AS _etl_reasons",
        "CAST($run_id AS VARCHAR) AS _etl_run_id",
        "CAST($partition AS VARCHAR) AS _etl_partition",
    ]
    bad = f"SELECT * FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0"
    firsts = (
        f"SELECT {source}, min({row}) AS first_row FROM {relation}"
        f" WHERE {source} IN (SELECT DISTINCT {source} FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0)"
        f" GROUP BY {source}"
    )
    return (
        f"SELECT {', '.join(out)} FROM ({bad}) AS f JOIN ({firsts}) AS firsts"
        f" ON f.{source} IS NOT DISTINCT FROM firsts.{source} ORDER BY f.{row}"
    )


def errors_not_excluded(con, excluded_file) -> dict[str, int]:
    """Rows per ERROR rule whose position is not in the excluded-positions file ``excluded_file`` of the written
    clean view: every count must be 0 (only rules with such rows appear)."""
    row = quote_ident(ROW_COLUMN)
    return dict(
        con.execute(
            f"SELECT rule, count(*) FROM (SELECT unnest({ERRORS_COLUMN}) AS rule, {row} FROM {FLAGGED})"
            f" WHERE {row} NOT IN (SELECT position FROM read_parquet(?)) GROUP BY ALL",
            [str(excluded_file)],
        ).fetchall()
    )


def rule_counts_sql() -> str:
    """Rows per broken rule (ERROR and WARN), from the flagged rows."""
    return (
        f"SELECT reason, count(*) FROM (SELECT unnest(list_concat({ERRORS_COLUMN}, {WARNINGS_COLUMN})) AS reason"
        f" FROM {FLAGGED}) GROUP BY ALL"
    )


def _on_clean_columns(columns: list[Column], rules: list[Rule]) -> list[Rule]:
    """``rules`` rewritten over typed clean data, where a column's raw and typed values are the same column."""
    out = []
    for r in rules:
        expr = r.expr
        for column in columns:
            expr = expr.replace(_typed(column.name), quote_ident(column.name))
        out.append(Rule(r.name, r.family, r.severity, expr))
    return out


LOAD_FAMILIES = ("not_null", "accepted_values", "range", "format")


def _load_rules(columns: list[Column]) -> tuple[list[Rule], dict[str, object]]:
    """The ERROR value rules a load re-checks (``LOAD_FAMILIES``) over typed rows, and their bind parameters.
    Relationship rules are not among them (a load has no view of the other dataset)."""
    rules, params = contract_rules(columns, [], [c.name for c in columns], False)
    checked = [r for r in rules if r.severity == "ERROR" and r.family in LOAD_FAMILIES]
    return _on_clean_columns(columns, checked), params


def load_guard(columns: list[Column]) -> tuple[str, dict[str, object], list[str]] | None:
    """A condition TRUE for a typed row that breaks any ERROR value rule the loads re-check, for the load's INSERT
    to refuse such a row as it inserts it (``targets.RowGuard``): its SQL, bind parameters and the rules' names.
    None when the contract has no such rule."""
    rules, params = _load_rules(columns)
    if not rules:
        return None
    broken = " OR ".join(f"({r.expr})" for r in rules)
    return broken, params_for(broken, params) or {}, [r.name for r in rules]


def value_violations(con, columns: list[Column], relation: str) -> dict[str, int]:
    """Rows of typed ``relation`` breaking each ERROR value rule the loads re-check (to name them when a load's guard
    has refused a row)."""
    rules, params = _load_rules(columns)
    if not rules:
        return {}
    sql = f"SELECT {', '.join(f'count(*) FILTER (WHERE {r.expr})' for r in rules)} FROM {relation}"
    return dict(zip([r.name for r in rules], con.execute(sql, params_for(sql, params)).fetchall()[0]))


def loaded_duplicate_keys(con, columns: list[Column], primary_key: list[str], relation: str, quarantine: str) -> int:
    """Keys occurring more than once among the rows as a target holds them (``relation``: one loaded partition,
    typed); must be 0.

    Only a key that occurred more than once in the batch can occur twice in its clean rows, and every such key has
    rows quarantined as ``duplicate_key`` (all but the first), so uniqueness is counted for the keys of those rows
    (``quarantine``: the partition's quarantine as loaded, values as delivered), as a SEMI JOIN, not a GROUP BY of
    every row.
    """
    types = {c.name: c.type for c in columns}
    keys = ", ".join(f"c.{quote_ident(k)}" for k in primary_key)
    delivered = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {quarantine}").fetchall()}
    at_risk = ", ".join(
        f"{typed_value(quote_ident(k), types[k]) if k in delivered else f'CAST(NULL AS {types[k]})'}"
        f" AS {quote_ident(k)}"
        for k in primary_key
    )
    match = " AND ".join(f"c.{quote_ident(k)} = d.{quote_ident(k)}" for k in primary_key)
    return con.execute(
        f"SELECT count(*) FROM (SELECT {keys} FROM {relation} AS c SEMI JOIN (SELECT {at_risk} FROM {quarantine}"
        f" WHERE list_contains(_etl_reasons, '{DUPLICATE_KEY}')) AS d ON {match} GROUP BY ALL HAVING count(*) > 1)"
    ).fetchall()[0][0]


def batch_statements(
    columns: list[Column], primary_key: list[str], rules: list[Rule], raw_columns: list[str], raw_types: dict[str, str]
) -> list[tuple[str, str]]:
    """The statements that validate a batch, in order, as (what it does, SQL); they fill the temporary tables.

    They need ``raw`` (with ``__etl_row``) and, when the rules use them, the reference views and ``__other_batches``.
    After them, ``clean_select`` with ``quarantined_positions_sql`` (the clean view) and ``quarantine_sql`` give the
    two outputs and ``rule_counts_sql`` the counts.
    """
    statements = []
    if primary_key:
        statements.append(
            (
                "duplicate keys: GROUP BY key HAVING count(*) > 1",
                f"CREATE TEMP TABLE {DUPLICATE_KEYS} AS {duplicate_keys_sql(columns, primary_key, raw_types)}",
            )
        )
    statements.append(
        (
            "flagged rows: type and check every row, keep those breaking a rule",
            f"CREATE TEMP TABLE {FLAGGED} AS {flagged_sql(columns, rules, raw_columns, raw_types)}",
        )
    )
    if primary_key:
        statements.append(
            (
                "duplicate keys: the first row of each keeps it",
                first_duplicate_wins_sql(columns, primary_key, raw_types),
            )
        )
    return statements
