"""Landing-zone files: ``<landing>/<dataset>/``, read with DuckDB. Names are confined to the landing root."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
from dagster import ConfigurableResource

from etl_assets.errors import PermanentSourceError
from etl_assets.pipelines.spec import FilesSource
from etl_assets.resources.api import SOURCE_COLUMN
from etl_assets.settings import current_settings

# Writers that are not done yet use these names; they are never read.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


@dataclass(frozen=True)
class LandingFile:
    """A complete-looking file in a dataset's landing directory."""

    name: str
    path: Path
    size: int
    mtime_ns: int


class LandingFilesSource(ConfigurableResource):
    """Files dropped per dataset under the landing root.

    Attributes:
        root: Landing root; empty means ``$ETL_DATA_DIR/landing``.
    """

    root: str = ""

    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve() if self.root else current_settings().landing_dir

    def dataset_dir(self, dataset: str) -> Path:
        return self.root_path() / dataset

    def list_files(
        self, dataset: str, spec: FilesSource, partition: str | None = None, limit: int | None = None
    ) -> list[Path]:
        """Complete files of ``dataset`` matching the spec's glob (and ``partition``, taken from the name).

        Symlinks and anything resolving outside the dataset's directory are refused, not followed. With ``limit``,
        stops after that many files (in name order), so a large backlog costs bounded work.
        """
        directory = self.dataset_dir(dataset)
        if not directory.is_dir():
            return []
        root = directory.resolve()
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

    def scan(self, dataset: str, spec: FilesSource, limit: int | None = None) -> list[LandingFile]:
        """Files the sensor may consider, with size and modification time (the first ``limit`` in name order)."""
        files = []
        for path in self.list_files(dataset, spec, limit=limit):
            st = path.stat()
            files.append(LandingFile(path.name, path, st.st_size, st.st_mtime_ns))
        return files

    def marker_present(self, dataset: str, marker: str) -> bool:
        return (self.dataset_dir(dataset) / marker).is_file()

    @staticmethod
    def sha256(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def _confined(self, dataset: str, name: str) -> Path:
        directory = self.dataset_dir(dataset).resolve()
        path = directory / name
        if path.is_symlink() or path.resolve().parent != directory:
            raise PermanentSourceError(f"{dataset}: refusing {name!r}: not a plain file inside {directory}")
        return path

    def _move(self, dataset: str, name: str, expected_sha256: str | None, into: Path) -> Path | None:
        path = self._confined(dataset, name)
        if not path.is_file():
            return None
        if expected_sha256 is not None and self.sha256(path) != expected_sha256:
            return None  # a newer delivery with the same name arrived; it has its own run
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        into.mkdir(parents=True, exist_ok=True)
        target = into / f"{stamp}_{name}"
        os.replace(path, target) if path.stat().st_dev == into.stat().st_dev else shutil.move(path, target)
        return target

    def archive(self, dataset: str, name: str, expected_sha256: str | None = None) -> Path | None:
        """Move a loaded file to ``$ETL_DATA_DIR/archive/<dataset>/`` (kept for rebuilds). None if it is gone or changed."""
        return self._move(dataset, name, expected_sha256, self.root_path().parent / "archive" / dataset)

    def quarantine(self, dataset: str, name: str, reason: str, expected_sha256: str | None = None) -> Path | None:
        """Move an unreadable file to ``$ETL_DATA_DIR/quarantine/<dataset>/`` with ``<file>.reason.txt`` beside it."""
        target = self._move(dataset, name, expected_sha256, self.root_path().parent / "quarantine" / dataset)
        if target is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason.rstrip() + "\n")
        return target

    def stream(
        self, con: duckdb.DuckDBPyConnection, dataset: str, spec: FilesSource, files: list[Path], batch_size: int = 100_000
    ) -> pa.RecordBatchReader:
        """Like :meth:`read`, as an Arrow stream whose parse errors (found anywhere in the files) are permanent."""
        rel = self.read(con, dataset, spec, files)
        reader = rel.to_arrow_reader(batch_size)
        names = ", ".join(p.name for p in files)

        def batches():
            try:
                yield from reader
            except (duckdb.Error, pa.ArrowException, OSError) as exc:  # DuckDB errors surface as OSError through Arrow
                raise PermanentSourceError(f"{dataset}: cannot read {names} as {spec.format}: {exc}") from exc

        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    def read(self, con: duckdb.DuckDBPyConnection, dataset: str, spec: FilesSource, files: list[Path]) -> duckdb.DuckDBPyRelation:
        """A relation over ``files`` with the file name in ``_etl_source``; CSV is read as text for validation to cast.

        Raises:
            PermanentSourceError: there are no files, or DuckDB cannot parse them (the message names the file).
        """
        if not files:
            raise PermanentSourceError(
                f"{dataset}: no files matching {spec.glob!r} in {self.dataset_dir(dataset)}; drop the file there first"
            )
        paths = [str(p) for p in files]
        try:
            if spec.format == "csv":
                rel = con.read_csv(paths, header=spec.header, sep=spec.delimiter, all_varchar=True, filename=True, union_by_name=True)
            elif spec.format in ("json", "ndjson"):
                fmt = "array" if spec.format == "json" else "newline_delimited"
                rel = con.read_json(paths, format=fmt, filename=True, union_by_name=True)
            else:
                rel = con.read_parquet(paths, filename=True, union_by_name=True)
            rel = rel.project(f'* EXCLUDE (filename), parse_filename(filename) AS "{SOURCE_COLUMN}"')
            rel.limit(1).fetchall()
        except duckdb.Error as exc:
            raise PermanentSourceError(f"{dataset}: cannot read {', '.join(p.name for p in files)} as {spec.format}: {exc}") from exc
        return rel
