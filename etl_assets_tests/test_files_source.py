"""Protects the landing-zone files source (``LandingFilesSource.list_files`` / ``read``).

Covers: CSV (with header, with a ``;`` delimiter), JSON arrays, NDJSON and Parquet each read
completely with ``_etl_source`` naming the file and CSV and JSON kept as text; the spec glob and the
partition taken from the file name; files still being written (``*.tmp``, ``*.part``, dotfiles)
being ignored; symlinks and names escaping the dataset directory being refused; and clear
``PermanentSourceError`` messages for no files and corrupt files. Real files in ``tmp_path``,
read with a real DuckDB connection.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from etl_assets.errors import PermanentSourceError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.pipelines.spec import FilesSource
from etl_assets.resources.files import IN_PROGRESS_SUFFIXES, READ_ERROR_COLUMN, LandingFilesSource
from etl_assets.settings import duckdb_connection
from etl_assets_demo import DemoManifest

DATASET = "default.items"  # the landing folder of pipeline items of the default domain, <domain>.<name>
ROWS = {
    "items_2024-01-01": [{"id": 1, "code": "007", "price": 1.5}, {"id": 2, "code": "010", "price": 20.0}],
    "items_2024-01-02": [{"id": 3, "code": "100", "price": 3.25}],
}


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


def _files(**kwargs: object) -> FilesSource:
    return FilesSource.model_validate({"kind": "files", **kwargs})


def _touch(directory: Path, *names: str, text: str = "id\n1\n") -> None:
    for name in names:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


def _listed(source: LandingFilesSource, spec: FilesSource, partition: str | None = None) -> list[str]:
    root = source.dataset_dir(DATASET)
    return [p.relative_to(root).as_posix() for p in source.list_files(DATASET, spec, partition)]


def _rows(rel: duckdb.DuckDBPyRelation) -> list[dict]:
    return sorted((dict(zip(rel.columns, row)) for row in rel.fetchall()), key=lambda r: str(r["id"]))


# --- writers for each format: (file name, rows) -> content on disk ---------------------------


def _csv(sep: str, decimal: str) -> Callable[[Path, list[dict]], None]:
    def write(path: Path, rows: list[dict]) -> None:
        lines = [sep.join(rows[0])] + [
            sep.join([str(r["id"]), r["code"], f"{r['price']:.2f}".replace(".", decimal)]) for r in rows
        ]
        path.write_text("\n".join(lines) + "\n")

    return write


def _json_array(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=2))


def _ndjson(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def _as_text(decimal: str) -> Callable[[dict], dict]:
    return lambda r: {"id": str(r["id"]), "code": r["code"], "price": f"{r['price']:.2f}".replace(".", decimal)}


def _as_is(r: dict) -> dict:
    return dict(r)


def _as_json_text(r: dict) -> dict:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()}


@pytest.mark.parametrize(
    ("spec_args", "ext", "write", "expect"),
    [
        ({"format": "csv"}, "csv", _csv(",", "."), _as_text(".")),
        ({"format": "csv", "delimiter": ";"}, "csv", _csv(";", ","), _as_text(",")),
        ({"format": "json"}, "json", _json_array, _as_json_text),
        ({"format": "ndjson"}, "ndjson", _ndjson, _as_json_text),
        ({"format": "parquet"}, "parquet", _parquet, _as_is),
    ],
    ids=["csv", "csv-semicolon", "json-array", "ndjson", "parquet"],
)
def test_each_format_is_read_completely_with_the_file_name(
    landing: Path, con: duckdb.DuckDBPyConnection, spec_args: dict, ext: str, write: Callable, expect: Callable
) -> None:
    for stem, rows in ROWS.items():
        write(landing / DATASET / f"{stem}.{ext}", rows)
    source, spec = LandingFilesSource(root=str(landing)), _files(glob=f"*.{ext}", **spec_args)

    files = source.list_files(DATASET, spec)
    rel = source.read(con, DATASET, spec, files)

    assert [p.name for p in files] == [f"{stem}.{ext}" for stem in ROWS]
    # a CSV read carries _etl_read_error for the rows it cannot parse (none here)
    extra = {READ_ERROR_COLUMN: None} if spec_args["format"] == "csv" else {}
    assert rel.columns == ["id", "code", "price", SOURCE_COLUMN, *extra]
    expected = [{**expect(r), SOURCE_COLUMN: f"{stem}.{ext}", **extra} for stem, rows in ROWS.items() for r in rows]
    assert _rows(rel) == sorted(expected, key=lambda r: str(r["id"]))
    if spec_args["format"] != "parquet":
        # CSV all_varchar, JSON by kind: leading zeros, decimal commas, every digit survive for validation to cast
        assert set(map(str, rel.types)) == {"VARCHAR"}


def test_demo_products_drop_is_read_from_the_default_landing_root(
    shop_data: DemoManifest, con: duckdb.DuckDBPyConnection
) -> None:
    source, spec = LandingFilesSource(), _files(format="csv", glob="products*.csv")
    assert source.root_path() == shop_data.landing_dir.resolve()

    rel = source.read(con, "shop.products", spec, source.list_files("shop.products", spec))

    rows = rel.fetchall()
    assert len(rows) == shop_data.products
    assert rel.columns == ["product_id", "sku", "name", "category", "list_price", SOURCE_COLUMN, READ_ERROR_COLUMN]
    assert {row[-2] for row in rows} == {"products.csv"} and {row[-1] for row in rows} == {None}
    assert all(isinstance(value, str) for row in rows for value in row[:-1])


# --- which files are listed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        ("*", ["a.csv", "b.csv", "notes.txt"]),
        ("*.csv", ["a.csv", "b.csv"]),
        ("b*", ["b.csv"]),
        ("*.json", []),
        ("sub/*.csv", ["sub/c.csv"]),
        ("**/*.csv", ["a.csv", "b.csv", "sub/c.csv"]),
    ],
)
def test_glob_selects_files(landing: Path, glob: str, expected: list[str]) -> None:
    _touch(landing / DATASET, "a.csv", "b.csv", "notes.txt", "sub/c.csv")
    _touch(landing / "other", "d.csv")
    assert _listed(LandingFilesSource(root=str(landing)), _files(format="csv", glob=glob)) == expected


NAMES = [
    "inventory_2024-01-01.ndjson",
    "inventory_2024-01-02.ndjson",
    "inventory_2024-01-03.ndjson",
    "inventory_latest.ndjson",
]


@pytest.mark.parametrize(
    ("regex", "partition", "expected"),
    [
        (None, None, NAMES),
        (None, "2024-01-02", ["inventory_2024-01-02.ndjson"]),
        (None, "2024-01-09", []),
        (r"inventory_(?P<partition>\d{4}-\d{2}-\d{2})\.ndjson$", "2024-01-03", ["inventory_2024-01-03.ndjson"]),
        (r"_(?P<partition>[a-z]+)\.ndjson$", "latest", ["inventory_latest.ndjson"]),
    ],
)
def test_partition_is_taken_from_the_file_name(
    landing: Path, regex: str | None, partition: str | None, expected: list[str]
) -> None:
    _touch(landing / DATASET, *NAMES)
    spec = _files(format="ndjson", glob="inventory_*.ndjson", **({"partition_regex": regex} if regex else {}))
    assert _listed(LandingFilesSource(root=str(landing)), spec, partition) == expected


def test_partition_read_only_sees_that_days_rows(landing: Path, con: duckdb.DuckDBPyConnection) -> None:
    for stem, rows in ROWS.items():
        _ndjson(landing / DATASET / f"{stem}.ndjson", rows)
    source, spec = LandingFilesSource(root=str(landing)), _files(format="ndjson", glob="items_*.ndjson")

    rel = source.read(con, DATASET, spec, source.list_files(DATASET, spec, "2024-01-01"))

    assert [(r["id"], r[SOURCE_COLUMN]) for r in _rows(rel)] == [
        ("1", "items_2024-01-01.ndjson"),
        ("2", "items_2024-01-01.ndjson"),
    ]


@pytest.mark.parametrize(
    "unfinished",
    [
        *(f"items.csv{suffix}" for suffix in IN_PROGRESS_SUFFIXES),
        "items.tmp",
        "items.part",
        ".items.csv",
        ".~lock.items.csv#",
    ],
)
def test_files_still_being_written_are_ignored(landing: Path, unfinished: str) -> None:
    _touch(landing / DATASET, "complete.csv", unfinished)
    assert _listed(LandingFilesSource(root=str(landing)), _files(format="csv", glob="*")) == ["complete.csv"]


@pytest.mark.parametrize("target", ["inside", "outside", "outside-dir"])
def test_symlinks_are_not_followed(landing: Path, data_dir: Path, target: str) -> None:
    directory = landing / DATASET
    _touch(directory, "real.csv")
    _touch(data_dir, "secret.csv", text="password\nhunter2\n")
    (data_dir / "elsewhere").mkdir()
    _touch(data_dir / "elsewhere", "leak.csv")
    if target == "inside":
        (directory / "alias.csv").symlink_to(directory / "real.csv")
    elif target == "outside":
        (directory / "alias.csv").symlink_to(data_dir / "secret.csv")
    else:
        (directory / "linked").symlink_to(data_dir / "elsewhere", target_is_directory=True)
    source = LandingFilesSource(root=str(landing))

    assert _listed(source, _files(format="csv", glob="*")) == ["real.csv"]
    assert _listed(source, _files(format="csv", glob="*/*.csv")) == []


@pytest.mark.parametrize("glob", ["../*.csv", "../other/*.csv", "sub/../../other/*.csv", "/etc/*", "/tmp/**/*.csv"])
def test_spec_refuses_globs_leaving_the_landing_directory(glob: str) -> None:
    with pytest.raises(ValidationError, match="must stay inside the landing directory"):
        _files(format="csv", glob=glob)


@pytest.mark.parametrize("glob", ["../other/*.csv", "../*/*.csv", "../../landing/other/*.csv"])
def test_escaping_glob_lists_no_other_directory_even_if_it_bypassed_the_spec(landing: Path, glob: str) -> None:
    _touch(landing / "other", "private.csv")
    _touch(landing / DATASET, "mine.csv")
    spec = FilesSource.model_construct(
        kind="files", format="csv", glob=glob, partition_regex=r"(?P<partition>x)", delimiter=",", header=True
    )
    source = LandingFilesSource(root=str(landing))
    listed = source.list_files(DATASET, spec)
    assert [p.name for p in listed if p.name == "private.csv"] == []
    # `../*/*.csv` may come back round to the dataset's own file; nothing else
    assert all(p.resolve().parent == source.dataset_dir(DATASET).resolve() for p in listed)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["no-directory", "empty", "only-unfinished-or-other"])
def test_no_matching_files_is_a_permanent_error_naming_the_directory(
    data_dir: Path, con: duckdb.DuckDBPyConnection, layout: str
) -> None:
    landing = data_dir / "landing"
    if layout != "no-directory":
        (landing / DATASET).mkdir(parents=True)
    if layout == "only-unfinished-or-other":
        _touch(landing / DATASET, "items.csv.part", "items.json")
    source, spec = LandingFilesSource(root=str(landing)), _files(format="csv", glob="*.csv")

    files = source.list_files(DATASET, spec)
    assert files == []
    with pytest.raises(PermanentSourceError) as info:
        source.read(con, DATASET, spec, files)
    assert str(landing / DATASET) in str(info.value)
    assert "*.csv" in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "name", "content"),
    [
        ("parquet", "broken.parquet", random.Random(3).randbytes(2048)),
        ("json", "broken.json", b'[{"id": 1}, {"id": '),
        ("ndjson", "broken.ndjson", b'{"id": 1}\n{"id": 2, "code": \n'),
    ],
)
def test_corrupt_file_is_a_permanent_error_naming_the_file(
    landing: Path, con: duckdb.DuckDBPyConnection, fmt: str, name: str, content: bytes
) -> None:
    (landing / DATASET / name).write_bytes(content)
    source, spec = LandingFilesSource(root=str(landing)), _files(format=fmt, glob=f"*.{fmt}")

    with pytest.raises(PermanentSourceError, match=name.replace(".", r"\.")) as info:
        source.read(con, DATASET, spec, source.list_files(DATASET, spec))
    assert DATASET in str(info.value) and fmt in str(info.value)


def test_corrupt_parquet_next_to_a_good_one_is_named(landing: Path, con: duckdb.DuckDBPyConnection) -> None:
    _parquet(landing / DATASET / "a_good.parquet", ROWS["items_2024-01-01"])
    (landing / DATASET / "b_bad.parquet").write_bytes(random.Random(4).randbytes(2048))
    source, spec = LandingFilesSource(root=str(landing)), _files(format="parquet", glob="*.parquet")

    with pytest.raises(PermanentSourceError) as info:
        source.read(con, DATASET, spec, source.list_files(DATASET, spec))
    # only the broken file is named, with what is wrong with it
    assert "b_bad.parquet cannot be read as parquet: not a Parquet file" in str(info.value)
    assert "a_good.parquet" not in str(info.value)
