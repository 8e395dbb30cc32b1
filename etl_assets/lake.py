"""The lake: Parquet files per (asset, partition), written atomically, and the IO manager that owns them.

Layout: ``<root>/<asset key path>/<partition>.parquet`` (``_all.parquet`` for an unpartitioned asset). A write goes
to a hidden temporary name in the same directory and is renamed over the final name, so readers see the old
file or the new one, never half of one, and a re-run replaces the partition instead of adding to it.
"""


import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
    TableColumn,
    TableSchema,
)

from etl_assets.errors import no_retry_for_permanent_errors
from etl_assets.settings import current_settings

UNPARTITIONED = "_all"


class LakeError(RuntimeError):
    """A lake read or write cannot be done; the message says what to do."""


@dataclass(frozen=True)
class WriteResult:
    path: Path
    rows: int
    bytes: int
    seconds: float
    schema: pa.Schema


@dataclass(frozen=True)
class LakeTable:
    """A handle on lake Parquet files: read them as a DuckDB relation or an Arrow stream, never via pandas.

    Attributes:
        name: The asset key, for messages.
        paths: Parquet files, one per partition.
        partitions: The partition key of each file (``_all`` when unpartitioned).
    """

    name: str
    paths: tuple[str, ...]
    partitions: tuple[str, ...]

    def relation(self, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyRelation:
        """A lazy DuckDB relation over the files (columns unified by name across partitions)."""
        con = con or duckdb.connect()
        return con.read_parquet(list(self.paths), union_by_name=True)

    def arrow_reader(self, batch_size: int = 65_536) -> pa.RecordBatchReader:
        """Stream the files as Arrow record batches."""
        import pyarrow.dataset as ds

        dataset = ds.dataset(list(self.paths), format="parquet")
        return dataset.scanner(batch_size=batch_size).to_reader()

    def by_partition(self) -> dict[str, "LakeTable"]:
        """One handle per partition file, keyed by partition."""
        return {p: LakeTable(self.name, (path,), (p,)) for p, path in zip(self.partitions, self.paths)}

    @property
    def num_rows(self) -> int:
        """Row count from the Parquet footers (no data read)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.paths)

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.paths[0])


@dataclass(frozen=True)
class LakeStream:
    """A stream for the lake IO manager plus metadata that is only known once the stream has been consumed."""

    reader: pa.RecordBatchReader
    describe: Callable[[], dict]


class LakeStorage(ConfigurableResource):
    """Storage of the lake. Local directories today; the interface is what an S3-compatible store implements.

    Attributes:
        root: Lake root. Empty means ``$ETL_DATA_DIR/lake``, read when used.
    """

    root: str = ""

    def root_path(self) -> Path:
        if self.root.startswith(("s3://", "gs://")):
            raise LakeError(f"lake root {self.root!r}: object stores are not implemented yet; use a local directory")
        return Path(self.root).expanduser().resolve() if self.root else current_settings().lake_dir

    def path_for(self, key_path: Sequence[str], partition: str | None) -> Path:
        """The file that holds ``partition`` of the asset with ``key_path``."""
        name = partition or UNPARTITIONED
        if "/" in name or name.startswith("."):
            raise LakeError(f"partition key {name!r} cannot be used as a file name")
        return self.root_path().joinpath(*key_path) / f"{name}.parquet"

    def scratch_path(self, name: str) -> Path:
        """A path for an intermediate file of one step, under the lake's hidden ``.tmp`` folder; the caller deletes it."""
        directory = self.root_path() / ".tmp"
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{name}.parquet"

    def partitions(self, key_path: Sequence[str]) -> list[str | None]:
        """Partitions of an asset present in the lake (``[None]`` for an unpartitioned one)."""
        directory = self.root_path().joinpath(*key_path)
        if not directory.is_dir():
            return []
        keys = sorted(p.stem for p in directory.glob("*.parquet") if not p.name.startswith("."))
        return [None if k == UNPARTITIONED else k for k in keys]

    def exists(self, key_path: Sequence[str], partition: str | None) -> bool:
        return self.path_for(key_path, partition).is_file()

    def write(self, key_path: Sequence[str], partition: str | None, data: object) -> WriteResult:
        """Replace one partition's file with ``data`` atomically.

        Args:
            key_path: The asset key's path.
            partition: Partition key, or None when unpartitioned.
            data: A DuckDB relation, an Arrow table, or an Arrow RecordBatchReader (streamed batch by batch).
        """
        final = self.path_for(key_path, partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.stem}.{uuid.uuid4().hex}.tmp"
        started = time.perf_counter()
        try:
            _writer_for(data)(tmp)
            meta = pq.ParquetFile(tmp).metadata
            rows, schema = meta.num_rows, meta.schema.to_arrow_schema()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return WriteResult(final, rows, final.stat().st_size, time.perf_counter() - started, schema)

    def table(self, key_path: Sequence[str], partitions: Iterable[str | None], *, allow_missing: bool = False) -> LakeTable:
        """A handle on the given partitions of an asset.

        Raises:
            LakeError: a partition has not been materialized (unless ``allow_missing``) or none exists at all.
        """
        paths, keys, missing = [], [], []
        for partition in partitions:
            path = self.path_for(key_path, partition)
            if path.is_file():
                paths.append(str(path))
                keys.append(partition or UNPARTITIONED)
            else:
                missing.append(partition or UNPARTITIONED)
        name = "/".join(key_path)
        if missing and not allow_missing or not paths:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise LakeError(f"{name}: partition(s) {shown} not in the lake at {self.root_path()}; materialize them first")
        return LakeTable(name, tuple(paths), tuple(keys))


def _writer_for(data: object) -> Callable[[Path], None]:
    if isinstance(data, duckdb.DuckDBPyRelation):
        return lambda path: data.write_parquet(str(path), compression="zstd")
    if isinstance(data, pa.Table):
        return lambda path: pq.write_table(data, path, compression="zstd")
    if isinstance(data, pa.RecordBatchReader):
        return lambda path: _write_stream(data, path)
    raise LakeError(
        f"the lake stores DuckDB relations and Arrow tables or streams, not {type(data).__name__}; return one of those"
    )


def _write_stream(reader: pa.RecordBatchReader, path: Path) -> None:
    with pq.ParquetWriter(path, reader.schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_batch(batch)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def table_schema(schema: pa.Schema) -> TableSchema:
    """Dagster column schema metadata for an Arrow schema."""
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])


def write_metadata(result: WriteResult) -> dict:
    """Materialization metadata for one lake write."""
    return {
        "dagster/row_count": result.rows,
        "dagster/column_schema": table_schema(result.schema),
        "lake_path": MetadataValue.path(str(result.path)),
        "bytes_written": result.bytes,
        "write_seconds": round(result.seconds, 3),
    }


class LakeIOManager(ConfigurableIOManager):
    """Stores every asset output as one Parquet file per partition; hands inputs over as a :class:`LakeTable`."""

    lake: ResourceDependency[LakeStorage]

    def handle_output(self, context: OutputContext, obj: object) -> None:
        if obj is None:
            return
        partitions = context.asset_partition_keys if context.has_asset_partitions else [None]
        if len(partitions) != 1:
            raise LakeError(
                f"{context.asset_key.to_user_string()}: a run writes one partition at a time to the lake, "
                f"got {len(partitions)}; launch a backfill with one run per partition"
            )
        with no_retry_for_permanent_errors():  # a stream may find the source unreadable only now
            if isinstance(obj, LakeStream):
                result = self.lake.write(context.asset_key.path, partitions[0], obj.reader)
                context.add_output_metadata({**write_metadata(result), **obj.describe()})
            else:
                result = self.lake.write(context.asset_key.path, partitions[0], obj)
                context.add_output_metadata(write_metadata(result))

    def load_input(self, context: InputContext) -> LakeTable:
        key = context.asset_key
        if context.has_asset_partitions:
            partitions: list[str | None] = list(context.asset_partition_keys)
        else:
            partitions = [None]
        # A reader of many partitions (an unpartitioned mart over a partitioned dataset) takes those that exist.
        allow_missing = len(partitions) > 1
        return self.lake.table(key.path, partitions, allow_missing=allow_missing)
