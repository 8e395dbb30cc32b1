"""Row-level contract validation as DuckDB SQL: every row is tagged with the rules it breaks, in one pass.

Pure functions building SQL text from a validated spec. Identifiers are quoted; values from the spec (accepted
values, bounds, patterns) are bind parameters, returned next to the SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from etl_assets.errors import ContractError
from etl_assets.pipelines.spec import Column
from etl_assets.resources.api import SOURCE_COLUMN
from etl_assets.sqlutil import quote_ident

ERRORS_COLUMN = "_etl_errors"
WARNINGS_COLUMN = "_etl_warnings"
_TYPED_PREFIX = "__typed_"
OTHER_BATCHES = "__other_batches"

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
        primary_key: Key columns; duplicates within the batch, and (``check_other_batches``) with rows already
            in other partitions (a view named ``__other_batches``), break ``unique``.
        raw_columns: Columns that arrived.
        check_other_batches: Whether the ``__other_batches`` view exists.
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
        keys = ", ".join(_typed(k) for k in primary_key)
        not_null = " AND ".join(f"{_typed(k)} IS NOT NULL" for k in primary_key)
        rules.append(Rule("duplicate_key", "unique", "ERROR",
                          f"{not_null} AND row_number() OVER (PARTITION BY {keys} ORDER BY {quote_ident(SOURCE_COLUMN)}) > 1"))
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


def typed_value(expr: str, type_name: str) -> str:
    """``expr`` cast to the contract type, NULL when it does not fit exactly.

    DuckDB's TRY_CAST rounds a fraction into an integer ('1.5' -> 2) and drops the offset of a zoned value cast
    to TIMESTAMP; both would alter data silently, so a fraction is a type error and a zoned timestamp is converted
    to UTC (the session time zone) before the offset is dropped.
    """
    if type_name in _INTEGER_TYPES:
        as_double = f"TRY_CAST({expr} AS DOUBLE)"
        return f"CASE WHEN {as_double} <> floor({as_double}) THEN NULL ELSE TRY_CAST({expr} AS {type_name}) END"
    if type_name == "TIMESTAMP":
        return f"TRY_CAST(TRY_CAST({expr} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST({expr} AS {type_name})"


def _flag_list(rules: list[Rule]) -> str:
    if not rules:
        return "CAST([] AS VARCHAR[])"
    cases = ", ".join(f"CASE WHEN {r.expr} THEN '{r.name}' END" for r in rules)
    return f"list_filter(list_value({cases}), lambda x: x IS NOT NULL)"


def tagged_sql(columns: list[Column], rules: list[Rule], raw_columns: list[str], relation: str = "raw") -> str:
    """SELECT over ``relation`` adding a typed copy of each contract column, ``_etl_errors`` (rules that quarantine
    the row) and ``_etl_warnings`` (WARN rules, which only flag it)."""
    present = set(raw_columns)
    typed = [
        f"{typed_value(quote_ident(c.name), c.type)} AS {_typed(c.name)}" if c.name in present
        else f"CAST(NULL AS {c.type}) AS {_typed(c.name)}"
        for c in columns
    ]
    errors = [r for r in rules if r.severity == "ERROR"]
    warnings = [r for r in rules if r.severity == "WARN"]
    return (
        f"WITH typed AS (SELECT *, {', '.join(typed)} FROM {relation})"
        f" SELECT *, {_flag_list(errors)} AS {ERRORS_COLUMN}, {_flag_list(warnings)} AS {WARNINGS_COLUMN} FROM typed"
    )


def valid_sql(columns: list[Column], raw_columns: list[str], relation: str = "tagged") -> str:
    """Rows with no broken ERROR rule, with contract columns typed; extra source columns pass through as delivered."""
    contract = {c.name for c in columns}
    out = [f"{_typed(c.name)} AS {quote_ident(c.name)}" for c in columns]
    out += [quote_ident(n) for n in raw_columns if n not in contract and n != SOURCE_COLUMN]
    out.append(quote_ident(SOURCE_COLUMN))
    return f"SELECT {', '.join(out)} FROM {relation} WHERE len({ERRORS_COLUMN}) = 0"


def quarantine_sql(raw_columns: list[str], relation: str = "tagged") -> str:
    """Rows breaking a rule: original values as text, the rules broken, where they came from, run and partition.

    ``$run_id`` and ``$partition`` are bind parameters.
    """
    out = [f"CAST({quote_ident(n)} AS VARCHAR) AS {quote_ident(n)}" for n in raw_columns if n != SOURCE_COLUMN]
    out += [quote_ident(SOURCE_COLUMN), f"{ERRORS_COLUMN} AS _etl_reasons",
            "CAST($run_id AS VARCHAR) AS _etl_run_id", "CAST($partition AS VARCHAR) AS _etl_partition"]
    return f"SELECT {', '.join(out)} FROM {relation} WHERE len({ERRORS_COLUMN}) > 0"


def violations_in_clean_sql(columns: list[Column], rules: list[Rule], relation: str = "clean") -> tuple[str, list[Rule]]:
    """Re-check the ERROR value rules over the written clean data (a post-condition: every count must be 0).

    Returns the SELECT (one count per rule, in order) and the rules it counts. Type and uniqueness rules are
    excluded: the clean data is already typed, and uniqueness is checked with GROUP BY.
    """
    checked = [r for r in rules if r.severity == "ERROR" and r.family in ("not_null", "accepted_values", "range", "format", "relationship")]
    if not checked:
        return "", []
    aliases = ", ".join(f"{quote_ident(c.name)} AS {_typed(c.name)}" for c in columns)
    typed_cols = {c.name for c in columns}
    counts = []
    for r in checked:
        expr = r.expr
        for name in typed_cols:  # in clean data the raw and typed values are the same column
            expr = expr.replace(f"{quote_ident(name)} IS NULL", f"{_typed(name)} IS NULL")
        counts.append(f"count(*) FILTER (WHERE {expr})")
    return f"SELECT {', '.join(counts)} FROM (SELECT *, {aliases} FROM {relation}) AS typed", checked
