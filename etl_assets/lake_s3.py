"""The lake on object storage (``ETL_LAKE_URL=s3://bucket/prefix``): the same layout as a local lake, as objects.

``<prefix>/<asset key path>/<partition>.parquet``, or a view partition: ``<partition>.view.json`` naming two
objects of its generation beside it (``.<partition>.<generation>.source.parquet``, a server-side copy of the raw
object it reads, and ``.<partition>.<generation>.excluded.parquet``). There are no renames or hard links on S3, so:

* A Parquet partition is one PUT of the finished file over the partition's key: readers get the old object or the
  new one, never part of one (a multipart upload is invisible until complete; a killed writer leaves none).
* A view partition's files are written first under names no one else uses, its manifest last (the switch); the
  previous generation's files are deleted after the switch.
* Reads download whole objects, one GET each, into a local cache: Parquet objects keyed by their ETag, view
  generations by their manifest's ETag (its files never change under their names). A step reads the cached files
  with DuckDB, so it sees one version of each partition however the object store changes meanwhile; a view
  replaced between reading its manifest and its files fails the read (the step retries) instead of mixing.

Two writers of one partition on two hosts, with no lock between them: each object is whole and the manifest is
written last, so the partition is one writer's (the last to switch). A loser's generation files, named by no
manifest, are removed by later writes of the partition once older than :data:`LEFTOVER_GRACE_SECONDS` (so a writer
still uploading is never robbed of its files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from dagster import get_dagster_logger

from etl_assets.keys import UNPARTITIONED
from etl_assets.lake import (
    VIEW_FORMAT,
    VIEW_SUFFIX,
    LakeError,
    LakeView,
    WriteResult,
    _leftover_pattern,
    _named_files,
    _test_pause,
    _writer_for,
    parse_manifest,
    view_sql,
)
from etl_assets.objectstore import ObjectInfo, ObjectStore, ObjectStoreError, parse_url
from etl_assets.settings import current_settings, duckdb_connection

LEFTOVER_GRACE_SECONDS = 15 * 60
# A cached object not used for this long is removed (checked at most every CACHE_SWEEP_SECONDS per process).
CACHE_MAX_AGE_ENV = "ETL_LAKE_CACHE_HOURS"
CACHE_SWEEP_SECONDS = 600
_origins: dict[str, ObjectInfo] = {}  # cached file -> the object version it holds (for server-side copies)
_origins_lock = threading.Lock()
_last_sweep: dict[str, float] = {}


def cache_root(url: str) -> Path:
    """The local working directory of the lake at ``url``: ``$ETL_DATA_DIR/.lake_cache/<bucket>/<prefix>``."""
    bucket, prefix = parse_url(url)
    return current_settings().data_dir.joinpath(".lake_cache", bucket, *[p for p in prefix.split("/") if p])


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class ObjectLake:
    """The lake's operations (see :class:`etl_assets.lake.LakeStorage`) on an object store."""

    def __init__(self, url: str):
        self.store = ObjectStore(url)
        self.work = cache_root(url)

    # -- names --------------------------------------------------------------------------------------------------
    @staticmethod
    def _name(partition: str | None) -> str:
        name = partition or UNPARTITIONED
        if "/" in name or name.startswith(".") or "\\" in name or "\0" in name:
            raise LakeError(f"partition key {name!r} cannot be used as an object name")
        return name

    def _dir(self, key_path: Sequence[str]) -> str:
        return self.store.key(*key_path)

    def url(self, key_path: Sequence[str], partition: str | None) -> str:
        return self.store.url_of(f"{self._dir(key_path)}/{self._name(partition)}.parquet")

    # -- listing ------------------------------------------------------------------------------------------------
    def partitions(self, key_path: Sequence[str]) -> list[str | None]:
        names = set()
        for item in self.store.list(*key_path):
            if item.name.startswith("."):
                continue
            if item.name.endswith(VIEW_SUFFIX):
                names.add(item.name[: -len(VIEW_SUFFIX)])
            elif item.name.endswith(".parquet"):
                names.add(item.name[: -len(".parquet")])
        return [None if k == UNPARTITIONED else k for k in sorted(names)]

    def stored(self, key_path: Sequence[str], partition: str | None) -> ObjectInfo | None:
        """The object holding the partition: its Parquet object or view manifest (the newer of both, which only a
        crash between writing one and removing the other leaves), or None."""
        name = self._name(partition)
        directory = self._dir(key_path)
        found = [
            info
            for info in (
                self.store.head(f"{directory}/{name}.parquet"),
                self.store.head(f"{directory}/{name}{VIEW_SUFFIX}"),
            )
            if info is not None
        ]
        return max(found, key=lambda i: i.last_modified) if found else None

    # -- reading ------------------------------------------------------------------------------------------------
    def local_copy(self, key_path: Sequence[str], partition: str | None) -> str | None:
        """A local file holding the partition as it is now (a Parquet file, or a view manifest with its files
        beside it), downloaded into the cache unless already there; None when the partition does not exist."""
        info = self.stored(key_path, partition)
        if info is None:
            return None
        self._sweep()
        if info.key.endswith(VIEW_SUFFIX):
            return self._local_view(info)
        return self._local_parquet(info)

    def _local_parquet(self, info: ObjectInfo) -> str | None:
        directory = self.work / "objects" / _digest(info.key)
        cached = directory / f"{info.etag}.parquet"
        if cached.is_file():
            os.utime(cached)
            return str(cached)
        incoming = directory / f".incoming-{uuid.uuid4().hex}.parquet"
        got = self.store.download(info.key, incoming)
        if got is None:  # removed since it was listed: look again
            return self.local_copy(*self._split(info.key))
        target = directory / f"{got.etag}.parquet"
        os.replace(incoming, target)
        self._remember(target, got)
        return str(target)

    def _local_view(self, info: ObjectInfo) -> str | None:
        got = self.store.get_bytes(info.key)
        if got is None:
            return self.local_copy(*self._split(info.key))
        text, etag = got
        where = self.store.url_of(info.key)
        manifest = parse_manifest(text, where)
        name = info.name
        directory = self.work / "views" / _digest(info.key) / etag
        local_manifest = directory / name
        if local_manifest.is_file():
            os.utime(local_manifest)
            return str(local_manifest)
        directory.mkdir(parents=True, exist_ok=True)
        parent = info.key.rsplit("/", 1)[0]
        for file_name in _named_files(manifest):
            if (directory / file_name).is_file():
                continue
            if self.store.download(f"{parent}/{file_name}", directory / file_name) is None:
                raise LakeError(
                    f"{where} names {file_name}, which is not there (the partition was replaced while it was read); "
                    "run the step again"
                )
        tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(text)
        os.replace(tmp, local_manifest)  # last: a manifest in the cache means its files are complete beside it
        return str(local_manifest)

    def _split(self, key: str) -> tuple[list[str], str | None]:
        relative = key[len(self.store.prefix) + 1 :] if self.store.prefix else key
        parts = relative.split("/")
        name = parts[-1]
        name = name[: -len(VIEW_SUFFIX)] if name.endswith(VIEW_SUFFIX) else name[: -len(".parquet")]
        return parts[:-1], None if name == UNPARTITIONED else name

    @staticmethod
    def _remember(path: Path, info: ObjectInfo) -> None:
        with _origins_lock:
            _origins[str(path)] = info

    def _sweep(self) -> None:
        """Remove cached files not used for ``$ETL_LAKE_CACHE_HOURS`` (default 6), at most every 10 minutes."""
        now = time.time()
        root = str(self.work)
        if now - _last_sweep.get(root, 0.0) < CACHE_SWEEP_SECONDS:
            return
        _last_sweep[root] = now
        oldest = now - float(os.environ.get(CACHE_MAX_AGE_ENV) or 6) * 3600
        for path in list((self.work / "objects").glob("*/*.parquet")):
            try:
                if path.stat().st_mtime < oldest:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        for manifest in list((self.work / "views").glob(f"*/*/*{VIEW_SUFFIX}")):
            try:
                if manifest.stat().st_mtime < oldest:
                    shutil.rmtree(manifest.parent, ignore_errors=True)
            except FileNotFoundError:
                pass

    # -- writing ------------------------------------------------------------------------------------------------
    def write(self, key_path: Sequence[str], partition: str | None, data: object) -> WriteResult:
        if isinstance(data, LakeView):
            return self._write_view(key_path, partition, data)
        name = self._name(partition)
        directory = self._dir(key_path)
        key = f"{directory}/{name}.parquet"
        writer = _writer_for(data)
        started = time.perf_counter()
        staging = self.work / ".tmp"
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{uuid.uuid4().hex}.parquet"
        try:
            writer(tmp)
            meta = pq.ParquetFile(tmp).metadata
            rows, schema, size = meta.num_rows, meta.schema.to_arrow_schema(), tmp.stat().st_size
            _test_pause(Path(key), "before the switch")
            etag = self.store.upload(tmp, key)
            # the bytes just written are this ETag's: the next read of it on this host needs no download
            cached = self.work / "objects" / _digest(key) / f"{etag}.parquet"
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, cached)
            self._remember(cached, ObjectInfo(key, size, etag, datetime.now(UTC)))
        finally:
            tmp.unlink(missing_ok=True)
        self._remove_view(f"{directory}/{name}{VIEW_SUFFIX}")
        self._remove_leftovers(key_path, name, keep=())
        return WriteResult(cached, rows, size, time.perf_counter() - started, schema, url=self.store.url_of(key))

    def _write_view(self, key_path: Sequence[str], partition: str | None, view: LakeView) -> WriteResult:
        name = self._name(partition)
        directory = self._dir(key_path)
        manifest_key = f"{directory}/{name}{VIEW_SUFFIX}"
        generation = uuid.uuid4().hex[:12]
        source_name = f".{name}.{generation}.source.parquet"
        excluded_name = f".{name}.{generation}.excluded.parquet"
        started = time.perf_counter()
        # the new generation is assembled locally too, so the reads right after this write need no download
        local = self.work / "views" / _digest(manifest_key) / f"new-{generation}"
        local.mkdir(parents=True, exist_ok=True)
        try:
            origin = _origins.get(str(view.source))
            if origin is None or not self.store.copy(origin, f"{directory}/{source_name}"):
                self.store.upload(Path(view.source), f"{directory}/{source_name}")
            try:
                os.link(view.source, local / source_name)
            except OSError:
                shutil.copyfile(view.source, local / source_name)
            view.excluded.write_parquet(str(local / excluded_name), compression="zstd")
            self.store.upload(local / excluded_name, f"{directory}/{excluded_name}")
            excluded_rows = pq.ParquetFile(local / excluded_name).metadata.num_rows
            source_rows = pq.ParquetFile(local / source_name).metadata.num_rows
            manifest = {
                "format": VIEW_FORMAT,
                "source": source_name,
                "excluded": excluded_name,
                "select": view.select,
                "source_rows": source_rows,
                "excluded_rows": excluded_rows,
                "rows": source_rows - excluded_rows,
                "stats": view.stats or {},
            }
            text = json.dumps(manifest, indent=1).encode()
            previous = self._manifest(manifest_key)
            _test_pause(Path(manifest_key), "before the switch")
            etag = self.store.put_bytes(manifest_key, text)  # the switch
        except BaseException:
            for file_name in (source_name, excluded_name):
                try:
                    self.store.delete(f"{directory}/{file_name}")
                except ObjectStoreError:
                    pass
            shutil.rmtree(local, ignore_errors=True)
            raise
        (local / f"{name}{VIEW_SUFFIX}").write_bytes(text)
        final = local.parent / etag
        if final.exists():
            shutil.rmtree(local, ignore_errors=True)
        else:
            os.replace(local, final)
        parquet_key = f"{directory}/{name}.parquet"
        if self.store.head(parquet_key) is not None:
            self.store.delete(parquet_key)
        for old in _named_files(previous):
            if old not in (source_name, excluded_name):
                self.store.delete(f"{directory}/{old}")
        self._remove_leftovers(key_path, name, keep=(source_name, excluded_name))
        with duckdb_connection() as con:
            schema = con.sql(view_sql(str(final / f"{name}{VIEW_SUFFIX}"))).limit(0).to_arrow_table().schema
        size = len(text) + (final / excluded_name).stat().st_size
        return WriteResult(
            final / f"{name}{VIEW_SUFFIX}",
            manifest["rows"],
            size,
            time.perf_counter() - started,
            schema,
            url=self.store.url_of(manifest_key),
        )

    def _manifest(self, key: str) -> dict | None:
        got = self.store.get_bytes(key)
        if got is None:
            return None
        try:
            return parse_manifest(got[0], self.store.url_of(key))
        except LakeError as exc:
            get_dagster_logger().warning(f"replacing an unreadable lake view manifest: {exc}")
            return None

    def _remove_view(self, manifest_key: str) -> list[str]:
        manifest = self._manifest(manifest_key)
        if manifest is None and self.store.head(manifest_key) is None:
            return []
        self.store.delete(manifest_key)
        parent = manifest_key.rsplit("/", 1)[0]
        for file_name in _named_files(manifest):
            self.store.delete(f"{parent}/{file_name}")
        return [manifest_key.rsplit("/", 1)[1]]

    def _remove_leftovers(
        self, key_path: Sequence[str], name: str, keep: Sequence[str], grace: bool = True
    ) -> list[str]:
        """Delete the partition's generation files that its current manifest does not name: a replaced generation's
        or a losing writer's, once older than the grace period (``grace``), so a writer still uploading keeps its
        own."""
        pattern = _leftover_pattern(name)
        current = self._manifest(f"{self._dir(key_path)}/{name}{VIEW_SUFFIX}")
        named = set(_named_files(current)) | set(keep)
        cutoff = time.time() - LEFTOVER_GRACE_SECONDS
        removed = []
        for item in self.store.list(*key_path):
            if not item.name.startswith(f".{name}.") or not pattern.fullmatch(item.name) or item.name in named:
                continue
            if grace and item.last_modified.timestamp() > cutoff:
                continue
            self.store.delete(item.key)
            removed.append(item.name)
        return removed

    def remove(self, key_path: Sequence[str], partition: str | None) -> list[str]:
        name = self._name(partition)
        directory = self._dir(key_path)
        removed = []
        parquet_key = f"{directory}/{name}.parquet"
        if self.store.head(parquet_key) is not None:
            self.store.delete(parquet_key)
            removed.append(f"{name}.parquet")
        removed += self._remove_view(f"{directory}/{name}{VIEW_SUFFIX}")
        return removed + self._remove_leftovers(key_path, name, keep=())
