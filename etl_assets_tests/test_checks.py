"""Protects what a user reads in a pipeline's checks: each contract check's description names its columns and rules;
rows quarantined by an ERROR rule fail their check as a WARN (with the count and a sample) while the load goes on;
checks are partitioned with their asset, so a partition run and every partition of a range run record their own
result; a blocked quality gate says the score and the threshold. A real Dagster instance and DuckDB warehouse.
"""

from __future__ import annotations

import duckdb
import pytest
from dagster import AssetCheckKey, AssetCheckSeverity, AssetKey

from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

pytestmark = [pytest.mark.slow]

DAYS = ("2024-01-01", "2024-01-02")
SPEC = pipeline(
    "payments",
    [
        column("payment_id", "BIGINT", nullable=False),
        column("currency", nullable=False, accepted_values=["USD", "EUR", "GBP"]),
        column("amount", "DECIMAL(12,2)", min=0, max=10000),
        column("note", max_length=20, severity="WARN"),
    ],
    domain="billing",
    source=files_source(glob="payments_*.csv", partition_regex=r"payments_(?P<partition>\d{4}-\d{2}-\d{2})\.csv$"),
    partitions={"type": "daily", "start": "2024-01-01"},
    primary_key=["payment_id"],
    quality={"threshold": 0.5},
)
PAYMENTS = Pipeline(SPEC["domain"], SPEC["name"])
CLEAN = AssetKey(["billing", "clean_payments"])


@pytest.fixture
def landing(data_dir):
    folder = data_dir / "landing" / pipeline_ref(PAYMENTS)
    folder.mkdir(parents=True)
    # the first day is clean; the second has one row of a currency the contract refuses
    (folder / "payments_2024-01-01.csv").write_text("payment_id,currency,amount,note\n1,USD,10.00,\n2,EUR,5.50,\n")
    (folder / "payments_2024-01-02.csv").write_text("payment_id,currency,amount,note\n3,GBP,1.00,\n4,XXX,2.00,\n")
    return folder


def _check_specs(defs):
    graph = defs.resolve_asset_graph()
    return {key: graph.get_check_spec(key) for key in graph.asset_check_keys if key.asset_key == CLEAN}


def test_check_descriptions_name_the_column_and_the_rule(tmp_path, data_dir):
    specs = _check_specs(definitions_for(tmp_path / "specs", SPEC))
    descriptions = {key.name: spec.description or "" for key, spec in specs.items()}
    assert descriptions["accepted_values"] == "accepted_values on currency: USD, EUR, GBP (ERROR: rows quarantined)"
    assert descriptions["range"] == "range on amount >= 0; amount <= 10000 (ERROR: rows quarantined)"
    assert descriptions["format"] == "format on note at most 20 characters (WARN: rows loaded and flagged)"
    assert descriptions["not_null"] == "not_null on payment_id; currency (ERROR: rows quarantined)"
    assert descriptions["unique"].startswith("unique on one row per (payment_id)")
    assert "threshold" not in descriptions["quality_score"] and "50%" in descriptions["quality_score"]
    # every check is partitioned like the asset it guards
    assert {spec.partitions_def for spec in specs.values()} == {
        definitions_for(tmp_path / "specs", SPEC).resolve_assets_def(CLEAN).partitions_def
    }


def test_quarantined_rows_fail_their_check_as_a_warn_per_partition(tmp_path, data_dir, instance, landing):
    job = definitions_for(tmp_path / "specs", SPEC).resolve_job_def(pipeline_job_name(PAYMENTS))
    evaluations = {}
    for day in DAYS:
        result = job.execute_in_process(instance=instance, partition_key=day)
        assert result.success  # a WARN holds nothing: the valid rows are loaded
        evaluations[day] = {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == CLEAN}

    clean_day = evaluations[DAYS[0]]["accepted_values"]
    assert clean_day.passed and clean_day.partition == DAYS[0]
    bad_day = evaluations[DAYS[1]]["accepted_values"]
    assert not bad_day.passed and bad_day.severity == AssetCheckSeverity.WARN and bad_day.partition == DAYS[1]
    assert bad_day.description == "1 row(s) quarantined to billing/quarantine_payments"
    assert bad_day.metadata["rows_quarantined"].value == 1
    sample = bad_day.metadata["sample"].value
    assert isinstance(sample, str) and "XXX" in sample and "accepted_values:currency" in sample
    # the other checks of that partition pass, and the instance keeps each partition's result
    assert evaluations[DAYS[1]]["rows_conserved"].passed and evaluations[DAYS[1]]["range"].passed
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [AssetCheckKey(CLEAN, "accepted_values")]
    )[AssetCheckKey(CLEAN, "accepted_values")]
    assert record.event is not None and record.event.dagster_event is not None
    stored = record.event.dagster_event.event_specific_data
    assert stored.partition == DAYS[1] and not stored.passed
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT payment_id FROM billing.payments ORDER BY 1").fetchall() == [(1,), (2,), (3,)]
        assert con.execute("SELECT payment_id, currency FROM quarantine.billing__payments").fetchall() == [("4", "XXX")]


def test_a_range_run_records_each_partition_result(tmp_path, data_dir, instance, landing):
    job = definitions_for(tmp_path / "specs", SPEC).resolve_job_def(pipeline_job_name(PAYMENTS))
    result = job.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[1]},
    )
    assert result.success
    per_partition = {
        e.partition: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == CLEAN and e.check_name == "accepted_values" and e.partition is not None
    }
    assert sorted(per_partition) == list(DAYS)
    assert per_partition[DAYS[0]].passed and not per_partition[DAYS[1]].passed
    # and the target's checks, per partition too
    loads = {
        e.partition: e.passed
        for e in result.get_asset_check_evaluations()
        if e.check_name == "matches_lake" and e.partition is not None
    }
    assert loads == {DAYS[0]: True, DAYS[1]: True}


def test_a_blocked_quality_gate_says_score_and_threshold(tmp_path, data_dir, instance, landing):
    job = definitions_for(tmp_path / "specs", SPEC).resolve_job_def(pipeline_job_name(PAYMENTS))
    assert job.execute_in_process(instance=instance, partition_key=DAYS[1]).success  # 3 valid, 4 quarantined
    (landing / "payments_2024-01-02.csv").write_text("payment_id,currency,amount,note\n3,GBP,1.00,\n4,X,2,\n5,Y,3,\n")
    result = job.execute_in_process(instance=instance, partition_key=DAYS[1], raise_on_error=False)
    assert not result.success
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "quality_score")
    assert not gate.passed and gate.severity == AssetCheckSeverity.ERROR
    assert gate.description == (
        "quality score 33.33% (1 of 3 rows valid) is below the threshold 50%: the load is held; "
        "the 2 quarantined row(s) are in billing/quarantine_payments and the warehouse's quarantine.billing__payments"
    )
    quarantined = data_dir / "lake" / "billing" / "quarantine_payments" / f"{DAYS[1]}.parquet"
    assert duckdb.execute(f"SELECT count(*) FROM read_parquet('{quarantined}')").fetchone() == (2,)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        # the held load left the dataset's partition as it was; the rows that held it replaced its quarantine
        assert con.execute("SELECT payment_id FROM billing.payments ORDER BY 1").fetchall() == [(3,)]
        assert con.execute(
            "SELECT payment_id, currency, _etl_run_id FROM quarantine.billing__payments ORDER BY 1"
        ).fetchall() == [("4", "X", result.run_id), ("5", "Y", result.run_id)]
