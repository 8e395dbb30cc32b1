"""clean/ partitions are lake views over the raw partition: what a pipeline run stores, what the loads read, and
the loads' re-check of the contract on the rows they insert (a mismatch rolls the load back)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from dagster import AssetCheckKey, AssetKey

from etl_assets.cli import QUIET
from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.lake import LakeStorage, LakeView, view_files
from etl_assets.pipelines.spec import parse_spec_file
from etl_assets.pipelines.steps.validate import overlapping_partitions
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

pytestmark = [pytest.mark.slow]

SPEC = pipeline(
    "visits",
    [
        column("visit_id", "BIGINT", nullable=False),
        column("kind", nullable=False, accepted_values=["view", "buy"]),
        column("amount", "DECIMAL(8,2)", min=0),
    ],
    domain="web",
    source=files_source(glob="visits_*.csv"),
    partitions={"type": "daily", "start": "2024-01-01"},
    primary_key=["visit_id"],
    quality={"threshold": 0},
)
DAY = "2024-01-01"
VISITS = Pipeline(SPEC["domain"], SPEC["name"])


def _warehouse(data_dir):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        valid = con.execute("SELECT visit_id, kind, amount, _etl_run_id FROM web.visits ORDER BY 1").fetchall()
        quarantined = con.execute(
            f"SELECT visit_id, _etl_reasons FROM quarantine.{dagster_name(VISITS)} ORDER BY 1"
        ).fetchall()
    return valid, quarantined


def _stored(lake: LakeStorage, partition: str) -> Path:
    """The file holding a partition of ``clean.visits`` in the lake, which must exist."""
    stored = lake.stored_path(["web", "clean_visits"], partition)
    assert stored is not None, f"clean.visits has no stored partition {partition}"
    return stored


def _setup(tmp_path, data_dir):
    landing = data_dir / "landing" / pipeline_ref(VISITS)
    landing.mkdir(parents=True)
    (landing / f"visits_{DAY}.csv").write_text(
        "visit_id,kind,amount\n1,view,2.50\n2,refund,1.00\n3,buy,-4\n4,buy,10\n4,view,3\n"
    )
    return definitions_for(tmp_path / "specs", SPEC).resolve_job_def(pipeline_job_name(VISITS))


def test_clean_is_a_view_the_warehouse_loads_typed_and_the_load_rechecks_the_contract(tmp_path, data_dir, instance):
    job = _setup(tmp_path, data_dir)
    first = job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET)
    assert first.success
    lake = LakeStorage(root=str(data_dir / "lake"))
    stored = _stored(lake, DAY)
    assert stored.name == f"{DAY}.view.json"
    manifest = json.loads(stored.read_text())
    assert (manifest["source_rows"], manifest["excluded_rows"], manifest["rows"]) == (5, 3, 2)
    # the view's source is a snapshot of the raw partition (same file, not a copy)
    assert (stored.parent / manifest["source"]).stat().st_ino == lake.path_for(["web", "raw_visits"], DAY).stat().st_ino

    valid, quarantined = _warehouse(data_dir)
    assert [(v[0], v[1], str(v[2])) for v in valid] == [(1, "view", "2.50"), (4, "buy", "10.00")]
    assert quarantined == [
        ("2", ["accepted_values:kind"]),
        ("3", ["min:amount"]),
        ("4", ["duplicate_key"]),
    ]  # as delivered
    check = instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey(["web", "warehouse_visits"]), "contract_holds")
    )
    assert check is not None and check.event.asset_check_evaluation.passed
    counted = check.event.asset_check_evaluation.metadata["violations_by_rule"].value
    assert counted == {
        "accepted_values:kind": 0,
        "duplicate_key": 0,
        "min:amount": 0,
        "not_null:kind": 0,
        "not_null:visit_id": 0,
    }

    # the clean view is made to let the bad rows through (as a bug or a hand edit would): the load finds them in
    # the rows it inserted, rolls back, and the warehouse keeps the rows of the first run
    con = duckdb.connect()
    lake.write(
        ["web", "clean_visits"],
        DAY,
        LakeView(
            source=str(stored.parent / manifest["source"]),
            select=manifest["select"],
            excluded=con.sql("SELECT 0::BIGINT AS position WHERE false"),
        ),
    )
    assert lake.table(["web", "clean_visits"], [DAY]).num_rows == 5
    again = job.execute_in_process(
        instance=instance,
        partition_key=DAY,
        run_config=QUIET,
        raise_on_error=False,
        asset_selection=[AssetKey(["web", "warehouse_visits"])],
    )
    assert not again.success
    [failure] = [e for e in again.all_events if e.is_step_failure]
    failure_data = failure.step_failure_data
    if failure_data.user_failure_data:
        message = failure_data.user_failure_data.description
    else:
        assert failure_data.error is not None
        message = failure_data.error.message
    assert message is not None
    assert "accepted_values:kind: 1" in message and "min:amount: 1" in message and "duplicate_key: 1" in message
    assert "rolled back" in message
    assert _warehouse(data_dir) == (valid, quarantined)


def test_a_repeated_key_in_the_clean_view_is_caught_after_the_insert_and_rolled_back(tmp_path, data_dir, instance):
    # the value rules are checked by the INSERT as it inserts; uniqueness is counted on the inserted rows
    job = _setup(tmp_path, data_dir)
    assert job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET).success
    before = _warehouse(data_dir)
    lake = LakeStorage(root=str(data_dir / "lake"))
    stored = _stored(lake, DAY)
    manifest = json.loads(stored.read_text())
    # leave out the two rows breaking a value rule, let the second row of key 4 through
    lake.write(
        ["web", "clean_visits"],
        DAY,
        LakeView(
            source=str(stored.parent / manifest["source"]),
            select=manifest["select"],
            excluded=duckdb.connect().sql("SELECT unnest([1, 2]::BIGINT[]) AS position"),
        ),
    )
    again = job.execute_in_process(
        instance=instance,
        partition_key=DAY,
        run_config=QUIET,
        raise_on_error=False,
        asset_selection=[AssetKey(["web", "warehouse_visits"])],
    )
    assert not again.success
    [failure] = [e for e in again.all_events if e.is_step_failure]
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure is not None and user_failure.description is not None
    message = user_failure.description
    assert "duplicate_key: 1" in message and "accepted_values" not in message and "rolled back" in message
    assert _warehouse(data_dir) == before


def test_cross_partition_key_check_reads_only_partitions_whose_key_range_overlaps(tmp_path, data_dir, instance):
    job = _setup(tmp_path, data_dir)
    landing = data_dir / "landing" / pipeline_ref(VISITS)
    for day, ids in (("2024-01-01", (1, 2, 3)), ("2024-01-02", (10, 11, 12)), ("2024-01-03", (11, 20, 21))):
        (landing / f"visits_{day}.csv").write_text("visit_id,kind,amount\n" + "".join(f"{i},view,1\n" for i in ids))
    for day in ("2024-01-01", "2024-01-02"):
        assert job.execute_in_process(instance=instance, partition_key=day, run_config=QUIET).success
    lake = LakeStorage(root=str(data_dir / "lake"))
    stats = json.loads(_stored(lake, "2024-01-02").read_text())["stats"]
    assert stats == {"key_min": "10", "key_max": "12"}
    # 2024-01-01 (keys 1-3) cannot hold a key of 2024-01-03 (11-21): make it unreadable; only 2024-01-02 is read
    first = _stored(lake, "2024-01-01")
    (first.parent / json.loads(first.read_text())["source"]).write_bytes(b"not parquet")
    result = job.execute_in_process(instance=instance, partition_key="2024-01-03", run_config=QUIET)
    assert result.success
    valid, quarantined = _warehouse(data_dir)
    assert sorted(v[0] for v in valid) == [1, 2, 3, 10, 11, 12, 20, 21]
    assert quarantined == [("11", ["duplicate_key_across_batches"])]


def _visit_files(data_dir, days: dict[str, tuple[int, ...]]) -> None:
    landing = data_dir / "landing" / pipeline_ref(VISITS)
    for day, ids in days.items():
        (landing / f"visits_{day}.csv").write_text("visit_id,kind,amount\n" + "".join(f"{i},view,1\n" for i in ids))


def test_a_corrupt_clean_manifest_is_repaired_by_re_materializing_its_partition(tmp_path, data_dir, instance):
    job = _setup(tmp_path, data_dir)
    assert job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET).success
    before = _warehouse(data_dir)
    lake = LakeStorage(root=str(data_dir / "lake"))
    stored = _stored(lake, DAY)
    old_files = {p.name for p in view_files(str(stored))}
    stored.write_bytes(b"\x00\x01 half-restored {")

    again = job.execute_in_process(instance=instance, partition_key=DAY, run_config=QUIET)
    assert again.success
    repaired = _stored(lake, DAY)
    manifest = json.loads(repaired.read_text())
    assert (manifest["source_rows"], manifest["excluded_rows"], manifest["rows"]) == (5, 3, 2)
    new_files = {p.name for p in view_files(str(repaired))}
    assert {p.name for p in repaired.parent.iterdir()} == {repaired.name, *new_files}  # the old files are gone too
    assert not old_files & new_files
    valid, quarantined = _warehouse(data_dir)
    assert [v[:3] for v in valid] == [v[:3] for v in before[0]] and quarantined == before[1]
    assert {v[3] for v in valid} == {again.run_id}


def test_other_partitions_validate_while_one_clean_manifest_is_corrupt(tmp_path, data_dir, instance):
    job = _setup(tmp_path, data_dir)
    first, second = "2024-01-01", "2024-01-02"
    _visit_files(data_dir, {first: (1, 2, 3), second: (2, 5, 6)})  # key ranges overlap: the first must be read
    assert job.execute_in_process(instance=instance, partition_key=first, run_config=QUIET).success
    lake = LakeStorage(root=str(data_dir / "lake"))
    _stored(lake, first).write_text("{not json")

    result = job.execute_in_process(instance=instance, partition_key=second, run_config=QUIET)
    assert result.success
    warnings = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if f"partition {first} is left out of the duplicate-key check across partitions" in e.user_message
    ]
    assert len(warnings) == 1 and "unreadable lake view manifest" in warnings[0]
    clean_meta = next(
        m.metadata
        for m in result.asset_materializations_for_node(f"validate_{dagster_name(VISITS)}")
        if m.asset_key.path[-1].startswith("clean_")
    )
    assert clean_meta["partitions_not_compared"].value == [first]  # the skipped partition is on the materialization
    # the check could not compare with the first partition: its key 2 was not caught, and the log says so
    valid, quarantined = _warehouse(data_dir)
    assert sorted(v[0] for v in valid) == [1, 2, 2, 3, 5, 6] and quarantined == []

    # the function tells its caller which partitions it could not read (for metadata), also a view whose files are gone
    third = "2024-01-03"
    _visit_files(data_dir, {third: (4, 7)})
    assert job.execute_in_process(instance=instance, partition_key=third, run_config=QUIET).success
    third_manifest = _stored(lake, third)
    view_files(str(third_manifest))[0].unlink()
    spec = parse_spec_file(tmp_path / "specs" / "visits.yaml").spec
    unreadable: list[str] = []
    others = lake.table(["web", "clean_visits"], [first, second, third])
    assert overlapping_partitions(duckdb.connect(), others, spec, 1, 10, unreadable=unreadable) == [second]
    assert unreadable == [first, third]
    assert overlapping_partitions(duckdb.connect(), others, spec, 5, 5) == [second]  # without a list: logged only

    # re-materializing the first repairs it, and the check works again: its key 2 is now the repeat
    assert job.execute_in_process(instance=instance, partition_key=first, run_config=QUIET).success
    valid, quarantined = _warehouse(data_dir)
    assert sorted(v[0] for v in valid) == [1, 2, 3, 4, 5, 6, 7] and quarantined == [
        ("2", ["duplicate_key_across_batches"])
    ]
