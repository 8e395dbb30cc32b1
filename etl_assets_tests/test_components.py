"""The pipelines as Dagster Components: the packaged defs folder, a defs folder with an invalid pipeline (set aside with
its file, line, field and fix while the others load), other component types built beside them, and `dg`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dagster import AssetKey

from etl_assets.components import Pipeline
from etl_assets.definitions import build_definitions, other_components
from etl_assets.pipelines.spec import PACKAGED_DEFS_DIR, PipelineSpec, read_defs_folder

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

GOOD = """\
type: etl_assets.components.Pipeline
attributes:
  name: visits
  domain: web
  source: {kind: files, format: csv, glob: "visits_*.csv", partition_regex: 'visits_(?P<partition>.+)\\.csv'}
  partitions: {type: daily, start: 2024-01-01}
  columns:
    - {name: visit_id, type: BIGINT, nullable: false}
"""
BAD = """\
type: etl_assets.components.Pipeline
attributes:
  name: clicks
  domain: web
  source: {kind: files, format: csv, glob: "clicks_*.csv", partition_regex: 'clicks_(?P<partition>.+)\\.csv'}
  partitions: {type: daily, start: 2024-01-01}
  columns:
    - {name: click_id, type: BIGINT, nullable: false}
    - {name: page, type: NOT_A_TYPE}
"""


def test_the_packaged_shop_domain_is_a_defs_folder_of_pipeline_components():
    found = read_defs_folder()
    assert found.broken == [] and found.others == []
    assert {s.spec.name for s in found.loaded} == {
        "orders",
        "customers",
        "products",
        "fx_rates",
        "inventory",
        "orders_enriched",
        "daily_revenue",
    }
    assert {s.path for s in found.loaded} == {PACKAGED_DEFS_DIR / "shop" / "defs.yaml"}
    lines = [s.line for s in found.loaded if s.line is not None]
    assert len(lines) == len(found.loaded) and min(lines) == 2  # each pipeline knows the line its document starts at
    mart = next(s for s in found.loaded if s.spec.name == "daily_revenue")
    assert "SELECT" in mart.transform_sql().upper()  # the SQL sits beside the defs.yaml


def test_an_invalid_pipeline_document_is_set_aside_with_file_line_field_and_fix(defs_package):
    name, folder = defs_package
    (folder / "web").mkdir()
    (folder / "web" / "defs.yaml").write_text(GOOD + "---\n" + BAD)
    found = read_defs_folder(name)
    assert [s.spec.name for s in found.loaded] == ["visits"]
    [broken] = found.broken
    assert broken.name == "web.clicks" and broken.path == folder / "web" / "defs.yaml"
    bad_line = (GOOD + "---\n" + BAD).splitlines().index("type: etl_assets.components.Pipeline", 1) + 1
    type_line = (GOOD + "---\n" + BAD).splitlines().index("    - {name: page, type: NOT_A_TYPE}") + 1
    assert f"defs.yaml, line {bad_line}:" in broken.message
    assert f"field 'columns.1.type' (line {type_line})" in broken.message
    assert "Fix:" in broken.message


def test_a_defs_yaml_that_is_not_yaml_sets_the_folder_aside_not_the_location(defs_package):
    name, folder = defs_package
    (folder / "web").mkdir()
    (folder / "web" / "defs.yaml").write_text("type: etl_assets.components.Pipeline\nattributes: [unclosed\n")
    found = read_defs_folder(name)
    assert found.loaded == []
    [broken] = found.broken
    assert "defs.yaml" in broken.message and "line" in broken.message


def test_other_components_are_built_beside_the_pipelines(defs_package):
    name, folder = defs_package
    (folder / "web").mkdir()
    (folder / "web" / "defs.yaml").write_text(GOOD)
    (folder / "extra").mkdir()
    (folder / "extra" / "assets.py").write_text(
        textwrap.dedent("""\
        import dagster as dg

        @dg.asset
        def hand_written():
            return 1
    """)
    )
    built, broken = other_components(name)
    assert broken == []
    assert [d.resolve_assets_def("hand_written").key for d in built] == [AssetKey("hand_written")]
    assert [s.spec.name for s in read_defs_folder(name).loaded] == ["visits"]


def test_a_python_module_that_fails_to_import_sets_its_defs_folder_aside_with_the_error(defs_package):
    # Dagster imports the defs folder's modules while it reads the folder, so this one cannot be isolated further
    name, folder = defs_package
    (folder / "web").mkdir()
    (folder / "web" / "defs.yaml").write_text(GOOD)
    (folder / "broken").mkdir()
    (folder / "broken" / "assets.py").write_text("raise RuntimeError('this module is broken')\n")
    found = read_defs_folder(name)
    assert found.loaded == []
    [aside] = found.broken
    assert aside.path == folder and "this module is broken" in aside.message


def test_a_pipeline_component_built_on_its_own_is_the_location_of_that_pipeline():
    from dagster.components.testing import create_defs_folder_sandbox

    spec_yaml = (PACKAGED_DEFS_DIR / "shop" / "defs.yaml").read_text().split("\n---\n")[1]  # customers
    attributes = __import__("yaml").safe_load(spec_yaml)["attributes"]
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=Pipeline,
            defs_yaml_contents={"type": "etl_assets.components.Pipeline", "attributes": attributes},
        )
        assert (path / "defs.yaml").is_file()
        with sandbox.build_all_defs() as defs:
            keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
            assert {
                "shop/raw_customers",
                "shop/clean_customers",
                "shop/quarantine_customers",
                "shop/warehouse_customers",
            } <= keys
            assert not any("orders" in k for k in keys)  # only this pipeline (and monitoring)
            assert defs.resolve_job_def("shop__customers_pipeline")


def test_the_schema_for_editors_is_the_pipeline_spec():
    assert Pipeline.get_model_cls() is PipelineSpec
    schema = Pipeline.get_model_cls().model_json_schema()
    assert {"name", "source", "transform", "columns", "targets"} <= set(schema["properties"])


@pytest.mark.slow  # two dg subprocesses load the location: about 25 s
def test_dg_check_defs_fails_on_an_invalid_spec_that_the_served_location_sets_aside(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad_one\nsource: {kind: files}\n")
    env = {
        **os.environ,
        "ETL_PIPELINES_DIR": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path),
        "VIRTUAL_ENV": str(BIN.parent),
    }
    (tmp_path / "dagster.yaml").write_text("")
    proc = subprocess.run(
        [str(BIN / "dg"), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "bad.yaml" in proc.stdout + proc.stderr and "Fix:" in proc.stdout + proc.stderr
    # served (no validation flag), the same spec is set aside and the rest builds
    defs = build_definitions_with_env(tmp_path)
    assert defs.resolve_job_def("shop_daily")


def build_definitions_with_env(folder: Path):
    old = os.environ.get("ETL_PIPELINES_DIR")
    os.environ["ETL_PIPELINES_DIR"] = str(folder)
    try:
        return build_definitions()
    finally:
        if old is None:
            del os.environ["ETL_PIPELINES_DIR"]
        else:
            os.environ["ETL_PIPELINES_DIR"] = old


def test_the_committed_json_schema_is_current_and_accepts_the_shop_and_refuses_a_typo():
    import json

    import jsonschema
    import yaml

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        # scripts/ is not a package; it is on sys.path only for this import
        from spec_schema import SCHEMA_PATH, spec_schema  # pyright: ignore[reportMissingImports]
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert SCHEMA_PATH.read_text() == spec_schema(), "run `make schema` and commit docs/pipeline-spec.schema.json"
    schema = json.loads(SCHEMA_PATH.read_text())
    documents = list(yaml.safe_load_all((PACKAGED_DEFS_DIR / "shop" / "defs.yaml").read_text()))
    for document in documents:
        attributes = json.loads(json.dumps(document["attributes"], default=str))  # dates as the editor sees them
        jsonschema.validate(attributes, schema)
    typo = {**documents[0]["attributes"], "primary_keys": ["order_id"]}
    with pytest.raises(jsonschema.ValidationError, match="primary_keys"):
        jsonschema.validate(json.loads(json.dumps(typo, default=str)), schema)


def test_dg_scaffold_writes_a_valid_starter_pipeline_named_after_its_folder():
    from dagster.components.testing import create_defs_folder_sandbox

    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=Pipeline, defs_path="web/visits")
        assert "name: visits" in (path / "defs.yaml").read_text()
        with sandbox.build_all_defs() as defs:
            keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"web/raw_visits", "web/clean_visits", "web/warehouse_visits"} <= keys
