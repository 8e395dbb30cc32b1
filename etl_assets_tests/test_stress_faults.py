"""Fault-injection stress, small: 50 daily partitions of the reference orders pipeline while the demo API fails
10% of its requests (500, 503, 429 with Retry-After, answers past the client timeout, truncated bodies).

Protects: every partition succeeds on its first launch (request retries and step retries, no person); the faults
really happened, of every kind, and each one cost the client a retry (so the test fails if injection or its
detection silently stops); the warehouse equals the generated source exactly (no row lost, none duplicated or
altered, every row in its partition and from its partition's run); and the comparison itself notices a lost, a
duplicated and an altered row. The same code (etl_assets_demo.stress) runs 1,000 partitions in
benchmarks/stress_faults.py.
"""

from __future__ import annotations

import shutil

import duckdb
import pytest
from dagster import instance_for_test

from etl_assets_demo import generate_shop_data
from etl_assets_demo.stress import (
    FAULT_KINDS,
    REASON_KIND,
    StressSettings,
    compare_warehouse,
    load_dimensions,
    run_phase,
)

pytestmark = [pytest.mark.slow]

PARTITIONS = 50
ORDERS_PER_PARTITION = 100
# 25 orders a page: about 5 requests per partition, so 10% faults give about 25 of them, each kind likely
# several times (the draws are seeded, so the set is fixed for this code and data).
SETTINGS = StressSettings(fault_rate=0.10, page_size=25, seed=7)


@pytest.fixture(scope="module")
def stress(tmp_path_factory):
    """One 50-partition stress run shared by this module's tests (it costs about a minute and a half)."""
    root = tmp_path_factory.mktemp("stress")
    (root / "home").mkdir()
    with pytest.MonkeyPatch.context() as mp, instance_for_test(temp_dir=str(root / "home")) as instance:
        data_dir = root / "data"
        mp.setenv("ETL_DATA_DIR", str(data_dir))
        manifest = generate_shop_data(data_dir, orders=PARTITIONS * ORDERS_PER_PARTITION, days=PARTITIONS)
        load_dimensions(manifest, instance, SETTINGS)
        phase = run_phase(manifest, instance, manifest.partition_keys, SETTINGS, SETTINGS.faults(), "test")
        yield manifest, phase


def test_every_partition_succeeds_on_its_first_launch(stress):
    _, phase = stress
    failed = {o.partition: o.error for o in phase.outcomes if not o.first_launch_ok}
    assert phase.partitions == PARTITIONS
    assert not failed, failed
    assert phase.success_share == 1.0


def test_faults_of_every_kind_were_injected_and_each_cost_a_retry(stress):
    _, phase = stress
    injected = phase.faults_injected
    assert set(injected) == set(FAULT_KINDS), injected
    assert phase.request_retries > 0
    # Every injected fault fails one request attempt, which the client records before retrying it (a failed step
    # attempt would lose its count, hence the guard); a timeout under load may add one more.
    if phase.step_retries == 0:
        assert phase.request_retries >= sum(injected.values()), (phase.retry_reasons, injected)
    retried_kinds = {REASON_KIND.get(reason) for reason in phase.retry_reasons}
    assert retried_kinds >= set(FAULT_KINDS), phase.retry_reasons
    assert phase.retry_reasons.get("http_429", 0) >= injected["429"]
    assert phase.retry_reasons.get("http_503", 0) >= injected["503"]


def test_warehouse_equals_the_generated_source_exactly(stress):
    manifest, phase = stress
    comparison = compare_warehouse(manifest, phase)
    assert comparison.exact, comparison.problems()
    assert comparison.warehouse_rows == PARTITIONS * ORDERS_PER_PARTITION
    assert comparison.partitions_present == PARTITIONS


def test_comparison_notices_a_lost_a_duplicated_and_an_altered_row(stress, tmp_path):
    manifest, phase = stress
    tampered = tmp_path / "tampered.duckdb"
    shutil.copyfile(manifest.data_dir / "warehouse.duckdb", tampered)
    con = duckdb.connect(str(tampered))
    con.execute("DELETE FROM shop.orders WHERE order_id = (SELECT min(order_id) FROM shop.orders)")
    con.execute(
        "INSERT INTO shop.orders SELECT * FROM shop.orders WHERE order_id = (SELECT max(order_id) FROM shop.orders)"
    )
    con.execute(
        "UPDATE shop.orders SET quantity = quantity + 1 WHERE order_id = (SELECT min(order_id) + 10 FROM shop.orders)"
    )
    con.close()
    comparison = compare_warehouse(manifest, phase, warehouse=tampered)
    assert not comparison.exact
    assert comparison.missing_rows == 2  # the deleted row and the altered row's original
    assert comparison.extra_rows == 2  # the duplicate and the altered row
    assert comparison.duplicate_order_ids == 1
    assert comparison.warehouse_rows == comparison.source_rows  # a plain count would not have noticed
