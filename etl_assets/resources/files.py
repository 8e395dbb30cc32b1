"""Landing-zone files: ``<landing>/<dataset>/``, read with DuckDB. Names are confined to the landing root."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
from dagster import ConfigurableResource

from etl_assets.errors import PermanentSourceError
from etl_assets.pipelines.spec import FilesSource
from etl_assets.resources.api import SOURCE_COLUMN
from etl_assets.settings import current_settings

# Writers that are not done yet use these names; they are never read.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


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

    def list_files(self, dataset: str, spec: FilesSource, partition: str | None = None) -> list[Path]:
        """Complete files of ``dataset`` matching the spec's glob (and ``partition``, taken from the name).

        Symlinks and anything resolving outside the dataset's directory are refused, not followed.
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
        return found

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
