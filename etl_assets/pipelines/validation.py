"""Row-level contract validation as DuckDB SQL: every row is tagged with the rules it breaks, in one pass.

Pure functions building SQL text from a validated spec; identifiers are quoted, no values are inlined.
"""

from __future__ import annotations

from etl_assets.errors import ContractError
from etl_assets.pipelines.spec import Column
from etl_assets.resources.api import SOURCE_COLUMN
from etl_assets.sqlutil import quote_ident

ERRORS_COLUMN = "_etl_errors"
_TYPED_PREFIX = "__typed_"


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


def tagged_sql(columns: list[Column], primary_key: list[str], raw_columns: list[str], relation: str = "raw") -> str:
    """SELECT over ``relation`` adding a typed copy of each contract column and ``_etl_errors`` (a list of rule names).

    Rules: ``type:<col>`` (a value that does not cast to the contract type), ``not_null:<col>``,
    ``duplicate_key`` (a second row with the same primary key in this batch; the first by source order stays).
    """
    present = set(raw_columns)
    typed = []
    rules = []
    for column in columns:
        q = quote_ident(column.name)
        t = quote_ident(_TYPED_PREFIX + column.name)
        if column.name in present:
            typed.append(f"TRY_CAST({q} AS {column.type}) AS {t}")
            rules.append(f"CASE WHEN {q} IS NOT NULL AND {t} IS NULL THEN 'type:{column.name}' END")
        else:
            typed.append(f"CAST(NULL AS {column.type}) AS {t}")
        if not column.nullable:
            # a value that fails to cast is a type error only; not_null is for values that are absent
            source = q if column.name in present else "NULL"
            rules.append(f"CASE WHEN {source} IS NULL THEN 'not_null:{column.name}' END")
    if primary_key:
        keys = ", ".join(quote_ident(_TYPED_PREFIX + k) for k in primary_key)
        not_null = " AND ".join(f"{quote_ident(_TYPED_PREFIX + k)} IS NOT NULL" for k in primary_key)
        rules.append(
            f"CASE WHEN {not_null} AND row_number() OVER (PARTITION BY {keys} ORDER BY {quote_ident(SOURCE_COLUMN)}) > 1"
            " THEN 'duplicate_key' END"
        )
    rule_list = f"list_filter(list_value({', '.join(rules)}), lambda x: x IS NOT NULL)" if rules else "[]::VARCHAR[]"
    return (
        f"WITH typed AS (SELECT *, {', '.join(typed)} FROM {relation})"
        f" SELECT *, {rule_list} AS {ERRORS_COLUMN} FROM typed"
    )


def valid_sql(columns: list[Column], raw_columns: list[str], relation: str = "tagged") -> str:
    """Rows with no broken rule, with contract columns typed; extra source columns pass through as delivered."""
    contract = {c.name for c in columns}
    out = [f"{quote_ident(_TYPED_PREFIX + c.name)} AS {quote_ident(c.name)}" for c in columns]
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
