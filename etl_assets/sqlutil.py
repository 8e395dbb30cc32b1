"""Safe SQL building for DuckDB: identifiers from specs are validated and quoted, values are bound."""

from __future__ import annotations

import re

# Postgres keeps 63 bytes of a name (NAMEDATALEN - 1) and silently cuts the rest; DuckDB is held to the same limit.
MAX_IDENTIFIER_LENGTH = 63
IDENTIFIER_RE = re.compile(rf"[A-Za-z_][A-Za-z0-9_]{{0,{MAX_IDENTIFIER_LENGTH - 1}}}\Z")  # \Z: `$` allows a final "\n"

# Columns the platform adds to the data itself: the lake's and the targets' _etl_* columns, DuckDB's filename and
# file_row_number (files sources, row positions) and validation's __etl*/__typed_* working columns.
RESERVED_COLUMN_NAMES = ("filename", "file_row_number")
RESERVED_COLUMN_PREFIXES = ("_etl_", "__etl", "__typed_")

# Types a contract may declare. Each is a DuckDB type name; `postgres_type` maps it for the Postgres target.
_SIMPLE_TYPES = {
    "BOOLEAN": "boolean",
    "SMALLINT": "smallint",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "DOUBLE": "double precision",
    "REAL": "real",
    "VARCHAR": "text",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
}
_TYPE_ALIASES = {
    "INT": "INTEGER",
    "TEXT": "VARCHAR",
    "STRING": "VARCHAR",
    "FLOAT": "DOUBLE",
    "BOOL": "BOOLEAN",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
}
# NUMERIC(p,s) is DECIMAL(p,s) in both DuckDB and Postgres; the canonical form is DECIMAL(p,s).
_DECIMAL_RE = re.compile(r"(?:DECIMAL|NUMERIC)\((\d{1,2}),\s*(\d{1,2})\)")
# The type names a contract may spell (the canonical ones, then the aliases), for a misspelling's suggestion.
CONTRACT_TYPE_NAMES = (*_SIMPLE_TYPES, *_TYPE_ALIASES)
CONTRACT_TYPES_TEXT = f"{', '.join(_SIMPLE_TYPES)} or DECIMAL(p,s) (also NUMERIC(p,s)) with p <= 38"


def is_identifier(name: str) -> bool:
    """True when ``name`` is a plain SQL identifier (letters, digits, underscore; not starting with a digit; at most
    :data:`MAX_IDENTIFIER_LENGTH` characters; nothing else, not even a trailing line break)."""
    return IDENTIFIER_RE.fullmatch(name) is not None


def is_reserved_column(name: str) -> bool:
    """True when ``name`` is, ignoring case, one of the platform's own column names (:data:`RESERVED_COLUMN_NAMES`,
    or starting with one of :data:`RESERVED_COLUMN_PREFIXES`): a data column of that name would be overwritten or
    dropped."""
    folded = name.lower()
    return folded in RESERVED_COLUMN_NAMES or folded.startswith(RESERVED_COLUMN_PREFIXES)


def quote_ident(name: str) -> str:
    """Quote a validated identifier for DuckDB.

    Raises:
        ValueError: ``name`` is not a plain identifier; specs are validated before this, so this is a bug guard.
    """
    if not is_identifier(name):
        raise ValueError(f"refusing to use {name!r} as an SQL identifier")
    return '"' + name + '"'


def quote_literal(text: str) -> str:
    """Any text as a DuckDB string literal (single quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    """``"schema"."table"`` with both parts validated."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def normalize_type(type_name: str) -> str:
    """Canonical upper-case form of a contract type, or raise ``ValueError`` naming the accepted types."""
    t = " ".join(type_name.strip().upper().split())
    t = _TYPE_ALIASES.get(t, t)
    if t in _SIMPLE_TYPES:
        return t
    m = _DECIMAL_RE.fullmatch(t)
    if m and 1 <= int(m.group(1)) <= 38 and int(m.group(2)) <= int(m.group(1)):
        return f"DECIMAL({int(m.group(1))},{int(m.group(2))})"
    raise ValueError(f"unknown column type {type_name!r}; use one of {CONTRACT_TYPES_TEXT}")


def postgres_type(duckdb_type: str) -> str:
    """The Postgres column type for a canonical contract type."""
    m = _DECIMAL_RE.fullmatch(duckdb_type)
    if m:
        return f"numeric({m.group(1)},{m.group(2)})"
    return _SIMPLE_TYPES[duckdb_type]
