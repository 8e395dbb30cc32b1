"""The extract step: one partition of a source pipeline's rows as delivered, streamed for the raw lake partition."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import cast

import pyarrow as pa
from dagster import MetadataValue

from etl_assets.errors import ContractError
from etl_assets.keys import SOURCE_COLUMN, raw_key
from etl_assets.lake import LakeStorage, LakeStream
from etl_assets.pipelines.spec import PipelineSpec
from etl_assets.resources.api import ApiSource, ExtractStats, RestApiSource
from etl_assets.resources.files import FilesSource, LandingFilesSource, PartitionRead
from etl_assets.resources.sql import SqlDatabaseSource, SqlSource
from etl_assets.settings import duckdb_connection
from etl_assets.sqlutil import quote_ident

Window = tuple[datetime, datetime]


def extract(
    spec: PipelineSpec,
    source: RestApiSource | SqlDatabaseSource | LandingFilesSource,
    partition: str | None,
    window: Window | None,
    *,
    lake: LakeStorage,
    log: logging.Logger | logging.LoggerAdapter,
    own_file: str | None = None,
) -> LakeStream:
    """Read ``partition`` of ``spec``'s source.

    Args:
        source: The resource of the spec's source (its kind's).
        partition: The partition key, ``None`` for an unpartitioned pipeline.
        window: The partition's time window ``[start, end)``, ``None`` for an unpartitioned pipeline.
        lake: The lake, whose current raw partition a files source compares with what it reads now.
        log: Where a files source reports the files it refuses or leaves out.
        own_file: The landing file this run was launched for (by the file sensor); a manual or backfill run has none.

    Returns:
        The rows (text values plus ``_etl_source``) and, once they are consumed, the extract's figures.
    """
    assert spec.source is not None, f"{spec.ref} is a transform pipeline: it has no source to extract"
    # the resource is the one of the source's kind (assets.source_resource_key)
    if spec.source.kind == "api":
        return extract_api(spec, cast(RestApiSource, source), window)
    if spec.source.kind == "sql":
        return extract_sql(spec, cast(SqlDatabaseSource, source), window)
    return extract_files(spec, cast(LandingFilesSource, source), partition, lake=lake, log=log, own_file=own_file)


def extract_api(spec: PipelineSpec, api: RestApiSource, window: Window | None) -> LakeStream:
    """An API source's pages, every batch given the first one's columns (see :func:`conforming`)."""
    assert isinstance(spec.source, ApiSource), f"{spec.ref} has no api source"
    started = time.perf_counter()
    columns = [c.name for c in spec.columns]
    stats = ExtractStats()
    pages = api.extract(spec.source, columns, window=window, stats=stats)
    first = next(pages, None)
    if first is None:
        first = pa.RecordBatch.from_pylist(
            [], schema=pa.schema([pa.field(c, pa.string()) for c in [*columns, "_etl_source"]])
        )
    schema = first.schema

    def batches() -> Iterator[pa.RecordBatch]:
        yield first
        yield from pages

    reader = pa.RecordBatchReader.from_batches(schema, conforming(schema, batches(), spec.ref))
    return LakeStream(
        reader,
        lambda: {
            "pages": stats.pages,
            "records_extracted": stats.records,
            "request_retries": stats.retries,
            "retry_reasons": MetadataValue.json(stats.retry_reasons),
            "source_position": stats.max_watermark or "",
            "extract_seconds": round(time.perf_counter() - started, 3),
            "base_url": api.display_url(),
        },
    )


def extract_sql(spec: PipelineSpec, db: SqlDatabaseSource, window: Window | None) -> LakeStream:
    """A database table's or query's rows, within the window when there is one."""
    src = spec.source
    assert isinstance(src, SqlSource), f"{spec.ref} has no sql source"
    started = time.perf_counter()
    reader = db.extract(src, window=window)
    return LakeStream(
        reader,
        lambda: {
            "source_position": f"{src.table or 'query'} window {window[0].isoformat()}..{window[1].isoformat()}"
            if window
            else (src.table or "query"),
            "extract_seconds": round(time.perf_counter() - started, 3),
            "fast_path": db.fast_path(),
        },
    )


def extract_files(
    spec: PipelineSpec,
    landing: LandingFilesSource,
    partition: str | None,
    *,
    lake: LakeStorage,
    log: logging.Logger | logging.LoggerAdapter,
    own_file: str | None = None,
) -> LakeStream:
    """The landing files of the partition (refused ones moved to the landing quarantine, each logged)."""
    assert isinstance(spec.source, FilesSource), f"{spec.ref} has no files source"
    started = time.perf_counter()
    con = duckdb_connection()
    read = landing.open_partition(
        con,
        spec.ref,
        spec.source,
        partition,
        required=[c.name for c in spec.columns if not c.nullable],
        own_file=own_file,
    )
    for refusal in read.moved:
        log.warning(
            f"{spec.ref}: {refusal.file.delivered.name} refused and moved to landing quarantine: {refusal.reason}"
        )
    for refusal in read.skipped:
        log.warning(f"{spec.ref}: {refusal.file.delivered.name} left out (its own run judges it): {refusal.reason}")
    gone = sources_no_longer_delivered(lake, spec, partition, read)
    if gone:
        log.warning(
            f"{spec.ref}: the partition's raw data held rows of {', '.join(gone)}, which is no longer "
            "in landing or the archive (expired by retention.archive_days, or removed); its rows "
            "are not in the new raw partition"
        )
    reader = read.stream()
    return LakeStream(
        reader,
        lambda: {
            "source_position": MetadataValue.json([f.name for f in read.files]),
            "files_no_longer_delivered": MetadataValue.json(gone),
            "files": len(read.files),
            "files_archived": sum(f.archived for f in read.files),
            "files_refused": MetadataValue.json({r.file.delivered.name: r.reason for r in read.moved}),
            "files_left_out": MetadataValue.json({r.file.delivered.name: r.reason for r in read.skipped}),
            "malformed_rows": read.malformed_rows,
            "extract_seconds": round(time.perf_counter() - started, 3),
        },
    )


def conforming(schema: pa.Schema, batches: Iterator[pa.RecordBatch], dataset: str) -> Iterator[pa.RecordBatch]:
    """Give every batch the first batch's columns; a column that appears only later is a schema change.

    Raises:
        ContractError: a later batch has a column the first has not.
    """
    for index, batch in enumerate(batches):
        extra = [n for n in batch.schema.names if n not in schema.names]
        if extra:
            raise ContractError(
                f"{dataset}: page {index + 1} has new column(s) {extra} not in earlier pages; "
                "re-run so the raw schema includes them, or declare them in the spec"
            )
        arrays = [
            batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type) for f in schema
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def sources_no_longer_delivered(
    lake: LakeStorage, spec: PipelineSpec, partition: str | None, read: PartitionRead
) -> list[str]:
    """Files whose rows the partition's current raw data holds but that are among its inputs no more."""
    stored = lake.stored_path(raw_key(spec).path, partition)
    if stored is None or stored.name.endswith(".view.json"):
        return []
    with duckdb_connection() as con:
        before = {
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT {quote_ident(SOURCE_COLUMN)} FROM read_parquet(?)", [str(stored)]
            ).fetchall()
        }
    return sorted(before - {f.name for f in read.files} - {None})
