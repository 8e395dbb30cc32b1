"""clean/ partitions are lake views over the raw partition: what a pipeline run stores, what the loads read, and
the loads' re-check of the contract on the rows they insert (a mismatch rolls the load back)."""

from __future__ import annotations

import json
import textwrap

import duckdb
from dagster import AssetCheckKey, AssetKey

from etl_assets.definitions import build_definitions
from etl_assets.lake import LakeStorage, LakeView
from etl_assets.runner import QUIET

SPEC = """
name: visits
domain: web
source: {kind: files, format: csv, glob: "visits_*.csv"}
partitions: {type: daily, start: 2024-01-01}
columns:
  - {name: visit_id, type: BIGINT, nullable: false}
  - {name: kind, type: VARCHAR, nullable: false, accepted_values: [view, buy]}
  - {name: amount, type: "DECIMAL(8,2)", min: 0}
primary_key: [visit_id]
quality: {threshold: 0}
"""
DAY = "2024-01-01"


def _warehouse(data_dir):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        valid = con.execute("SELECT visit_id, kind, amount, _etl_run_id FROM web.visits ORDER BY 1").fetchall()
        quarantined = con.execute("SELECT visit_id, _etl_reasons FROM quarantine.visits ORDER BY 1").fetchall()
    return valid, quarantined


def _setup(tmp_path, data_dir, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "visits.yaml").write_text(textwrap.dedent(SPEC))
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(specs))
    landing = data_dir / "landing" / "visits"
    landing.mkdir(parents=True)
    (landing / f"visits_{DAY}.csv").write_text("visit_id,kind,amount\n1,view,2.50\n2,refund,1.00\n3,buy,-4\n4,buy,10\n4,view,3\n")
    return build_definitions().resolve_job_def("visits_pipeline")


def test_clean_is_a_view_the_warehouse_loads_typed_and_the_load_rechecks_the_contract(
        tmp_path, data_dir, instance, monkeypatch):
    job = _setup(tmp_path, data_dir, monkeypatch)
    first = job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET)
    assert first.success
    lake = LakeStorage(root=str(data_dir / "lake"))
    stored = lake.stored_path(["clean", "visits"], DAY)
    assert stored is not None and stored.name == f"{DAY}.view.json"
    manifest = json.loads(stored.read_text())
    assert (manifest["source_rows"], manifest["excluded_rows"], manifest["rows"]) == (5, 3, 2)
    # the view's source is a snapshot of the raw partition (same file, not a copy)
    assert (stored.parent / manifest["source"]).stat().st_ino == lake.path_for(["raw", "visits"], DAY).stat().st_ino

    valid, quarantined = _warehouse(data_dir)
    assert [(v[0], v[1], str(v[2])) for v in valid] == [(1, "view", "2.50"), (4, "buy", "10.00")]
    assert quarantined == [("2", ["accepted_values:kind"]), ("3", ["min:amount"]), ("4", ["duplicate_key"])]  # as delivered
    check = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey(["warehouse", "visits"]), "contract_holds"))
    assert check is not None and check.event.asset_check_evaluation.passed
    counted = check.event.asset_check_evaluation.metadata["violations_by_rule"].value
    assert counted == {"accepted_values:kind": 0, "duplicate_key": 0, "min:amount": 0, "not_null:kind": 0,
                       "not_null:visit_id": 0}

    # the clean view is made to let the bad rows through (as a bug or a hand edit would): the load finds them in
    # the rows it inserted, rolls back, and the warehouse keeps the rows of the first run
    con = duckdb.connect()
    lake.write(["clean", "visits"], DAY, LakeView(source=str(stored.parent / manifest["source"]),
                                                  select=manifest["select"],
                                                  excluded=con.sql("SELECT 0::BIGINT AS position WHERE false")))
    assert lake.table(["clean", "visits"], [DAY]).num_rows == 5
    again = job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET, raise_on_error=False,
                                   asset_selection=[AssetKey(["warehouse", "visits"])])
    assert not again.success
    [failure] = [e for e in again.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description if failure.step_failure_data.user_failure_data \
        else failure.step_failure_data.error.message
    assert "accepted_values:kind: 1" in message and "min:amount: 1" in message and "duplicate_key: 1" in message
    assert "rolled back" in message
    assert _warehouse(data_dir) == (valid, quarantined)


def test_a_repeated_key_in_the_clean_view_is_caught_after_the_insert_and_rolled_back(
        tmp_path, data_dir, instance, monkeypatch):
    # the value rules are checked by the INSERT as it inserts; uniqueness is counted on the inserted rows
    job = _setup(tmp_path, data_dir, monkeypatch)
    assert job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET).success
    before = _warehouse(data_dir)
    lake = LakeStorage(root=str(data_dir / "lake"))
    stored = lake.stored_path(["clean", "visits"], DAY)
    manifest = json.loads(stored.read_text())
    # leave out the two rows breaking a value rule, let the second row of key 4 through
    lake.write(["clean", "visits"], DAY, LakeView(source=str(stored.parent / manifest["source"]), select=manifest["select"],
                                                  excluded=duckdb.connect().sql("SELECT unnest([1, 2]::BIGINT[]) AS position")))
    again = job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET, raise_on_error=False,
                                   asset_selection=[AssetKey(["warehouse", "visits"])])
    assert not again.success
    [failure] = [e for e in again.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "duplicate_key: 1" in message and "accepted_values" not in message and "rolled back" in message
    assert _warehouse(data_dir) == before


def test_cross_partition_key_check_reads_only_partitions_whose_key_range_overlaps(
        tmp_path, data_dir, instance, monkeypatch):
    job = _setup(tmp_path, data_dir, monkeypatch)
    landing = data_dir / "landing" / "visits"
    for day, ids in (("2024-01-01", (1, 2, 3)), ("2024-01-02", (10, 11, 12)), ("2024-01-03", (11, 20, 21))):
        (landing / f"visits_{day}.csv").write_text("visit_id,kind,amount\n" + "".join(f"{i},view,1\n" for i in ids))
    for day in ("2024-01-01", "2024-01-02"):
        assert job.execute_in_process(instance=instance, partition_key=day, run_config=QUIET).success
    lake = LakeStorage(root=str(data_dir / "lake"))
    stats = json.loads(lake.stored_path(["clean", "visits"], "2024-01-02").read_text())["stats"]
    assert stats == {"key_min": "10", "key_max": "12"}
    # 2024-01-01 (keys 1-3) cannot hold a key of 2024-01-03 (11-21): make it unreadable; only 2024-01-02 is read
    first = lake.stored_path(["clean", "visits"], "2024-01-01")
    (first.parent / json.loads(first.read_text())["source"]).write_bytes(b"not parquet")
    result = job.execute_in_process(instance=instance, partition_key="2024-01-03", run_config=QUIET)
    assert result.success
    valid, quarantined = _warehouse(data_dir)
    assert sorted(v[0] for v in valid) == [1, 2, 3, 10, 11, 12, 20, 21]
    assert quarantined == [("11", ["duplicate_key_across_batches"])]
