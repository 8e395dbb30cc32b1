"""Row-level contract validation as DuckDB SQL.

Pure functions building SQL text from a validated spec. Identifiers are quoted; values from the spec (accepted
values, bounds, patterns) are bind parameters, returned next to the SQL.

A batch is validated in a few streaming passes over the raw partition (registered as ``raw``, with each row's
position in its file as ``__etl_row``), none of which writes or sorts the whole batch (``batch_statements``):

1. ``duplicate_keys_sql``: key tuples that occur more than once (a narrow GROUP BY; a small result);
2. ``flagged_sql``: the rows breaking any rule, with the names of the rules (a small table when most rows are good),
   then ``first_duplicate_wins_sql``: of the rows sharing a key, the first keeps it;
3. the outputs: the clean data is stored as a lake view, ``clean_select`` over the raw file minus
   ``quarantined_positions_sql`` (typed when read, with the expressions the rules saw); ``quarantine_sql``: the
   flagged rows with an ERROR rule, as delivered.

``errors_not_excluded`` then checks the view as written. The loads re-check the rows they insert: the value rules
as a guard of the INSERT itself (``load_guard``; ``value_violations`` names the rules when it trips), and key
uniqueness with ``loaded_duplicate_keys``, before they commit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from etl_assets.errors import ContractError
from etl_assets.pipelines.spec import Column
from etl_assets.resources.api import SOURCE_COLUMN
from etl_assets.sqlutil import quote_ident

ERRORS_COLUMN = "_etl_errors"
WARNINGS_COLUMN = "_etl_warnings"
_TYPED_PREFIX = "__typed_"
OTHER_BATCHES = "__other_batches"
ROW_COLUMN = "__etl_row"  # a raw row's position in its Parquet file (DuckDB's file_row_number)
DUPLICATE_KEYS = "__etl_duplicate_keys"  # key tuples occurring more than once in the batch (NULLs included)
FLAGGED = "__etl_flagged"  # rows breaking any rule: values as delivered, position, rule lists
DUPLICATE_KEY = "duplicate_key"

# Check families generated from the contract, in a stable order.
FAMILIES = ("valid_type", "not_null", "unique", "accepted_values", "range", "format", "relationship")


def reference_view(dataset: str) -> str:
    """Name of the view holding a referenced dataset's keys during validation."""
    return f"__ref_{dataset}"


@dataclass(frozen=True)
class Rule:
    """One row-level rule: ``expr`` is TRUE when a row breaks it."""

    name: str
    family: str
    severity: str
    expr: str


def _typed(name: str) -> str:
    return quote_ident(_TYPED_PREFIX + name)


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


def contract_rules(
    columns: list[Column], primary_key: list[str], raw_columns: list[str], check_other_batches: bool
) -> tuple[list[Rule], dict[str, object]]:
    """The rules of a contract and their bind parameters.

    Args:
        columns: The contract.
        primary_key: Key columns; duplicates within the batch (the repeated keys in ``__etl_duplicate_keys``), and
            (``check_other_batches``) with rows already in other partitions (their keys in ``__other_batches``),
            break ``unique``.
        raw_columns: Columns that arrived.
        check_other_batches: Whether the ``__other_batches`` table exists.
    """
    present = set(raw_columns)
    rules: list[Rule] = []
    params: dict[str, object] = {}

    def param(value: object) -> str:
        name = f"p{len(params)}"
        params[name] = value
        return f"${name}"

    for column in columns:
        q, t = quote_ident(column.name), _typed(column.name)
        if column.name in present:
            rules.append(Rule(f"type:{column.name}", "valid_type", "ERROR", f"{q} IS NOT NULL AND {t} IS NULL"))
        if not column.nullable:
            source = q if column.name in present else "NULL"
            rules.append(Rule(f"not_null:{column.name}", "not_null", "ERROR", f"{source} IS NULL"))
        sev = column.severity
        if column.accepted_values is not None:
            values = [str(v) for v in column.accepted_values]
            rules.append(Rule(f"accepted_values:{column.name}", "accepted_values", sev,
                              f"{t} IS NOT NULL AND NOT list_contains({param(values)}::VARCHAR[], CAST({t} AS VARCHAR))"))
        if column.min is not None:
            rules.append(Rule(f"min:{column.name}", "range", sev,
                              f"{t} < CAST({param(str(column.min))} AS {column.type})"))
        if column.max is not None:
            rules.append(Rule(f"max:{column.name}", "range", sev,
                              f"{t} > CAST({param(str(column.max))} AS {column.type})"))
        if column.regex is not None:
            rules.append(Rule(f"regex:{column.name}", "format", sev,
                              f"{t} IS NOT NULL AND NOT regexp_full_match(CAST({t} AS VARCHAR), {param(column.regex)})"))
        if column.max_length is not None:
            rules.append(Rule(f"max_length:{column.name}", "format", sev,
                              f"length(CAST({t} AS VARCHAR)) > {param(column.max_length)}"))
        if column.references is not None:
            ref = quote_ident(reference_view(column.references.dataset))
            rules.append(Rule(f"relationship:{column.name}", "relationship", sev,
                              f"{t} IS NOT NULL AND {t} NOT IN (SELECT {quote_ident(column.references.column)} FROM {ref})"))
    if primary_key:
        # every row whose key (without NULLs) occurs more than once; first_duplicate_wins_sql then clears the first
        match = " AND ".join(f"d.{_typed(k)} = typed.{_typed(k)}" for k in primary_key)
        rules.append(Rule(DUPLICATE_KEY, "unique", "ERROR", f"EXISTS (SELECT 1 FROM {DUPLICATE_KEYS} AS d WHERE {match})"))
        if check_other_batches:
            match = " AND ".join(f"o.{quote_ident(k)} = typed.{_typed(k)}" for k in primary_key)
            rules.append(Rule("duplicate_key_across_batches", "unique", "ERROR",
                              f"EXISTS (SELECT 1 FROM {OTHER_BATCHES} AS o WHERE {match})"))
    return rules, params


def params_for(sql: str, params: dict[str, object]) -> dict[str, object] | None:
    """The subset of ``params`` that ``sql`` uses (DuckDB refuses unused named parameters)."""
    used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}
    return used or None


_INTEGER_TYPES = ("SMALLINT", "INTEGER", "BIGINT")
_NUMERIC_TYPES = (*_INTEGER_TYPES, "DOUBLE", "REAL")
# Raw types that hold whole numbers only (Parquet and database sources deliver typed columns).
_WHOLE_NUMBER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                       "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")


def _is_numeric(type_name: str) -> bool:
    return type_name in _NUMERIC_TYPES or type_name.startswith("DECIMAL")


def typed_value(expr: str, type_name: str, raw_type: str = "VARCHAR") -> str:
    """``expr`` cast to the contract type, NULL when it does not fit exactly.

    DuckDB's TRY_CAST rounds a fraction into an integer ('1.5' -> 2), drops the offset of a zoned value cast
    to TIMESTAMP and turns a BOOLEAN into a number (true -> 1.00); each would alter data silently, so a fraction
    is a type error for an integer column, a zoned timestamp is converted to UTC (the session time zone) before
    the offset is dropped, and a BOOLEAN cast to a number goes through its text ('true'), which no number takes.

    Args:
        expr: The raw value.
        type_name: The contract type.
        raw_type: The DuckDB type the value arrived as (text from most sources; Parquet files keep theirs).
    """
    raw = raw_type.upper()
    if raw == "BOOLEAN" and _is_numeric(type_name):
        return f"TRY_CAST(CAST({expr} AS VARCHAR) AS {type_name})"
    if type_name in _INTEGER_TYPES and raw not in _WHOLE_NUMBER_TYPES:
        as_double = f"TRY_CAST({expr} AS DOUBLE)"
        return f"CASE WHEN {as_double} <> floor({as_double}) THEN NULL ELSE TRY_CAST({expr} AS {type_name}) END"
    if type_name == "TIMESTAMP":
        return f"TRY_CAST(TRY_CAST({expr} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST({expr} AS {type_name})"


def _typed_expr(column: Column, raw_types: dict[str, str]) -> str:
    """A contract column's typed value (NULL when the column did not arrive)."""
    if column.name in raw_types:
        return typed_value(quote_ident(column.name), column.type, raw_types[column.name])
    return f"CAST(NULL AS {column.type})"


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
    first = (f"SELECT {row} FROM (SELECT {row}, {source}, {', '.join(keys)} FROM {FLAGGED}"
             f" WHERE list_contains({ERRORS_COLUMN}, '{DUPLICATE_KEY}'))"
             f" QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {source}, {row}) = 1")
    return (f"UPDATE {FLAGGED} SET {ERRORS_COLUMN} = list_filter({ERRORS_COLUMN}, lambda x: x <> '{DUPLICATE_KEY}')"
            f" WHERE {row} IN ({first})")


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

    The rule lists are built for the flagged rows only; a batch without bad rows gives an empty table.
    """
    typed = _typed_columns(columns, raw_types)
    errors = [r for r in rules if r.severity == "ERROR"]
    warnings = [r for r in rules if r.severity == "WARN"]
    keep = [quote_ident(n) for n in raw_columns] + [quote_ident(ROW_COLUMN)]
    broken = " OR ".join(f"({r.expr})" for r in rules) or "false"
    return (
        f"WITH typed AS (SELECT *, {', '.join(typed)} FROM raw)"
        f" SELECT {', '.join(keep)}, {_flag_list(errors)} AS {ERRORS_COLUMN}, {_flag_list(warnings)} AS {WARNINGS_COLUMN}"
        f" FROM typed WHERE {broken}"
    )


def clean_select(columns: list[Column], raw_columns: list[str], raw_types: dict[str, str]) -> str:
    """The SELECT list of the clean data over the raw columns: contract columns typed (as the rules saw them),
    extra source columns as delivered, then ``_etl_source``. The clean partition is stored as this list over the raw
    partition (a lake view), so it is the same expression the rules were checked on."""
    contract = {c.name for c in columns}
    out = [f"{_typed_expr(c, raw_types)} AS {quote_ident(c.name)}" for c in columns]
    out += [quote_ident(n) for n in raw_columns if n not in contract and n != SOURCE_COLUMN]
    out.append(quote_ident(SOURCE_COLUMN))
    return ", ".join(out)


def quarantined_positions_sql() -> str:
    """The raw positions of the rows flagged with an ERROR rule (the rows the clean view leaves out), in order."""
    row = quote_ident(ROW_COLUMN)
    return f"SELECT CAST({row} AS BIGINT) AS position FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0 ORDER BY 1"


def valid_sql(columns: list[Column], raw_columns: list[str], raw_types: dict[str, str], any_quarantined: bool = True) -> str:
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
    one narrow aggregate over ``relation`` finds for the few sources that have quarantined rows.
    ``$run_id`` and ``$partition`` are bind parameters.
    """
    row, source = quote_ident(ROW_COLUMN), quote_ident(SOURCE_COLUMN)
    out = [f"CAST(f.{quote_ident(n)} AS VARCHAR) AS {quote_ident(n)}" for n in raw_columns if n != SOURCE_COLUMN]
    out += [f"f.{source}", f"f.{row} - firsts.first_row + 1 AS {RECORD_COLUMN}", f"f.{ERRORS_COLUMN} AS _etl_reasons",
            "CAST($run_id AS VARCHAR) AS _etl_run_id", "CAST($partition AS VARCHAR) AS _etl_partition"]
    bad = f"SELECT * FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0"
    firsts = (f"SELECT {source}, min({row}) AS first_row FROM {relation}"
              f" WHERE {source} IN (SELECT DISTINCT {source} FROM {FLAGGED} WHERE len({ERRORS_COLUMN}) > 0)"
              f" GROUP BY {source}")
    return (f"SELECT {', '.join(out)} FROM ({bad}) AS f JOIN ({firsts}) AS firsts"
            f" ON f.{source} IS NOT DISTINCT FROM firsts.{source} ORDER BY f.{row}")


def errors_not_excluded(con, excluded_file) -> dict[str, int]:
    """Rows per ERROR rule whose position is not in the excluded-positions file ``excluded_file`` of the written
    clean view: every count must be 0 (only rules with such rows appear)."""
    row = quote_ident(ROW_COLUMN)
    return dict(con.execute(
        f"SELECT rule, count(*) FROM (SELECT unnest({ERRORS_COLUMN}) AS rule, {row} FROM {FLAGGED})"
        f" WHERE {row} NOT IN (SELECT position FROM read_parquet(?)) GROUP BY ALL", [str(excluded_file)]).fetchall())


def rule_counts_sql() -> str:
    """Rows per broken rule (ERROR and WARN), from the flagged rows."""
    return (f"SELECT reason, count(*) FROM (SELECT unnest(list_concat({ERRORS_COLUMN}, {WARNINGS_COLUMN})) AS reason"
            f" FROM {FLAGGED}) GROUP BY ALL")


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
    at_risk = ", ".join(f"{typed_value(quote_ident(k), types[k]) if k in delivered else f'CAST(NULL AS {types[k]})'}"
                        f" AS {quote_ident(k)}" for k in primary_key)
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
        statements.append(("duplicate keys: GROUP BY key HAVING count(*) > 1",
                           f"CREATE TEMP TABLE {DUPLICATE_KEYS} AS {duplicate_keys_sql(columns, primary_key, raw_types)}"))
    statements.append(("flagged rows: type and check every row, keep those breaking a rule",
                       f"CREATE TEMP TABLE {FLAGGED} AS {flagged_sql(columns, rules, raw_columns, raw_types)}"))
    if primary_key:
        statements.append(("duplicate keys: the first row of each keeps it",
                           first_duplicate_wins_sql(columns, primary_key, raw_types)))
    return statements
