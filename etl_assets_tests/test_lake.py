"""The lake IO manager: one Parquet file per (asset, partition), written atomically, replaced on re-run, and
handed downstream as a DuckDB relation or Arrow stream without pandas."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetIn, DailyPartitionsDefinition, asset, materialize

from etl_assets.lake import LakeError, LakeIOManager, LakeStorage, LakeStream, LakeTable, LakeView, view_files

DAILY = DailyPartitionsDefinition(start_date="2024-01-01")


def _lake(tmp_path: Path) -> LakeStorage:
    return LakeStorage(root=str(tmp_path / "lake"))


def test_write_replaces_partition_atomically(tmp_path: Path):
    lake = _lake(tmp_path)
    first = lake.write(["a", "b"], "2024-01-01", pa.table({"x": [1, 2, 3]}))
    assert first.path == tmp_path / "lake" / "a" / "b" / "2024-01-01.parquet"
    assert first.rows == 3
    lake.write(["a", "b"], "2024-01-01", pa.table({"x": [7]}))
    assert pq.read_table(first.path).column("x").to_pylist() == [7]
    assert [p.name for p in first.path.parent.iterdir()] == ["2024-01-01.parquet"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path):
    lake = _lake(tmp_path)
    lake.write(["t"], None, pa.table({"x": [1, 2]}))
    schema = pa.schema([("x", pa.int64())])

    def broken():
        yield pa.record_batch({"x": [5]}, schema=schema)
        raise RuntimeError("source dropped mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        lake.write(["t"], None, pa.RecordBatchReader.from_batches(schema, broken()))
    path = lake.path_for(["t"], None)
    assert pq.read_table(path).column("x").to_pylist() == [1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["_all.parquet"]


def test_writes_relations_and_streams(tmp_path: Path):
    lake = _lake(tmp_path)
    con = duckdb.connect()
    rel = con.sql("SELECT range AS id, 'v' || range AS v FROM range(100000)")
    assert lake.write(["rel"], None, rel).rows == 100000
    reader = pa.RecordBatchReader.from_batches(
        pa.schema([("id", pa.int64())]), (pa.record_batch({"id": list(range(i, i + 10))}) for i in range(0, 50, 10))
    )
    assert lake.write(["stream"], None, reader).rows == 50
    with pytest.raises(LakeError, match="not list"):
        lake.write(["bad"], None, [1, 2, 3])


def test_partition_key_cannot_escape(tmp_path: Path):
    with pytest.raises(LakeError):
        _lake(tmp_path).path_for(["a"], "../../etc")


def test_table_handle_reads_without_pandas(tmp_path: Path):
    lake = _lake(tmp_path)
    lake.write(["d"], "2024-01-01", pa.table({"id": [1, 2]}))
    lake.write(["d"], "2024-01-02", pa.table({"id": [3], "extra": ["new column"]}))
    table = lake.table(["d"], ["2024-01-01", "2024-01-02"])
    assert table.num_rows == 3
    assert sorted(table.relation().aggregate("id").fetchall()) == [(1,), (2,), (3,)]
    assert table.relation().columns == ["id", "extra"]
    assert sum(b.num_rows for b in table.arrow_reader(batch_size=1)) == 3
    with pytest.raises(LakeError, match="2024-01-05.*materialize them first"):
        lake.table(["d"], ["2024-01-05"])
    assert lake.table(["d"], ["2024-01-01", "2024-01-05"], allow_missing=True).partitions == ("2024-01-01",)


def test_io_manager_in_real_runs(tmp_path: Path):
    lake = _lake(tmp_path)
    seen: dict = {}

    @asset(partitions_def=DAILY, io_manager_key="lake_io_manager")
    def numbers(context):
        day = int(context.partition_key[-2:])
        con = duckdb.connect()
        return con.sql(f"SELECT range AS n, {day} AS day FROM range({day * 10})")

    @asset(partitions_def=DAILY, io_manager_key="lake_io_manager", ins={"numbers": AssetIn()})
    def doubled(numbers: LakeTable):
        seen["type"] = type(numbers)
        schema = pa.schema([("n", pa.int64())])
        reader = numbers.arrow_reader()
        batches = (
            pa.record_batch([pc.multiply(b.column("n"), 2)], schema=schema)  # pyright: ignore[reportAttributeAccessIssue]
            for b in reader
        )
        return LakeStream(pa.RecordBatchReader.from_batches(schema, batches), lambda: {"note": "streamed"})

    resources = {"lake_io_manager": LakeIOManager(lake=lake)}
    for _ in range(3):  # re-runs replace, never append
        result = materialize([numbers, doubled], partition_key="2024-01-03", resources=resources)
        assert result.success
    assert seen["type"] is LakeTable
    assert pq.read_table(lake.path_for(["numbers"], "2024-01-03")).num_rows == 30
    doubled_rows = pq.read_table(lake.path_for(["doubled"], "2024-01-03")).column("n").to_pylist()
    assert doubled_rows == [2 * i for i in range(30)]
    mats = result.asset_materializations_for_node("doubled")
    assert mats[0].metadata["dagster/row_count"].value == 30
    assert mats[0].metadata["note"].value == "streamed"


def _raw(lake: LakeStorage, values: list[str], partition: str = "2024-01-01") -> Path:
    return lake.write(["default", "raw_v"], partition, pa.table({"x": values, "note": [f"n{v}" for v in values]})).path


def _view(source: Path, con: duckdb.DuckDBPyConnection, excluded: list[int]) -> LakeView:
    positions = con.sql("SELECT unnest(?::BIGINT[]) AS position", params=[excluded])
    return LakeView(source=str(source), select='TRY_CAST("x" AS INTEGER) AS "x", "note"', excluded=positions)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_view_partition_is_the_source_minus_the_excluded_rows_typed(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, [str(i) for i in range(10)])
    result = lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [3, 7]))
    assert result.rows == 8 and result.path.name == "2024-01-01.view.json"
    assert result.schema.field("x").type == pa.int32()
    assert lake.partitions(["default", "clean_v"]) == ["2024-01-01"] and lake.exists(
        ["default", "clean_v"], "2024-01-01"
    )
    table = lake.table(["default", "clean_v"], ["2024-01-01"])
    assert table.num_rows == 8
    assert table.relation(con).order("x").fetchall() == [(i, f"n{i}") for i in range(10) if i not in (3, 7)]
    assert sum(b.num_rows for b in table.arrow_reader(batch_size=3)) == 8
    assert table.schema.names == ["x", "note"]


def test_view_keeps_the_validated_rows_when_the_source_is_replaced_or_expired(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2", "3"])
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [1]))
    _raw(lake, ["100", "200"])  # a re-extract replaces the raw partition
    clean = lake.table(["default", "clean_v"], ["2024-01-01"])
    assert clean.relation(con).order("x").fetchall() == [(1, "n1"), (3, "n3")]
    source.unlink()  # retention expires the raw partition
    assert clean.relation(con).order("x").fetchall() == [(1, "n1"), (3, "n3")]


def test_rewriting_a_view_replaces_its_files_and_a_parquet_write_removes_it(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2", "3"])
    directory = tmp_path / "lake" / "default" / "clean_v"
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [0]))
    first = _files(directory)
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, []))
    second = _files(directory)
    assert len(first) == len(second) == 3 and not set(first) & set(second) - {"2024-01-01.view.json"}
    assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).count("*").fetchall() == [(3,)]
    lake.write(["default", "clean_v"], "2024-01-01", pa.table({"x": [9]}))
    assert _files(directory) == ["2024-01-01.parquet"]
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [2]))
    assert "2024-01-01.parquet" not in _files(directory)
    assert lake.table(["default", "clean_v"], ["2024-01-01"]).num_rows == 2


def test_failed_view_write_keeps_the_previous_partition_and_leaves_nothing(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2", "3"])
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [0]))
    directory = tmp_path / "lake" / "default" / "clean_v"
    before = _files(directory)
    broken = con.sql("SELECT CAST('not a position' AS BIGINT) AS position")  # fails only when executed
    with pytest.raises(duckdb.ConversionException):
        lake.write(["default", "clean_v"], "2024-01-01", LakeView(str(source), '"x"', broken))
    assert _files(directory) == before
    assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).order("x").fetchall() == [
        (2, "n2"),
        (3, "n3"),
    ]


def test_views_and_files_read_together_and_a_bad_manifest_names_the_file(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2"])
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, []))
    lake.write(["default", "clean_v"], "2024-01-02", pa.table({"x": pa.array([5], pa.int32()), "note": ["file"]}))
    both = lake.table(["default", "clean_v"], ["2024-01-01", "2024-01-02"])
    assert both.num_rows == 3
    assert both.relation(con).order("x").fetchall() == [(1, "n1"), (2, "n2"), (5, "file")]
    assert set(both.by_partition()) == {"2024-01-01", "2024-01-02"}
    manifest = tmp_path / "lake" / "default" / "clean_v" / "2024-01-01.view.json"
    manifest.write_text('{"format": "something else"}')
    with pytest.raises(LakeError, match=r"2024-01-01\.view\.json: field format .*re-materialize"):
        lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con)


# ---------------------------------------------------------------------------------------------- self-repair

GENERATION = "0123456789ab"


def _killed_writer_files(directory: Path, partition: str, generation: str = GENERATION) -> set[str]:
    """Place the files a writer of ``partition`` killed mid-write leaves (a Parquet write's temporary file, a view
    generation's three files, its lock file); return their names."""
    names = {
        f".{partition}.{uuid.UUID(int=int(generation, 16)).hex}.tmp",
        f".{partition}.{generation}.source.parquet",
        f".{partition}.{generation}.excluded.parquet",
        f".{partition}.{generation}.view.tmp",
        f".{partition}.lock",
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"left by a killed writer")
    return names


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x17 not json {",
        b'{"format": "etl_assets.lake.view/1"}',  # the right format, fields missing
        b"[1, 2, 3]",
        # well-formed, naming files outside its directory (relative, absolute): they may be read, never deleted
        json.dumps(
            {
                "format": "etl_assets.lake.view/1",
                "source": "../../default/raw_v/2024-01-01.parquet",
                "excluded": "{sentinel}",
                "select": '"x"',
                "excluded_rows": 0,
                "rows": 3,
            }
        ).encode(),
    ],
)
@pytest.mark.parametrize("rewrite_as", ["view", "parquet"])
def test_rewriting_a_partition_whose_manifest_is_corrupt_repairs_it(tmp_path: Path, garbage: bytes, rewrite_as: str):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2", "3"])
    directory = tmp_path / "lake" / "default" / "clean_v"
    first = lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [0]))
    old_files = set(_files(directory)) - {first.path.name}
    sentinel = tmp_path / "sentinel.parquet"
    sentinel.write_bytes(b"not the lake's")
    first.path.write_bytes(garbage.replace(b"{sentinel}", str(sentinel).encode()))
    if not garbage.startswith(b'{"format": "etl_assets.lake.view/1", "source": "../'):
        with pytest.raises(LakeError, match=r"2024-01-01\.view\.json.*re-materialize the partition"):
            lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con)

    if rewrite_as == "view":
        result = lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [2]))
        assert result.rows == 2
        new_files = {p.name for p in view_files(str(result.path))}
        assert set(_files(directory)) == {"2024-01-01.view.json", *new_files}  # the corrupt one's files are gone
        assert not old_files & new_files
        assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).order("x").fetchall() == [
            (1, "n1"),
            (2, "n2"),
        ]
    else:
        lake.write(["default", "clean_v"], "2024-01-01", pa.table({"x": [7]}))
        assert _files(directory) == ["2024-01-01.parquet"]
        assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).fetchall() == [(7,)]
    assert source.is_file() and pq.read_table(source).num_rows == 3  # nothing outside the directory was touched
    assert sentinel.read_bytes() == b"not the lake's"


def test_a_write_removes_the_files_a_killed_writer_left_and_only_those(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2", "3"])
    directory = tmp_path / "lake" / "default" / "clean_v"
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, []))
    stale = _killed_writer_files(directory, "2024-01-01")
    # files of other partitions whose names start like this one's: not this partition's to remove
    others = _killed_writer_files(directory, "2024-01-01.0123456789ab", generation="abcdef012345")
    others |= _killed_writer_files(directory, "2024-01-01-00:00", generation="fedcba987654")
    unrelated = {".2024-01-01.notes", ".2024-01-01.0123456789ab.source.parquet.bak"}  # not a writer's names
    for name in unrelated:
        (directory / name).write_bytes(b"someone's")
    assert stale <= set(_files(directory))

    result = lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, [1]))
    kept = {p.name for p in view_files(str(result.path))}
    assert set(_files(directory)) == {"2024-01-01.view.json", *kept, *others, *unrelated}
    assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).order("x").fetchall() == [
        (1, "n1"),
        (3, "n3"),
    ]

    lake.write(["default", "clean_v"], "2024-01-01", pa.table({"x": [5]}))  # a Parquet write cleans up the same way
    _killed_writer_files(directory, "2024-01-01")
    lake.write(["default", "clean_v"], "2024-01-01", pa.table({"x": [6]}))
    assert set(_files(directory)) == {"2024-01-01.parquet", *others, *unrelated}


def test_remove_takes_a_partition_and_its_leftovers_under_its_lock(tmp_path: Path):
    lake, con = _lake(tmp_path), duckdb.connect()
    source = _raw(lake, ["1", "2"])
    directory = tmp_path / "lake" / "default" / "clean_v"
    lake.write(["default", "clean_v"], "2024-01-01", _view(source, con, []))
    lake.write(["default", "clean_v"], "2024-01-02", _view(source, con, [0]))
    _killed_writer_files(directory, "2024-01-01")
    removed = lake.remove(["default", "clean_v"], "2024-01-01")
    assert "2024-01-01.view.json" in removed and len(removed) == 1 + 4  # the manifest and the stale files
    assert lake.partitions(["default", "clean_v"]) == ["2024-01-02"]
    assert all(name.startswith(("2024-01-02", ".2024-01-02.")) for name in _files(directory))
    assert lake.table(["default", "clean_v"], ["2024-01-02"]).num_rows == 1
    assert lake.remove(["default", "clean_v"], "2024-01-05") == [] and lake.remove(["nothing"], None) == []


def test_a_pinned_partition_reads_one_version_while_it_is_rewritten(tmp_path: Path):
    """A step reading a pinned raw partition (validation) sees the rows it started with, and the view it writes
    over them excludes the positions it computed, even when a re-extract replaces the partition in between."""
    import os
    import subprocess
    import sys

    lake, con = _lake(tmp_path), duckdb.connect()
    _raw(lake, ["1", "2", "3"])
    raw = lake.table(["default", "raw_v"], ["2024-01-01"])
    pins = tmp_path / "lake" / ".etl_pins"
    with lake.pinned(raw) as pinned:
        before = pinned.relation(con).fetchall()
        _raw(lake, ["7", "8", "9", "10"])  # the re-extract lands between the checks and the view write
        assert pinned.relation(con).fetchall() == before == [("1", "n1"), ("2", "n2"), ("3", "n3")]
        assert raw.relation(con).fetchall()[0] == ("7", "n7")  # the unpinned name reads the new version
        lake.write(["default", "clean_v"], "2024-01-01", _view(Path(pinned.paths[0]), con, [1]))
        assert len(list(pins.iterdir())) == 1
    assert list(pins.iterdir()) == []  # the pin is gone with the block
    assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).order("x").fetchall() == [
        (1, "n1"),
        (3, "n3"),
    ]

    # a pin of a process that is gone (a killed step) is removed by the next pin; a live process's is kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = pins / f"{dead.stdout.strip()}-{uuid.uuid4().hex}.parquet"
    raw_file = lake.stored_path(["default", "raw_v"], "2024-01-01")
    assert raw_file is not None
    os.link(raw_file, stale)
    live = pins / f"{os.getppid()}-{uuid.uuid4().hex}.parquet"
    os.link(raw_file, live)
    with lake.pinned(raw):
        assert not stale.exists() and live.exists()
    live.unlink()
