"""Pipeline specs: the packaged set loads, a user adds a pipeline with one YAML file, and every kind of bad spec
fails loading with a message naming the file, the field and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets.pipelines.spec import PACKAGED_SPEC_DIRS, SpecError, load_specs, parse_spec_file, spec_dirs

VALID_FILES_SPEC = """
name: returns
domain: shop
source:
  kind: files
  format: csv
  glob: "returns_*.csv"
partitions: {type: daily, start: 2024-01-01}
columns:
  - {name: return_id, type: BIGINT, nullable: false}
  - {name: order_id, type: BIGINT}
  - {name: amount, type: "DECIMAL(10,2)"}
primary_key: [return_id]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_packaged_reference_specs_load():
    names = {s.spec.name for s in load_specs()}
    assert names == {"orders", "customers", "products", "fx_rates", "inventory", "orders_enriched", "daily_revenue"}


def test_valid_spec_parses_with_defaults(tmp_path: Path):
    loaded = parse_spec_file(write(tmp_path, "returns.yaml", VALID_FILES_SPEC))
    spec = loaded.spec
    assert spec.source is not None and spec.source.kind == "files"
    assert spec.columns[2].type == "DECIMAL(10,2)"
    assert spec.targets == ["duckdb"]
    assert spec.retry.max_retries == 3


def test_pipelines_dir_adds_a_pipeline_without_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path, "returns.yaml", VALID_FILES_SPEC)
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(tmp_path))
    assert spec_dirs() == [*PACKAGED_SPEC_DIRS, tmp_path.resolve()]
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"shop/raw_returns", "shop/clean_returns", "shop/quarantine_returns", "shop/warehouse_returns"} <= keys
    assert defs.resolve_job_def(pipeline_job_name(Pipeline("shop", "returns"))) is not None


def test_pipelines_dir_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(tmp_path / "nope"))
    with pytest.raises(SpecError, match="ETL_PIPELINES_DIR.*not a directory"):
        spec_dirs()


BAD_SPECS = [
    pytest.param(
        "name: x\ndomain: shop\n", "source", "both or neither of `source` and `transform`", id="no-source-or-transform"
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("kind: files", "kind: ftp"), "source.kind", "expected tags", id="unknown-source-kind"
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("type: BIGINT, nullable: false}", "type: BIGNUM, nullable: false}"),
        "columns.0.type",
        "unknown column type 'BIGNUM'",
        id="unknown-type",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("name: returns", "name: 9returns"), "name", "not a valid name", id="bad-name"
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("primary_key: [return_id]", "primary_key: [id]"),
        "primary_key",
        "primary_key names ['id']",
        id="pk-not-a-column",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("{type: daily, start: 2024-01-01}", "{type: daily}"),
        "partitions.start",
        "needs `start`",
        id="daily-without-start",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("{type: daily, start: 2024-01-01}", "{type: weekly, start: 2024-01-01}"),
        "partitions.type",
        "'none', 'daily' or 'hourly'",
        id="bad-partition-type",
    ),
    pytest.param(VALID_FILES_SPEC + "colour: blue\n", "colour", "unknown key 'colour'", id="unknown-field"),
    pytest.param(
        VALID_FILES_SPEC.replace('glob: "returns_*.csv"', 'glob: "../../etc/*"'),
        "source.files.glob",
        "must stay inside the landing directory",
        id="glob-escapes-landing",
    ),
    pytest.param(
        VALID_FILES_SPEC + "schedule: {cron: 'every day'}\n", "schedule.cron", "not a cron expression", id="bad-cron"
    ),
    pytest.param(
        VALID_FILES_SPEC + "targets: [duckdb, snowflake]\n", "targets.1", "'duckdb' or 'postgres'", id="unknown-target"
    ),
    pytest.param(
        VALID_FILES_SPEC.replace("  - {name: amount", "  - {name: order_id, type: INTEGER}\n  - {name: amount"),
        "columns.2.name",
        "declared twice",
        id="duplicate-column",
    ),
    pytest.param("- just\n- a list\n", None, "must hold a mapping", id="not-a-mapping"),
    pytest.param("name: [unclosed\n", None, "not valid YAML", id="yaml-syntax"),
]


@pytest.mark.parametrize("text, field, message", BAD_SPECS)
def test_bad_spec_names_file_field_and_fix(tmp_path: Path, text: str, field: str | None, message: str):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SpecError) as info:
        parse_spec_file(path)
    error = str(info.value)
    assert str(path) in error
    if field is not None:
        assert f"field '{field}' (line " in error  # a spec file's errors name their lines, as a defs.yaml's do
    assert message in error
    assert "Fix" in error


def test_sql_source_needs_table_or_query(tmp_path: Path):
    path = write(
        tmp_path,
        "c.yaml",
        """
        name: c
        source: {kind: sql, connection: db, default_url: "sqlite:///x.db", table: t, query: "select 1"}
        columns: [{name: a, type: INTEGER}]
    """,
    )
    with pytest.raises(SpecError, match=r"field 'source.sql.table'.*Fix: give exactly one of `table` or `query`"):
        parse_spec_file(path)


def test_transform_with_unknown_input_is_rejected(tmp_path: Path):
    write(
        tmp_path,
        "m.yaml",
        """
        name: m
        domain: shop
        transform: {sql: m.sql, inputs: [orders, nowhere]}
    """,
    )
    (tmp_path / "m.sql").write_text("select 1")
    with pytest.raises(
        SpecError, match=r"m.yaml:\n  field 'transform.inputs': unknown dataset 'nowhere'. Fix: use one of"
    ):
        load_specs([*PACKAGED_SPEC_DIRS, tmp_path])


def test_transform_sql_file_must_exist(tmp_path: Path):
    write(
        tmp_path,
        "m.yaml",
        """
        name: m
        domain: shop
        transform: {sql: missing.sql, inputs: [orders]}
    """,
    )
    with pytest.raises(SpecError, match=r"m.yaml:\n  field 'transform.sql': file 'missing.sql' not found.*Fix: "):
        load_specs([*PACKAGED_SPEC_DIRS, tmp_path])


def test_duplicate_pipeline_name_across_files(tmp_path: Path):
    write(tmp_path, "orders_again.yaml", VALID_FILES_SPEC.replace("name: returns", "name: orders"))
    with pytest.raises(
        SpecError,
        match=r"orders_again.yaml:\n  field 'name': 'orders' is already declared in domain 'shop' by .*defs/shop/defs.yaml, "
        r"line 2\.",
    ):
        load_specs([*PACKAGED_SPEC_DIRS, tmp_path])


def test_transform_cycle_is_rejected(tmp_path: Path):
    for a, b in (("m1", "m2"), ("m2", "m1")):
        write(tmp_path, f"{a}.yaml", f"name: {a}\ntransform: {{sql: q.sql, inputs: [{b}]}}\n")
    (tmp_path / "q.sql").write_text("select 1")
    with pytest.raises(
        SpecError, match=r"field 'transform.inputs': cycle default.m1 -> default.m2 -> default.m1. Fix: break the cycle"
    ):
        load_specs([tmp_path])
