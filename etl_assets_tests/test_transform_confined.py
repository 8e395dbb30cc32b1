"""Transform SQL is confined: its file must sit next to its spec or in the domain's ../sql/ folder, and it runs in a
DuckDB connection that reads and writes files only under the lake, so SQL reaching for any other file, URL, database
or extension fails the run at once (no retry) with a message naming the transform, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import DagsterEventType

from etl_assets.cli import QUIET
from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.spec import SpecError, load_specs
from etl_assets.settings import duckdb_connection
from etl_assets_tests.specs import column, definitions_for, pipeline, transform, write_spec

NOTES = pipeline("notes", [column("note_id", "BIGINT", nullable=False), column("body")], domain="desk")


def desk_job(name: str) -> str:
    """The job of pipeline ``name`` of domain desk."""
    return pipeline_job_name(Pipeline("desk", name))


def mart_spec(name: str, sql_file: str) -> dict:
    """A mart over ``notes`` built by ``sql_file``, retried twice (so a retry would show)."""
    return transform(name, sql_file, ["notes"], domain="desk", retry={"max_retries": 2, "delay_seconds": 0})


# --- the SQL file's place -------------------------------------------------------------------------------------------


def _domain(tmp_path: Path) -> tuple[Path, Path]:
    """A domain folder: specs/ with the source spec, and an empty sql/ beside it."""
    specs, sql = tmp_path / "domain" / "specs", tmp_path / "domain" / "sql"
    specs.mkdir(parents=True)
    sql.mkdir()
    write_spec(specs, NOTES)
    return specs, sql


@pytest.mark.parametrize("sql_file", ["/etc/passwd", "../sql/m.sql", "sub/../m.sql", "../../outside.sql"])
def test_sql_path_outside_its_folders_is_refused(tmp_path: Path, sql_file: str):
    specs, sql = _domain(tmp_path)
    (specs / "m.sql").write_text("SELECT * FROM notes")
    (sql / "m.sql").write_text("SELECT * FROM notes")
    (tmp_path / "outside.sql").write_text("SELECT * FROM notes")
    path = write_spec(specs, mart_spec("m", sql_file))
    with pytest.raises(SpecError) as info:
        load_specs([specs])
    assert str(info.value) == (
        f"invalid pipeline spec {path}:\n  field 'transform.sql' (line 3): {sql_file!r} is not a file next to the spec "
        "or in the domain's ../sql/ folder. Fix: name the file relative to the spec's folder, without '..', e.g. sql: "
        "daily_revenue.sql."
    )


@pytest.mark.parametrize("folder", ["specs", "sql"])
@pytest.mark.parametrize("target", ["/etc/passwd", "outside.sql", "domain/specs_old/m.sql"])
def test_sql_file_symlinked_outside_its_folder_is_refused(tmp_path: Path, folder: str, target: str):
    specs, sql = _domain(tmp_path)
    resolved = Path(target) if target.startswith("/") else tmp_path / target
    if not resolved.exists():
        resolved.parent.mkdir(parents=True, exist_ok=True)
        resolved.write_text("SELECT * FROM notes")
    link = (specs if folder == "specs" else sql) / "m.sql"
    link.symlink_to(resolved)
    path = write_spec(specs, mart_spec("m", "m.sql"))
    with pytest.raises(SpecError) as info:
        load_specs([specs])
    error = str(info.value)
    assert error.startswith(
        f"invalid pipeline spec {path}:\n  field 'transform.sql': 'm.sql' in {link.parent} "
        f"resolves to {resolved.resolve()}, outside that folder. Fix: put the SQL file itself"
    )


def test_sql_file_next_to_the_spec_or_in_the_sql_folder_loads(tmp_path: Path):
    specs, sql = _domain(tmp_path)
    (specs / "beside.sql").write_text("SELECT 1 AS beside")
    (sql / "shared").mkdir()
    (sql / "shared" / "real.sql").write_text("SELECT 2 AS shared")
    (sql / "alias.sql").symlink_to(sql / "shared" / "real.sql")  # a link within the folder is fine
    for name, file in (("a", "beside.sql"), ("b", "shared/real.sql"), ("c", "alias.sql")):
        write_spec(specs, mart_spec(name, file))
    by_name = {s.spec.name: s for s in load_specs([specs])}
    assert [by_name[n].transform_sql() for n in "abc"] == [
        "SELECT 1 AS beside",
        "SELECT 2 AS shared",
        "SELECT 2 AS shared",
    ]


# --- the connection the SQL runs in ---------------------------------------------------------------------------------


@pytest.fixture
def lake(data_dir: Path) -> Path:
    path = data_dir / "lake"
    (path / "desk" / "clean_notes").mkdir(parents=True)
    duckdb.sql(f"COPY (SELECT 1 AS note_id) TO '{path}/desk/clean_notes/_all.parquet' (FORMAT parquet)")
    return path


ESCAPES = {
    "read-file": "SELECT * FROM read_csv('{outside}/secret.csv')",
    "read-passwd": "SELECT * FROM read_csv('/etc/passwd', delim = ':', header = false)",
    "read-text": "SELECT * FROM read_text('/etc/passwd')",
    "replacement-scan": "SELECT * FROM '{outside}/secret.csv'",
    "glob": "SELECT * FROM glob('/etc/*')",
    "dot-dot": "SELECT * FROM read_csv('{lake}/../../outside/secret.csv')",
    "sibling-prefix": "SELECT * FROM read_csv('{lake}_sibling/x.csv')",
    "copy-out": "COPY (SELECT 1 AS a) TO '{outside}/written.csv'",
    "export": "EXPORT DATABASE '{outside}/export'",
    "attach": "ATTACH '{outside}/other.duckdb' AS other",
    "url": "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "enable-access": "SET enable_external_access = true",
    "widen-dirs": "SET allowed_directories = ['/']",
    "move-spill": "SET temp_directory = '{outside}'",
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_confined_connection_refuses_everything_outside_the_lake(tmp_path: Path, lake: Path, escape: str):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n1\n")
    (lake.parent / "lake_sibling").mkdir()
    (lake.parent / "lake_sibling" / "x.csv").write_text("a\n1\n")
    con = duckdb_connection(allowed_directories=[lake])
    with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)) as info:
        con.sql(ESCAPES[escape].format(outside=outside, lake=lake))
    assert "disabled by configuration" in str(info.value) or "external" in str(info.value)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]  # nothing written outside
    # after the attempt the connection is as confined as before, and still reads the lake
    with pytest.raises(duckdb.PermissionException):
        con.sql(f"SELECT * FROM read_csv('{outside}/secret.csv')")
    assert con.sql(f"SELECT * FROM read_parquet('{lake}/desk/clean_notes/_all.parquet')").fetchall() == [(1,)]


def test_confined_connection_reads_registered_lake_relations_and_writes_the_lake(lake: Path):
    con = duckdb_connection(allowed_directories=[lake])
    con.register("notes", con.read_parquet([str(lake / "desk" / "clean_notes" / "_all.parquet")]))
    relation = con.sql("SELECT note_id + 1 AS n FROM notes")
    relation.write_parquet(str(lake / "out.parquet"))  # what the lake IO manager does with a mart
    assert duckdb.execute(f"SELECT * FROM '{lake}/out.parquet'").fetchall() == [(2,)]
    # spilling still works: the spill directory stays usable
    con.execute("SET memory_limit = '64MB'")
    con.execute("SET threads = 1")
    assert con.sql(
        "SELECT count(*) FROM (SELECT md5(i::VARCHAR) AS s FROM range(2000000) t(i) ORDER BY s)"
    ).fetchall() == [(2_000_000,)]


def test_other_connections_are_not_confined(tmp_path: Path, data_dir: Path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with duckdb_connection() as con:
        assert con.sql(f"SELECT * FROM read_csv('{tmp_path}/x.csv')").fetchall() == [(1,)]


# --- transform pipelines ------------------------------------------------------------------------------------------

ESCAPING_SQL = {
    "reads_passwd": "SELECT n.*, p.* FROM notes n, read_csv('/etc/passwd', delim = ':', header = false) p",
    "copies_out": "COPY (SELECT * FROM notes) TO '{outside}'; SELECT * FROM notes",
    "widens_access": "SET allowed_directories = ['/']; SELECT n.*, p.* FROM notes n, read_text('/etc/passwd') p",
}


@pytest.fixture
def desk(tmp_path: Path, data_dir: Path, instance):
    """The notes source, loaded, plus one ordinary transform and the escaping ones."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "note_count.sql").write_text("SELECT count(*) AS notes, max(body) AS last FROM notes")
    outside = tmp_path / "outside.csv"
    for name, sql in ESCAPING_SQL.items():
        (specs / f"{name}.sql").write_text(sql.format(outside=outside))
    landing = data_dir / "landing" / pipeline_ref(Pipeline("desk", "notes"))
    landing.mkdir(parents=True)
    (landing / "notes.csv").write_text("note_id,body\n1,hello\n2,world\n")
    defs = definitions_for(
        specs,
        NOTES,
        mart_spec("note_count", "note_count.sql"),
        *(mart_spec(name, f"{name}.sql") for name in ESCAPING_SQL),
    )
    assert defs.resolve_job_def(desk_job("notes")).execute_in_process(instance=instance, run_config=QUIET).success
    return defs, outside


def test_ordinary_transform_still_runs(desk, data_dir: Path, instance):
    defs, _ = desk
    assert defs.resolve_job_def(desk_job("note_count")).execute_in_process(instance=instance, run_config=QUIET).success
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT notes, last FROM desk.note_count").fetchall() == [(2, "world")]


@pytest.mark.parametrize("name", sorted(ESCAPING_SQL))
def test_transform_reaching_outside_the_lake_fails_once_and_leaves_nothing(desk, data_dir: Path, instance, name: str):
    defs, outside = desk
    result = defs.resolve_job_def(desk_job(name)).execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    assert not result.success
    step = f"desk__marts_{name}"
    starts = [e for e in result.all_events if e.step_key == step and e.event_type == DagsterEventType.STEP_START]
    assert len(starts) == 1  # a permanent error: no step retry
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(
        f"permanent error: transform desk.{name} ({name}.sql) was refused access outside the lake: "
    )
    assert "Transform SQL may only read its inputs (notes, registered as views of those names)" in message
    assert not outside.exists()
    mart = data_dir / "lake" / "desk" / f"marts_{name}"
    assert not mart.exists() or not any(mart.iterdir())
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'desk'"
        ).fetchall() == [("notes",)]
