"""Quarantine replay: after a contract fix, `etl-assets replay` re-validates a partition range from the raw lake
(no source call), loads the newly valid rows exactly once, and a second replay changes nothing."""

from __future__ import annotations

import re

import duckdb
import pytest
from dagster import RunsFilter

from etl_assets.cli import main as cli
from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref, revalidate_job_name
from etl_assets_tests.specs import column, files_source, pipeline, write_spec

pytestmark = [pytest.mark.slow]

VISITS = Pipeline("web", "visits")


def visits(accepted: list[str]) -> dict:
    """Daily visits whose ``kind`` must be one of ``accepted``; other rows are quarantined."""
    return pipeline(
        "visits",
        [column("visit_id", "BIGINT", nullable=False), column("kind", nullable=False, accepted_values=accepted)],
        domain="web",
        source=files_source(glob="visits_*.csv"),
        partitions={"type": "daily", "start": "2024-01-01"},
        primary_key=["visit_id"],
        quality={"threshold": 0},
    )


def tables(data_dir):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        valid = con.execute("SELECT visit_id, kind, _etl_partition FROM web.visits ORDER BY 1").fetchall()
        quarantined = con.execute(
            "SELECT visit_id, kind, _etl_reasons, _etl_partition FROM quarantine.web__visits ORDER BY 1"
        ).fetchall()
    return valid, quarantined


def test_replay_loads_fixed_rows_exactly_once(tmp_path, data_dir, instance, monkeypatch, capsys):
    specs = tmp_path / "specs"
    write_spec(specs, visits(["view", "buy"]))
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(specs))  # the replay command finds the spec as a user's would
    landing = data_dir / "landing" / pipeline_ref(VISITS)
    landing.mkdir(parents=True)
    (landing / "visits_2024-01-01.csv").write_text("visit_id,kind\n1,view\n2,refund\n")
    (landing / "visits_2024-01-02.csv").write_text("visit_id,kind\n3,buy\n4,refund\n5,view\n")
    job = build_definitions().resolve_job_def(pipeline_job_name(VISITS))
    for day in ("2024-01-01", "2024-01-02"):
        assert job.execute_in_process(instance=instance, partition_key=day).success
    valid, quarantined = tables(data_dir)
    assert [v[0] for v in valid] == [1, 3, 5]
    assert quarantined == [
        ("2", "refund", ["accepted_values:kind"], "2024-01-01"),
        ("4", "refund", ["accepted_values:kind"], "2024-01-02"),
    ]

    # the contract is fixed; the source files are gone (archived) — replay works from the raw lake alone
    write_spec(specs, visits(["view", "buy", "refund"]))
    for f in landing.iterdir():
        f.unlink()
    for _ in range(2):
        assert cli(["replay", "visits", "--from", "2024-01-01", "--to", "2024-01-02"]) == 0
        valid, quarantined = tables(data_dir)
        assert valid == [
            (1, "view", "2024-01-01"),
            (2, "refund", "2024-01-01"),
            (3, "buy", "2024-01-02"),
            (4, "refund", "2024-01-02"),
            (5, "view", "2024-01-02"),
        ]
        assert quarantined == []
    out = capsys.readouterr().out
    assert re.search(
        r"^\[1/2\] web\.visits 2024-01-01 ok, 2 rows, .*: 2 valid, 0 still quarantined \(run \w{8}\)$", out, re.M
    )
    assert re.search(r"^\[2/2\] web\.visits 2024-01-02 ok, 3 rows, .*: 3 valid, 0 still quarantined", out, re.M)
    assert re.search(r"^replay web\.visits: 2 of 2 runs ok, 5 rows, ", out, re.M)
    # the replay's runs are in the instance of DAGSTER_HOME, each with its partition
    replays = instance.get_runs(RunsFilter(job_name=revalidate_job_name(VISITS)))
    assert sorted(r.tags["dagster/partition"] for r in replays) == [
        "2024-01-01",
        "2024-01-01",
        "2024-01-02",
        "2024-01-02",
    ]


def test_replay_of_an_unknown_pipeline_names_the_close_ones(data_dir, capsys):
    assert cli(["replay", "ordrs"]) == 2
    assert capsys.readouterr().err == "replay: unknown pipeline 'ordrs'; did you mean: shop.orders?\n"
    assert cli(["replay", "daily_revenue"]) == 2  # a transform has no raw input to replay
    assert capsys.readouterr().err.startswith(
        "replay: shop.daily_revenue is not a source pipeline; replay one of: shop.customers"
    )
