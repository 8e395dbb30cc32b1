"""Protects what a partition of a files pipeline is and how its files are read (``LandingFilesSource.open_partition``).

A partition is every file delivered for it, in landing and in the archive, each delivered name once at its newest
version; every file is read by its exact name (never as a glob); a file that cannot be loaded (empty, unparseable,
a bad header, a missing required column) is refused alone and the others load; CSV rows are judged one by one (a
ragged or non-UTF-8 row is kept for the quarantine with its line and bytes); null sentinels come from the spec.
Real files, a real DuckDB connection, and once the whole pipeline through a real Dagster instance into the DuckDB
warehouse.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from etl_assets.errors import PermanentSourceError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.pipelines.spec import FilesSource
from etl_assets.resources.files import READ_ERROR_COLUMN, SNAPSHOT_DIR, LandingFilesSource, escape_glob
from etl_assets.settings import duckdb_connection

DATASET = "default.sales"  # the landing folder of pipeline sales of the default domain, <domain>.<name>


@pytest.fixture
def landing(data_dir: Path) -> Path:
    (data_dir / "landing" / DATASET).mkdir(parents=True)
    return data_dir / "landing"


@pytest.fixture
def con(data_dir: Path):
    connection = duckdb_connection()
    yield connection
    connection.close()


def _spec(**kwargs) -> FilesSource:
    return FilesSource.model_validate({"kind": "files", "format": "csv", "glob": "*.csv", **kwargs})


def _write(landing: Path, name: str, text: str | bytes) -> Path:
    path = landing / DATASET / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _rows(read) -> list[dict]:
    return read.stream().read_all().to_pylist()


def _by_source(rows: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row[SOURCE_COLUMN], []).append(row["id"])
    return out


def test_partition_inputs_are_every_delivered_name_at_its_newest_version(landing: Path, con) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "sales_2024-01-10_storeA.csv", "id,amount\n1,10\n2,20\n")
    source.archive(DATASET, "sales_2024-01-10_storeA.csv")
    _write(landing, "sales_2024-01-10_storeB.csv", "id,amount\n3,30\n")
    _write(landing, "sales_2024-01-11_storeA.csv", "id,amount\n9,90\n")  # another day

    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"])
    assert [(f.name, f.archived) for f in read.files] == [
        ("sales_2024-01-10_storeA.csv", True),
        ("sales_2024-01-10_storeB.csv", False),
    ]
    assert _by_source(_rows(read)) == {"sales_2024-01-10_storeA.csv": ["1", "2"], "sales_2024-01-10_storeB.csv": ["3"]}

    # a changed re-delivery of storeA replaces that file's rows only; the archived copy is superseded
    _write(landing, "sales_2024-01-10_storeA.csv", "id,amount\n1,11\n4,40\n")
    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"])
    assert [(f.name, f.archived) for f in read.files] == [
        ("sales_2024-01-10_storeA.csv", False),
        ("sales_2024-01-10_storeB.csv", False),
    ]
    rows = _rows(read)
    assert _by_source(rows) == {"sales_2024-01-10_storeA.csv": ["1", "4"], "sales_2024-01-10_storeB.csv": ["3"]}
    assert {r["id"]: r["amount"] for r in rows} == {"1": "11", "4": "40", "3": "30"}

    # once archived again, the newest of the two archived copies wins
    source.archive(DATASET, "sales_2024-01-10_storeA.csv")
    assert len(list(source.archive_dir(DATASET).glob("*storeA.csv"))) == 2
    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"])
    assert {r["id"]: r["amount"] for r in _rows(read)} == {"1": "11", "4": "40", "3": "30"}


def test_pinned_inputs_survive_the_archive_moving_them_and_are_removed_afterwards(landing: Path, con) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "a_2024-01-10.csv", "id\n1\n2\n")
    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"])
    source.archive(DATASET, "a_2024-01-10.csv")  # the archive sensor moves it while the extract streams
    assert not (landing / DATASET / "a_2024-01-10.csv").exists()
    assert [r["id"] for r in _rows(read)] == ["1", "2"]
    assert list((landing / SNAPSHOT_DIR).iterdir()) == []


@pytest.mark.parametrize("name", ["x[1].csv", "part*.csv", "y?.csv", "z[!a].csv", "we ird'name\".csv"])
def test_every_file_is_read_by_its_exact_name_once(landing: Path, con, name: str) -> None:
    _write(landing, name, "id\n100\n")
    # neighbours the name would match as a glob
    for neighbour in ("x1.csv", "partA.csv", "yA.csv", "zb.csv"):
        _write(landing, neighbour, f"id\n{neighbour[:2]}\n")
    source, spec = LandingFilesSource(root=str(landing)), _spec()

    rows = _rows(source.open_partition(con, DATASET, spec, None, required=["id"]))
    assert sorted(_by_source(rows).items()) == sorted(
        {name: ["100"], "x1.csv": ["x1"], "partA.csv": ["pa"], "yA.csv": ["yA"], "zb.csv": ["zb"]}.items()
    )
    # the strict read of named paths is literal too
    assert source.read(con, DATASET, spec, [landing / DATASET / name]).fetchall()[0][:2] == ("100", name)


def test_escape_glob_brackets_every_glob_character() -> None:
    assert escape_glob("/d/x[1]*?.csv") == "/d/x[[]1][*][?].csv"


def test_a_good_file_is_never_punished_for_an_empty_neighbour(landing: Path, data_dir: Path, con) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "sales_2024-01-10_a.csv", b"")
    _write(landing, "sales_2024-01-10_b.csv", "id\n1\n2\n")

    # the run launched for the good file leaves the empty one for its own run
    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"], own_file="sales_2024-01-10_b.csv")
    assert [f.name for f in read.files] == ["sales_2024-01-10_b.csv"]
    assert [r.file.delivered.name for r in read.skipped] == ["sales_2024-01-10_a.csv"] and not read.moved
    assert [r["id"] for r in _rows(read)] == ["1", "2"]
    assert (landing / DATASET / "sales_2024-01-10_a.csv").exists()

    # the empty file's own run (or a manual run) moves it to landing quarantine with the reason; the good one loads
    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"], own_file="sales_2024-01-10_a.csv")
    assert [r["id"] for r in _rows(read)] == ["1", "2"]
    assert not (landing / DATASET / "sales_2024-01-10_a.csv").exists()
    assert (landing / DATASET / "sales_2024-01-10_b.csv").exists()
    reasons = list((data_dir / "quarantine" / DATASET).glob("*sales_2024-01-10_a.csv.reason.txt"))
    assert len(reasons) == 1 and "empty (0 bytes)" in reasons[0].read_text()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("amount\n5\n", "required column(s) id missing (it has amount)"),
        ("id;amount\n1;5\n", "required column(s) id missing (it has id;amount)"),
        ("id,bad col\n1,2\n", "'bad col' are not identifiers"),
        ("id,_etl_source\n1,x\n", "_etl_source are reserved"),
        ("id,ID\n1,2\n", "differ only in case"),
        (b"id,\xff\n1,2\n", "header line is not UTF-8"),
    ],
    ids=["missing-required", "wrong-delimiter", "not-identifier", "reserved", "case-collision", "bad-header"],
)
def test_a_file_that_cannot_load_is_refused_alone_with_its_reason(landing: Path, con, content, reason: str) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "a_2024-01-10.csv", content)
    _write(landing, "b_2024-01-10.csv", "id,amount\n7,70\n")

    read = source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"])
    assert [(r.file.delivered.name, reason in r.reason) for r in read.moved] == [("a_2024-01-10.csv", True)], read.moved
    assert [r["id"] for r in _rows(read)] == ["7"]


def test_only_refused_files_is_a_permanent_error_naming_each_reason(landing: Path, con) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "a_2024-01-10.csv", b"")
    with pytest.raises(PermanentSourceError, match=r"no file of the partition can be loaded \(a_2024-01-10.csv: empty"):
        source.open_partition(con, DATASET, spec, "2024-01-10", required=["id"])
    with pytest.raises(PermanentSourceError, match="no files matching"):
        source.open_partition(con, DATASET, spec, "2024-01-11", required=["id"])


def test_an_archived_input_that_no_longer_loads_stops_the_read_and_stays_archived(landing: Path, con) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "a_2024-01-10.csv", "id\n1\n")
    archived = source.archive(DATASET, "a_2024-01-10.csv")
    assert isinstance(archived, Path)  # a local landing zone archives to a file
    with pytest.raises(PermanentSourceError, match="archived input a_2024-01-10.csv .* the contract has changed"):
        source.open_partition(con, DATASET, spec, "2024-01-10", required=["id", "store"])
    assert archived.exists()


def test_csv_rows_are_judged_one_by_one(landing: Path, con) -> None:
    source, spec = LandingFilesSource(root=str(landing)), _spec()
    _write(landing, "a.csv", b"id,name,amount\n1,x,2\n2,y\n3,z,4,5\n4,\xff\xfeq,5\n5,w,6\n")

    read = source.open_partition(con, DATASET, spec, None, required=["id"])
    rows = _rows(read)
    good = [r for r in rows if r[READ_ERROR_COLUMN] is None]
    bad = [r for r in rows if r[READ_ERROR_COLUMN] is not None]
    assert [(r["id"], r["name"], r["amount"]) for r in good] == [("1", "x", "2"), ("5", "w", "6")]
    assert read.malformed_rows == 3 and len(rows) == 5  # every data line once: two good, three kept for quarantine
    assert all(r["id"] is None and r[SOURCE_COLUMN] == "a.csv" for r in bad)
    errors = [r[READ_ERROR_COLUMN] for r in bad]
    assert errors[0].startswith("line 3: missing columns") and errors[0].endswith(": 2,y")
    assert errors[1].startswith("line 4: too many columns") and errors[1].endswith(": 3,z,4,5")
    assert errors[2].startswith("line 5: invalid encoding") and errors[2].endswith(r": 4,\xff\xfeq,5")


def test_csv_null_sentinels_come_from_the_spec(landing: Path, con) -> None:
    _write(landing, "a.csv", "id,note\n1,NULL\n2,N/A\n3,\n4,null\n")
    source = LandingFilesSource(root=str(landing))
    default = _rows(source.open_partition(con, DATASET, _spec(), None, required=["id"]))
    assert [r["note"] for r in default] == ["NULL", "N/A", None, "null"]
    custom = _rows(source.open_partition(con, DATASET, _spec(null_values=["NULL", "N/A"]), None, required=["id"]))
    assert [r["note"] for r in custom] == [None, None, "", "null"]


@pytest.mark.parametrize("fmt", ["json", "ndjson", "parquet"])
def test_other_formats_refuse_a_broken_file_alone(landing: Path, con, fmt: str) -> None:
    import pyarrow.parquet as pq

    good = landing / DATASET / f"b.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"id": [1, 2]}), good)
    else:
        good.write_text('[{"id": 1}, {"id": 2}]' if fmt == "json" else '{"id": 1}\n{"id": 2}\n')
    _write(landing, f"a[1].{fmt}", b'{"id": 1, "x": ')
    spec = FilesSource.model_validate({"kind": "files", "format": fmt, "glob": f"*.{fmt}"})

    read = LandingFilesSource(root=str(landing)).open_partition(con, DATASET, spec, None, required=["id"])
    assert [r.file.delivered.name for r in read.moved] == [f"a[1].{fmt}"]
    rows = _rows(read)
    assert [(str(r["id"]), r[SOURCE_COLUMN]) for r in rows] == [("1", f"b.{fmt}"), ("2", f"b.{fmt}")]
