"""Reserved and colliding names are refused when the spec loads, naming the file, the field and the fix: platform
and system schemas as domains, the platform's own column names, names equal up to case, names with a trailing line
break, and names whose derived identifiers would be too long. The longest allowed names build and run."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import duckdb
import pytest
import yaml

from etl_assets.cli import QUIET
from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref, revalidate_job_name
from etl_assets.monitoring import build_monitoring
from etl_assets.monitoring.error_tracking import OPS_SCHEMA
from etl_assets.pipelines import validation
from etl_assets.pipelines.factory import build_pipelines
from etl_assets.pipelines.spec import (
    DAGSTER_RESERVED_NAMES,
    MAX_COLUMN_NAME_LENGTH,
    MAX_PIPELINE_NAME_LENGTH,
    RESERVED_SCHEMAS,
    SpecError,
    load_specs,
    parse_spec_file,
)
from etl_assets.pipelines.steps.load import QUARANTINE_SCHEMA
from etl_assets.recovery import build_recovery
from etl_assets.sqlutil import MAX_IDENTIFIER_LENGTH


def source(**changes) -> dict:
    """A valid files source spec, with ``changes`` applied (a value of None removes the key)."""
    spec = {
        "name": "returns",
        "domain": "shop_data",
        "source": {"kind": "files", "format": "csv", "glob": "returns_*.csv"},
        "columns": [{"name": "return_id", "type": "BIGINT", "nullable": False}, {"name": "amount", "type": "DOUBLE"}],
        "primary_key": ["return_id"],
    }
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def columns(*names: str) -> list[dict]:
    return [
        {"name": "return_id", "type": "BIGINT", "nullable": False},
        *({"name": n, "type": "VARCHAR"} for n in names),
    ]


def sql_source(**changes) -> dict:
    src = {
        "kind": "sql",
        "connection": "shop_db",
        "default_url": "sqlite:///x.db",
        "table": "returns",
        "incremental_column": "updated_at",
    }
    src.update(changes)
    return source(
        source=src,
        partitions={"type": "daily", "start": "2024-01-01", "column": "updated_at"},
        columns=[*columns(), {"name": "updated_at", "type": "TIMESTAMP"}],
    )


def transform(**changes) -> dict:
    spec = {"name": "returns_by_day", "domain": "shop_data", "transform": {"sql": "m.sql", "inputs": ["returns"]}}
    spec.update(changes)
    return spec


def write_spec(directory: Path, spec: dict, file: str | None = None) -> Path:
    path = directory / (file or "spec.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


LONG_PIPELINE = "p" * (MAX_PIPELINE_NAME_LENGTH + 1)
LONG_COLUMN = "c" * (MAX_COLUMN_NAME_LENGTH + 1)
LONG_IDENTIFIER = "x" * (MAX_IDENTIFIER_LENGTH + 1)
SCHEMA_FIX = "Fix: choose another domain"
COLUMN_FIX = "Fix: rename the column"
NAME_FIX = "Fix: use only letters, digits and underscores (no spaces or line breaks)"

REFUSED = [
    # domains: the platform's schemas and the databases' own, ignoring case
    *(
        pytest.param(
            source(domain=d), "domain", "a schema the platform or the database keeps", SCHEMA_FIX, id=f"domain-{d}"
        )
        for d in (
            "quarantine",
            "Quarantine",
            "ops",
            "OPS",
            "information_schema",
            "pg_catalog",
            "pg_toast",
            "pg_temp_1",
            "PG_anything",
            "temp",
            "main",
            "system",
            "warehouse",
        )
    ),
    # columns, key and partition column named like the platform's own columns
    *(
        pytest.param(
            source(columns=columns(c)),
            "columns.1.name",
            "a name the platform uses for its own columns",
            COLUMN_FIX,
            id=f"column-{c}",
        )
        for c in (
            "_etl_source",
            "_ETL_Partition",
            "_etl_reasons",
            "filename",
            "FileName",
            "file_row_number",
            "__etl_row",
            "__ETLx",
            "__typed_amount",
            "__Typed_x",
        )
    ),
    pytest.param(
        transform(primary_key=["day", "_etl_run_id"]),
        "primary_key.1",
        "a name the platform uses for its own columns",
        COLUMN_FIX,
        id="key-etl-column",
    ),
    pytest.param(
        transform(partitions={"type": "daily", "start": "2024-01-01", "column": "FILE_ROW_NUMBER"}),
        "partitions.column",
        "a name the platform uses for its own columns",
        COLUMN_FIX,
        id="partition-column",
    ),
    # names equal up to case land in one DuckDB column
    pytest.param(
        source(columns=columns("V_1", "v_1")),
        "columns.2.name",
        "'v_1' and 'V_1' (columns.1) differ only in case",
        "Fix: rename one of them",
        id="columns-equal-up-to-case",
    ),
    pytest.param(
        source(columns=columns("note", "note")),
        "columns.2.name",
        "'note' is declared twice",
        "Fix: keep one entry",
        id="column-twice",
    ),
    # a trailing line break passes a `$`-anchored pattern
    pytest.param(source(name="returns\n"), "name", "'returns\\n' is not a valid name", NAME_FIX, id="name-newline"),
    pytest.param(
        source(domain="shop_data\n"), "domain", "'shop_data\\n' is not a valid name", NAME_FIX, id="domain-newline"
    ),
    pytest.param(
        source(columns=columns("note\n")),
        "columns.1.name",
        "'note\\n' is not a valid name",
        NAME_FIX,
        id="column-newline",
    ),
    pytest.param(source(primary_key=["return_id\n"]), "primary_key.0", "not a valid name", NAME_FIX, id="key-newline"),
    pytest.param(
        sql_source(connection="shop_db\n"),
        "source.sql.connection",
        "not a valid name",
        NAME_FIX,
        id="sql-connection-newline",
    ),
    pytest.param(
        source(source={"kind": "api", "connection": "shop_api\n", "default_url": "http://x", "endpoint": "/r"}),
        "source.api.connection",
        "not a valid name",
        NAME_FIX,
        id="api-connection-newline",
    ),
    pytest.param(
        sql_source(table="returns\n"),
        "source.sql.table",
        "'returns\\n' is not a table or column name",
        "Fix: use a plain name",
        id="sql-table-newline",
    ),
    pytest.param(
        sql_source(table="main.returns\n"),
        "source.sql.table",
        "not a table or column name",
        "Fix: use a plain name",
        id="sql-schema-table-newline",
    ),
    pytest.param(
        sql_source(incremental_column="updated_at\n"),
        "source.sql.incremental_column",
        "not a table or column name",
        "Fix: use a plain name",
        id="incremental-column-newline",
    ),
    # names whose derived identifiers (__ref_<name>, __typed_<column>, Postgres's 63 bytes) would be too long
    pytest.param(
        source(name=LONG_PIPELINE),
        "name",
        f"{len(LONG_PIPELINE)} characters long; the maximum is {MAX_PIPELINE_NAME_LENGTH} (validation's view "
        "__ref_<name> must fit in 63 characters, Postgres's identifier limit)",
        f"Fix: shorten it to at most {MAX_PIPELINE_NAME_LENGTH} characters",
        id="pipeline-name-too-long",
    ),
    pytest.param(
        source(columns=columns(LONG_COLUMN)),
        "columns.1.name",
        f"{len(LONG_COLUMN)} characters long; the maximum is {MAX_COLUMN_NAME_LENGTH} (validation's working "
        "column __typed_<column> must fit in 63 characters",
        f"Fix: shorten it to at most {MAX_COLUMN_NAME_LENGTH} characters",
        id="column-too-long",
    ),
    pytest.param(
        transform(primary_key=[LONG_COLUMN]),
        "primary_key.0",
        f"the maximum is {MAX_COLUMN_NAME_LENGTH}",
        "Fix: shorten it",
        id="key-too-long",
    ),
    pytest.param(
        source(domain=LONG_IDENTIFIER),
        "domain",
        f"the maximum is {MAX_IDENTIFIER_LENGTH} (SQL names are held to 63 characters, Postgres's identifier limit)",
        f"Fix: shorten it to at most {MAX_IDENTIFIER_LENGTH} characters",
        id="domain-too-long",
    ),
    pytest.param(
        sql_source(connection=LONG_IDENTIFIER),
        "source.sql.connection",
        f"the maximum is {MAX_IDENTIFIER_LENGTH}",
        "Fix: shorten it",
        id="connection-too-long",
    ),
    # pipeline names Dagster refuses as a transform's input names, or whose schedule is a platform schedule
    *(
        pytest.param(
            source(name=n),
            "name",
            "a name Dagster reserves",
            f"Fix: choose another name, e.g. {n}_data",
            id=f"dagster-{n}",
        )
        for n in ("context", "class", "input", "type", "None")
    ),
    *(
        pytest.param(source(name=n), "name", "a platform schedule", "Fix: choose another name", id=f"platform-{n}")
        for n in ("pipeline_health", "lake_retention")
    ),
]


@pytest.mark.parametrize("spec, field, problem, fix", REFUSED)
def test_refused_name_names_file_field_and_fix(tmp_path: Path, spec: dict, field: str, problem: str, fix: str):
    path = write_spec(tmp_path, spec)
    (tmp_path / "m.sql").write_text("SELECT 1 AS day")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    error = str(info.value)
    assert error.startswith(f"invalid pipeline spec {path}:\n")
    assert re.search(rf"\n  field '{re.escape(field)}' \(line \d+\): ", error), error  # the field's line in the file
    assert problem in error
    assert fix in error


def test_pipeline_names_equal_up_to_case_are_refused(tmp_path: Path):
    write_spec(tmp_path, source(), "a.yaml")
    second = write_spec(tmp_path, source(name="Returns"), "b.yaml")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert str(info.value) == (
        f"invalid pipeline spec {second}:\n  field 'name': 'shop_data.Returns' differs only in case from 'shop_data.returns' in "
        f"{tmp_path / 'a.yaml'}, and their warehouse tables would be one (DuckDB does not tell them apart). "
        "Fix: rename one of them."
    )


def test_reserved_lists_cover_the_platform():
    # the schemas the platform writes, and Dagster's own list of refused names
    from dagster._core.definitions.utils import DISALLOWED_NAMES

    assert {QUARANTINE_SCHEMA, OPS_SCHEMA} <= set(RESERVED_SCHEMAS)
    assert DAGSTER_RESERVED_NAMES == DISALLOWED_NAMES
    assert validation.reference_view("x") == "__ref_x" and validation._TYPED_PREFIX == "__typed_"


PIPELINE_SUFFIXES = ("_pipeline", "_revalidate", "_schedule", "_file_sensor", "_after_sensor", "_watermark_sensor")
DOMAIN_SUFFIXES = ("_full_refresh", "_daily", "_hourly")


def test_no_pipeline_or_domain_can_take_a_platform_definition_name(tmp_path: Path, data_dir: Path):
    specs = load_specs()
    built = build_pipelines(specs, os.environ.get)
    monitoring, recovery = build_monitoring(specs, os.environ.get), build_recovery(specs, os.environ.get)
    assert monitoring.jobs is not None and monitoring.schedules is not None and monitoring.sensors is not None
    assert recovery.jobs is not None and recovery.schedules is not None and recovery.sensors is not None
    names = {
        d.name
        for d in [
            *monitoring.jobs,
            *monitoring.schedules,
            *monitoring.sensors,
            *recovery.jobs,
            *recovery.schedules,
            *recovery.sensors,
        ]
    }
    names -= {d.name for d in [*built.jobs, *built.schedules, *built.sensors]}
    checked = []
    for name in sorted(names):
        for suffixes, field in ((PIPELINE_SUFFIXES, "name"), (DOMAIN_SUFFIXES, "domain")):
            for suffix in suffixes:
                if name.endswith(suffix):
                    write_spec(tmp_path, source(**{field: name.removesuffix(suffix)}))
                    with pytest.raises(SpecError, match=f"field '{field}'"):
                        load_specs([tmp_path])
                    checked.append(name)
    assert {"pipeline_health_schedule", "lake_retention_schedule"} <= set(checked)


# The longest names allowed, everywhere they are used: a source, a source referencing it (validation's __ref_<name>
# view), a transform over both, in a domain with the longest schema name; every column as long as allowed. A DuckDB
# source pipeline's quarantine table quarantine.<domain>__<name> holds both names, so there the domain is as long as
# the longest pipeline names leave room for.
SOURCE = "s" * MAX_PIPELINE_NAME_LENGTH
REFERRER = "r" * MAX_PIPELINE_NAME_LENGTH
MART = "m" * MAX_PIPELINE_NAME_LENGTH
KEY, VALUE, REF, COUNT = (letter * MAX_COLUMN_NAME_LENGTH for letter in "kvec")


def _longest_names_specs(directory: Path, domain: str, targets: list[str], reference: str = SOURCE) -> None:
    directory.mkdir()
    write_spec(
        directory,
        {
            "name": SOURCE,
            "domain": domain,
            "source": {"kind": "files", "format": "csv", "glob": "*.csv"},
            "columns": [{"name": KEY, "type": "BIGINT", "nullable": False}, {"name": VALUE, "type": "VARCHAR"}],
            "primary_key": [KEY],
            "targets": targets,
        },
        "source.yaml",
    )
    write_spec(
        directory,
        {
            "name": REFERRER,
            "domain": domain,
            "source": {"kind": "files", "format": "csv", "glob": "*.csv"},
            "columns": [{"name": REF, "type": "BIGINT", "references": {"dataset": reference, "column": KEY}}],
            "quality": {"threshold": 0},
            "targets": targets,
        },
        "referrer.yaml",
    )
    write_spec(
        directory,
        {
            "name": MART,
            "domain": domain,
            "transform": {"sql": "mart.sql", "inputs": [SOURCE, REFERRER]},
            "targets": targets,
        },
        "mart.yaml",
    )
    (directory / "mart.sql").write_text(
        f"SELECT s.{KEY}, count(r.{REF}) AS {COUNT} FROM {SOURCE} s LEFT JOIN {REFERRER} r ON r.{REF} = s.{KEY}"
        " GROUP BY ALL ORDER BY 1"
    )


def _run_longest_names(
    tmp_path: Path, data_dir: Path, instance, domain: str, targets: list[str], reference: str = SOURCE
) -> None:
    specs = tmp_path / "specs"
    _longest_names_specs(specs, domain, targets, reference)
    for name, text in ((SOURCE, f"{KEY},{VALUE}\n1,a\n2,b\n"), (REFERRER, f"{REF}\n1\n1\n2\n9\n")):
        landing = data_dir / "landing" / pipeline_ref(Pipeline(domain, name))
        landing.mkdir(parents=True)
        (landing / "part.csv").write_text(text)
    defs = build_definitions(load_specs([specs]))
    for name in (SOURCE, REFERRER, MART):
        job = defs.resolve_job_def(pipeline_job_name(Pipeline(domain, name)))
        assert job.execute_in_process(instance=instance, run_config=QUIET).success
    assert defs.resolve_job_def(revalidate_job_name(Pipeline(domain, SOURCE))) is not None


@pytest.mark.slow
@pytest.mark.parametrize("qualified", [False, True], ids=["name", "domain.name"])
def test_longest_allowed_names_build_and_run(tmp_path: Path, data_dir: Path, instance, qualified: bool):
    domain = "d" * (MAX_IDENTIFIER_LENGTH - len("__") - MAX_PIPELINE_NAME_LENGTH)
    # the reference as a bare name, or as <domain>.<name>, longer than an identifier (its view's name is a digest)
    reference = f"{domain}.{SOURCE}" if qualified else SOURCE
    _run_longest_names(tmp_path, data_dir, instance, domain, ["duckdb"], reference)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(f'SELECT {KEY}, {COUNT} FROM "{domain}"."{MART}" ORDER BY 1').fetchall() == [(1, 2), (2, 1)]
        assert con.execute(f'SELECT {REF} FROM "{domain}"."{REFERRER}" ORDER BY 1').fetchall() == [(1,), (1,), (2,)]
        # the row referring to a missing key was quarantined by the relationship rule (validation's __ref_<name>)
        quarantine = f'{QUARANTINE_SCHEMA}."{dagster_name(Pipeline(domain, REFERRER))}"'
        assert con.execute(f"SELECT {REF}, _etl_reasons FROM {quarantine}").fetchall() == [
            ("9", [f"relationship:{REF}"])
        ]


def test_a_duckdb_quarantine_table_name_too_long_is_refused_at_load(tmp_path: Path):
    domain = "d" * MAX_IDENTIFIER_LENGTH
    _longest_names_specs(tmp_path / "specs", domain, ["duckdb"])
    with pytest.raises(SpecError) as caught:
        parse_spec_file(tmp_path / "specs" / "source.yaml")
    message = str(caught.value)
    assert "source.yaml" in message and "field 'name'" in message, message
    length = len(domain) + len("__") + len(SOURCE)
    assert f"quarantine.{domain}__{SOURCE}, would be named with {length} characters" in message, message
    fix = f"together they may have at most {MAX_IDENTIFIER_LENGTH - 2} characters (now {len(domain)} + {len(SOURCE)})"
    assert fix in message, message


@pytest.mark.postgres
def test_longest_allowed_names_load_into_postgres(
    tmp_path: Path, data_dir: Path, instance, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    import psycopg
    from psycopg import sql

    domain = f"t_{uuid.uuid4().hex}".ljust(MAX_IDENTIFIER_LENGTH, "x")
    monkeypatch.setenv("ETL_POSTGRES_URL", postgres_url)
    try:
        _run_longest_names(tmp_path, data_dir, instance, domain, ["postgres"])
        with psycopg.connect(postgres_url) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [domain]
            ).fetchall()
            assert sorted(t for (t,) in tables) == sorted([SOURCE, REFERRER, MART])
            rows = conn.execute(
                sql.SQL("SELECT {}, {} FROM {} ORDER BY 1").format(
                    sql.Identifier(KEY), sql.Identifier(COUNT), sql.Identifier(domain, MART)
                )
            ).fetchall()
            assert rows == [(1, 2), (2, 1)]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(domain)))
