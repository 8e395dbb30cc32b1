"""Backfills the way the UI runs them: a date range of the orders pipeline launched through the GraphQL API of a
real `dagster-webserver` and executed by the real `dagster-daemon`; the partition whose source refused it fails,
the others land; after the source is fixed, re-executing the backfill from failure runs only the failed
partition, and the warehouse then holds every generated order exactly once."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
import httpx
import pandas as pd
import pytest
from dagster import DagsterInstance, RunsFilter

from etl_assets.cli.demo import FULL_REFRESH_JOB
from etl_assets.definitions import build_definitions
from etl_assets_tests.test_daemon_e2e import Daemon, wait_for
from etl_assets_tests.webserver import HOST, running_webserver

pytestmark = [pytest.mark.daemon]

ORDER_ASSETS = [
    ["shop", "raw_orders"],
    ["shop", "clean_orders"],
    ["shop", "quarantine_orders"],
    ["shop", "warehouse_orders"],
]
LAUNCH = """
mutation Launch($partitions: [String!], $assets: [AssetKeyInput!]) {
  launchPartitionBackfill(backfillParams: {partitionNames: $partitions, assetSelection: $assets}) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
REEXECUTE = """
mutation Retry($id: String!) {
  reexecutePartitionBackfill(reexecutionParams: {parentRunId: $id, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
}
"""
RUNNING = {"REQUESTED", "CANCELING", "FAILING"}


class GatedApi:
    """A loopback proxy in front of the demo API that answers 404 for the order windows in ``refused``."""

    def __init__(self, upstream: str):
        self.upstream, self.refused = upstream, set()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                day = (query.get("ordered_from") or [""])[0][:10]
                if day in gate.refused:
                    status, body, kind = 404, b'{"error": "no such window"}', "application/json"
                else:
                    answer = httpx.get(gate.upstream + self.path, timeout=30)
                    status, body, kind = answer.status_code, answer.content, answer.headers["content-type"]
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def backfill_status(server, backfill_id: str) -> str:
    return server.graphql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]


def backfill_partitions(instance: DagsterInstance, backfill_id: str) -> list[str]:
    runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
    # one partition per run: Dagster tags it as the partition, or as a range of one
    return sorted(r.tags.get("dagster/partition") or r.tags["dagster/asset_partition_range_start"] for r in runs)


def test_ui_backfill_and_reexecution_of_only_the_failed_partition(
    tmp_path: Path, shop_data, api_server, data_dir, instance, monkeypatch
):
    # the dimensions the orders contract refers to are loaded first; their landing files are then gone, so the
    # daemon's file sensors have nothing to do
    assert build_definitions().resolve_job_def(FULL_REFRESH_JOB).execute_in_process(instance=instance).success
    shutil.rmtree(data_dir / "landing")
    days = shop_data.partition_keys
    refused = days[1]
    gate = GatedApi(api_server.url)
    gate.refused.add(refused)
    env = {"ETL_DATA_DIR": str(data_dir), "SHOP_API_URL": gate.url}
    try:
        with running_webserver(tmp_path / "ui", env) as server:
            daemon = Daemon({**server_env(server, env)}, tmp_path / "daemon.log")
            daemon.start()
            try:
                ui_instance = DagsterInstance.from_config(str(server.home))
                launched = server.graphql(LAUNCH, {"partitions": days, "assets": [{"path": p} for p in ORDER_ASSETS]})
                first = launched["launchPartitionBackfill"]
                assert first["__typename"] == "LaunchBackfillSuccess", first
                first_id = first["backfillId"]
                wait_for(
                    "the backfill to finish", lambda: backfill_status(server, first_id) not in RUNNING, 420, daemon
                )
                assert backfill_status(server, first_id) in ("COMPLETED_FAILED", "FAILED")
                assert backfill_partitions(ui_instance, first_id) == days  # API sources: one run per partition
                loaded = warehouse_days(data_dir)
                assert refused not in loaded and sorted(loaded) == [d for d in days if d != refused]

                gate.refused.clear()  # the source is fixed
                retried = server.graphql(REEXECUTE, {"id": first_id})["reexecutePartitionBackfill"]
                assert retried["__typename"] == "LaunchBackfillSuccess", retried
                second_id = retried["backfillId"]
                wait_for(
                    "the re-executed backfill to finish",
                    lambda: backfill_status(server, second_id) not in RUNNING,
                    420,
                    daemon,
                )
                assert backfill_status(server, second_id) == "COMPLETED_SUCCESS"
                assert backfill_partitions(ui_instance, second_id) == [refused]  # only the failed partition ran
            finally:
                daemon.stop()
    finally:
        gate.close()

    generated = pd.read_parquet(shop_data.orders_path)
    generated["day"] = generated["ordered_at"].dt.strftime("%Y-%m-%d")
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        got = con.execute(
            "SELECT _etl_partition, count(*), count(DISTINCT order_id) FROM shop.orders GROUP BY ALL ORDER BY 1"
        ).fetchall()
    expected = generated.groupby("day")["order_id"].agg(["count", "nunique"]).reset_index()
    assert got == [(d, int(c), int(n)) for d, c, n in expected.itertuples(index=False)]


def server_env(server, env: dict) -> dict:
    import os

    full = {**os.environ, **env, "DAGSTER_HOME": str(server.home)}
    full.pop("ETL_PIPELINES_DIR", None)
    return full


def warehouse_days(data_dir: Path) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
                return [r[0] for r in con.execute("SELECT DISTINCT _etl_partition FROM shop.orders").fetchall()]
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
