"""The GraphQL API as its users drive it: ``dagster-webserver`` in a subprocess, a run launched with
``DagsterGraphQLClient``, and the materializations and their metadata read back with plain GraphQL over HTTP.
Judged by effect: the row counts Dagster recorded and the rows in the warehouse file, both against the
generated data's own figures."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from etl_assets_demo import DemoManifest
from etl_assets_demo.data import FX_RATES_TO_USD
from etl_assets_tests.webserver import HOST, LOCATION, RUN_TIMEOUT, Webserver, webserver_fixture  # noqa: F401 (the `webserver` fixture)

# dagster_graphql's client calls gql with arguments gql deprecates; not this project's code.
pytestmark = [
    pytest.mark.daemon,
    pytest.mark.filterwarnings("ignore:Using variable_values and operation_name:DeprecationWarning"),
]

FULL_REFRESH_JOB = "shop_full_refresh"
FULL_REFRESH_DATASETS = ("customers", "fx_rates", "products")

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      jobName
      status
      tags { key value }
      assetMaterializations { assetKey { path } }
      stats { __typename ... on RunStatsSnapshot { stepsSucceeded stepsFailed materializations } }
    }
  }
}
"""

LATEST_MATERIALIZATION_QUERY = """
query LatestMaterialization($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""


def wait_for_run(
    client: DagsterGraphQLClient, server: Webserver, run_id: str, timeout: float = RUN_TIMEOUT
) -> DagsterRunStatus:
    """Polls ``get_run_status`` until the run ends; fails with the run's events and the server's log otherwise."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id)
        if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            return status
        time.sleep(1)
    server.fail(f"run {run_id} still {status} after {timeout:.0f}s\n{server.run_report(run_id)}")


def warehouse_count(data_dir: Path, table: str) -> int:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_full_refresh_launched_through_the_graphql_client(
    webserver: Webserver, shop_data: DemoManifest, data_dir: Path
):
    expected = {"customers": shop_data.customers, "products": shop_data.products, "fx_rates": len(FX_RATES_TO_USD)}
    client = DagsterGraphQLClient(HOST, port_number=webserver.port)
    try:
        run_id = client.submit_job_execution(FULL_REFRESH_JOB, repository_location_name=LOCATION)
    except DagsterGraphQLClientError as exc:
        webserver.fail(f"submit_job_execution({FULL_REFRESH_JOB!r}) failed: {exc}")

    status = wait_for_run(client, webserver, run_id)
    if status != DagsterRunStatus.SUCCESS:
        webserver.fail(f"run {run_id} ended {status}\n{webserver.run_report(run_id)}")

    run = webserver.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
    assert run["__typename"] == "Run"
    assert (run["jobName"], run["status"]) == (FULL_REFRESH_JOB, "SUCCESS")
    materialized = [tuple(m["assetKey"]["path"]) for m in run["assetMaterializations"]]
    layers = ("raw", "clean", "quarantine", "warehouse")
    assert sorted(materialized) == sorted(
        ("shop", f"{layer}_{name}") for layer in layers for name in FULL_REFRESH_DATASETS
    )
    assert run["stats"]["stepsFailed"] == 0
    assert run["stats"]["materializations"] == len(materialized)

    for name, rows in expected.items():
        asset = webserver.graphql(LATEST_MATERIALIZATION_QUERY, {"path": ["shop", f"warehouse_{name}"]})["assetOrError"]
        assert asset["__typename"] == "Asset", f"shop/warehouse_{name}: {asset}"
        materializations = asset["assetMaterializations"]
        assert len(materializations) == 1, f"shop/warehouse_{name} has no materialization: {asset}"
        latest = materializations[0]
        assert latest["runId"] == run_id
        assert latest["partition"] is None
        metadata = {e["label"]: e.get("intValue", e.get("text")) for e in latest["metadataEntries"]}
        assert metadata.get("dagster/row_count") == rows, f"shop/warehouse_{name} metadata: {metadata}"
        assert metadata.get("table") == f"shop.{name}"
        # The effect itself: the rows are in the warehouse file the run wrote.
        assert warehouse_count(data_dir, f"shop.{name}") == rows


JOB_RUNS_QUERY = """
query JobRuns($job: String!, $location: String!) {
  pipelineOrError(params: {pipelineName: $job, repositoryName: "__repository__", repositoryLocationName: $location}) {
    __typename
    ... on Pipeline { runs { runId repositoryOrigin { repositoryLocationName repositoryName } } }
  }
}
"""


def test_the_demos_runs_are_the_code_locations_on_the_job_page_and_timeline(
    webserver: Webserver, shop_data: DemoManifest, data_dir: Path, api_server, monkeypatch
):
    """The demo runs its jobs in its own process; the UI's Jobs page and Overview timeline group runs by the code
    location they came from, so each demo run must carry the location's origin (a plain in-process run does not,
    and is the control here)."""
    from dagster import DagsterInstance

    from etl_assets.cli.demo import FULL_REFRESH_JOB as DEMO_FULL_REFRESH
    from etl_assets.cli.demo import run_reference
    from etl_assets.definitions import build_definitions

    monkeypatch.setenv("ETL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("SHOP_API_URL", api_server.url)
    defs = build_definitions()
    with DagsterInstance.from_config(str(webserver.home)) as instance:
        runs = run_reference(defs, instance, shop_data.partition_keys[:1])
        control = defs.resolve_job_def(DEMO_FULL_REFRESH).execute_in_process(instance=instance)
    assert [r.success for r in runs] == [True, True]
    for job in (DEMO_FULL_REFRESH, "shop_daily"):
        answer = webserver.graphql(JOB_RUNS_QUERY, {"job": job, "location": LOCATION})["pipelineOrError"]
        assert answer["__typename"] == "Pipeline", answer
        listed = {r["runId"]: r["repositoryOrigin"] for r in answer["runs"]}
        (demo_run,) = [r.run_id for r in runs if r.job == job]
        # the job page lists the demo's run, with the origin the timeline places it by
        assert listed.get(demo_run) == {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
        assert control.run_id not in listed
