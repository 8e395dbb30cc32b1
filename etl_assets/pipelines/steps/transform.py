"""The transform step: a mart's SQL over its input datasets, confined to the lake."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from etl_assets.errors import ContractError, PermanentSourceError
from etl_assets.lake import LakeTable
from etl_assets.pipelines.spec import LoadedSpec
from etl_assets.settings import duckdb_connection


def transform(
    loaded: LoadedSpec,
    sql_text: str,
    tables: dict[str, LakeTable],
    window: tuple[datetime, datetime] | None,
    lake_root: Path,
) -> duckdb.DuckDBPyRelation:
    """Run the transform's SQL, each input registered as a view of its name, on a connection that may read only
    ``lake_root``.

    Args:
        sql_text: The transform's SQL (:meth:`LoadedSpec.transform_sql`).
        tables: The inputs by name (for a range run, the partition's slice of each).
        window: The partition's time window, bound as ``$partition_start`` / ``$partition_end``; ``None`` when
            the pipeline is unpartitioned.

    Returns:
        The mart's rows, lazy on the step's connection.

    Raises:
        ContractError: the SQL uses the window parameters but the pipeline is unpartitioned.
        PermanentSourceError: the SQL reached outside the lake (a file, URL, database or extension).
    """
    spec = loaded.spec
    assert spec.transform is not None, f"{spec.ref} is a source pipeline: it has no transform"
    con = duckdb_connection(allowed_directories=[lake_root])
    for name, table in tables.items():
        con.register(name, table.relation(con))
    params = {}
    if "$partition_start" in sql_text or "$partition_end" in sql_text:
        if window is None:
            raise ContractError(
                f"{loaded.path}: the SQL uses $partition_start/$partition_end but {spec.ref} is unpartitioned"
            )
        params = {"partition_start": window[0], "partition_end": window[1]}
    try:
        return con.sql(sql_text, params=params or None)
    except duckdb.Error as exc:
        # DuckDB refuses a file, URL, ATTACH or extension outside the allowed directories with a PermissionException,
        # and a setting that would turn external access back on with an InvalidInputException naming it
        message = str(exc)
        if isinstance(exc, duckdb.PermissionException) or any(
            words in message for words in ("external access", "enable_external_access")
        ):
            inputs = ", ".join(spec.transform.inputs)
            raise PermanentSourceError(
                f"transform {spec.ref} ({spec.transform.sql}) was refused access outside the lake: {message}. "
                f"Transform SQL may only read its inputs ({inputs}, registered as views of those names) and cannot "
                "read or write files, URLs, databases or extensions: remove that access from the SQL"
            ) from exc
        raise
