"""Pipeline specs: the YAML format, its typed models and the loader.

A spec file declares one pipeline. A *source* pipeline extracts a dataset from an API, an SQL database or
landing-zone files, validates it against its columns (the contract) and loads it into its targets. A
*transform* pipeline builds a mart with an SQL file over other pipelines' datasets.
"""

from __future__ import annotations

import importlib
import json
import keyword
import os
import re
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from etl_assets.keys import dagster_name, parse_ref, pipeline_ref
from etl_assets.pipelines.spec_values import checked_cron, checked_owners, checked_tags, checked_timezone
from etl_assets.resources.api import ApiSource
from etl_assets.resources.files import FilesSource
from etl_assets.resources.sql import SqlSource
from etl_assets.settings import DUCKDB_WAREHOUSE_FIX, DUCKDB_WAREHOUSE_REFUSED, is_distributed
from etl_assets.specmodel import IDENTIFIER_LIMIT, SpecFieldError, SpecModel, checked_name, closest, did_you_mean
from etl_assets.sqlutil import (
    CONTRACT_TYPE_NAMES,
    CONTRACT_TYPES_TEXT,
    MAX_IDENTIFIER_LENGTH,
    RESERVED_COLUMN_NAMES,
    RESERVED_COLUMN_PREFIXES,
    is_reserved_column,
    normalize_type,
)

# The project's Dagster defs folder: one folder per domain, each with a defs.yaml of Pipeline components
DEFS_MODULE = "etl_assets.defs"
PACKAGED_DEFS_DIR = Path(__file__).resolve().parent.parent / "defs"
PACKAGED_SPEC_DIRS = (PACKAGED_DEFS_DIR,)
PIPELINES_DIR_ENV = "ETL_PIPELINES_DIR"
# "off" leaves the packaged defs folder (the reference domain `shop`, which loads into DuckDB) out of the code
# location: a deployment with its own pipelines in $ETL_PIPELINES_DIR (a distributed one refuses DuckDB targets).
PACKAGED_PIPELINES_ENV = "ETL_PACKAGED_PIPELINES"
# YAML ends an entry of a flow mapping ({...}) at a comma, so an unquoted `type: DECIMAL(12,2)` there reads as the type
# 'DECIMAL(12' and a key '2)' without a value.
_SPLIT_TYPE_HEAD = re.compile(r"[A-Za-z][A-Za-z ]*\(\s*\d+")
_SPLIT_TYPE_TAIL = re.compile(r"\d+\s*\)")

# Validation names a referenced dataset's key view __ref_<name> and a typed column __typed_<column>
# (validation.reference_view, validation._TYPED_PREFIX); both must stay within the identifier limit.
MAX_PIPELINE_NAME_LENGTH = MAX_IDENTIFIER_LENGTH - len("__ref_")
MAX_COLUMN_NAME_LENGTH = MAX_IDENTIFIER_LENGTH - len("__typed_")

# Schemas a domain may not take (compared ignoring case; also every name starting with pg_, which Postgres keeps for
# itself): the platform's own (each pipeline's quarantine table, monitoring's ops tables), DuckDB's and Postgres's
# system schemas, and DuckDB's catalog names (`system`, `temp` and the warehouse file's `warehouse`), which make
# "<domain>"."<table>" ambiguous.
RESERVED_SCHEMAS = (
    "quarantine",
    "ops",
    "main",
    "temp",
    "system",
    "warehouse",
    "information_schema",
    "pg_catalog",
    "pg_toast",
)
RESERVED_SCHEMA_PREFIX = "pg_"

# A transform names its inputs after pipelines, and Dagster refuses these input names (DISALLOWED_NAMES in
# dagster._core.definitions.utils: Python's keywords and a few of its own).
DAGSTER_RESERVED_NAMES = frozenset(keyword.kwlist) | {
    "context",
    "conf",
    "config",
    "meta",
    "arg_dict",
    "dict",
    "input_arg_dict",
    "output_arg_dict",
    "int",
    "str",
    "float",
    "bool",
    "input",
    "output",
    "type",
}
# Pipeline names whose <name>_schedule is a platform schedule (pipeline_health_schedule, lake_retention_schedule).
RESERVED_PIPELINE_NAMES = ("pipeline_health", "lake_retention")


class SpecError(ValueError):
    """A spec file cannot be used. The message names the file, the field and the fix."""


def _column_name(value: str) -> str:
    """Check a contract column name: an identifier short enough for validation's typed copy, not a platform column.

    Raises:
        SpecFieldError: the name cannot be used, with the fix.
    """
    checked_name(
        value, MAX_COLUMN_NAME_LENGTH, f"validation's working column __typed_<column> must fit in {IDENTIFIER_LIMIT}"
    )
    if is_reserved_column(value):
        reserved = ", ".join([*RESERVED_COLUMN_NAMES, *(f"{p}*" for p in RESERVED_COLUMN_PREFIXES)])
        raise SpecFieldError(
            "",
            f"{value!r} is a name the platform uses for its own columns ({reserved}, compared "
            "ignoring case), which would overwrite or drop it",
            "rename the column in the source, or select it under another name",
        )
    return value


def _pipeline_name(value: str) -> str:
    """Check a pipeline name: an identifier short enough for the names derived from it, and not one Dagster or the
    platform's own definitions take.

    Raises:
        SpecFieldError: the name cannot be used, with the fix.
    """
    checked_name(value, MAX_PIPELINE_NAME_LENGTH, f"validation's view __ref_<name> must fit in {IDENTIFIER_LIMIT}")
    if value in DAGSTER_RESERVED_NAMES or value in RESERVED_PIPELINE_NAMES:
        why = "a platform schedule" if value in RESERVED_PIPELINE_NAMES else "a name Dagster reserves"
        raise SpecFieldError(
            "", f"{value!r} is {why} and cannot name a pipeline", f"choose another name, e.g. {value}_data"
        )
    return value


def _domain(value: str) -> str:
    """Check a domain, the warehouse schema of its pipelines: an identifier, and not a reserved schema.

    Raises:
        SpecFieldError: the name cannot be used, with the fix.
    """
    checked_name(value)
    if "__" in value:
        raise SpecFieldError(
            "",
            f"{value!r} holds '__', which ends the domain in the Dagster names of its pipelines "
            "(<domain>__<name>_pipeline)",
            f"use single underscores, e.g. {re.sub('_+', '_', value)}",
        )
    folded = value.lower()
    if folded in RESERVED_SCHEMAS or folded.startswith(RESERVED_SCHEMA_PREFIX):
        raise SpecFieldError(
            "",
            f"{value!r} is a schema the platform or the database keeps for itself (reserved, "
            f"ignoring case: {', '.join(RESERVED_SCHEMAS)} and {RESERVED_SCHEMA_PREFIX}*)",
            f"choose another domain, e.g. {value}_data",
        )
    return value


def _is_split_tail(key: object, value: object) -> bool:
    """Whether ``key: value`` is the tail of a type YAML split at its comma (``2)``, without a value)."""
    return value is None and isinstance(key, str) and _SPLIT_TYPE_TAIL.fullmatch(key) is not None


def _split_type(value: object, mapping: dict) -> str | None:
    """The type YAML split at its comma (``value`` is its head, a key of ``mapping`` its tail), joined again; None
    when ``value`` was not split."""
    if not isinstance(value, str) or not _SPLIT_TYPE_HEAD.fullmatch(value):
        return None
    tail = next((key for key, rest in mapping.items() if _is_split_tail(key, rest)), None)
    return f"{value},{tail}" if tail is not None else None


def _columns_mapping_error(mapping: dict) -> SpecFieldError:
    """The error for ``columns`` written as a mapping of names to types, with the list it should be."""
    entries = [(k, v) for k, v in mapping.items() if not _is_split_tail(k, v)]
    name, type_name = entries[0] if entries else ("amount", "VARCHAR")
    joined = _split_type(type_name, mapping)
    shown = joined or (type_name if isinstance(type_name, str) else "VARCHAR")
    problem = "`columns` is a mapping here, but the contract is a list of columns, each {name, type, nullable}"
    if joined:
        problem += f", and YAML split the unquoted type {joined} at its comma"
    return SpecFieldError("", problem, f'write a list, quoting the type: columns: [{{name: {name}, type: "{shown}"}}]')


Severity = Literal["ERROR", "WARN"]


class Reference(SpecModel):
    """A relationship: every non-null value must exist in ``column`` of another dataset."""

    dataset: str
    column: str


class Column(SpecModel):
    """One column of the dataset contract.

    Type and not-null violations always quarantine the row. The value rules (``accepted_values``, ``min``,
    ``max``, ``regex``, ``max_length``, ``references``) quarantine it when ``severity`` is ERROR, and only flag it
    (the row is loaded, the check warns) when WARN.
    """

    name: str
    type: str
    nullable: bool = True
    description: str | None = Field(default=None, description="What the column holds, for the catalog.")
    accepted_values: list[str | int | float | bool] | None = None
    min: str | int | float | date | None = None
    max: str | int | float | date | None = None
    regex: str | None = None
    max_length: int | None = Field(default=None, ge=1)
    references: Reference | None = None
    severity: Severity = "ERROR"

    _check_name = field_validator("name")(_column_name)

    @model_validator(mode="before")
    @classmethod
    def _type_not_split(cls, data: Any) -> Any:
        joined = _split_type(data.get("type"), data) if isinstance(data, dict) else None
        if joined is not None:
            raise SpecFieldError(
                "type",
                f"the unquoted type {joined} was split at its comma (in {{...}} YAML reads a comma as the end of an "
                f"entry: type {data['type']!r} and a key {joined.split(',', 1)[1]!r})",
                f'quote it: type: "{joined}"',
            )
        return data

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        try:
            return normalize_type(value)
        except ValueError:
            match = closest(" ".join(value.upper().split()), CONTRACT_TYPE_NAMES)
            raise SpecFieldError(
                "",
                f"unknown column type {value!r}{did_you_mean(match)}",
                f"write type: {match}" if match else f"use one of {CONTRACT_TYPES_TEXT}",
            ) from None

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class RowCount(SpecModel):
    """Expected rows per partition: at least ``min``, and within ``max_deviation`` (a fraction) of the average
    of the last ``trailing_partitions`` loads."""

    min: int = Field(default=0, ge=0)
    max_deviation: float | None = Field(default=None, gt=0)
    trailing_partitions: int = Field(default=7, ge=1, le=100)
    severity: Severity = "ERROR"


class Quality(SpecModel):
    """The share of valid rows below which the blocking ``quality_score`` check fails (and nothing loads)."""

    threshold: float = Field(default=0.95, ge=0, le=1)


Source = Annotated[ApiSource | SqlSource | FilesSource, Field(discriminator="kind")]


class Partitioning(SpecModel):
    """Time partitioning. ``column`` is the record's time column that decides its partition.

    The partitions run from ``start``, the first partition's date, to ``last``, the last partition's date, both
    inclusive: ``start: 2024-01-01`` and ``last: 2024-01-07`` are seven daily partitions, or 168 hourly ones (the
    last is 2024-01-07-23:00). Without ``last`` they run on to the latest closed partition.
    """

    type: Literal["none", "daily", "hourly"] = "none"
    start: date | None = Field(default=None, description="The first partition's date; needed by daily and hourly.")
    last: date | None = Field(
        default=None,
        description="The last partition's date, inclusive (an hourly pipeline's last partition is 23:00 of that day); "
        "unset, the partitions run on to the latest closed one.",
    )
    column: str | None = None
    timezone: str = "UTC"
    max_per_run: int | None = Field(
        default=None,
        ge=1,
        description="At most this many partitions in one run of a backfill; unset, a database, file or transform "
        "pipeline backfills a whole range in one run and an API pipeline one partition per run.",
    )

    _check_timezone = field_validator("timezone")(checked_timezone)

    @field_validator("column")
    @classmethod
    def _check_column(cls, value: str | None) -> str | None:
        return value if value is None else _column_name(value)

    @model_validator(mode="before")
    @classmethod
    def _no_end(cls, data: Any) -> Any:
        # Dagster's end_date is exclusive, a spec's `last` inclusive: an `end` could mean either, so it is refused
        if isinstance(data, dict) and "end" in data:
            raise SpecFieldError("end", *_end_refused(data["end"]))
        return data

    @model_validator(mode="after")
    def _span(self) -> Partitioning:
        if self.type != "none" and self.start is None:
            raise SpecFieldError(
                "start", f"{self.type} partitioning needs `start`", "add start: 2024-01-01 (the first partition's date)"
            )
        if self.max_per_run is not None and self.type == "none":
            raise SpecFieldError(
                "max_per_run",
                "`max_per_run` bounds the partitions of a backfill's runs, and this pipeline is not partitioned",
                "remove partitions.max_per_run, or set partitions.type: daily with its start",
            )
        if self.last is None:
            return self
        if self.type == "none":
            raise SpecFieldError(
                "last",
                "`last` ends the partitions of a daily or hourly pipeline, and this one is not partitioned",
                "remove partitions.last, or set partitions.type: daily with its start",
            )
        assert self.start is not None  # checked above for a partitioned pipeline
        if self.last < self.start:
            raise SpecFieldError(
                "last",
                f"the last partition's date {self.last} is before the first's (start: {self.start})",
                f"set last to {self.start} or later (both are inclusive: last: {self.start} is one day of partitions)",
            )
        return self


def _end_refused(value: object) -> tuple[str, str]:
    """The problem and the fix for ``partitions.end``, which the spec calls ``last`` (the last partition's date)."""
    problem = (
        f"unknown key 'end'{did_you_mean('last')}: the span ends with `last`, the last partition's date, inclusive"
    )
    try:
        day = value if isinstance(value, date) else date.fromisoformat(str(value))
    except ValueError:
        return problem, "write last: YYYY-MM-DD, the date of the last partition"
    before = day - timedelta(days=1)
    return (
        problem,
        f"write last: {day} if {day} has the last partition, or last: {before} if {day} is the first day without",
    )


class Transform(SpecModel):
    """A mart built by an SQL file; each input dataset is visible in the SQL as a view of its name."""

    sql: str
    inputs: list[str] = Field(min_length=1)

    @field_validator("sql")
    @classmethod
    def _check_sql(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts:
            raise SpecFieldError(
                "",
                f"{value!r} is not a file next to the spec or in the domain's ../sql/ folder",
                "name the file relative to the spec's folder, without '..', e.g. sql: daily_revenue.sql",
            )
        return value


class Schedule(SpecModel):
    cron: str
    timezone: str = "UTC"
    default_status: Literal["running", "stopped"] = "stopped"

    _check_cron = field_validator("cron")(checked_cron)
    _check_timezone = field_validator("timezone")(checked_timezone)


class Arrival(SpecModel):
    """The file-arrival sensor of a files source."""

    default_status: Literal["running", "stopped"] = "stopped"
    interval_seconds: int = Field(default=30, ge=1, le=3600)
    max_files_per_tick: int = Field(default=100, ge=1, le=10_000)


class Automation(SpecModel):
    """Dependency-driven runs: ``eager`` (when an upstream changes, latest partition) or ``on_cron``."""

    condition: Literal["eager", "on_cron"]
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        return value if value is None else checked_cron(value)

    @model_validator(mode="after")
    def _cron_needed(self) -> Automation:
        if self.condition == "on_cron" and self.cron is None:
            raise SpecFieldError("cron", "on_cron automation needs a cron expression", "add cron: '0 * * * *'")
        return self


class Freshness(SpecModel):
    """How stale a dataset may get: its data may be at most ``max_lag_minutes`` old. A daily or hourly dataset's data
    dates from the end of its newest loaded partition (a 2024 partition loaded today is stale); an unpartitioned
    one's from its latest load."""

    max_lag_minutes: int = Field(gt=0, le=60 * 24 * 366)


class Retry(SpecModel):
    """Step-level retries (Dagster RetryPolicy) for transient failures."""

    max_retries: int = Field(default=3, ge=0, le=20)
    delay_seconds: float = Field(default=2.0, ge=0)
    backoff: Literal["exponential", "linear"] = "exponential"
    jitter: Literal["full", "plus_minus", "none"] = "plus_minus"


class Retention(SpecModel):
    """How long raw inputs are kept for rebuilds; unset keeps them forever.

    ``raw_days`` applies to the raw lake partitions of a time-partitioned pipeline (by partition date), and
    ``archive_days`` to loaded landing files in ``$ETL_DATA_DIR/archive/<name>/`` (by modification time).
    """

    raw_days: int | None = Field(default=None, ge=1)
    archive_days: int | None = Field(default=None, ge=1)


Target = Literal["duckdb", "postgres"]


class PipelineSpec(SpecModel):
    """One pipeline, as declared in one YAML file."""

    name: str
    domain: str = "default"
    description: str = Field(default="", description="What the pipeline delivers, for the catalog.")
    owners: list[str] = Field(
        default_factory=list,
        description="Who answers for the pipeline's assets (Dagster asset owners): an email address or `team:<name>`.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Labels on the pipeline's assets (Dagster asset tags): keys and values of letters, digits, "
        "'_', '-' and '.', at most 63 characters; a key may have a `<namespace>/` prefix, but not `dagster/`.",
    )
    source: Source | None = None
    transform: Transform | None = None
    partitions: Partitioning = Partitioning()
    columns: list[Column] = Field(default_factory=list)
    primary_key: list[str] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=lambda: ["duckdb"])
    schedule: Schedule | None = None
    arrival: Arrival = Arrival()
    after: list[str] = Field(
        default_factory=list, description="Pipelines whose successful runs trigger this one (a run-status sensor)."
    )
    automation: Automation | None = None
    freshness: Freshness | None = None
    row_count: RowCount | None = None
    quality: Quality = Quality()
    retry: Retry = Retry()
    retention: Retention = Retention()

    _check_name = field_validator("name")(_pipeline_name)
    _check_domain = field_validator("domain")(_domain)
    _check_owners = field_validator("owners")(checked_owners)
    _check_tags = field_validator("tags")(checked_tags)

    @property
    def ref(self) -> str:
        """``<domain>.<name>``, how users, tags and messages name the pipeline (:func:`etl_assets.keys.pipeline_ref`)."""
        return pipeline_ref(self)

    @property
    def dagster_name(self) -> str:
        """``<domain>__<name>``, the prefix of its jobs, sensors, ops (:func:`etl_assets.keys.dagster_name`)."""
        return dagster_name(self)

    def resolve(self, ref: str) -> str:
        """The pipeline reference ``ref`` (an ``after``, ``references.dataset`` or ``transform.inputs`` entry) stands
        for: ``<domain>.<name>`` as written, a bare name in this pipeline's own domain."""
        return ref if parse_ref(ref) else f"{self.domain}.{ref}"

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_listed(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise _columns_mapping_error(value)
        return value

    @field_validator("primary_key")
    @classmethod
    def _check_key(cls, value: list[str]) -> list[str]:
        for index, column in enumerate(value):
            try:
                _column_name(column)
            except SpecFieldError as exc:
                raise SpecFieldError(str(index), exc.problem, exc.fix) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if (self.source is None) == (self.transform is None):
            raise SpecFieldError(
                "source",
                "the spec has both or neither of `source` and `transform`",
                "give exactly one of `source` (extract a dataset) or `transform` (build a mart)",
            )
        quarantine = len(self.dagster_name)
        if self.source is not None and "duckdb" in self.targets and quarantine > MAX_IDENTIFIER_LENGTH:
            # its quarantine table in the warehouse is quarantine.<domain>__<name>
            raise SpecFieldError(
                "name",
                f"the warehouse's quarantine table of the pipeline, quarantine.{self.dagster_name}, would be named with "
                f"{quarantine} characters; the maximum is {IDENTIFIER_LIMIT}",
                f"shorten the name or the domain: together they may have at most {MAX_IDENTIFIER_LENGTH - 2} "
                f"characters (now {len(self.domain)} + {len(self.name)})",
            )
        names = [c.name for c in self.columns]
        if self.source is not None and not names:
            raise SpecFieldError(
                "columns", "a source pipeline needs `columns` (its contract)", "list them as {name, type, nullable}"
            )
        first: dict[str, int] = {}
        for index, name in enumerate(names):
            earlier = first.setdefault(name.lower(), index)
            if earlier == index:
                continue
            if names[earlier] == name:
                raise SpecFieldError(
                    f"columns.{index}.name",
                    f"column {name!r} is declared twice (also columns.{earlier})",
                    "keep one entry",
                )
            raise SpecFieldError(
                f"columns.{index}.name",
                f"{name!r} and {names[earlier]!r} (columns.{earlier}) differ only "
                "in case, and DuckDB does not tell them apart: their data would land in one column",
                "rename one of them",
            )
        missing_pk = [c for c in self.primary_key if c not in names]
        if missing_pk and self.source is not None:
            raise SpecFieldError(
                "primary_key",
                f"primary_key names {missing_pk}, which are not in `columns`",
                "declare them in `columns` or fix the key",
            )
        if self.source is not None and self.partitions.type != "none":
            if self.partitions.column is None and self.source.kind != "files":
                raise SpecFieldError(
                    "partitions.column",
                    "a partitioned api/sql source needs its time column",
                    "set partitions.column to the column that decides a record's partition",
                )
            if self.partitions.column is not None and self.partitions.column not in names:
                raise SpecFieldError(
                    "partitions.column", f"{self.partitions.column!r} is not in `columns`", "name a declared column"
                )
        if self.source is not None and self.source.kind == "sql" and self.partitions.type != "none":
            if self.source.incremental_column is None:
                raise SpecFieldError(
                    "source.incremental_column",
                    "a partitioned sql source needs `incremental_column`",
                    "name the column the partition window filters on",
                )
        if self.retention.raw_days is not None and (self.source is None or self.partitions.type == "none"):
            raise SpecFieldError(
                "retention.raw_days",
                "only a partitioned source pipeline has raw partitions to expire",
                "remove retention.raw_days, or partition the pipeline",
            )
        if self.retention.archive_days is not None and (self.source is None or self.source.kind != "files"):
            raise SpecFieldError(
                "retention.archive_days", "only a files source archives landing files", "remove retention.archive_days"
            )
        if len(set(self.targets)) != len(self.targets):
            raise SpecFieldError("targets", "a target is listed twice", "list each target once")
        return self


class LoadedSpec(BaseModel):
    """A validated spec with the file it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: PipelineSpec
    path: Path
    line: int | None = None  # the first line of its document, for a pipeline declared in a defs.yaml

    @property
    def where(self) -> str:
        """The file (and line) that declares the pipeline, as error messages name it."""
        return f"{self.path}, line {self.line}" if self.line else str(self.path)

    def transform_sql(self) -> str:
        """The transform's SQL text, resolved relative to the spec file, then to the domain's ``sql/`` folder.

        Raises:
            SpecError: the file is in neither folder, or resolves (through a symlink) outside the folder it is in.
        """
        assert self.spec.transform is not None
        name = self.spec.transform.sql
        for folder in (self.path.parent, self.path.parent.parent / "sql"):
            candidate = folder / name
            if not candidate.is_file():
                continue
            resolved, root = candidate.resolve(), folder.resolve()
            if not resolved.is_relative_to(root):
                raise _spec_error(
                    self.where,
                    "transform.sql",
                    f"{name!r} in {folder} resolves to {resolved}, outside that folder",
                    "put the SQL file itself (not a symlink to a file elsewhere) next to "
                    "the spec or in the domain's ../sql/ folder",
                )
            return resolved.read_text()
        raise _spec_error(
            self.where,
            "transform.sql",
            f"file {name!r} not found next to the spec or in ../sql/",
            "fix the path, or add the file",
        )


def _spec_error(where: Path | str, field: str, problem: str, fix: str) -> SpecError:
    """A :class:`SpecError` in the loader's format: the file (and line), then the field, the problem and the fix."""
    return SpecError(f"invalid pipeline spec {where}:\n  field '{field}': {problem}. Fix: {fix}.")


def _members(annotation: Any) -> list[Any]:
    """The types ``annotation`` allows: a union's members (without None), an ``Annotated`` type's own type."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [member for arg in typing.get_args(annotation) for member in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _tag_of(model: type[BaseModel]) -> str | None:
    """The ``kind`` that names ``model`` in a tagged union (a source), if it is a member of one."""
    kind = model.model_fields.get("kind")
    values = typing.get_args(kind.annotation) if kind is not None else ()
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _step(annotation: Any, segment: str | int) -> Any:
    """The type one location segment below ``annotation`` (None when it has no such part)."""
    for member in _members(annotation):
        origin = typing.get_origin(member)
        if isinstance(segment, int):
            if origin is list:
                return typing.get_args(member)[0]
        elif origin is dict:
            return typing.get_args(member)[1]
        elif isinstance(member, type) and issubclass(member, BaseModel):
            if segment in member.model_fields:
                return member.model_fields[segment].annotation
            if _tag_of(member) == segment:  # pydantic's location names a tagged union's member by its tag
                return member
    return None


def _choices_at(loc: tuple, error_type: str) -> list[str]:
    """What the spec may say where pydantic refused a value: the keys of the model holding an unknown key, the
    values of a Literal, or the tags of a tagged union."""
    annotation: Any = PipelineSpec
    for segment in loc[:-1] if error_type == "extra_forbidden" else loc:
        annotation = _step(annotation, segment)
        if annotation is None:
            return []
    members = _members(annotation)
    if error_type == "extra_forbidden":
        return [name for m in members if isinstance(m, type) and issubclass(m, BaseModel) for name in m.model_fields]
    if error_type.startswith("union_tag"):
        return [tag for m in members if isinstance(m, type) and issubclass(m, BaseModel) if (tag := _tag_of(m))]
    literals = [m for m in members if typing.get_origin(m) is Literal]
    return [value for m in literals for value in typing.get_args(m) if isinstance(value, str)]


@dataclass(frozen=True)
class _FieldError:
    """One refused field, as the loader reports it: its location in the spec, the problem and the fix (``kind`` is
    pydantic's error type; ``meant`` the known key an unknown one is close to)."""

    path: tuple[str | int, ...]
    problem: str
    fix: str
    kind: str = ""
    meant: str | None = None


def _field_error(error: ErrorDetails) -> _FieldError:
    """A pydantic error in the loader's terms, with the closest valid key or value when it looks misspelt."""
    loc, kind = tuple(error["loc"]), error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SpecFieldError):
        return _FieldError((*loc, *cause.field.split(".")) if cause.field else loc, cause.problem, cause.fix)
    message = error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        match = closest(str(loc[-1]), _choices_at(loc, kind))
        fix = f"rename it to {match}" if match else "remove it or check its spelling against docs/spec-reference.md"
        return _FieldError(loc, f"unknown key {loc[-1]!r}{did_you_mean(match)}", fix, kind, match)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        choices = _choices_at(loc, kind)
        tag = (error.get("ctx") or {}).get("tag")
        match = closest(tag, choices) if isinstance(tag, str) else None
        either = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
        fix = f"set `kind` to {match or either or 'one of the values listed'}"
        return _FieldError((*loc, "kind"), f"{message}{did_you_mean(match)}", fix)
    if kind in ("literal_error", "enum"):
        value = error.get("input")
        match = closest(value, _choices_at(loc, kind)) if isinstance(value, str) else None
        return _FieldError(
            loc, f"{message}{did_you_mean(match)}", f"change it to {match}" if match else "use one of the values listed"
        )
    if kind == "missing":
        return _FieldError(loc, message, "add this field", kind)
    if kind == "string_type" and isinstance(error.get("input"), bool | int | float | date):
        shown = json.dumps(error["input"]) if not isinstance(error["input"], date) else error["input"].isoformat()
        return _FieldError(loc, message, f'quote it, so YAML reads it as text: "{shown}"')
    if kind.endswith("_parsing") or kind.endswith("_type"):
        return _FieldError(loc, message, "give a value of the expected type")
    return _FieldError(loc, message, "change the value as described")


def _format_validation_error(where: Path | str, exc: ValidationError, positions: Any = None) -> str:
    errors = [_field_error(error) for error in exc.errors()]
    # a misspelt required key is also reported missing: the "did you mean" of the unknown key says it all
    meant = {(*e.path[:-1], e.meant) for e in errors if e.meant is not None}
    lines = [f"invalid pipeline spec {where}:"]
    for error in errors:
        if error.kind == "missing" and error.path in meant:
            continue
        field = ".".join(str(p) for p in error.path) or "(top level)"
        line = _line_of(positions, error.path)
        lines.append(f"  field '{field}'{f' (line {line})' if line else ''}: {error.problem}. Fix: {error.fix}.")
    return "\n".join(lines)


def _line_of(positions: Any, loc: tuple) -> int | None:
    """The line of the nearest node to ``loc`` in a component's source-position tree (pydantic's locations also
    hold the tags of tagged unions, which the YAML has not: those segments are skipped)."""
    if positions is None:
        return None
    node = positions
    for segment in loc:
        child = node.children.get(segment)
        if child is None and isinstance(segment, str) and segment.isdigit():
            child = node.children.get(int(segment))
        if child is not None:
            node = child
    return node.position.start.line


def parse_spec_document(
    raw: object, path: Path, line: int | None = None, positions: Callable[[], Any] | None = None
) -> LoadedSpec:
    """Validate one pipeline spec (a YAML mapping) read from ``path``, where its document starts at ``line``.

    Args:
        raw: The parsed YAML of the spec.
        path: The file that declares it (a spec file, or a ``defs.yaml``).
        line: The first line of the document, for a pipeline declared in a ``defs.yaml``.
        positions: Gives the document's source-position tree (Dagster's YAML loader), so each error names its
            line; called only when the spec is invalid.

    Raises:
        SpecError: the spec does not satisfy the models.
    """
    where = f"{path}, line {line}" if line else path
    if not isinstance(raw, dict):
        raise SpecError(
            f"invalid pipeline spec {where}: the spec must be a mapping with at least `name`. "
            "Fix: start with 'name: ...'."
        )
    try:
        return LoadedSpec(spec=PipelineSpec.model_validate(raw), path=path, line=line)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(where, exc, positions() if positions else None)) from None


def _source_positions(text: str, path: Path) -> Any:
    """The source-position tree of a spec file, made by the parser Dagster's component loader uses for a
    ``defs.yaml``, so that a spec file's errors name their lines as a component's do; None when it cannot be made."""
    from dagster_shared.yaml_utils import parse_yaml_with_source_position

    try:  # the file's values were read by yaml.safe_load; keep its YAML rules (dates are dates)
        return parse_yaml_with_source_position(text, str(path), implicits_to_remove=[]).source_position_tree
    except Exception:  # e.g. a key PyYAML reads but this parser cannot hash: the errors then only lack their lines
        return None


def parse_spec_file(path: Path) -> LoadedSpec:
    """Read and validate one spec file (the ``$ETL_PIPELINES_DIR`` form: one pipeline per ``*.yaml`` file).

    Raises:
        SpecError: the YAML cannot be parsed or does not satisfy the models.
    """
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid pipeline spec {path}: not valid YAML ({exc}). Fix the syntax.") from exc
    if not isinstance(raw, dict):
        raise SpecError(
            f"invalid pipeline spec {path}: the file must hold a mapping with at least `name`. Fix: start with 'name: ...'."
        )
    return parse_spec_document(raw, path, positions=lambda: _source_positions(text, path))


def packaged_spec_dirs() -> list[Path]:
    """The packaged defs folder, unless ``$ETL_PACKAGED_PIPELINES`` is ``off``.

    Raises:
        SpecError: the variable holds something else than ``on`` or ``off``.
    """
    value = os.environ.get(PACKAGED_PIPELINES_ENV, "").strip().lower()
    if value in ("", "on"):
        return list(PACKAGED_SPEC_DIRS)
    if value == "off":
        return []
    raise SpecError(
        f"{PACKAGED_PIPELINES_ENV}={value!r} is not on or off. Fix: write off to leave the packaged pipelines "
        "(etl_assets/defs) out, or unset it."
    )


def spec_dirs() -> list[Path]:
    """The packaged defs folder (unless ``$ETL_PACKAGED_PIPELINES=off``) plus ``$ETL_PIPELINES_DIR`` when set."""
    dirs = packaged_spec_dirs()
    extra = os.environ.get(PIPELINES_DIR_ENV)
    if extra:
        extra_dir = Path(extra).expanduser().resolve()
        if not extra_dir.is_dir():
            raise SpecError(f"{PIPELINES_DIR_ENV}={extra!r} is not a directory. Fix: create it or unset the variable.")
        dirs.append(extra_dir)
    return dirs


@dataclass(frozen=True)
class BrokenSpec:
    """A spec set aside by :func:`load_specs_isolated`: its file (and line), the name it declares when that could be
    read, and why (``field``: the field at fault, when the loader itself refused it)."""

    path: Path
    message: str
    name: str | None = None
    field: str | None = None


def refuse_local_warehouse(loaded: list[LoadedSpec]) -> tuple[list[LoadedSpec], list[BrokenSpec]]:
    """Split ``loaded`` into the specs this deployment can run and those it sets aside: in a distributed deployment
    (``ETL_DEPLOYMENT``) every spec that loads into the DuckDB warehouse file (``duckdb`` in ``targets``, the
    default), since each host would write a warehouse of its own.

    Raises:
        SettingsError: ``ETL_DEPLOYMENT`` names an unknown mode.
    """
    if not is_distributed():
        return loaded, []
    kept: list[LoadedSpec] = []
    refused: list[BrokenSpec] = []
    for item in loaded:
        targets = item.spec.targets
        if "duckdb" not in targets:
            kept.append(item)
            continue
        declared = f"targets: [{', '.join(targets)}]" + (
            "" if "targets" in item.spec.model_fields_set else ", the default"
        )
        problem = f"the pipeline loads into the DuckDB warehouse ({declared}), and {DUCKDB_WAREHOUSE_REFUSED}"
        error = _spec_error(item.where, "targets", problem, DUCKDB_WAREHOUSE_FIX)
        refused.append(BrokenSpec(item.path, str(error), item.spec.ref, field="targets"))
    return kept, refused


def _is_pipeline_type(component_type: type) -> bool:
    get_model_cls = getattr(component_type, "get_model_cls", None)
    return get_model_cls is not None and get_model_cls() is PipelineSpec


@dataclass
class DefsFolder:
    """What :func:`read_defs_folder` found: the pipelines, the invalid ones, and the other components' locations."""

    loaded: list[LoadedSpec]
    broken: list[BrokenSpec]
    tree: Any = None  # the dagster ComponentTree, to build the other components with
    others: list[tuple[Any, Path]] = field(default_factory=list)


def read_defs_folder(defs_module: str = DEFS_MODULE) -> DefsFolder:
    """Every Pipeline component declared in a defs folder, each validated on its own.

    Dagster's component tree finds the ``defs.yaml`` files and their documents (with source positions); a document
    whose type is a Pipeline is validated here, so that an invalid one is set aside with its file, line, field and
    fix instead of failing the whole tree. The other components (another type in a ``defs.yaml``, a Python module)
    are listed for :mod:`etl_assets.definitions` to build one by one.
    """
    from dagster import ComponentTree  # deferred: the spec models are imported by code that never loads a tree
    from dagster.components.core.decl import PythonFileDecl, YamlDecl
    from dagster.components.core.defs_module import ComponentPath

    module = importlib.import_module(defs_module)
    folder = Path(next(iter(module.__path__)))
    tree = ComponentTree.from_module(defs_module=module, project_root=folder.parent.parent)
    try:
        with warnings.catch_warnings():  # Dagster's own YAML loader still calls pydantic's deprecated parse_obj_as
            warnings.filterwarnings("ignore", message="`parse_obj_as` is deprecated", category=DeprecationWarning)
            pairs = list(tree.find_root_decl().iterate_loc_component_decl_pairs())
    except Exception as exc:  # a defs.yaml that is not YAML, or has no `type`: Dagster names the file and line
        return DefsFolder([], [BrokenSpec(folder, f"invalid defs folder {folder}: {exc}")])
    found = DefsFolder([], [], tree)
    loaded, broken = found.loaded, found.broken
    for loc, decl in pairs:
        if isinstance(decl, PythonFileDecl):
            assert isinstance(loc, ComponentPath)  # a Python file's location is always its path
            if Path(loc.file_path).name != "__init__.py":  # a package marker, not definitions
                found.others.append((loc, Path(loc.file_path)))
            continue
        if not isinstance(decl, YamlDecl) or decl.source_tree is None:
            continue
        position = decl.source_tree.source_position_tree.position
        path, line = Path(position.filename), position.start.line
        try:
            is_pipeline = _is_pipeline_type(decl.component_type)
        except Exception as exc:  # an unknown `type`
            broken.append(BrokenSpec(path, f"invalid component {path}, line {line}: {exc}"))
            continue
        if not is_pipeline:
            found.others.append((loc, path))
            continue
        assert decl.component_file_model is not None  # component_type above is read from it
        raw = decl.component_file_model.attributes
        positions = decl.source_tree.source_position_tree.children.get("attributes")
        try:
            loaded.append(parse_spec_document(raw, path, line, lambda tree=positions: tree))
        except SpecError as exc:
            broken.append(BrokenSpec(path, str(exc), _declared_ref(raw)))
    return found


def _read_dir(folder: Path) -> tuple[list[LoadedSpec], list[BrokenSpec]]:
    """The pipelines of one folder: the packaged defs folder (components), or a folder of spec files."""
    if folder.resolve() == PACKAGED_DEFS_DIR:
        found = read_defs_folder()
        return found.loaded, found.broken
    loaded: list[LoadedSpec] = []
    broken: list[BrokenSpec] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            loaded.append(parse_spec_file(path))
        except SpecError as exc:
            broken.append(BrokenSpec(path, str(exc), _declared_name(path)))
    return loaded, broken


def load_specs(dirs: list[Path] | None = None) -> list[LoadedSpec]:
    """Load every pipeline of ``dirs`` (default :func:`spec_dirs`) and check the set as a whole.

    Raises:
        SpecError: a spec is invalid or refused by the deployment (:func:`refuse_local_warehouse`), two declare the
            same name, or a transform reads an unknown dataset.
    """
    loaded: list[LoadedSpec] = []
    for folder in dirs or spec_dirs():
        found, broken = _read_dir(folder)
        if broken:
            raise SpecError(broken[0].message)
        loaded.extend(found)
    loaded, refused = refuse_local_warehouse(loaded)
    if refused:
        raise SpecError(refused[0].message)
    errors = _set_errors(loaded, {})
    if errors:
        raise errors[0][1]
    return loaded


def load_specs_isolated(dirs: list[Path] | None = None) -> tuple[list[LoadedSpec], list[BrokenSpec]]:
    """Like :func:`load_specs`, but an invalid spec is set aside with its error instead of failing the whole set.

    A spec is set aside when it is invalid, when the deployment refuses it (:func:`refuse_local_warehouse`), when it
    is wrong about the others (a duplicate name, an unknown ``after``, reference or transform input, a cycle), or
    when it depends on a spec set aside (its message says which). The others load: one bad pipeline never takes the
    code location down.
    """
    broken: list[BrokenSpec] = []
    if dirs is None:
        try:
            dirs = spec_dirs()
        except SpecError as exc:
            try:
                dirs = packaged_spec_dirs()
                culprit = os.environ.get(PIPELINES_DIR_ENV, "")
            except SpecError:
                dirs, culprit = [], PACKAGED_PIPELINES_ENV
            broken.append(BrokenSpec(Path(culprit), str(exc)))
    loaded: list[LoadedSpec] = []
    for folder in dirs:
        found, aside_here = _read_dir(folder)
        loaded.extend(found)
        broken.extend(aside_here)
    loaded, refused = refuse_local_warehouse(loaded)  # the deployment's rule, before the specs are checked together
    broken.extend(refused)
    # pipelines (<domain>.<name>) declared by a spec that was set aside: a spec needing one is set aside, saying so
    aside: dict[str, str] = {}
    for item in broken:
        if item.name:
            aside.setdefault(item.name, str(item.path))
    while True:
        errors = _set_errors(loaded, aside)
        if not errors:
            return loaded, broken
        for item, error in errors:
            broken.append(BrokenSpec(item.path, str(error), item.spec.ref))
            aside.setdefault(item.spec.ref, item.where)
        at_fault = {id(item) for item, _ in errors}
        loaded = [item for item in loaded if id(item) not in at_fault]


def _declared_name(path: Path) -> str | None:
    """The pipeline (``<domain>.<name>``) an invalid spec file declares, when it can be read at all."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return _declared_ref(raw)


def _declared_ref(raw: object) -> str | None:
    """The pipeline (``<domain>.<name>``) the attributes of an invalid spec declare, when they say."""
    if not isinstance(raw, dict):
        return None
    name, domain = raw.get("name"), raw.get("domain", PipelineSpec.model_fields["domain"].default)
    return f"{domain}.{name}" if isinstance(name, str) and isinstance(domain, str) else None


def _set_errors(loaded: list[LoadedSpec], aside: dict[str, str]) -> list[tuple[LoadedSpec, SpecError]]:
    """What is wrong with each spec against the others (at most one error per spec, in file order); ``aside``
    names the specs already set aside, so a spec needing one says so."""
    errors: list[tuple[LoadedSpec, SpecError]] = []
    by_name: dict[str, LoadedSpec] = {}  # by reference, <domain>.<name>
    by_folded: dict[str, LoadedSpec] = {}
    for item in loaded:
        ref = item.spec.ref
        other = by_folded.get(ref.lower())
        if other is not None:
            problem = (
                f"{item.spec.name!r} is already declared in domain {item.spec.domain!r} by {other.where}"
                if other.spec.ref == ref
                else f"{ref!r} differs only in case from {other.spec.ref!r} in {other.where}, and their warehouse "
                "tables would be one (DuckDB does not tell them apart)"
            )
            errors.append((item, _spec_error(item.where, "name", problem, "rename one of them")))
            continue
        by_name[ref] = by_folded[ref.lower()] = item

    def unknown(field: str, item: LoadedSpec, name: str, problem: str, fix: str) -> SpecError:
        ref = item.spec.resolve(name)
        if ref in aside and ref not in by_name:
            return _spec_error(
                item.where,
                field,
                f"{ref!r} is declared in {aside[ref]}, which is invalid",
                f"fix {aside[ref]} (its own error is reported too)",
            )
        return _spec_error(item.where, field, problem, fix)

    faulty = {id(item) for item, _ in errors}
    for item in loaded:
        if id(item) in faulty:
            continue
        try:
            _check_against(item, by_name, unknown)
        except SpecError as exc:
            errors.append((item, exc))
    if not errors:
        try:
            _check_acyclic(by_name)
        except _CycleError as exc:
            errors.append((exc.item, exc.error))
    return errors


def _partitions_text(p: Partitioning) -> str:
    return f"start: {p.start}, last: {p.last or '(unset)'}, timezone: {p.timezone}"


def _check_domain_partitions(item: LoadedSpec, by_name: dict[str, LoadedSpec]) -> None:
    """Refuse ``item`` when its partitions differ from those of its domain's first pipeline of the same type: the
    daily (or hourly) pipelines of a domain run as one job, which Dagster builds only over one partitions definition
    (it would fail the whole code location)."""
    ours = item.spec.partitions
    if ours.type == "none":
        return
    first = next(
        (o for o in by_name.values() if o.spec.domain == item.spec.domain and o.spec.partitions.type == ours.type), item
    )
    theirs = first.spec.partitions
    if first is item or (theirs.start, theirs.last, theirs.timezone) == (ours.start, ours.last, ours.timezone):
        return
    raise _spec_error(
        item.where,
        "partitions",
        f"the {ours.type} pipelines of domain {item.spec.domain!r} run as one job, which needs one set of partitions, "
        f"but {first.spec.name} ({first.where}) has {_partitions_text(theirs)} and this one {_partitions_text(ours)}",
        "give both the same start, last and timezone, or move this pipeline to another domain",
    )


def _check_input_span(item: LoadedSpec, name: str, source: LoadedSpec) -> None:
    """Refuse a partitioned mart whose partitions run past the last partition of its input ``source``: Dagster
    would fail each such partition's run (its input partition does not exist)."""
    ours, theirs = item.spec.partitions, source.spec.partitions
    if ours.type == "none" or theirs.type == "none" or theirs.last is None:
        return
    if ours.last is not None and ours.last <= theirs.last:
        return
    reach = f"run to {ours.last}" if ours.last else "run on (no partitions.last)"
    raise _spec_error(
        item.where,
        "partitions.last",
        f"its partitions {reach}, past the last partition of its input {name} ({theirs.last}, in {source.where}), "
        "so those partitions would have no input",
        f"set last: {theirs.last} or earlier, or extend the partitions.last of {name}",
    )


def _check_against(item: LoadedSpec, by_name: dict[str, LoadedSpec], unknown: Callable[..., SpecError]) -> None:
    """Raise the first thing ``item`` gets wrong about the other specs (``by_name``)."""
    spec = item.spec
    _check_domain_partitions(item, by_name)
    for name in spec.after:
        if spec.resolve(name) not in by_name or spec.resolve(name) == spec.ref:
            raise unknown(
                "after",
                item,
                name,
                f"{name!r} is not another pipeline{_elsewhere(spec, name, by_name)}",
                f"use one of {_choices(spec, by_name, exclude=spec.ref)}",
            )
    for index, column in enumerate(spec.columns):
        ref = column.references
        if ref is None:
            continue
        target = by_name.get(spec.resolve(ref.dataset))
        if target is None or target.spec.source is None or ref.column not in {c.name for c in target.spec.columns}:
            raise unknown(
                f"columns.{index}.references",
                item,
                ref.dataset,
                f"{ref.dataset}.{ref.column} is not a column of a source pipeline"
                + _elsewhere(spec, ref.dataset, by_name),
                "name a declared column",
            )
    if spec.transform is None:
        return
    views: dict[str, str] = {}
    for name in spec.transform.inputs:
        if spec.resolve(name) not in by_name:
            raise unknown(
                "transform.inputs",
                item,
                name,
                f"unknown dataset {name!r}{_elsewhere(spec, name, by_name)}",
                f"use one of {_choices(spec, by_name)}",
            )
        if spec.resolve(name) == spec.ref:
            raise _spec_error(
                item.where, "transform.inputs", "a mart cannot read itself", f"remove {name} from the inputs"
            )
        _check_input_span(item, name, by_name[spec.resolve(name)])
        bare = name.rpartition(".")[2]
        if bare in views and views[bare] != spec.resolve(name):
            raise _spec_error(
                item.where,
                "transform.inputs",
                f"{views[bare]} and {spec.resolve(name)} are both inputs, and the SQL would see both as the view {bare}",
                "keep one, or build a mart of one of them under another name first",
            )
        views[bare] = spec.resolve(name)
    item.transform_sql()


def _elsewhere(spec: PipelineSpec, name: str, by_name: dict[str, LoadedSpec]) -> str:
    """For a bare name unknown in ``spec``'s domain: the pipelines of that name in other domains, as a hint."""
    if parse_ref(name):
        return ""
    found = sorted(ref for ref in by_name if ref.partition(".")[2] == name)
    if not found:
        return ""
    return (
        f" of domain {spec.domain!r} (a name without a domain is its own domain's; did you mean {' or '.join(found)}?)"
    )


def _choices(spec: PipelineSpec, by_name: dict[str, LoadedSpec], exclude: str | None = None) -> list[str]:
    """The pipelines a reference of ``spec`` may name: its own domain's by name, the others as <domain>.<name>."""
    return sorted(
        item.spec.name if item.spec.domain == spec.domain else ref for ref, item in by_name.items() if ref != exclude
    )


class _CycleError(Exception):
    """A cycle among transform inputs, with the spec it was found at."""

    def __init__(self, item: LoadedSpec, error: SpecError):
        super().__init__(str(error))
        self.item, self.error = item, error


def _check_acyclic(by_name: dict[str, LoadedSpec]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail, name])
            raise _CycleError(
                by_name[name], _spec_error(by_name[name].where, "transform.inputs", f"cycle {cycle}", "break the cycle")
            )
        state[name] = 1
        spec = by_name[name].spec
        for dep in spec.transform.inputs if spec.transform else []:
            visit(spec.resolve(dep), [*trail, name])
        state[name] = 2

    for name in by_name:
        visit(name, [])
