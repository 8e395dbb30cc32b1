"""Protects compressed landing files (etl_assets/resources/files.py): gzip (``.gz``) and zstd (``.zst``).

CSV, JSON and NDJSON files compressed either way are read completely, with the same values as uncompressed; a
truncated or corrupt compressed file is refused whole with a reason naming the codec, never loaded in part (DuckDB
alone loads the first rows of a truncated ``.csv.zst`` without an error); a compression that is not read (``.bz2``)
and a compressed Parquet file are refused with the fix; and a daily partitioned pipeline run loads a day's ``.csv.gz``
and moves that day's truncated ``.csv.zst`` to the landing quarantine. Real files written with Python's gzip and
pyarrow's zstd stream (and the ``zstd`` tool's checksummed frames), read by a real DuckDB.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from dagster import DagsterInstance

from etl_assets.cli import QUIET
from etl_assets.errors import PermanentSourceError
from etl_assets.keys import SOURCE_COLUMN, Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.spec import FilesSource
from etl_assets.resources.files import LandingFilesSource
from etl_assets.settings import duckdb_connection
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

DATASET = "default.items"  # the landing folder of pipeline items of the default domain, <domain>.<name>
ROWS = [{"id": str(i), "code": f"{i:05d}", "note": f'line {i}, "q"'} for i in range(5000)]


def _content(fmt: str, rows: list[dict]) -> bytes:
    if fmt == "csv":
        lines = ["id,code,note"] + [f'{r["id"]},{r["code"]},"{r["note"].replace(chr(34), chr(34) * 2)}"' for r in rows]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "json":
        return json.dumps(rows).encode()
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.fixture
def landing(data_dir: Path) -> Path:
    path = data_dir / "landing"
    (path / DATASET).mkdir(parents=True)
    return path


@pytest.fixture
def con(data_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb_connection()
    yield connection
    connection.close()


def _read(landing: Path, con: duckdb.DuckDBPyConnection, fmt: str, glob: str) -> list[dict]:
    source = LandingFilesSource(root=str(landing))
    spec = FilesSource.model_validate({"kind": "files", "format": fmt, "glob": glob})
    rel = source.read(con, DATASET, spec, source.list_files(DATASET, spec))
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
@pytest.mark.parametrize(("codec", "suffix"), [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_file_is_read_completely(
    landing: Path, con: duckdb.DuckDBPyConnection, fmt: str, codec: str, suffix: str
) -> None:
    name = f"items.{fmt}{suffix}"
    (landing / DATASET / name).write_bytes(_compress(_content(fmt, ROWS), codec))
    got = _read(landing, con, fmt, f"*.{fmt}{suffix}")
    assert sorted((r["id"], r["code"], r["note"]) for r in got) == sorted((r["id"], r["code"], r["note"]) for r in ROWS)
    assert {r[SOURCE_COLUMN] for r in got} == {name}


def test_zstd_tool_frames_with_checksum_are_read(landing: Path, con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("zstd") is None:
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide the test
            pytest.fail("the zstd tool is not installed", pytrace=False)
        pytest.skip("the zstd tool is not installed")
    plain = tmp_path / "items.ndjson"
    plain.write_bytes(_content("ndjson", ROWS))
    subprocess.run(["zstd", "-q", "-C", str(plain), "-o", str(landing / DATASET / "items.ndjson.zst")], check=True)
    assert len(_read(landing, con, "ndjson", "*.ndjson.zst")) == len(ROWS)


@pytest.mark.parametrize(
    ("fmt", "codec", "suffix"),
    [("csv", "zstd", ".zst"), ("csv", "gzip", ".gz"), ("ndjson", "zstd", ".zst"), ("json", "gzip", ".gz")],
)
def test_truncated_compressed_file_is_refused_whole_naming_it(
    landing: Path, con: duckdb.DuckDBPyConnection, fmt: str, codec: str, suffix: str
) -> None:
    data = _compress(_content(fmt, ROWS * 20), codec)
    name = f"items_cut.{fmt}{suffix}"
    (landing / DATASET / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(PermanentSourceError) as info:
        _read(landing, con, fmt, f"*.{fmt}{suffix}")
    message = str(info.value)
    assert name in message and f"the {codec} stream is truncated or corrupt" in message


def test_corrupt_gzip_is_refused(landing: Path, con: duckdb.DuckDBPyConnection) -> None:
    data = bytearray(_compress(_content("csv", ROWS), "gzip"))
    data[len(data) // 2] ^= 0xFF
    (landing / DATASET / "items.csv.gz").write_bytes(bytes(data))
    with pytest.raises(PermanentSourceError, match=r"items\.csv\.gz.*gzip stream is truncated or corrupt"):
        _read(landing, con, "csv", "*.csv.gz")


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        ("csv", "items.csv.bz2", r"compressed as \.bz2, which is not read; deliver it uncompressed, gzip"),
        ("parquet", "items.parquet.gz", r"Parquet compresses inside the file: deliver it as \.parquet"),
    ],
)
def test_unread_compression_is_refused_with_the_fix(
    landing: Path, con: duckdb.DuckDBPyConnection, fmt: str, name: str, expected: str
) -> None:
    (landing / DATASET / name).write_bytes(_compress(b"id\n1\n", "gzip"))
    with pytest.raises(PermanentSourceError, match=expected):
        _read(landing, con, fmt, "items.*")


def test_pipeline_loads_a_days_gzip_file_and_quarantines_its_truncated_zstd_one(
    tmp_path: Path, data_dir: Path, instance: DagsterInstance
) -> None:
    cx_items = Pipeline("corpus", "cx_items")
    landing = data_dir / "landing" / pipeline_ref(cx_items)
    landing.mkdir(parents=True)
    good = [{"id": str(i), "code": "a", "note": "n"} for i in range(300)]
    (landing / "items_2024-01-02_a.csv.gz").write_bytes(_compress(_content("csv", good), "gzip"))
    cut = _compress(
        _content("csv", [{"id": str(i), "code": "b", "note": "n" * 50} for i in range(1000, 60000)]), "zstd"
    )
    (landing / "items_2024-01-02_b.csv.zst").write_bytes(cut[: len(cut) // 2])
    spec = pipeline(
        cx_items.name,
        [column("id", "BIGINT", nullable=False), column("code", "VARCHAR"), column("note", "VARCHAR")],
        domain=cx_items.domain,
        source=files_source(
            "csv",
            glob="items_*.csv.*",
            partition_regex=r"items_(?P<partition>\d{4}-\d{2}-\d{2})_[ab]\.csv\.(gz|zst)$",
        ),
        partitions={"type": "daily", "start": "2024-01-01"},
        retry={"max_retries": 0},
    )
    defs = definitions_for(tmp_path / "specs", spec)
    result = defs.resolve_job_def(pipeline_job_name(cx_items)).execute_in_process(
        instance=instance, partition_key="2024-01-02", run_config=QUIET
    )
    assert result.success
    refused = next(
        e.materialization.metadata["files_refused"].value
        for e in result.get_asset_materialization_events()
        if "files_refused" in e.materialization.metadata
    )
    assert list(refused) == ["items_2024-01-02_b.csv.zst"]  # type: ignore[arg-type]
    assert "zstd stream is truncated or corrupt" in refused["items_2024-01-02_b.csv.zst"]  # type: ignore[index]
    assert not (landing / "items_2024-01-02_b.csv.zst").exists()
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as wh:
        loaded = wh.execute("SELECT count(*), min(id), max(id), min(code) FROM corpus.cx_items").fetchone()
    assert loaded == (300, 0, 299, "a")
