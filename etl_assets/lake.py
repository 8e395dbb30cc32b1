"""The lake: Parquet files per (asset, partition), written atomically, and the IO manager that owns them.

Layout: ``<root>/<asset key path>/<partition>.parquet`` (``_all.parquet`` for an unpartitioned asset). A write goes
to a hidden temporary name in the same directory and is renamed over the final name, so readers see the old
file or the new one, never half of one, and a re-run replaces the partition instead of adding to it.

A partition can also be stored as a view (:class:`LakeView`): ``<partition>.view.json`` names a snapshot of a
source Parquet file (a hard link, so replacing or expiring the source later does not change it), a small Parquet
file of the source rows left out, and the SELECT list over the source's columns. ``clean/`` partitions are stored
so: the typed, valid rows are the raw partition minus the quarantined positions, cast as they are read, instead of
a second copy of every row. Readers get either kind through :meth:`LakeTable.relation` and see no difference.

Writers of one partition take its lock (``fcntl.flock`` on ``.<partition>.lock`` beside it, removed when released)
around the whole write: the temporary files, the switch (the rename) and the clean-up of the files the previous
partition used. Two writers of one partition at once therefore give the result of the second, never a mix, and a
writer never deletes a file another writer is writing or a manifest names. Under the lock, every hidden file of the
partition's name patterns (``.<partition>.<uuid>.tmp``, ``.<partition>.<generation>.source.parquet``,
``.excluded.parquet``, ``.view.tmp``) that the new partition does not use is left over, by the previous partition or
by a writer that was killed, and is removed. A view manifest that cannot be read (corrupt, half-restored) does not
stop a new write of its partition: it is replaced, and its files go with the other leftovers. The lock is a local
file system's. A lake on object storage (``ETL_LAKE_URL=s3://bucket/prefix``) keeps this layout as objects, with
whole-object writes instead of renames and a local read cache instead of pins: see :mod:`etl_assets.lake_s3`.
"""

import fcntl
import glob
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
    TableSchemaMetadataValue,
    get_dagster_logger,
)

from etl_assets.errors import no_retry_for_permanent_errors
from etl_assets.keys import UNPARTITIONED
from etl_assets.objectstore import is_object_url
from etl_assets.settings import duckdb_connection, lake_url, require_shared_storage
from etl_assets.sqlutil import quote_literal

VIEW_SUFFIX = ".view.json"
VIEW_FORMAT = "etl_assets.lake.view/1"
# Hard links that hold the files a running step reads (see LakeStorage.pinned); a killed step's are stale.
PINS_DIR = ".etl_pins"
POSITION_COLUMN = "position"  # the excluded-rows file's one column: a row's 0-based position in the source file
# Test-only hook, off unless set: seconds every lake write sleeps holding its partition's lock, once its temporary
# files are written and before the switch, so tests can overlap writers or SIGKILL one there.
TEST_PAUSE_IN_LAKE_WRITE_ENV = "ETL_TEST_PAUSE_IN_LAKE_WRITE_SECONDS"
# Test-only, with the pause hooks: a pause ends early once this file exists, so a test can hold a writer for as long
# as its checks take (a loaded machine) and no longer.
TEST_PAUSE_RELEASE_ENV = "ETL_TEST_PAUSE_RELEASE_FILE"


_object_lakes: dict[str, "ObjectLake"] = {}

if TYPE_CHECKING:
    from etl_assets.lake_s3 import ObjectLake


class LakeError(RuntimeError):
    """A lake read or write cannot be done; the message says what to do."""


@dataclass(frozen=True)
class WriteResult:
    path: Path  # the file written; for an object-store lake, its copy in the local read cache
    rows: int
    bytes: int
    seconds: float
    schema: pa.Schema
    url: str | None = None  # the object written, on an object-store lake (s3://bucket/key)


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

    @property
    def has_views(self) -> bool:
        return any(p.endswith(VIEW_SUFFIX) for p in self.paths)

    def relation(self, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyRelation:
        """A lazy DuckDB relation over the partitions (columns unified by name across them)."""
        con = con or duckdb.connect()
        files = [p for p in self.paths if not p.endswith(VIEW_SUFFIX)]
        if not self.has_views:
            return con.read_parquet(files, union_by_name=True)
        parts = [view_sql(p) for p in self.paths if p.endswith(VIEW_SUFFIX)]
        if files:
            parts.append(f"SELECT * FROM read_parquet({_sql_list(files)}, union_by_name = true)")
        return con.sql(" UNION ALL BY NAME ".join(f"({part})" for part in parts))

    def arrow_reader(self, batch_size: int = 65_536) -> pa.RecordBatchReader:
        """Stream the partitions as Arrow record batches."""
        if self.has_views:
            con = duckdb_connection()
            reader = self.relation(con).to_arrow_reader(batch_size)

            def batches():
                try:
                    yield from reader
                finally:
                    con.close()

            return pa.RecordBatchReader.from_batches(reader.schema, batches())
        import pyarrow.dataset as ds

        dataset = ds.dataset(list(self.paths), format="parquet")
        return dataset.scanner(batch_size=batch_size).to_reader()

    def by_partition(self) -> dict[str, "LakeTable"]:
        """One handle per partition, keyed by partition."""
        return {p: LakeTable(self.name, (path,), (p,)) for p, path in zip(self.partitions, self.paths)}

    @property
    def num_rows(self) -> int:
        """Row count from the Parquet footers and view manifests (no data read)."""
        return sum(
            _read_manifest(Path(p))["rows"] if p.endswith(VIEW_SUFFIX) else pq.ParquetFile(p).metadata.num_rows
            for p in self.paths
        )

    @property
    def schema(self) -> pa.Schema:
        if not self.paths[0].endswith(VIEW_SUFFIX):
            return pq.read_schema(self.paths[0])
        with duckdb_connection() as con:
            return (
                LakeTable(self.name, self.paths[:1], self.partitions[:1]).relation(con).limit(0).to_arrow_table().schema
            )


@dataclass(frozen=True)
class LakeView:
    """An output stored as a view over a source Parquet file (see the module docstring).

    Attributes:
        source: The Parquet file the view reads (snapshotted by a hard link when written).
        select: The SELECT list over the source's columns; it may not use ``file_row_number``'s name for itself.
        excluded: A relation with one BIGINT column ``position``: the source rows (0-based) left out.
        stats: JSON values kept in the manifest for readers that prune partitions (e.g. key bounds).
    """

    source: str
    select: str
    excluded: duckdb.DuckDBPyRelation
    stats: dict | None = None


def _sql_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join(quote_literal(p) for p in paths) + "]"


def _read_manifest(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LakeError(f"{path}: unreadable lake view manifest ({exc}); re-materialize the partition") from exc
    return parse_manifest(text, path)


def parse_manifest(text: str | bytes, path: object) -> dict:
    """A view manifest's fields, checked (``path`` names it in errors: a file, or an object's URL)."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise LakeError(f"{path}: unreadable lake view manifest ({exc}); re-materialize the partition") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != VIEW_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise LakeError(f"{path}: field format is {found!r}, expected {VIEW_FORMAT!r}; re-materialize the partition")
    for field, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(field), kind) or isinstance(manifest.get(field), bool):
            raise LakeError(
                f"{path}: field {field} is {manifest.get(field)!r}, expected a {kind.__name__}; "
                "re-materialize the partition"
            )
    return manifest


_MANIFEST_FIELDS = {"source": str, "excluded": str, "select": str, "excluded_rows": int, "rows": int}


def view_files(manifest_path: str) -> tuple[Path, Path]:
    """The source snapshot and the excluded-positions file a view partition reads."""
    path = Path(manifest_path)
    manifest = _read_manifest(path)
    return path.parent / manifest["source"], path.parent / manifest["excluded"]


def view_stats(manifest_path: str) -> dict | None:
    """The stats a view partition was written with (None for a Parquet partition)."""
    if not manifest_path.endswith(VIEW_SUFFIX):
        return None
    stats = _read_manifest(Path(manifest_path)).get("stats", {})
    if not isinstance(stats, dict):
        raise LakeError(f"{manifest_path}: field stats is {stats!r}, expected an object; re-materialize the partition")
    return stats


def view_sql(manifest_path: str) -> str:
    """The SELECT a view partition stands for, runnable in any DuckDB session."""
    path = Path(manifest_path)
    manifest = _read_manifest(path)
    source = quote_literal(str(path.parent / manifest["source"]))
    sql = f"SELECT {manifest['select']} FROM read_parquet({source}, file_row_number = true)"
    if manifest["excluded_rows"]:
        excluded = quote_literal(str(path.parent / manifest["excluded"]))
        sql += f" WHERE file_row_number NOT IN (SELECT {POSITION_COLUMN} FROM read_parquet({excluded}))"
    return sql


@dataclass(frozen=True)
class LakeStream:
    """A stream for the lake IO manager plus metadata that is only known once the stream has been consumed."""

    reader: pa.RecordBatchReader
    describe: Callable[[], dict]


class LakeStorage(ConfigurableResource):
    """Storage of the lake: a local directory, or an object store (``s3://bucket/prefix``, see
    :mod:`etl_assets.lake_s3`) behind the same methods.

    Attributes:
        root: Lake root. Empty means ``$ETL_LAKE_URL``, else ``$ETL_DATA_DIR/lake``, read when used.
    """

    root: str = ""

    def location(self) -> str:
        """The lake's root as configured: a directory or an ``s3://`` URL.

        Raises:
            DeploymentRefused: ``ETL_DEPLOYMENT=distributed`` and the lake is a local directory (each host would
                have its own).
        """
        location = self.root or lake_url()
        require_shared_storage("lake", location)
        return location

    def remote(self) -> "ObjectLake | None":
        """The object-store lake when the root is an ``s3://`` URL, else None (a local lake)."""
        location = self.location()
        if location.startswith("gs://"):
            raise LakeError(f"lake root {location!r}: only s3:// object stores are supported; use s3://bucket/prefix")
        if not is_object_url(location):
            return None
        from etl_assets.lake_s3 import ObjectLake

        if location not in _object_lakes:
            _object_lakes[location] = ObjectLake(location)
        return _object_lakes[location]

    def root_path(self) -> Path:
        """The lake's local directory; for an object-store lake, its local working directory (the read cache and
        the files being written), which is what a step's DuckDB connection may read."""
        if (remote := self.remote()) is not None:
            remote.work.mkdir(parents=True, exist_ok=True)
            return remote.work
        return Path(self.location()).expanduser().resolve()

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
        if (remote := self.remote()) is not None:
            return remote.partitions(key_path)
        directory = self.root_path().joinpath(*key_path)
        if not directory.is_dir():
            return []
        names = {p.stem for p in directory.glob("*.parquet") if not p.name.startswith(".")}
        names |= {p.name[: -len(VIEW_SUFFIX)] for p in directory.glob(f"*{VIEW_SUFFIX}") if not p.name.startswith(".")}
        return [None if k == UNPARTITIONED else k for k in sorted(names)]

    def exists(self, key_path: Sequence[str], partition: str | None) -> bool:
        if (remote := self.remote()) is not None:
            return remote.stored(key_path, partition) is not None
        return self.stored_path(key_path, partition) is not None

    def stored_path(self, key_path: Sequence[str], partition: str | None) -> Path | None:
        """The file holding ``partition``: its Parquet file or its view manifest (the newer, should both be left by
        a crash between writing one and removing the other), or None. For an object-store lake: a local copy of it."""
        if (remote := self.remote()) is not None:
            copy = remote.local_copy(key_path, partition)
            return Path(copy) if copy is not None else None
        parquet = self.path_for(key_path, partition)
        view = parquet.with_name(parquet.stem + VIEW_SUFFIX)
        found = [p for p in (parquet, view) if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None

    def write(self, key_path: Sequence[str], partition: str | None, data: object) -> WriteResult:
        """Replace one partition's file with ``data`` atomically.

        Args:
            key_path: The asset key's path.
            partition: Partition key, or None when unpartitioned.
            data: A DuckDB relation, an Arrow table, an Arrow RecordBatchReader (streamed batch by batch), or a
                :class:`LakeView`.
        """
        if (remote := self.remote()) is not None:
            return remote.write(key_path, partition, data)
        if isinstance(data, LakeView):
            return self._write_view(key_path, partition, data)
        final = self.path_for(key_path, partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        writer = _writer_for(data)
        started = time.perf_counter()
        with _partition_lock(final.parent, final.stem):
            tmp = final.parent / f".{final.stem}.{uuid.uuid4().hex}.tmp"
            try:
                writer(tmp)
                meta = pq.ParquetFile(tmp).metadata
                rows, schema = meta.num_rows, meta.schema.to_arrow_schema()
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                _test_pause(final, "before the switch")
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(final.parent)
            _remove_view(final.with_name(final.stem + VIEW_SUFFIX))
            _remove_leftovers(final.parent, final.stem, keep=())
            return WriteResult(final, rows, final.stat().st_size, time.perf_counter() - started, schema)

    def _write_view(self, key_path: Sequence[str], partition: str | None, view: LakeView) -> WriteResult:
        """Replace one partition with a view: snapshot the source, write the excluded positions, then rename the
        manifest over the old one (the switch); the previous partition's files go after it."""
        parquet = self.path_for(key_path, partition)
        directory, name = parquet.parent, parquet.stem
        directory.mkdir(parents=True, exist_ok=True)
        with _partition_lock(directory, name):
            return self._write_view_locked(directory, name, view)

    def _write_view_locked(self, directory: Path, name: str, view: LakeView) -> WriteResult:
        parquet = directory / f"{name}.parquet"
        manifest_path = directory / f"{name}{VIEW_SUFFIX}"
        generation = uuid.uuid4().hex[:12]
        source = directory / f".{name}.{generation}.source.parquet"
        excluded = directory / f".{name}.{generation}.excluded.parquet"
        tmp = directory / f".{name}.{generation}.view.tmp"
        started = time.perf_counter()
        try:
            try:
                os.link(view.source, source)  # a snapshot: the raw file may be replaced or expired later
            except OSError:  # a file system without hard links (or another device): copy instead
                shutil.copyfile(view.source, source)
            view.excluded.write_parquet(str(excluded), compression="zstd")
            excluded_rows = pq.ParquetFile(excluded).metadata.num_rows
            source_rows = pq.ParquetFile(source).metadata.num_rows
            manifest = {
                "format": VIEW_FORMAT,
                "source": source.name,
                "excluded": excluded.name,
                "select": view.select,
                "source_rows": source_rows,
                "excluded_rows": excluded_rows,
                "rows": source_rows - excluded_rows,
                "stats": view.stats or {},
            }
            with open(tmp, "w") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            for path in (excluded, source):
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
            _test_pause(manifest_path, "before the switch")
            previous = _previous_manifest(manifest_path)
            os.replace(tmp, manifest_path)
        except BaseException:
            for path in (tmp, source, excluded):
                path.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        parquet.unlink(missing_ok=True)
        for old in _named_files(previous):
            if old not in (source.name, excluded.name):
                (directory / old).unlink(missing_ok=True)
        _remove_leftovers(directory, name, keep=(source.name, excluded.name))
        with duckdb_connection() as con:
            schema = con.sql(view_sql(str(manifest_path))).limit(0).to_arrow_table().schema
        return WriteResult(
            manifest_path,
            manifest["rows"],
            manifest_path.stat().st_size + excluded.stat().st_size,
            time.perf_counter() - started,
            schema,
        )

    def remove(self, key_path: Sequence[str], partition: str | None) -> list[str]:
        """Remove one partition (its Parquet file or view, and every leftover of earlier writes) under its lock, so a
        concurrent write of it is not cut short. Returns the names of the files removed."""
        if (remote := self.remote()) is not None:
            return remote.remove(key_path, partition)
        parquet = self.path_for(key_path, partition)
        directory, name = parquet.parent, parquet.stem
        if not directory.is_dir():
            return []
        manifest = directory / f"{name}{VIEW_SUFFIX}"
        with _partition_lock(directory, name):
            removed = [p.name for p in (parquet, manifest) if p.is_file()]
            parquet.unlink(missing_ok=True)
            _remove_view(manifest)
            return removed + _remove_leftovers(directory, name, keep=())

    @contextmanager
    def pinned(self, table: LakeTable) -> Iterator[LakeTable]:
        """``table`` with each Parquet file pinned (hard-linked under ``<root>/.etl_pins/``) while the block runs.

        A partition may be rewritten while a step reads it (a re-extract next to a validation): the rename replaces
        the name, not the file a hard link holds, so every read inside the block (and a view written over a pinned
        source, which links it again) sees one version of the rows. View partitions are not pinned: a rewrite
        removes the old view's files, so a read of a view that is replaced mid-way fails instead of mixing.
        An object-store lake's tables are local copies already, one version each (named by its ETag), kept as long
        as they are used: nothing to pin.
        """
        if self.remote() is not None:
            yield table
            return
        pins_dir = self.root_path() / PINS_DIR
        _remove_stale_pins(pins_dir)
        pinned_paths, made = [], []
        try:
            for path in table.paths:
                if path.endswith(VIEW_SUFFIX):
                    pinned_paths.append(path)
                    continue
                pins_dir.mkdir(parents=True, exist_ok=True)
                pin = pins_dir / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
                try:
                    os.link(path, pin)
                except FileNotFoundError as exc:
                    raise LakeError(
                        f"{table.name}: {path} was removed before it could be read; run the step again"
                    ) from exc
                made.append(pin)
                pinned_paths.append(str(pin))
            yield LakeTable(table.name, tuple(pinned_paths), table.partitions)
        finally:
            for pin in made:
                pin.unlink(missing_ok=True)

    def table(
        self, key_path: Sequence[str], partitions: Iterable[str | None], *, allow_missing: bool = False
    ) -> LakeTable:
        """A handle on the given partitions of an asset.

        Raises:
            LakeError: a partition has not been materialized (unless ``allow_missing``) or none exists at all.
        """
        paths, keys, missing = [], [], []
        for partition in partitions:
            path = self.stored_path(key_path, partition)
            if path is not None:
                paths.append(str(path))
                keys.append(partition or UNPARTITIONED)
            else:
                missing.append(partition or UNPARTITIONED)
        name = "/".join(key_path)
        if missing and not allow_missing or not paths:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise LakeError(
                f"{name}: partition(s) {shown} not in the lake at {self.location()}; materialize them first"
            )
        return LakeTable(name, tuple(paths), tuple(keys))


def _remove_view(manifest_path: Path) -> None:
    """Remove a view partition (after a Parquet file replaced it): its manifest, then the files it named."""
    if not manifest_path.is_file():
        return
    manifest = _previous_manifest(manifest_path)
    manifest_path.unlink(missing_ok=True)
    for name in _named_files(manifest):
        (manifest_path.parent / name).unlink(missing_ok=True)


def _previous_manifest(manifest_path: Path) -> dict | None:
    """The manifest a write is about to replace; None when there is none, or when it cannot be read (logged: the
    write repairs the partition, and the files of the unreadable one go with the leftovers)."""
    if not manifest_path.is_file():
        return None
    try:
        return _read_manifest(manifest_path)
    except LakeError as exc:
        get_dagster_logger().warning(f"replacing an unreadable lake view manifest: {exc}")
        return None


def _named_files(manifest: dict | None) -> list[str]:
    """The files of a manifest's directory it names (a name that is not a plain file name there is ignored)."""
    names = [(manifest or {}).get(field) for field in ("source", "excluded")]
    return [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\\" not in n]


def _leftover_pattern(name: str) -> re.Pattern:
    """The hidden files a write of partition ``name`` creates besides its lock: a Parquet write's temporary file and
    a view generation's source snapshot, excluded positions and temporary manifest (anchored, so partition ``x``
    never matches the files of partition ``x.y``)."""
    return re.compile(
        rf"\.{re.escape(name)}\.(?:[0-9a-f]{{32}}\.tmp|[0-9a-f]{{12}}\.(?:source\.parquet|excluded\.parquet|view\.tmp))"
    )


def _remove_leftovers(directory: Path, name: str, keep: Sequence[str]) -> list[str]:
    """Under partition ``name``'s lock, after its switch: remove its hidden files that the partition now stored does not
    use (``keep``) - the previous partition's, a corrupt manifest's, a killed writer's. Returns the names removed."""
    pattern = _leftover_pattern(name)
    removed = []
    for path in directory.glob(f".{glob.escape(name)}.*"):
        if path.name not in keep and pattern.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _remove_stale_pins(pins_dir: Path) -> None:
    """Remove the pins of processes that are gone (a killed step's); a pin is named ``<pid>-<uuid>.parquet``."""
    if not pins_dir.is_dir():
        return
    for pin in pins_dir.glob("*-*.parquet"):
        pid = pin.name.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            pin.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


@contextmanager
def _partition_lock(directory: Path, name: str) -> Iterator[None]:
    """Hold partition ``name``'s write lock: ``flock`` on ``directory/.<name>.lock``, waiting for another holder.

    The file is removed while the lock is still held, so none stays behind. A waiter that then gets the lock of the
    removed file sees that the path no longer names it and starts over on a new file; the kernel releases the lock of
    a killed holder, and the next writer reuses the file it left.
    """
    path = directory / f".{name}.lock"
    waiting_logged = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waiting_logged:
                    get_dagster_logger().warning(
                        f"{directory / name}: waiting for another writer of this lake partition"
                    )
                    waiting_logged = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the holder we waited for removed this file: lock the one at the path now
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _test_pause(path: Path, moment: str) -> None:
    """Sleep ``$ETL_TEST_PAUSE_IN_LAKE_WRITE_SECONDS`` at ``moment`` of a lake write (tests only; unset: no-op)."""
    value = os.environ.get(TEST_PAUSE_IN_LAKE_WRITE_ENV)
    if not value:
        return
    seconds = float(value)
    get_dagster_logger().warning(f"{TEST_PAUSE_IN_LAKE_WRITE_ENV}: {path} pausing {seconds:g}s {moment}")
    pause_for_test(seconds)


def pause_for_test(seconds: float) -> None:
    """A test pause hook's sleep: ``seconds``, or until the file ``$ETL_TEST_PAUSE_RELEASE_FILE`` exists."""
    release = os.environ.get(TEST_PAUSE_RELEASE_ENV)
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if release and os.path.exists(release):
            return
        time.sleep(min(remaining, 0.05) if release else remaining)


def _writer_for(data: object) -> Callable[[Path], None]:
    if isinstance(data, duckdb.DuckDBPyRelation):
        return lambda path: data.write_parquet(str(path), compression="zstd")
    if isinstance(data, pa.Table):
        return lambda path: pq.write_table(data, path, compression="zstd")
    if isinstance(data, pa.RecordBatchReader):
        return lambda path: _write_stream(data, path)
    raise LakeError(
        f"the lake stores DuckDB relations, Arrow tables or streams and lake views, not {type(data).__name__}; "
        "return one of those"
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


COLUMN_SCHEMA = "dagster/column_schema"


def written_schema(schema: pa.Schema, declared: TableSchema | None = None) -> TableSchema:
    """Dagster column schema metadata for the columns of a lake write: each column ``declared`` names as declared
    (its SQL type and description, from the contract), the others with their Arrow type."""
    by_name = {c.name: c for c in declared.columns} if declared is not None else {}
    return TableSchema(columns=[by_name.get(f.name) or TableColumn(name=f.name, type=str(f.type)) for f in schema])


def declared_schema(metadata: Mapping[str, object] | None) -> TableSchema | None:
    """The column schema an asset definition declares in its metadata, if any (as given or as Dagster wraps it)."""
    value = (metadata or {}).get(COLUMN_SCHEMA)
    if isinstance(value, TableSchemaMetadataValue):
        return value.schema
    return value if isinstance(value, TableSchema) else None


def write_metadata(result: WriteResult, declared: TableSchema | None = None) -> dict:
    """Materialization metadata for one lake write (``declared``: the asset definition's column schema)."""
    return {
        "dagster/row_count": result.rows,
        COLUMN_SCHEMA: written_schema(result.schema, declared),
        "lake_path": MetadataValue.path(result.url or str(result.path)),
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
        declared = declared_schema(context.definition_metadata)
        with no_retry_for_permanent_errors():  # a stream may find the source unreadable only now
            if isinstance(obj, LakeStream):
                result = self.lake.write(context.asset_key.path, partitions[0], obj.reader)
                context.add_output_metadata({**write_metadata(result, declared), **obj.describe()})
            else:
                result = self.lake.write(context.asset_key.path, partitions[0], obj)
                context.add_output_metadata(write_metadata(result, declared))

    def load_input(self, context: InputContext) -> LakeTable:
        key = context.asset_key
        if context.has_asset_partitions:
            partitions: list[str | None] = list(context.asset_partition_keys)
        else:
            partitions = [None]
        # A reader of many partitions (an unpartitioned mart over a partitioned dataset) takes those that exist.
        allow_missing = len(partitions) > 1
        return self.lake.table(key.path, partitions, allow_missing=allow_missing)
