"""Protects what the Dagster catalog shows of a pipeline's assets: the spec's description, owners and tags on every asset, the column
schema with the contract's SQL types and column descriptions (on the definitions, and on each lake write of the
clean data), the platform's ``_etl_*`` columns marked internal, the target's table name and kinds. The definitions
as the code location builds them, and one real run into the DuckDB warehouse.
"""

from __future__ import annotations

import pytest
from dagster import AssetKey, TableSchema

from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.catalog import INTERNAL_TAG
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

SPEC = pipeline(
    "invoices",
    [
        column("invoice_id", "BIGINT", nullable=False, description="the invoice number, unique per issuer"),
        column("total", "DECIMAL(12,2)", description="gross amount in the invoice currency"),
        column("issued_on", "DATE"),
    ],
    domain="finance",
    description="Invoices issued by the billing system, one file per day.",
    owners=["team:finance", "ana@example.com"],
    tags={"tier": "gold", "pii": "none"},
    source=files_source(glob="invoices_*.csv", partition_regex=r"invoices_(?P<partition>\d{4}-\d{2}-\d{2})\.csv$"),
    partitions={"type": "daily", "start": "2024-01-01"},
    primary_key=["invoice_id"],
)
INVOICES = Pipeline(SPEC["domain"], SPEC["name"])
KEYS = {stage: AssetKey(["finance", f"{stage}_invoices"]) for stage in ("raw", "clean", "quarantine", "warehouse")}


def _schema(metadata) -> TableSchema:
    value = metadata["dagster/column_schema"]
    return value.schema if hasattr(value, "schema") else value


def test_every_asset_has_the_spec_description_owners_and_tags(tmp_path, data_dir):
    graph = definitions_for(tmp_path / "specs", SPEC).resolve_asset_graph()
    for stage, key in KEYS.items():
        node = graph.get(key)
        assert (node.description or "").startswith("Invoices issued by the billing system, one file per day."), stage
        assert list(node.owners) == ["team:finance", "ana@example.com"], stage
        assert {"tier": "gold", "pii": "none"}.items() <= dict(node.tags).items(), stage
    assert "rows meeting the contract" in (graph.get(KEYS["clean"]).description or "")


def test_column_schema_has_sql_types_descriptions_and_internal_columns(tmp_path, data_dir):
    graph = definitions_for(tmp_path / "specs", SPEC).resolve_asset_graph()
    clean = {c.name: c for c in _schema(graph.get(KEYS["clean"]).metadata).columns}
    assert [(n, c.type) for n, c in clean.items()] == [
        ("invoice_id", "BIGINT"),
        ("total", "DECIMAL(12,2)"),
        ("issued_on", "DATE"),
        ("_etl_source", "VARCHAR"),
    ]
    assert clean["invoice_id"].description == "the invoice number, unique per issuer"
    assert clean["invoice_id"].constraints.nullable is False and clean["invoice_id"].constraints.unique is True
    assert clean["issued_on"].description is None
    assert INTERNAL_TAG in clean["_etl_source"].tags and INTERNAL_TAG not in clean["total"].tags

    target = graph.get(KEYS["warehouse"])
    assert target.metadata["dagster/table_name"] == "finance.invoices"
    columns = {c.name: c for c in _schema(target.metadata).columns}
    assert columns["total"].type == "DECIMAL(12,2)"
    assert all(INTERNAL_TAG in columns[n].tags for n in ("_etl_partition", "_etl_run_id", "_etl_loaded_at"))
    assert {"duckdb", "table"} <= set(target.kinds) and {"files", "parquet"} <= set(graph.get(KEYS["raw"]).kinds)


@pytest.mark.slow
def test_a_materialization_records_the_written_columns_with_their_sql_types(tmp_path, data_dir, instance):
    landing = data_dir / "landing" / pipeline_ref(INVOICES)
    landing.mkdir(parents=True)
    # one column beyond the contract: kept, flagged by schema_change, shown with the type it was written with
    (landing / "invoices_2024-01-01.csv").write_text("invoice_id,total,issued_on,extra\n1,10.50,2024-01-01,x\n")
    job = definitions_for(tmp_path / "specs", SPEC).resolve_job_def(pipeline_job_name(INVOICES))
    assert job.execute_in_process(instance=instance, partition_key="2024-01-01").success
    event = instance.get_latest_materialization_event(KEYS["clean"])
    assert event is not None and event.asset_materialization is not None
    written = {c.name: c.type for c in _schema(event.asset_materialization.metadata).columns}
    assert written["invoice_id"] == "BIGINT" and written["total"] == "DECIMAL(12,2)" and written["issued_on"] == "DATE"
    assert written["extra"] == "string"  # not in the contract: the Arrow type it was written with
