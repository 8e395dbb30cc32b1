"""Pipeline specs: the packaged set loads, a user adds a pipeline with one YAML file, and every kind of bad spec
fails loading with a message naming the file, the field and the fix."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets.pipelines.policy import partitions_def_for
from etl_assets.pipelines.spec import (
    PACKAGED_SPEC_DIRS,
    SpecError,
    load_specs,
    load_specs_isolated,
    parse_spec_file,
    spec_dirs,
)

# the shop domain's daily partitions: a daily pipeline of the domain has the same (its daily ones run as one job)
SHOP_PARTITIONS = "{type: daily, start: 2024-01-01, last: 2024-01-07}"
VALID_FILES_SPEC = """
name: returns
domain: shop
source:
  kind: files
  format: csv
  glob: "returns_*.csv"
partitions: {type: daily, start: 2024-01-01, last: 2024-01-07}
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


@pytest.mark.parametrize(
    ("partitions", "count", "first", "final"),
    [
        ("{type: daily, start: 2024-01-01, last: 2024-01-07}", 7, "2024-01-01", "2024-01-07"),
        ("{type: daily, start: 2024-01-07, last: 2024-01-07}", 1, "2024-01-07", "2024-01-07"),
        ("{type: hourly, start: 2024-01-01, last: 2024-01-07}", 168, "2024-01-01-00:00", "2024-01-07-23:00"),
        ("{type: daily, start: 2024-01-01, last: 2024-01-07, timezone: Asia/Tokyo}", 7, "2024-01-01", "2024-01-07"),
    ],
)
def test_last_is_the_last_partitions_date_inclusive(tmp_path: Path, partitions, count, first, final):
    spec = parse_spec_file(write(tmp_path, "r.yaml", VALID_FILES_SPEC.replace(SHOP_PARTITIONS, partitions))).spec
    pdef = partitions_def_for(spec)
    assert pdef is not None
    keys = pdef.get_partition_keys()
    assert (len(keys), keys[0], keys[-1]) == (count, first, final)
    # Dagster's end is exclusive: the day after `last`, at midnight in the partitions' zone
    assert pdef.end is not None and pdef.end.isoformat().startswith("2024-01-08T00:00:00")
    assert (pdef.end.utcoffset() or timedelta(0)) == (timedelta(hours=9) if "Tokyo" in partitions else timedelta(0))


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
        VALID_FILES_SPEC.replace(SHOP_PARTITIONS, "{type: daily}"),
        "partitions.start",
        "needs `start`",
        id="daily-without-start",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace(SHOP_PARTITIONS, "{type: daily, start: 2024-01-08, last: 2024-01-07}"),
        "partitions.last",
        "the last partition's date 2024-01-07 is before the first's (start: 2024-01-08)",
        id="last-before-start",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace(SHOP_PARTITIONS, "{type: none, last: 2024-01-07}"),
        "partitions.last",
        "this one is not partitioned",
        id="last-without-partitions",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace(SHOP_PARTITIONS, "{type: daily, start: 2024-01-01, end: 2024-01-08}"),
        "partitions.end",
        "write last: 2024-01-08 if 2024-01-08 has the last partition, or last: 2024-01-07 if 2024-01-08 is the first day",
        id="end-instead-of-last",
    ),
    pytest.param(
        VALID_FILES_SPEC.replace(SHOP_PARTITIONS, "{type: weekly, start: 2024-01-01}"),
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


def test_a_daily_pipeline_with_other_partitions_than_its_domains_is_set_aside(tmp_path: Path):
    # the daily pipelines of a domain run as one job (shop_daily); Dagster refuses one over two partitions
    # definitions, and used to fail the whole code location
    write(tmp_path, "returns.yaml", VALID_FILES_SPEC.replace(SHOP_PARTITIONS, "{type: daily, start: 2024-01-01}"))
    loaded, broken = load_specs_isolated([*PACKAGED_SPEC_DIRS, tmp_path])
    assert "returns" not in {s.spec.name for s in loaded} and "orders" in {s.spec.name for s in loaded}
    (error,) = [b.message for b in broken]
    assert (
        f"returns.yaml:\n  field 'partitions': the daily pipelines of domain 'shop' run as one job, which needs one set "
        f"of partitions, but orders ({PACKAGED_SPEC_DIRS[0] / 'shop' / 'defs.yaml'}, line 2) has start: 2024-01-01, "
        "last: 2024-01-07, timezone: UTC and this one start: 2024-01-01, last: (unset), timezone: UTC. Fix: give both "
        "the same start, last and timezone, or move this pipeline to another domain." in error
    )
    build_definitions(loaded).resolve_job_def("shop_daily")  # the others build


def test_a_mart_past_its_inputs_last_partition_is_rejected(tmp_path: Path):
    write(tmp_path, "sales.yaml", VALID_FILES_SPEC.replace("name: returns", "name: sales").replace("shop", "sales"))
    write(
        tmp_path,
        "monthly.yaml",
        "name: monthly\ndomain: reports\ntransform: {sql: q.sql, inputs: [sales.sales]}\n"
        "partitions: {type: daily, start: 2024-01-01, last: 2024-01-31}\n",
    )
    (tmp_path / "q.sql").write_text("select * from sales")
    with pytest.raises(
        SpecError,
        match=r"monthly.yaml:\n  field 'partitions.last': its partitions run to 2024-01-31, past the last partition of "
        r"its input sales.sales \(2024-01-07, in .*sales.yaml\), so those partitions would have no input. Fix: set "
        r"last: 2024-01-07 or earlier, or extend the partitions.last of sales.sales.",
    ):
        load_specs([tmp_path])


def test_transform_cycle_is_rejected(tmp_path: Path):
    for a, b in (("m1", "m2"), ("m2", "m1")):
        write(tmp_path, f"{a}.yaml", f"name: {a}\ntransform: {{sql: q.sql, inputs: [{b}]}}\n")
    (tmp_path / "q.sql").write_text("select 1")
    with pytest.raises(
        SpecError, match=r"field 'transform.inputs': cycle default.m1 -> default.m2 -> default.m1. Fix: break the cycle"
    ):
        load_specs([tmp_path])
