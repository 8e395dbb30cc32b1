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
from etl_assets.sqlutil import quote_literal

# Writers that are not done yet use these names; they are never read.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
# Records read to decide whether a JSON column holds nested values (DuckDB's own type-detection sample size).
JSON_SAMPLE_RECORDS = 20_480


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

    def archive_dir(self, dataset: str) -> Path:
        """Where loaded files of ``dataset`` are kept: ``$ETL_DATA_DIR/archive/<dataset>/``."""
        return self.root_path().parent / "archive" / dataset

    def archive(self, dataset: str, name: str, expected_sha256: str | None = None) -> Path | None:
        """Move a loaded file to :meth:`archive_dir` (kept for rebuilds). None if it is gone or changed."""
        return self._move(dataset, name, expected_sha256, self.archive_dir(dataset))

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
        json_columns = {name for name, type_ in zip(rel.columns, rel.types) if str(type_) == "JSON"}
        reader = rel.to_arrow_reader(batch_size)
        names = ", ".join(p.name for p in files)
        # DuckDB exports JSON as plain strings; the arrow.json type keeps "this held nested values" through the lake.
        schema = pa.schema([pa.field(f.name, pa.json_(), f.nullable) if f.name in json_columns else f for f in reader.schema])

        def batches():
            try:
                for batch in reader:
                    yield batch.cast(schema) if json_columns else batch
            except (duckdb.Error, pa.ArrowException, OSError) as exc:  # DuckDB errors surface as OSError through Arrow
                raise PermanentSourceError(f"{dataset}: cannot read {names} as {spec.format}: {exc}") from exc

        return pa.RecordBatchReader.from_batches(schema, batches())

    def read(self, con: duckdb.DuckDBPyConnection, dataset: str, spec: FilesSource, files: list[Path]) -> duckdb.DuckDBPyRelation:
        """A relation over ``files`` with the file name in ``_etl_source``; CSV and JSON are read as text for
        validation to cast (see :func:`_read_json`), Parquet with its own types.

        Raises:
            PermanentSourceError: there are no files, a file is empty (0 bytes) or holds no JSON records, or DuckDB
                cannot parse them (the message names the file).
        """
        if not files:
            raise PermanentSourceError(
                f"{dataset}: no files matching {spec.glob!r} in {self.dataset_dir(dataset)}; drop the file there first"
            )
        empty = [p.name for p in files if p.stat().st_size == 0]
        if empty:
            raise PermanentSourceError(
                f"{dataset}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty (0 bytes), so not a "
                f"{spec.format} file (an interrupted upload?); deliver it again, or remove it from {self.dataset_dir(dataset)}"
            )
        paths = [str(p) for p in files]
        try:
            if spec.format == "csv":
                rel = con.read_csv(paths, header=spec.header, sep=spec.delimiter, all_varchar=True, filename=True, union_by_name=True)
            elif spec.format in ("json", "ndjson"):
                rel = _read_json(con, dataset, files, "array" if spec.format == "json" else "newline_delimited")
            else:
                rel = con.read_parquet(paths, filename=True, union_by_name=True)
            rel = rel.project(f'* EXCLUDE (filename), parse_filename(filename) AS "{SOURCE_COLUMN}"')
            rel.limit(1).fetchall()
        except duckdb.Error as exc:
            raise PermanentSourceError(f"{dataset}: cannot read {', '.join(p.name for p in files)} as {spec.format}: {exc}") from exc
        return rel


def _sql_name(name: str) -> str:
    """A column name as delivered in a file (any text), quoted for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _read_json(con: duckdb.DuckDBPyConnection, dataset: str, files: list[Path], fmt: str) -> duckdb.DuckDBPyRelation:
    """JSON records with every value as delivered: scalars as text, nested values as JSON.

    DuckDB's type inference would alter values (a float literal anywhere turns 9007199254740993 into
    9007199254740992; a number beside strings keeps the strings' quotes), so every key is read as JSON and
    converted by its kind: strings unquoted, numbers, booleans as their JSON text, null as NULL. A column holding
    an object or array in the sampled records stays JSON (the whole column, as delivered), which validation refuses
    for a contract column; one found in a column that sampled as scalars fails the read naming file and column.
    Integers keep every digit; DuckDB's JSON parser turns other numbers into doubles, so a non-integer literal
    keeps its value only up to 15 significant digits.

    Files holding no records (``[]``) add no rows and are skipped; when every file is like that there are no
    columns to check, which is a permanent error naming the files.
    """
    paths = [str(p) for p in files]
    try:
        # every record is looked at to find the keys: a key first seen past a sample would be dropped unseen
        detected = con.read_json(paths, format=fmt, records="true", union_by_name=True, sample_size=-1)
    except duckdb.BinderException as exc:
        with_records = _files_with_records(con, dataset, files, fmt) if "expected records" in str(exc) else files
        if len(with_records) == len(files):
            raise
        return _read_json(con, dataset, with_records, fmt)
    names, types = detected.columns, [str(t) for t in detected.types]
    rel = con.read_json(paths, format=fmt, records="true", columns={n: "JSON" for n in names}, filename=True)
    nested = {n for n, t in zip(names, types) if t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION"))}
    mixed = [n for n, t in zip(names, types) if t == "JSON"]
    if mixed:
        flags = rel.limit(JSON_SAMPLE_RECORDS).aggregate(
            ", ".join(f"bool_or(json_type({_sql_name(n)}) IN ('OBJECT', 'ARRAY'))" for n in mixed)
        ).fetchall()[0]
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
            f" WHEN 'OBJECT' THEN error({refusal} || parse_filename(filename))"
            f" WHEN 'ARRAY' THEN error({refusal} || parse_filename(filename))"
            f" ELSE CAST({q} AS VARCHAR) END AS {q}"
        )
    out.append("filename")
    return rel.project(", ".join(out))


def _files_with_records(con: duckdb.DuckDBPyConnection, dataset: str, files: list[Path], fmt: str) -> list[Path]:
    """``files`` without those holding no records; raises naming the files that hold values other than records."""
    empty, not_records = [], []
    for path in files:
        try:
            con.read_json(str(path), format=fmt, records="true")
        except duckdb.BinderException:
            values = con.read_json(str(path), format=fmt, records="false").aggregate("count(*)").fetchall()[0][0]
            (not_records if values else empty).append(path)
    if not_records:
        raise PermanentSourceError(
            f"{dataset}: {', '.join(p.name for p in not_records)} holds JSON values that are not objects; each "
            + ("element of the array" if fmt == "array" else "line") + ' must be one record like {"id": 1}; fix the file'
        )
    rest = [p for p in files if p not in empty]
    if not rest:
        raise PermanentSourceError(
            f"{dataset}: {', '.join(p.name for p in empty)} holds no records (an empty JSON array or no lines), so "
            "there are no columns to check against the contract; remove the file, or deliver it with its records"
        )
    return rest
