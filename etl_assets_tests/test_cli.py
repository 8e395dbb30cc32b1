"""The command lines in the README, run as subprocesses and judged by their effect: rows in the warehouse and
runs in the instance, not only exit codes; the `etl-assets` commands report each run as it ends, and refuse an
unknown name in one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, DagsterRunStatus, RunsFilter, job, op

from etl_assets.resources.files import LandingFilesSource

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def cli_env(tmp_path: Path, data_dir: Path) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ETL_DATA_DIR": str(data_dir)}
    # the commands run this checkout's code, whichever checkout the environment has installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.pop("ETL_PIPELINES_DIR", None)
    env.pop("ETL_PACKAGED_PIPELINES", None)
    return env


def run(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def warehouse_count(data_dir: Path, sql: str) -> int:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()[0][0]


def materializations(instance: DagsterInstance, key: AssetKey) -> list[AssetMaterialization]:
    """The materializations of ``key`` recorded in ``instance`` (up to 100)."""
    found = []
    for record in instance.fetch_materializations(key, limit=100).records:
        assert record.asset_materialization is not None
        found.append(record.asset_materialization)
    return found


def test_definitions_validate(cli_env):
    proc = run([str(BIN / "dagster"), "definitions", "validate", "-m", "etl_assets"], cli_env)
    assert "Validation successful" in proc.stdout + proc.stderr


def test_job_execute_and_partitioned_materialize(cli_env, shop_data, api_server, data_dir):
    env = {**cli_env, "SHOP_API_URL": api_server.url}
    run([str(BIN / "dagster"), "job", "execute", "-m", "etl_assets", "-j", "shop_full_refresh"], env)
    assert warehouse_count(data_dir, "SELECT count(*) FROM shop.customers") == shop_data.customers
    assert warehouse_count(data_dir, "SELECT count(*) FROM shop.products") == shop_data.products

    day = shop_data.partition_keys[0]
    run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "etl_assets",
            "--select",
            "shop/raw_orders,shop/clean_orders,shop/quarantine_orders,shop/warehouse_orders",
            "--partition",
            day,
        ],
        env,
    )
    expected = duckdb.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE CAST(ordered_at AS DATE) = CAST(? AS DATE)",
        [str(shop_data.orders_path), day],
    ).fetchall()[0][0]
    assert expected > 0
    assert warehouse_count(data_dir, "SELECT count(*) FROM shop.orders") == expected

    instance = DagsterInstance.from_config(cli_env["DAGSTER_HOME"])
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
    assert len(runs) == 2
    assert [r.job_name for r in runs if r.tags.get("dagster/partition") is None] == ["shop_full_refresh"]
    assert [r.tags.get("dagster/partition") for r in runs if r.job_name != "shop_full_refresh"] == [day]


def test_dg_launch_loads_one_partition_of_the_project(cli_env, shop_data, api_server, data_dir):
    # the dg form of the README's by-hand run: the project's code location, one partition of one pipeline
    env = {**cli_env, "SHOP_API_URL": api_server.url, "VIRTUAL_ENV": str(BIN.parent)}
    day = shop_data.partition_keys[0]
    selection = "shop/raw_orders,shop/clean_orders,shop/quarantine_orders,shop/warehouse_orders"
    run([str(BIN / "dg"), "launch", "--job", "shop_full_refresh"], env)  # the dimensions the orders reference
    run([str(BIN / "dg"), "launch", "--assets", selection, "--partition", day], env)
    expected = duckdb.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE CAST(ordered_at AS DATE) = CAST(? AS DATE)",
        [str(shop_data.orders_path), day],
    ).fetchall()[0][0]
    assert expected > 0
    assert warehouse_count(data_dir, "SELECT count(*) FROM shop.orders") == expected
    runs = DagsterInstance.from_config(cli_env["DAGSTER_HOME"]).get_runs()
    assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2
    assert [r.tags.get("dagster/partition") for r in runs] == [day, None]  # newest first


PROGRESS = re.compile(
    r"^\[(?P<done>\d+)/(?P<total>\d+)\] (?P<label>.+?) (?P<status>ok|FAILED), (?P<rows>[\d,]+) rows, "
    r"\d+\.\d s, \d+\.\d s elapsed(?:: .*?)? \(run (?P<run>[0-9a-f]{8})\)$"
)


def test_demo_command_reports_each_run_as_it_ends_and_fills_every_partition(cli_env, data_dir, tmp_path):
    days = 7  # the default, `make demo`'s: the shop's daily partitions (partitions.start to partitions.last)
    # stdout is a pipe, as in CI: one plain line per run, each read as soon as the run ends
    stderr = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [str(BIN / "etl-assets"), "demo", "--orders", "600"],
        cwd=REPO,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    arrivals: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        arrivals.append((time.time(), line.rstrip("\n")))
    assert proc.wait(timeout=300) == 0, "\n".join(line for _, line in arrivals) + (tmp_path / "stderr.txt").read_text()
    out = "\n".join(line for _, line in arrivals)
    assert f"warehouse: {data_dir / 'warehouse.duckdb'}" in out
    assert "shop.orders" in out
    assert warehouse_count(data_dir, "SELECT count(*) FROM shop.orders") == 600
    assert warehouse_count(data_dir, "SELECT count(*) FROM shop.daily_revenue") > 0
    # the files the demo loaded are archived, as the archive sensor does: a later `make dev` finds none waiting
    landing = LandingFilesSource(root=str(data_dir / "landing"))
    for dataset, expected in (("shop.products", 1), ("shop.fx_rates", 1), ("shop.inventory", days)):
        waiting = [p.name for p in (data_dir / "landing" / dataset).iterdir() if p.is_file()]
        assert waiting == [], f"{dataset}: {waiting} still in landing after the demo"
        assert len([p for p in landing.archive_dir(dataset).iterdir() if p.is_file()]) == expected, dataset

    progress = [(at, m) for at, line in arrivals if (m := PROGRESS.match(line))]
    assert [(m["done"], m["total"], m["status"]) for _, m in progress] == [
        (str(i), str(1 + days), "ok") for i in range(1, 2 + days)
    ], out
    assert [m["label"] for _, m in progress][:2] == ["shop_full_refresh", "shop_daily 2024-01-01"]
    assert all(int(m["rows"].replace(",", "")) > 0 for _, m in progress)
    total_rows = sum(int(m["rows"].replace(",", "")) for _, m in progress)
    assert re.search(rf"^demo: {1 + days} of {1 + days} runs ok, {total_rows:,} rows, ", out, re.M), out

    # the runs are in the instance at DAGSTER_HOME (the one the UI shows), and each line came when its run ended:
    # the first run's line was read before the last run started
    instance = DagsterInstance.from_config(cli_env["DAGSTER_HOME"])
    records = instance.get_run_records()
    assert sorted(r.dagster_run.run_id[:8] for r in records) == sorted(m["run"] for _, m in progress)
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records)
    by_short_id = {r.dagster_run.run_id[:8]: r for r in records}
    first_read, last_run = progress[0][0], by_short_id[progress[-1][1]["run"]]
    assert last_run.start_time is not None and first_read < last_run.start_time

    # the UI finds the shop complete: every partition of every daily asset materialized, every other asset too
    from etl_assets.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    shop = [k for k in graph.get_all_asset_keys() if k.path[0] == "shop"]
    partitioned = [k for k in shop if graph.get(k).partitions_def is not None]
    assert {"shop/warehouse_orders", "shop/warehouse_inventory", "shop/warehouse_daily_revenue"} <= {
        k.to_user_string() for k in partitioned
    }
    for key in partitioned:
        partitions = graph.get(key).partitions_def
        assert partitions is not None and len(partitions.get_partition_keys()) == days
        assert instance.get_materialized_partitions(key) == set(partitions.get_partition_keys()), key
    for key in set(shop) - set(partitioned):
        assert instance.get_latest_materialization_event(key) is not None, key


def run_refused(args: list[str], env: dict) -> str:
    """Run ``etl-assets args``, which must be refused with exit status 2; its standard error."""
    proc = subprocess.run(
        [str(BIN / "etl-assets"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.parametrize("command", ["rebuild", "replay"])
def test_unknown_pipeline_is_one_line_with_the_close_matches(cli_env, command):
    assert run_refused([command, "ordrs", "--from", "2024-01-01"], cli_env) == (
        f"{command}: unknown pipeline 'ordrs'; did you mean: shop.orders?\n"
    )


def test_reexecute_of_a_run_whose_job_is_gone_is_one_line(cli_env):
    @op
    def extract():
        raise RuntimeError("the source is down")

    @job
    def shop__ordrs_pipeline():  # a job this code location no longer has (renamed since the run)
        extract()

    with DagsterInstance.from_config(cli_env["DAGSTER_HOME"]) as instance:
        run_id = shop__ordrs_pipeline.execute_in_process(instance=instance, raise_on_error=False).run_id
    assert run_refused(["reexecute", run_id], cli_env) == (
        f"reexecute: unknown job 'shop__ordrs_pipeline'; did you mean: shop__orders_pipeline? (the job of run {run_id})\n"
    )


def test_demo_without_its_jobs_is_one_line(cli_env):
    env = {**cli_env, "ETL_PACKAGED_PIPELINES": "off"}
    err = run_refused(["demo", "--orders", "50", "--days", "1"], env)
    assert err == (
        "demo: unknown job 'shop_full_refresh'; the jobs are: lake_retention_job, pipeline_health_job "
        "(the demo runs the packaged shop domain, which ETL_PACKAGED_PIPELINES=off leaves out)\n"
    )


def test_demo_data_outside_the_shops_partitions_is_refused_before_it_is_generated(cli_env, data_dir):
    err = run_refused(["demo", "--orders", "50", "--days", "8"], cli_env)
    defs_yaml = REPO / "etl_assets" / "defs" / "shop" / "defs.yaml"
    assert err == (
        "demo: --start 2024-01-01 --days 8 is data for 2024-01-01 to 2024-01-08, but the daily partitions of orders "
        "are 2024-01-01 to 2024-01-07: give a --start and --days within them, or change partitions.start and "
        f"partitions.last of each daily shop pipeline in {defs_yaml}\n"
    )
    assert list(data_dir.iterdir()) == []


def test_schedule_and_sensor_lists(cli_env):
    schedules = run([str(BIN / "dagster"), "schedule", "list", "-m", "etl_assets"], cli_env).stdout
    assert "shop__orders_schedule" in schedules and "shop__customers_schedule" in schedules
    sensors = run([str(BIN / "dagster"), "sensor", "list", "-m", "etl_assets"], cli_env).stdout
    for name in (
        "shop__inventory_file_sensor",
        "shop__products_file_sensor",
        "shop__orders_watermark_sensor",
        "landing_archive_sensor",
        "automation_condition_sensor",
    ):
        assert name in sensors


def test_partition_range_backfills_in_one_run(cli_env, shop_data, data_dir):
    days = shop_data.partition_keys
    run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "etl_assets",
            "--select",
            "shop/raw_inventory,shop/clean_inventory,shop/quarantine_inventory,shop/warehouse_inventory",
            "--partition-range",
            f"{days[0]}...{days[-1]}",
        ],
        cli_env,
    )
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        per_day = con.execute("SELECT _etl_partition, count(*) FROM shop.inventory GROUP BY 1 ORDER BY 1").fetchall()
    assert per_day == [(d, shop_data.products) for d in days]
    instance = DagsterInstance.from_config(cli_env["DAGSTER_HOME"])
    runs = instance.get_runs()
    assert len(runs) == 1
    assert runs[0].tags["dagster/asset_partition_range_start"] == days[0]
    assert runs[0].tags["dagster/asset_partition_range_end"] == days[-1]
    # each partition's materializations carry that partition's figures, not the range's
    for stage in ("raw", "clean", "warehouse"):
        records = materializations(instance, AssetKey(["shop", f"{stage}_inventory"]))
        counts = {m.partition: m.metadata["dagster/row_count"].value for m in records}
        assert counts == {d: shop_data.products for d in days}, stage
        assert all(m.metadata["partitions_in_run"].value == len(days) for m in records)
    quarantined = materializations(instance, AssetKey(["shop", "quarantine_inventory"]))
    assert {m.partition: m.metadata["dagster/row_count"].value for m in quarantined} == {d: 0 for d in days}


def test_metrics_command_serves_prometheus(cli_env):
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "etl-assets"), "metrics", "serve", "--port", str(port)],
        cwd=REPO,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        body = ""
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                break
            except httpx.TransportError:
                time.sleep(1)
        assert "# TYPE etl_runs_total counter" in body or "etl_runs_total" in body, body[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
