"""What the Dagster catalog shows of a pipeline's assets: descriptions, column schemas with the contract's SQL types
and descriptions (the platform's own ``_etl_*`` columns marked as internal), table names, owners and tags.

The column schema goes on the asset definitions (known from the spec before anything runs); a lake write of an asset
that declares one records the columns actually written with the declared types (:func:`etl_assets.lake.written_schema`).
"""

from __future__ import annotations

from collections.abc import Iterable

from dagster import TableColumn, TableColumnConstraints, TableSchema

from etl_assets.keys import SOURCE_COLUMN
from etl_assets.pipelines.spec import PipelineSpec
from etl_assets.pipelines.validation import ERRORS_COLUMN, RECORD_COLUMN
from etl_assets.resources.targets import LOADED_AT_COLUMN, PARTITION_COLUMN, RUN_COLUMN

TABLE_NAME = "dagster/table_name"
# The tag on a column the platform adds (the UI lists column tags beside the column).
INTERNAL_TAG = "etl/internal"
QUARANTINE_REASONS_COLUMN = "_etl_reasons"

# The platform's own columns: (SQL type, what they hold).
PLATFORM_COLUMNS: dict[str, tuple[str, str]] = {
    SOURCE_COLUMN: ("VARCHAR", "the file, page or table the row came from"),
    RECORD_COLUMN: ("BIGINT", "the row's record number in its source file (1-based, header not counted)"),
    QUARANTINE_REASONS_COLUMN: ("VARCHAR[]", "the contract rules the row broke"),
    ERRORS_COLUMN: ("VARCHAR[]", "the ERROR rules the row broke"),
    PARTITION_COLUMN: ("VARCHAR", "the partition the row was loaded for (a re-run replaces exactly these rows)"),
    RUN_COLUMN: ("VARCHAR", "the Dagster run that loaded the row"),
    LOADED_AT_COLUMN: ("TIMESTAMPTZ", "when the row was loaded"),
}
TARGET_COLUMNS = (SOURCE_COLUMN, PARTITION_COLUMN, RUN_COLUMN, LOADED_AT_COLUMN)


def _platform_column(name: str, sql_type: str | None = None) -> TableColumn:
    known_type, doc = PLATFORM_COLUMNS.get(name, ("VARCHAR", "a column of the platform's"))
    return TableColumn(name=name, type=sql_type or known_type, description=f"internal: {doc}", tags={INTERNAL_TAG: ""})


def _contract_column(spec: PipelineSpec, name: str) -> TableColumn | None:
    column = next((c for c in spec.columns if c.name == name), None)
    if column is None:
        return None
    unique = spec.primary_key == [column.name]
    return TableColumn(
        name=column.name,
        type=column.type,
        description=column.description or None,
        constraints=TableColumnConstraints(nullable=column.nullable, unique=unique),
    )


def contract_schema(spec: PipelineSpec, platform: Iterable[str] = (SOURCE_COLUMN,)) -> TableSchema:
    """The contract's columns with their SQL types, then the platform columns ``platform``."""
    return TableSchema(
        columns=[c for c in (_contract_column(spec, col.name) for col in spec.columns) if c is not None]
        + [_platform_column(name) for name in platform]
    )


def describe(spec: PipelineSpec, stage: str) -> str:
    """An asset's description: the spec's ``description`` (the pipeline's purpose, for every asset of it), then what
    this stage holds."""
    return f"{spec.description.strip()}\n\n{stage}" if spec.description.strip() else stage


def target_table(spec: PipelineSpec) -> str:
    """The table a target asset loads, ``<domain>.<name>``."""
    return f"{spec.domain}.{spec.name}"
