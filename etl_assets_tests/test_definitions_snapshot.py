"""Snapshot of the code location: asset keys, checks, jobs, schedules and sensors. A rename fails here first."""

from __future__ import annotations

from etl_assets.definitions import build_definitions

SOURCES = ["orders", "customers", "products", "fx_rates", "inventory"]
MARTS = ["orders_enriched", "daily_revenue"]

EXPECTED_ASSETS = sorted(
    [f"shop/{stage}_{name}" for name in SOURCES for stage in ("raw", "clean", "quarantine", "warehouse")]
    + [f"shop/marts_{m}" for m in MARTS]
    + [f"shop/warehouse_{m}" for m in MARTS]
    + ["ops/pipeline_health"]
)
CONTRACT_CHECKS = {
    "orders": [
        "valid_type",
        "not_null",
        "unique",
        "accepted_values",
        "range",
        "relationship",
        "partition_window",
        "row_count",
    ],
    "customers": ["valid_type", "not_null", "unique", "format"],
    "products": ["valid_type", "not_null", "unique", "range"],
    "fx_rates": ["valid_type", "not_null", "unique"],
    "inventory": ["valid_type", "not_null", "unique"],
}
EXPECTED_CHECKS = sorted(
    [f"shop/clean_{n}:{c}" for n in SOURCES for c in ("rows_conserved", "quality_score", "schema_change")]
    + [f"shop/clean_{n}:{c}" for n, checks in CONTRACT_CHECKS.items() for c in checks]
    + [f"shop/warehouse_{n}:matches_lake" for n in SOURCES + MARTS]
    + [f"shop/warehouse_{n}:contract_holds" for n in SOURCES]
    + [f"shop/warehouse_{n}:freshness_check" for n in ("orders", "customers", "daily_revenue")]
)
# a pipeline's jobs, sensors and schedules are named <domain>__<name>_...; the domain's own jobs shop_...
EXPECTED_JOBS = sorted(
    [f"shop__{n}_pipeline" for n in SOURCES + MARTS]
    + ["shop_daily", "shop_full_refresh"]
    + [f"shop__{n}_revalidate" for n in SOURCES]
    + ["pipeline_health_job", "lake_retention_job"]
)
EXPECTED_SCHEDULES = [
    "lake_retention_schedule",
    "pipeline_health_schedule",
    "shop__customers_schedule",
    "shop__orders_schedule",
]
EXPECTED_SENSORS = sorted(
    [
        "automation_condition_sensor",
        "shop__fx_rates_file_sensor",
        "shop__inventory_file_sensor",
        "landing_archive_sensor",
        "landing_quarantine_sensor",
        "shop__orders_watermark_sensor",
        "shop__products_file_sensor",
        "alert_on_run_failure",
        "alert_on_check_failure",
        "freshness_checks_sensor",
        "run_worker_watchdog",
    ]
)


def test_snapshot(monkeypatch, data_dir):
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == EXPECTED_ASSETS
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    assert checks == EXPECTED_CHECKS
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    assert jobs == EXPECTED_JOBS
    assert defs.schedules is not None and defs.sensors is not None
    assert sorted(s.name for s in defs.schedules) == EXPECTED_SCHEDULES
    assert sorted(s.name for s in defs.sensors) == EXPECTED_SENSORS


def test_warehouse_writers_share_the_single_slot_pool(data_dir):
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        pools = node.pools if hasattr(node, "pools") else set()
        if (
            key.path[-1].startswith("warehouse_") or key.path[0] == "ops"
        ):  # every asset that writes the DuckDB warehouse file
            assert pools == {"duckdb_warehouse"}, key
        else:
            assert "duckdb_warehouse" not in (pools or set()), key


def test_api_extracts_share_a_pool_per_connection(data_dir):
    """A backfill of an API pipeline is one run per partition; its extracts queue on the connection's pool."""
    graph = build_definitions().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        pools = graph.get(key).pools or set()
        if key.path == ["shop", "raw_orders"]:
            assert pools == {"api_shop_api"}
        else:
            assert not any(p.startswith("api_") for p in pools), key
