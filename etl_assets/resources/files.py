"""Landing-zone files: ``<landing>/<dataset>/``, read with DuckDB. Names are confined to the landing root.

CSV, JSON and NDJSON files may arrive gzip (``.gz``) or zstd (``.zst``) compressed, told by the name's last suffix
(``orders_2024-01-02.csv.gz``). DuckDB reads both, but it loads the rows before the cut of a truncated zstd file
without an error (measured on DuckDB 2.0.1: half a ``.csv.zst`` gave 62,204 of 200,000 rows), so each compressed file
is first decompressed end to end (pyarrow, in 1 MB reads) and refused whole, into the landing quarantine, when its
stream is truncated or does not decode. A flipped byte inside a zstd frame written without a content checksum (the
``zstd`` tool writes one by default) decodes to other bytes and cannot be told; gzip always carries a CRC.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field, field_validator

from etl_assets.errors import PermanentSourceError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.landing_s3 import ObjectLanding, content_key, mtime_ns, now_stamp
from etl_assets.objectstore import ObjectInfo, is_object_url
from etl_assets.settings import landing_url, require_shared_storage
from etl_assets.specmodel import SpecModel
from etl_assets.sqlutil import is_identifier, is_reserved_column, quote_ident, quote_literal

# Writers that are not done yet use these names; they are never read.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
# An archived file is named <UTC stamp>_<name as delivered> (LandingFilesSource._move).
ARCHIVED_NAME_RE = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)_(?P<name>.+)$")
# Where an extract pins its inputs (hard links), under the landing root; hidden, so no sensor lists it.
SNAPSHOT_DIR = ".etl_snapshots"
SNAPSHOT_MAX_AGE_SECONDS = 24 * 3600
# A CSV row that cannot be parsed is kept in raw with all columns NULL and the reason here (validation quarantines it).
READ_ERROR_COLUMN = "_etl_read_error"
# The reader's own file-name column: a delivered column named `filename` stays the file's.
FILE_COLUMN = "__etl_file"
MAX_HEADER_BYTES = 1 << 20
MAX_QUARANTINED_LINE_BYTES = 8192
# Records read to decide whether a JSON column holds nested values (DuckDB's own type-detection sample size).
JSON_SAMPLE_RECORDS = 20_480
# How a JSON file holds its records, as DuckDB's read_json names it: one array, or one record a line
JsonLayout = Literal["array", "newline_delimited"]
# Compressions read, by the name's last suffix (DuckDB detects them from the same suffix on the pinned link)
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
# Suffixes of compressions that are not read: such a file is refused with the fix, not parsed as garbage
_UNREAD_COMPRESSIONS = (".gzip", ".zstd", ".bz2", ".xz", ".lz4", ".zip", ".7z", ".br", ".z", ".lzma")
_VERIFY_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class LandingFile:
    """A complete-looking file in a dataset's landing directory."""

    name: str
    path: Path | ObjectInfo  # an object (its version as listed) on an object-store landing zone
    size: int
    mtime_ns: int
    # An object's ETag: its modification time has whole seconds only, so a re-delivery of the same size within the
    # second is told apart by its content tag (a local file's mtime has nanoseconds; empty there)
    etag: str = ""


class FilesSource(SpecModel):
    """Files dropped into ``$ETL_DATA_DIR/landing/<dataset>/``."""

    kind: Literal["files"]
    format: Literal["csv", "json", "ndjson", "parquet"]
    glob: str = "*"
    partition_regex: str = Field(
        r"(?P<partition>\d{4}-\d{2}-\d{2})",
        description="Regex with a `partition` group that takes the partition key from the file name.",
    )
    delimiter: str = ","
    header: bool = True
    null_values: list[str] = Field(
        default_factory=lambda: [""],
        description="csv only: field texts read as NULL (an empty field by default; 'NULL' and 'N/A' are common).",
    )
    ready_marker: str | None = Field(
        default=None, description="When set (e.g. _SUCCESS), files are picked up only once this marker file exists."
    )

    @field_validator("glob")
    @classmethod
    def _check_glob(cls, value: str) -> str:
        if value.startswith("/") or ".." in Path(value).parts:
            raise ValueError(f"glob {value!r} must stay inside the landing directory (no '/' prefix, no '..')")
        return value

    @field_validator("partition_regex")
    @classmethod
    def _check_regex(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"partition_regex is not a valid regular expression: {exc}") from exc
        if "partition" not in compiled.groupindex:
            raise ValueError("partition_regex needs a named group (?P<partition>...)")
        return value


_object_landings: dict[str, ObjectLanding] = {}


def _plain_part(part: object) -> bool:
    """A plain directory entry name: no separator, NUL, ``.``/``..`` or leading dot, at most 255 characters."""
    return (
        isinstance(part, str)
        and 0 < len(part) <= 255
        and not part.startswith(".")
        and not any(c in part for c in "/\\\0")
    )


class LandingFilesSource(ConfigurableResource):
    """Files dropped per dataset under the landing root: a local directory, or an object store
    (``s3://bucket/prefix``, see :mod:`etl_assets.landing_s3`) listed and moved through the same methods and read
    through local snapshots.

    Attributes:
        root: Landing root; empty means ``$ETL_LANDING_URL``, else ``$ETL_DATA_DIR/landing``.
    """

    root: str = ""

    def location(self) -> str:
        """The landing root as configured: a directory or an ``s3://`` URL (refused when local in a distributed
        deployment: each host would see its own files)."""
        location = self.root or landing_url()
        require_shared_storage("landing", location)
        return location

    def remote(self) -> ObjectLanding | None:
        """The object-store landing zone when the root is an ``s3://`` URL, else None."""
        location = self.location()
        if not is_object_url(location):
            return None
        if location not in _object_landings:
            _object_landings[location] = ObjectLanding(location)
        return _object_landings[location]

    def root_path(self) -> Path:
        """The landing directory; for an object-store landing zone, the local directory its snapshots go to."""
        if (remote := self.remote()) is not None:
            remote.work.mkdir(parents=True, exist_ok=True)
            return remote.work
        return Path(self.location()).expanduser().resolve()

    def dataset_dir(self, dataset: str) -> Path:
        return self.root_path() / dataset

    def dataset_location(self, dataset: str) -> str:
        """Where ``dataset``'s files land, for messages: a directory or an ``s3://`` prefix."""
        if (remote := self.remote()) is not None:
            return remote.dataset_location(dataset)
        return str(self.dataset_dir(dataset))

    def archive_location(self, dataset: str) -> str:
        if (remote := self.remote()) is not None:
            return remote.archive_location(dataset)
        return str(self.archive_dir(dataset))

    def list_files(
        self, dataset: str, spec: FilesSource, partition: str | None = None, limit: int | None = None
    ) -> list[Path]:
        """Complete files of ``dataset`` matching the spec's glob (and ``partition``, taken from the name).

        Symlinks and anything resolving outside the dataset's directory are refused, not followed. With ``limit``,
        stops after that many files (in name order), so a large backlog costs bounded work. A local landing zone's
        only: on an object store, :meth:`list_objects`.
        """
        if self.remote() is not None:
            raise PermanentSourceError(f"{self.location()} is an object store: list it with list_objects()")
        directory = self._real_dataset_dir(dataset)
        if directory is None:
            return []
        root = directory
        pattern = re.compile(spec.partition_regex)
        found = []
        for path in sorted(directory.glob(spec.glob)):
            if path.is_symlink() or not path.is_file():
                continue
            if path.name.startswith(".") or path.name.endswith(IN_PROGRESS_SUFFIXES):
                continue
            if not path.resolve().is_relative_to(root):
                continue
            if partition is not None:
                match = pattern.search(path.name)
                if match is None or match.group("partition") != partition:
                    continue
            found.append(path)
            if limit is not None and len(found) >= limit:
                break
        return found

    def list_objects(
        self, dataset: str, spec: FilesSource, partition: str | None = None, limit: int | None = None
    ) -> list[ObjectInfo]:
        """:meth:`list_files` of an object-store landing zone: the objects directly in the dataset's folder, each as
        the version listed (hidden and in-progress names left out)."""
        remote = self.remote()
        if remote is None or not _plain_part(dataset):
            return []
        pattern = re.compile(spec.partition_regex)
        objects = []
        for item in remote.list(dataset, spec.glob):
            if item.name.endswith(IN_PROGRESS_SUFFIXES):
                continue
            if partition is not None:
                match = pattern.search(item.name)
                if match is None or match.group("partition") != partition:
                    continue
            objects.append(item)
            if limit is not None and len(objects) >= limit:
                break
        return objects

    def _listed(
        self, dataset: str, spec: FilesSource, partition: str | None = None, limit: int | None = None
    ) -> list[Path | ObjectInfo]:
        if self.remote() is not None:
            return list(self.list_objects(dataset, spec, partition, limit))
        return list(self.list_files(dataset, spec, partition, limit))

    def scan(self, dataset: str, spec: FilesSource, limit: int | None = None) -> list[LandingFile]:
        """Files the sensor may consider, with size and modification time (the first ``limit`` in name order)."""
        files = []
        for path in self._listed(dataset, spec, limit=limit):
            if isinstance(path, ObjectInfo):
                files.append(LandingFile(path.name, path, path.size, mtime_ns(path), path.etag))
                continue
            st = path.stat()
            files.append(LandingFile(path.name, path, st.st_size, st.st_mtime_ns))
        return files

    def marker_present(self, dataset: str, marker: str) -> bool:
        if (remote := self.remote()) is not None:
            return _plain_part(dataset) and _plain_part(marker) and remote.marker_present(dataset, marker)
        directory = self._real_dataset_dir(dataset)
        path = directory / marker if directory is not None else None
        return path is not None and not path.is_symlink() and path.is_file()

    def _real_dataset_dir(self, dataset: str) -> Path | None:
        """``dataset``'s landing directory when it is a real directory directly inside the landing root; None when
        it is missing, a symlink, or resolves elsewhere (a symlinked dataset directory is refused like a symlinked
        file: its files are never listed, loaded or moved)."""
        directory = self.dataset_dir(dataset)
        if directory.is_symlink() or not directory.is_dir():
            return None
        if directory.resolve().parent != self.root_path().resolve():
            return None
        return directory.resolve()

    def content_key(self, item: Path | ObjectInfo) -> str:
        """A file version's content key for run keys and moves: its sha256 (local), ``etag:<ETag>`` (object)."""
        return content_key(item) if isinstance(item, ObjectInfo) else self.sha256(item)

    @staticmethod
    def sha256(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def _confined(self, dataset: str, name: str) -> Path:
        """``name`` in ``dataset``'s landing directory, refusing anything but a plain entry of a real directory.

        Both must be plain names (no separator, NUL, ``.``/``..`` or leading dot); the dataset's directory must be a
        direct child of the landing root and no symlink; the file no symlink and directly inside it.
        """

        plain = _plain_part
        root = self.root_path().resolve()
        given = self.dataset_dir(dataset) if plain(dataset) else None
        if given is None or given.is_symlink() or given.resolve().parent != root:
            raise PermanentSourceError(f"{dataset!r}: refusing {name!r}: not a plain dataset directory inside {root}")
        directory = given.resolve()
        if not plain(name):
            raise PermanentSourceError(f"{dataset}: refusing {name!r}: not a plain file name")
        path = directory / name
        if path.is_symlink() or path.resolve().parent != directory:
            raise PermanentSourceError(f"{dataset}: refusing {name!r}: not a plain file inside {directory}")
        return path

    def _move(self, dataset: str, name: str, expected_sha256: str | None, into: Path) -> Path | None:
        path = self._confined(dataset, name)
        if not path.is_file():  # gone, or a directory, FIFO or device (a symlink was refused above)
            return None
        if expected_sha256 is not None and self.sha256(path) != expected_sha256:
            return None  # a newer delivery with the same name arrived; it has its own run
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        into.mkdir(parents=True, exist_ok=True)
        target = into / f"{stamp}_{name}"
        os.replace(path, target) if path.stat().st_dev == into.stat().st_dev else shutil.move(path, target)
        return target

    def archive_dir(self, dataset: str) -> Path:
        """Where loaded files of ``dataset`` are kept: ``$ETL_DATA_DIR/archive/<dataset>/``."""
        return self.root_path().parent / "archive" / dataset

    def expire_archived(self, dataset: str, oldest: float) -> list[str]:
        """Delete ``dataset``'s archived files last modified before ``oldest`` (a POSIX time); their names."""
        if (remote := self.remote()) is not None:
            return remote.expire_archived(dataset, oldest) if _plain_part(dataset) else []
        directory = self.archive_dir(dataset)
        removed = []
        for path in sorted(directory.iterdir()) if directory.is_dir() and not directory.is_symlink() else []:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < oldest:
                path.unlink()
                removed.append(path.name)
        return removed

    def _move_object(
        self, remote: ObjectLanding, dataset: str, name: str, expected: str | None, into: str, reason: str | None
    ) -> str | None:
        if not _plain_part(dataset) or not _plain_part(name):
            raise PermanentSourceError(f"{dataset!r}: refusing {name!r}: not a plain dataset and file name")
        return remote.move(dataset, name, expected, into, now_stamp(), reason)

    def archive(self, dataset: str, name: str, expected_sha256: str | None = None) -> Path | str | None:
        """Move a loaded file to :meth:`archive_dir` (kept for rebuilds). None if it is gone or changed."""
        if (remote := self.remote()) is not None:
            return self._move_object(remote, dataset, name, expected_sha256, "archive", None)
        return self._move(dataset, name, expected_sha256, self.archive_dir(dataset))

    def quarantine(self, dataset: str, name: str, reason: str, expected_sha256: str | None = None) -> Path | str | None:
        """Move an unreadable file to ``$ETL_DATA_DIR/quarantine/<dataset>/`` with ``<file>.reason.txt`` beside it."""
        if (remote := self.remote()) is not None:
            return self._move_object(remote, dataset, name, expected_sha256, "quarantine", reason)
        target = self._move(dataset, name, expected_sha256, self.root_path().parent / "quarantine" / dataset)
        if target is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason.rstrip() + "\n")
        return target

    def partition_inputs(self, dataset: str, spec: FilesSource, partition: str | None = None) -> list[InputFile]:
        """Every file delivered for ``partition`` (all of the dataset's when None): each delivered name once, in name
        order, at its newest version. A name still in landing is newer than its archived copies (a file is archived
        only after its load); of several archived copies the latest archive stamp wins.

        Landing is listed before the archive: files only move from landing to the archive, so a file archived
        between the two listings is found in the archive, never missed.
        """
        newest: dict[str, InputFile] = {}
        for path in self._listed(dataset, spec, partition=partition):
            newest.setdefault(path.name, InputFile(path.name, path))
        pattern = re.compile(spec.partition_regex)
        entries: list[tuple[str, Path | ObjectInfo]] = []  # (archived name, the file or object)
        if (remote := self.remote()) is not None:
            entries = [(item.name, item) for item in remote.archived(dataset)] if _plain_part(dataset) else []
        else:
            archive = self.archive_dir(dataset)
            if archive.is_dir() and not archive.is_symlink():
                entries = [(p.name, p) for p in archive.iterdir() if not p.is_symlink() and p.is_file()]
        archived: dict[str, tuple[str, Path | ObjectInfo]] = {}
        for entry_name, entry in entries:
            match = ARCHIVED_NAME_RE.match(entry_name)
            if match is None:
                continue
            name = match.group("name")
            if not fnmatch.fnmatchcase(name, Path(spec.glob).name) or name.endswith(IN_PROGRESS_SUFFIXES):
                continue
            if partition is not None:
                found = pattern.search(name)
                if found is None or found.group("partition") != partition:
                    continue
            if name not in archived or match.group("stamp") > archived[name][0]:
                archived[name] = (match.group("stamp"), entry)
        for name, (_, entry) in archived.items():
            newest.setdefault(name, InputFile(name, entry, archived=True))
        return [newest[name] for name in sorted(newest)]

    def pin(self, dataset: str, spec: FilesSource, partition: str | None = None, attempts: int = 5) -> PinnedInputs:
        """The partition's inputs (:meth:`partition_inputs`), hard-linked into a private directory under
        ``<landing root>/.etl_snapshots/`` with plain names, for as long as the extract reads them.

        A pinned file keeps its content whatever happens to the delivered one: the archive sensor moving it, a
        re-delivery replacing it. Plain names also keep DuckDB from reading a delivered name such as ``x[1].csv``
        as a glob. The caller closes the result (the extract's stream does, once consumed).
        """
        snapshots = self.root_path() / SNAPSHOT_DIR
        _remove_stale_snapshots(snapshots)
        for attempt in range(attempts):
            inputs = self.partition_inputs(dataset, spec, partition)
            directory = snapshots / f"{dataset}-{uuid.uuid4().hex}"
            directory.mkdir(parents=True)
            pinned = []
            try:
                for index, item in enumerate(inputs):
                    link = directory / f"{index:06d}{_plain_suffix(item.name)}"
                    if isinstance(item.path, ObjectInfo):  # one GET of the version listed: the snapshot
                        remote = self.remote()
                        got = remote.download(item.path, link) if remote is not None else None
                        if got is None:
                            raise FileNotFoundError(f"{item.name} was moved or replaced since it was listed")
                        pinned.append(PinnedFile(item, link, content_key(got)))
                        continue
                    try:
                        os.link(item.path, link)
                    except FileNotFoundError:
                        raise
                    except OSError:  # another file system (or no hard links): a copy pins it as well
                        shutil.copyfile(item.path, link)
                    pinned.append(PinnedFile(item, link))
            except FileNotFoundError:  # moved (archived, quarantined) between listing and pinning: list again
                shutil.rmtree(directory, ignore_errors=True)
                if attempt == attempts - 1:
                    raise
                continue
            return PinnedInputs(directory, pinned)
        raise AssertionError("unreachable")

    def open_partition(
        self,
        con: duckdb.DuckDBPyConnection,
        dataset: str,
        spec: FilesSource,
        partition: str | None,
        required: list[str],
        own_file: str | None = None,
    ) -> PartitionRead:
        """Read a partition's inputs file by file; a file that cannot be loaded never keeps the others from loading.

        A file is refused when it is empty (0 bytes), cannot be parsed, has a header that is not a list of unique
        identifiers, or lacks a required column. A refused landing file goes to landing quarantine with the reason
        when it is this run's own file (``own_file``, the file its run was launched for) or the run was launched for
        no file (a manual or backfill run); a neighbour's own run judges it, so it is only skipped here (it may still
        be arriving). A refused archived file was loaded before, so the contract has changed: that stops the read.

        Raises:
            PermanentSourceError: no file can be loaded, or an archived input is refused.
        """
        pinned = self.pin(dataset, spec, partition)
        try:
            if not pinned.files:
                raise PermanentSourceError(
                    f"{dataset}: no files matching {spec.glob!r} in {self.dataset_location(dataset)}"
                    + (f" or its archive for partition {partition}" if partition else "")
                    + "; drop the file there first"
                )
            admitted, refusals = _admit(con, dataset, spec, pinned.files, required)
            moved, skipped = [], []
            for refusal in refusals:
                item = refusal.file.delivered
                if item.archived:
                    raise PermanentSourceError(
                        f"{dataset}: archived input {item.name} (loaded before) can no longer be read: {refusal.reason}; "
                        "the contract has changed since it was loaded: fix the contract, or move the file out of "
                        f"{self.archive_location(dataset)} to drop its rows"
                    )
                if own_file is None or item.name == own_file:
                    self.quarantine(
                        dataset,
                        item.name,
                        f"{item.name} refused by the extract: {refusal.reason}",
                        refusal.file.content or self.sha256(refusal.file.path),
                    )
                    moved.append(refusal)
                else:
                    skipped.append(refusal)
            if not admitted:
                reasons = "; ".join(f"{r.file.delivered.name}: {r.reason}" for r in refusals)
                raise PermanentSourceError(f"{dataset}: no file of the partition can be loaded ({reasons})")
            return PartitionRead(con, dataset, spec, pinned, admitted, moved, skipped)
        except BaseException:
            pinned.close()
            raise

    def stream(
        self,
        con: duckdb.DuckDBPyConnection,
        dataset: str,
        spec: FilesSource,
        files: list[Path],
        batch_size: int = 100_000,
    ) -> pa.RecordBatchReader:
        """Like :meth:`read`, as an Arrow stream whose parse errors (found anywhere in the files) are permanent."""
        return _as_stream(con, dataset, spec, self.read(con, dataset, spec, files), files, batch_size)

    def read(
        self, con: duckdb.DuckDBPyConnection, dataset: str, spec: FilesSource, files: list[Path]
    ) -> duckdb.DuckDBPyRelation:
        """A relation over ``files`` (each read by its exact name) with the file name in ``_etl_source``; CSV and JSON
        are read as text for validation to cast (see :func:`_read_json`), Parquet with its own types. A CSV relation
        has ``_etl_read_error`` (NULL: rows that cannot be parsed are left out here; :meth:`open_partition` keeps
        them).

        Raises:
            PermanentSourceError: there are no files, or one of them cannot be read (the message names it).
        """
        if not files:
            raise PermanentSourceError(
                f"{dataset}: no files matching {spec.glob!r} in {self.dataset_location(dataset)}; drop the file there first"
            )
        pinned = [PinnedFile(InputFile(p.name, p), p) for p in files]
        admitted, refusals = _admit(con, dataset, spec, pinned, [])
        if refusals:
            raise PermanentSourceError(
                f"{dataset}: "
                + "; ".join(f"{r.file.delivered.name} cannot be read as {spec.format}: {r.reason}" for r in refusals)
            )
        return _union(con, dataset, spec, admitted)


@dataclass(frozen=True)
class InputFile:
    """One delivered file of a partition: its name as delivered and where it is now (landing or archive)."""

    name: str
    path: Path | ObjectInfo
    archived: bool = False


@dataclass(frozen=True)
class PinnedFile:
    """A delivered file and the private hard link (or, from an object store, the downloaded copy) it is read through;
    ``content`` is the copy's content key when it was downloaded (the object's ETag)."""

    delivered: InputFile
    path: Path
    content: str | None = None


@dataclass(frozen=True)
class Refusal:
    file: PinnedFile
    reason: str


@dataclass(frozen=True)
class AdmittedFile:
    """A file that will be read: for CSV its header names and the table DuckDB stores its unparseable rows in."""

    file: PinnedFile
    columns: list[str]
    rejects_table: str | None = None
    has_rows: bool = True


@dataclass
class PinnedInputs:
    directory: Path
    files: list[PinnedFile]

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class PartitionRead:
    """The admitted files of a partition as one relation, and what was refused (moved or skipped).

    Attributes:
        files: The delivered files being read.
        moved: Refused files moved to landing quarantine (with reason).
        skipped: Refused neighbours left in landing for their own run.
        malformed_rows: Rows the CSV reader could not parse (known once the stream is consumed).
    """

    def __init__(
        self,
        con,
        dataset,
        spec,
        pinned: PinnedInputs,
        admitted: list[AdmittedFile],
        moved: list[Refusal],
        skipped: list[Refusal],
    ):
        self._con, self._dataset, self._spec, self._pinned = con, dataset, spec, pinned
        self.admitted = admitted
        self.files = [a.file.delivered for a in admitted]
        self.moved, self.skipped = moved, skipped
        self.malformed_rows = 0

    def stream(self, batch_size: int = 100_000) -> pa.RecordBatchReader:
        """The rows as an Arrow stream, the CSV rows that could not be parsed last (one row each, with
        ``_etl_read_error``); the pinned links are removed once it is consumed or closed."""
        try:
            relation = _union(self._con, self._dataset, self._spec, self.admitted)
        except BaseException:
            self._pinned.close()
            raise
        names = [a.file.delivered.name for a in self.admitted]

        def malformed(schema: pa.Schema) -> Iterator[pa.RecordBatch]:
            rows = [row for a in self.admitted if a.rejects_table for row in _rejected_rows(self._con, a)]
            self.malformed_rows = len(rows)
            if rows:
                columns = {SOURCE_COLUMN: [r[0] for r in rows], READ_ERROR_COLUMN: [r[1] for r in rows]}
                yield pa.RecordBatch.from_arrays(
                    [pa.array(columns.get(f.name, [None] * len(rows)), f.type) for f in schema], schema=schema
                )

        return _as_stream(
            self._con, self._dataset, self._spec, relation, names, batch_size, malformed, self._pinned.close
        )

    def close(self) -> None:
        self._pinned.close()


def _plain_suffix(name: str) -> str:
    """The extensions of a delivered name (``.csv.gz``), kept on its pinned link for DuckDB's compression detection;
    anything but letters and digits is dropped."""
    suffixes = "".join(Path(name).suffixes[-2:])
    return "".join(ch for ch in suffixes if ch.isalnum() or ch == ".")


def _remove_stale_snapshots(directory: Path) -> None:
    """Remove pinned-input directories left by extracts that died (older than ``SNAPSHOT_MAX_AGE_SECONDS``)."""
    if not directory.is_dir():
        return
    oldest = time.time() - SNAPSHOT_MAX_AGE_SECONDS
    for entry in directory.iterdir():
        try:
            if entry.is_dir() and entry.stat().st_mtime < oldest:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:  # another extract removed it
            pass


def escape_glob(path: str) -> str:
    """``path`` with DuckDB's glob characters bracketed (``x[1].csv`` -> ``x[[]1].csv``), so it names one file."""
    return re.sub(r"([\[*?])", r"[\1]", path)


def refused_column_names(columns: list[str]) -> str | None:
    """Why a file's column names cannot be loaded, or None: every name must be an SQL identifier, unique up to case,
    and not one the platform uses (:func:`etl_assets.sqlutil.is_reserved_column`)."""
    bad = [c for c in columns if not is_identifier(c)]
    if bad:
        return (
            f"column name(s) {', '.join(repr(c) for c in bad)} are not identifiers (letters, digits and "
            "underscores, starting with a letter); rename them in the file"
        )
    reserved = [c for c in columns if is_reserved_column(c)]
    if reserved:
        return f"column name(s) {', '.join(reserved)} are reserved by the platform; rename them in the file"
    folded: dict[str, str] = {}
    for c in columns:
        if c in folded.values():
            return f"column name {c!r} appears twice in the header; rename one in the file"
        if c.lower() in folded:
            return (
                f"columns {folded[c.lower()]!r} and {c!r} differ only in case (SQL folds case); rename one in the file"
            )
        folded[c.lower()] = c
    return None


def compression_of(name: str) -> str | None:
    """The codec of a delivered file named ``name`` (``gzip``, ``zstd``), or None when it is not compressed."""
    return COMPRESSIONS.get(Path(name).suffix.lower())


def _check_compression(name: str, spec: FilesSource) -> str | None:
    """The codec of ``name``, after refusing a compression this source does not read.

    Raises:
        _Refused: an unread compression suffix, or a compressed Parquet file.
    """
    suffix = Path(name).suffix.lower()
    if suffix in _UNREAD_COMPRESSIONS:
        raise _Refused(
            f"compressed as {suffix}, which is not read; deliver it uncompressed, gzip (.gz) or zstd (.zst) compressed"
        )
    codec = compression_of(name)
    if codec and spec.format == "parquet":
        raise _Refused(f"a {codec}-compressed Parquet file; Parquet compresses inside the file: deliver it as .parquet")
    return codec


def _verify_compressed(path: Path, codec: str) -> None:
    """Decompress ``path`` end to end, so a truncated or corrupt file is refused before any of its rows is read.

    Raises:
        _Refused: the stream ends early or does not decode.
    """
    try:
        with pa.CompressedInputStream(pa.OSFile(str(path)), codec) as stream:
            while stream.read(_VERIFY_READ_BYTES):
                pass
    except (OSError, pa.ArrowException) as exc:
        raise _Refused(
            f"the {codec} stream is truncated or corrupt ({exc}), so no row of it is loaded; deliver it again"
        ) from None


def _open_binary(path: Path):
    """``path`` for reading its content, decompressed when its name says it is compressed."""
    codec = compression_of(path.name)
    if codec is None:
        return open(path, "rb")
    return pa.CompressedInputStream(pa.OSFile(str(path)), codec)


def _first_line(stream, limit: int) -> bytes:
    """The first line of a binary stream (pyarrow's streams have no ``readline`` with a limit), at most ``limit``
    bytes plus one."""
    line = bytearray()
    while len(line) <= limit:
        chunk = stream.read(65536)
        if not chunk:
            break
        end = chunk.find(b"\n")
        if end >= 0:
            line += chunk[: end + 1]
            break
        line += chunk
    return bytes(line[: limit + 1])


def _csv_header(path: Path, spec: FilesSource) -> list[str]:
    """The column names of a CSV file: its first line parsed as a CSV record (``column0``.. without a header).

    Raises:
        _Refused: the first line is not UTF-8 or longer than ``MAX_HEADER_BYTES``.
    """
    with _open_binary(path) as fh:
        first = _first_line(fh, MAX_HEADER_BYTES)
    if len(first) > MAX_HEADER_BYTES:
        raise _Refused(f"the first line is longer than {MAX_HEADER_BYTES} bytes; is {spec.delimiter!r} the delimiter?")
    try:
        text = first.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError:
        raise _Refused("the header line is not UTF-8 text") from None
    fields = next(csv.reader([text], delimiter=spec.delimiter, quotechar='"'), [])
    if not spec.header:
        return [f"column{i}" for i in range(len(fields))]
    return [f.strip() for f in fields]


class _Refused(Exception):
    """A file cannot be loaded; the message is the reason."""


def _admit(
    con: duckdb.DuckDBPyConnection, dataset: str, spec: FilesSource, files: list[PinnedFile], required: list[str]
) -> tuple[list[AdmittedFile], list[Refusal]]:
    """Judge each file on its own: which can be read, and why the others cannot."""
    admitted, refused = [], []
    for index, item in enumerate(files):
        try:
            if item.path.stat().st_size == 0:
                raise _Refused(
                    f"empty (0 bytes), so not a {spec.format} file (an interrupted upload?); deliver it again"
                )
            codec = _check_compression(item.delivered.name, spec)
            if codec:
                _verify_compressed(item.path, codec)
            if spec.format == "csv":
                columns = _csv_header(item.path, spec)
                entry = AdmittedFile(item, columns, f"__etl_rejects_{index}")
            elif spec.format in ("json", "ndjson"):
                try:
                    rel = _read_json(
                        con, dataset, [item.path], "array" if spec.format == "json" else "newline_delimited"
                    )
                    # parse every value of the whole file now (a broken one is refused alone): count(*) alone would
                    # not transform the values, and a duplicate key only shows when they are
                    rel.aggregate(", ".join(["count(*)", *(f"count({_sql_name(c)})" for c in rel.columns)])).fetchall()
                except PermanentSourceError as exc:
                    if "holds no records" not in str(exc):
                        raise _Refused(
                            str(exc).removeprefix(f"{dataset}: ").replace(item.path.name, item.delivered.name)
                        ) from None
                    admitted.append(AdmittedFile(item, [], has_rows=False))  # `[]`: delivered, and adds no rows
                    continue
                except duckdb.Error as exc:
                    raise _Refused(f"not valid {spec.format}: {exc}") from None
                entry = AdmittedFile(item, [c for c in rel.columns if c != FILE_COLUMN])
            else:
                try:
                    entry = AdmittedFile(item, pq.ParquetFile(item.path).schema_arrow.names)
                except (pa.ArrowException, OSError) as exc:
                    raise _Refused(f"not a Parquet file: {exc}") from None
            missing = [c for c in required if c not in entry.columns]
            if missing:
                raise _Refused(
                    f"required column(s) {', '.join(missing)} missing (it has {', '.join(entry.columns)}); "
                    f"fix the file, or check the delimiter ({spec.delimiter!r})"
                    if spec.format == "csv"
                    else f"required column(s) {', '.join(missing)} missing (it has {', '.join(entry.columns)}); fix the file"
                )
            problem = refused_column_names(entry.columns)
            if problem:
                raise _Refused(problem)
            admitted.append(entry)
        except _Refused as exc:
            refused.append(Refusal(item, str(exc)))
    return admitted, refused


def _csv_select(spec: FilesSource, entry: AdmittedFile) -> str:
    """One CSV file read strictly as text with its own header; rows it cannot parse go to ``entry.rejects_table``.

    The sniffer is off: given a file with ragged rows it can take a wrong line for the header, or a wrong
    delimiter, and fail the whole file. Every field is text; the delimiter, quote and header come from the spec.
    """
    assert entry.rejects_table is not None  # every admitted CSV file has one
    columns = "{" + ", ".join(f"{quote_literal(c)}: 'VARCHAR'" for c in entry.columns) + "}"
    nulls = "[" + ", ".join(quote_literal(v) for v in spec.null_values) + "]"
    source = quote_literal(entry.file.delivered.name)
    return (
        f"SELECT * EXCLUDE ({FILE_COLUMN}), {source} AS {SOURCE_COLUMN}, CAST(NULL AS VARCHAR) AS {READ_ERROR_COLUMN}"
        f" FROM read_csv({quote_literal(escape_glob(str(entry.file.path)))}, header = {str(spec.header).lower()},"
        f" auto_detect = false, columns = {columns}, delim = {quote_literal(spec.delimiter)}, quote = '\"',"
        f" escape = '\"', nullstr = {nulls}, filename = {quote_literal(FILE_COLUMN)}, store_rejects = true,"
        f" rejects_table = {quote_literal(entry.rejects_table)},"
        f" rejects_scan = {quote_literal(entry.rejects_table + '_scan')})"
    )


def _rejected_rows(con: duckdb.DuckDBPyConnection, entry: AdmittedFile) -> list[tuple[str, str]]:
    """The rows of one CSV file its read left out, as ``(file name, reason)``: the line number, what was wrong and the
    line as delivered (bytes that are not UTF-8 escaped as ``\\xff``), one row per line."""
    assert entry.rejects_table is not None  # only a CSV file's read has rejects
    found = con.execute(
        f"SELECT line, min(line_byte_position), string_agg(DISTINCT CAST(error_type AS VARCHAR), ', '),"
        f" string_agg(DISTINCT error_message, '; '), first(csv_line) FROM {quote_ident(entry.rejects_table)}"
        " GROUP BY line ORDER BY line"
    ).fetchall()
    rows = []
    with open(entry.file.path, "rb") as fh:
        for line, position, kinds, messages, text in found:
            if "INVALID ENCODING" in kinds and position:
                fh.seek(position - 1)  # DuckDB counts byte positions from 1
                text = fh.readline(MAX_QUARANTINED_LINE_BYTES).rstrip(b"\r\n").decode("utf-8", "backslashreplace")
            text = (text or "").rstrip("\r\n")[:MAX_QUARANTINED_LINE_BYTES]
            rows.append((entry.file.delivered.name, f"line {line}: {kinds.lower()} ({messages}): {text}"))
    return rows


def _union(
    con: duckdb.DuckDBPyConnection, dataset: str, spec: FilesSource, admitted: list[AdmittedFile]
) -> duckdb.DuckDBPyRelation:
    """The admitted files as one relation, columns unified by name, ``_etl_source`` naming each row's file.

    Raises:
        PermanentSourceError: no admitted file holds records (nothing to check the contract against), or DuckDB
            cannot read them.
    """
    empty = [a.file.delivered.name for a in admitted if not a.has_rows]
    admitted = [a for a in admitted if a.has_rows]
    if not admitted:
        raise PermanentSourceError(
            f"{dataset}: {', '.join(empty)} holds no records (an empty JSON array or no lines), so there are no columns "
            "to check against the contract; remove the file, or deliver it with its records"
        )
    try:
        if spec.format == "csv":
            rel = con.sql(" UNION ALL BY NAME ".join(f"({_csv_select(spec, a)})" for a in admitted))
            rel.limit(1).fetchall()  # bind now: a file DuckDB cannot open fails here, named
            return rel
        names = {a.file.path.name: a.file.delivered.name for a in admitted}
        source = (
            "CASE parse_filename("
            + FILE_COLUMN
            + ") "
            + " ".join(f"WHEN {quote_literal(link)} THEN {quote_literal(name)}" for link, name in names.items())
            + " END"
        )
        paths = [a.file.path for a in admitted]
        if spec.format in ("json", "ndjson"):
            rel = _read_json(con, dataset, paths, "array" if spec.format == "json" else "newline_delimited", source)
        else:
            listed = "[" + ", ".join(quote_literal(escape_glob(str(p))) for p in paths) + "]"
            rel = con.sql(
                f"SELECT * FROM read_parquet({listed}, filename = {quote_literal(FILE_COLUMN)}, union_by_name = true)"
            )
        return rel.project(f"* EXCLUDE ({FILE_COLUMN}), {source} AS {SOURCE_COLUMN}")
    except duckdb.Error as exc:
        raise PermanentSourceError(
            f"{dataset}: cannot read {', '.join(a.file.delivered.name for a in admitted)} as {spec.format}: {exc}"
        ) from exc


def _as_stream(
    con,
    dataset: str,
    spec: FilesSource,
    rel: duckdb.DuckDBPyRelation,
    files: list,
    batch_size: int,
    tail=None,
    on_close=None,
) -> pa.RecordBatchReader:
    """``rel`` as an Arrow stream (JSON columns typed ``arrow.json``), then ``tail(schema)``'s batches; parse errors
    found while streaming are permanent and name the files; ``on_close`` runs when the stream ends either way."""
    names = ", ".join(getattr(f, "name", str(f)) for f in files)
    try:
        json_columns = {name for name, type_ in zip(rel.columns, rel.types) if str(type_) == "JSON"}
        reader = rel.to_arrow_reader(batch_size)
    except BaseException as exc:
        if on_close:
            on_close()
        if isinstance(exc, duckdb.Error):
            raise PermanentSourceError(f"{dataset}: cannot read {names} as {spec.format}: {exc}") from exc
        raise
    # DuckDB exports JSON as plain strings; the arrow.json type keeps "this held nested values" through the lake.
    schema = pa.schema(
        [pa.field(f.name, pa.json_(), f.nullable) if f.name in json_columns else f for f in reader.schema]
    )

    def batches():
        try:
            for batch in reader:
                yield batch.cast(schema) if json_columns else batch
            if tail is not None:
                yield from tail(schema)
        except (duckdb.Error, pa.ArrowException, OSError) as exc:  # DuckDB errors surface as OSError through Arrow
            raise PermanentSourceError(f"{dataset}: cannot read {names} as {spec.format}: {exc}") from exc
        finally:
            if on_close:
                on_close()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _sql_name(name: str) -> str:
    """A column name as delivered in a file (any text), quoted for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _read_json(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    files: list[Path],
    fmt: JsonLayout,
    source: str = f"parse_filename({FILE_COLUMN})",
) -> duckdb.DuckDBPyRelation:
    """JSON records with every value as delivered: scalars as text, nested values as JSON.

    DuckDB's type inference would alter values (a float literal anywhere turns 9007199254740993 into
    9007199254740992; a number beside strings keeps the strings' quotes), so every key is read as JSON and
    converted by its kind: strings unquoted, numbers, booleans as their JSON text, null as NULL. A column holding
    an object or array in the sampled records stays JSON (the whole column, as delivered), which validation refuses
    for a contract column; one found in a column that sampled as scalars fails the read naming file and column.
    Integers keep every digit; DuckDB's JSON parser turns other numbers into doubles, so a non-integer literal
    keeps its value only up to 15 significant digits.

    Files holding no records (``[]``) add no rows and are skipped; when every file is like that there are no
    columns to check, which is a permanent error naming the files. ``source`` is the SQL naming a row's file in
    messages (over the reader's ``__etl_file`` column, which the result keeps).
    """
    paths = [escape_glob(str(p)) for p in files]
    try:
        # every record is looked at to find the keys: a key first seen past a sample would be dropped unseen
        detected = con.read_json(paths, format=fmt, records="true", union_by_name=True, sample_size=-1)
    except duckdb.BinderException as exc:
        with_records = _files_with_records(con, dataset, files, fmt) if "expected records" in str(exc) else files
        if len(with_records) == len(files):
            raise
        return _read_json(con, dataset, with_records, fmt, source)
    names, types = detected.columns, [str(t) for t in detected.types]
    rel = con.read_json(paths, format=fmt, records="true", columns={n: "JSON" for n in names}, filename=FILE_COLUMN)
    nested = {n for n, t in zip(names, types) if t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION"))}
    mixed = [n for n, t in zip(names, types) if t == "JSON"]
    if mixed:
        flags = (
            rel.limit(JSON_SAMPLE_RECORDS)
            .aggregate(", ".join(f"bool_or(json_type({_sql_name(n)}) IN ('OBJECT', 'ARRAY'))" for n in mixed))
            .fetchall()[0]
        )
        nested.update(n for n, flag in zip(mixed, flags) if flag)
    out = []
    for name in names:
        q = _sql_name(name)
        if name in nested:
            out.append(q)
            continue
        refusal = quote_literal(
            f"{dataset}: column {name} holds an object or array past the records sampled to type it, which held "
            "only scalars; a scalar column cannot take it: fix the record in "
        )
        out.append(
            f"CASE json_type({q}) WHEN 'VARCHAR' THEN json_extract_string({q}, '$')"
            f" WHEN 'OBJECT' THEN error({refusal} || {source})"
            f" WHEN 'ARRAY' THEN error({refusal} || {source})"
            f" ELSE CAST({q} AS VARCHAR) END AS {q}"
        )
    out.append(FILE_COLUMN)
    return rel.project(", ".join(out))


def _files_with_records(con: duckdb.DuckDBPyConnection, dataset: str, files: list[Path], fmt: JsonLayout) -> list[Path]:
    """``files`` without those holding no records; raises naming the files that hold values other than records."""
    empty, not_records = [], []
    for path in files:
        try:
            con.read_json(escape_glob(str(path)), format=fmt, records="true")
        except duckdb.BinderException:
            values = (
                con.read_json(escape_glob(str(path)), format=fmt, records="false")
                .aggregate("count(*)")
                .fetchall()[0][0]
            )
            (not_records if values else empty).append(path)
    if not_records:
        raise PermanentSourceError(
            f"{dataset}: {', '.join(p.name for p in not_records)} holds JSON values that are not objects; each "
            + ("element of the array" if fmt == "array" else "line")
            + ' must be one record like {"id": 1}; fix the file'
        )
    rest = [p for p in files if p not in empty]
    if not rest:
        raise PermanentSourceError(
            f"{dataset}: {', '.join(p.name for p in empty)} holds no records (an empty JSON array or no lines), so "
            "there are no columns to check against the contract; remove the file, or deliver it with its records"
        )
    return rest
