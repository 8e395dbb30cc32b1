"""The Dagster UI as a person uses it: headless Chromium (Debian's, driven by Playwright) against
``dagster-webserver`` on 127.0.0.1. It opens the lineage graph (a box per stage, each named apart) and the catalog, launches the full refresh with
"Materialize all" on the job's page, follows the run to Success, reads the row count on an asset's page, the spec's
description and SQL column types on the clean dataset's page and, for a product the contract quarantined, the
failed WARN check on its checks tab; it materializes the health asset from its page and opens its chart. Judged by
effect: the row count shown against the generated data, the rows in the warehouse file and its quarantine, the check
as the instance recorded it, and the chart's rendered width. A second test runs the demo's jobs as `etl-assets demo`
does and finds them on the Overview timeline and the job's runs page, and a user's invalid spec's error on the page
of the sensor reporting it while the other pipelines stay in the catalog.

Screenshots of every step go to ``test-artifacts/browser/`` (``failure_<test>.png`` when a step fails).
Without Chromium or Playwright the test is skipped, unless ``ETL_REQUIRE_BROWSER=1`` (CI), which fails it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from etl_assets_demo import DemoManifest
from etl_assets_tests.webserver import LOCATION, REPO, RUN_TIMEOUT, Webserver, webserver_fixture  # noqa: F401 (the `webserver` fixture)

pytestmark = [pytest.mark.browser, pytest.mark.daemon]

ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB = "shop_full_refresh"
GROUP = "shop"
BAD_PRODUCT = 999_999
CHECK_QUERY = """
query($path: [String!]!, $name: String!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetCheckOrError(checkName: $name) {
        ... on AssetCheck { executionForLatestMaterialization { evaluation { success severity } } }
      }
    }
  }
}
"""
UI_TIMEOUT_MS = 90_000  # one UI wait (page data, a launch): generous, the machine has 2 cores


def _require_browser() -> str:
    """Chromium's path; skips (or fails when ETL_REQUIRE_BROWSER=1) when Chromium or Playwright is missing."""
    missing = []
    chromium = shutil.which("chromium")
    if chromium is None:
        missing.append("`chromium` is not on PATH (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the `playwright` Python package is not installed (uv pip install playwright)")
    if missing:
        message = "browser test: " + "; ".join(missing)
        if os.environ.get("ETL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (ETL_REQUIRE_BROWSER=1 makes this a failure)", pytrace=False)
        pytest.skip(message)
    assert chromium is not None
    return chromium


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """The screenshots folder, emptied once for this module's tests (each keeps its own screenshots)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture
def browser_page(artifacts: Path) -> Iterator:
    """A fresh Chromium page (1600x1000). Requested before ``webserver`` so a missing browser skips first."""
    chromium = _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            new_page = context.new_page()
            new_page.set_default_timeout(UI_TIMEOUT_MS)
            yield new_page
        finally:
            browser.close()


def _test_name() -> str:
    """The running test's name, for its failure screenshot."""
    return os.environ.get("PYTEST_CURRENT_TEST", "test").split("::")[-1].split(" ")[0]


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def dismiss_first_visit_dialog(page, server: Webserver) -> None:
    """A fresh instance greets a local visitor with "Join the Dagster community"; a person clicks Skip."""
    dialog = page.get_by_text("Join the Dagster community")
    skip = page.get_by_role("button", name="Skip", exact=True)
    if server.graphql("query { shouldShowNux }")["shouldShowNux"]:
        dialog.wait_for(state="visible")
        skip.click()
        dialog.wait_for(state="hidden")
        assert not server.graphql("query { shouldShowNux }")["shouldShowNux"], "Skip did not record the dialog as seen"
    # Should it come back on a later page, Playwright closes it the same way before the next action.
    page.add_locator_handler(dialog, lambda: skip.click())


def wait_until_gone(page, locator, what: str) -> None:
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while locator.count():
        if time.monotonic() > deadline:
            shot(page, f"failure_{_test_name()}")
            pytest.fail(f"{what} still loading after {UI_TIMEOUT_MS / 1000:.0f}s", pytrace=False)
        page.wait_for_timeout(250)


def wait_for_run_status(page, server: Webserver, run_id: str) -> None:
    """Watches the run page until its status tag says Success (reloading now and then, as a person would)."""
    success = page.get_by_text("Success", exact=True)
    ended_badly = page.get_by_text(re.compile(r"^(Failure|Canceled)$"))
    deadline = time.monotonic() + RUN_TIMEOUT
    last_load = time.monotonic()
    while not success.first.is_visible():
        if ended_badly.first.is_visible():
            shot(page, f"failure_{_test_name()}")
            server.fail(f"the run page shows {ended_badly.first.inner_text()!r}\n{server.run_report(run_id)}")
        if time.monotonic() > deadline:
            shot(page, f"failure_{_test_name()}")
            server.fail(f"run {run_id} not shown as Success within {RUN_TIMEOUT:.0f}s\n{server.run_report(run_id)}")
        if time.monotonic() - last_load > 30:
            page.reload()
            last_load = time.monotonic()
        page.wait_for_timeout(1000)


def shown_row_count(page) -> int:
    """The number under "Row count" in the asset page's status section (waits for it to load)."""
    page.get_by_text("Row count", exact=True).wait_for()
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        match = re.search(r"Row count\s+([\d,]+)", page.inner_text("body"))
        if match:
            return int(match.group(1).replace(",", ""))
        if time.monotonic() > deadline:
            shot(page, f"failure_{_test_name()}")
            pytest.fail("the asset page shows no number under 'Row count'", pytrace=False)
        page.wait_for_timeout(500)


def test_materialize_all_from_the_ui(browser_page, webserver: Webserver, shop_data: DemoManifest, data_dir: Path):
    page = browser_page
    base = webserver.url
    try:
        # 1. The lineage graph of the reference domain's group, and the catalog. (The global lineage page
        # collapses each group to one box once there is more than one group, so the group's own page it is.)
        page.goto(f"{base}/locations/{LOCATION}/asset-groups/{GROUP}/lineage")
        dismiss_first_visit_dialog(page, webserver)
        page.get_by_text("clean_products", exact=True).first.wait_for()
        page.wait_for_load_state("networkidle")
        # each stage of a pipeline is a box of its own name (they all read "orders" when the stage led the key;
        # the graph shortens long names in the middle, as in "marts_or..._enriched")
        # (it draws only the boxes in view: these are, on its first screen)
        for name in ("raw_products", "clean_orders", "quarantine_orders", "warehouse_orders"):
            page.get_by_text(name, exact=True).first.wait_for()
        shown = set(re.findall(r"\b(?:raw|clean|quarantine|warehouse|marts)_\w+", page.inner_text("body")))
        shot(page, "01_lineage_graph")

        page.goto(f"{base}/assets")
        page.get_by_text("shop / warehouse_customers").first.wait_for()
        wait_until_gone(page, page.get_by_text("Loading...", exact=True), "the catalog's asset statuses")
        shot(page, "02_catalog")

        # A product with a negative list price arrives with the catalogue: the contract quarantines it.
        with (shop_data.landing_dir / "shop.products" / "products.csv").open("a") as catalogue:
            catalogue.write(f"{BAD_PRODUCT},SKU-BAD,refund voucher,misc,-5.00\n")

        # 2. "Materialize all" on the job's page launches a run; the UI says so and links to it.
        page.goto(f"{base}/locations/{LOCATION}/jobs/{JOB}")
        # The button's accessible name also holds its icon's name, so match its end.
        materialize_all = page.get_by_role("button", name=re.compile(r"Materialize all$"))
        materialize_all.wait_for()
        page.wait_for_load_state("networkidle")
        shot(page, "03_job_page")

        def is_launch(response) -> bool:
            body = response.request.post_data or ""
            return "/graphql" in response.url and "mutation LaunchPipelineExecution" in body

        with page.expect_response(is_launch, timeout=UI_TIMEOUT_MS) as launched:
            materialize_all.click()
        result = launched.value.json()["data"]["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", f"launch from the UI failed: {result}"
        run_id = result["run"]["id"]
        assert result["run"]["pipelineName"] == JOB

        toast = page.get_by_text(f"Launched run {run_id[:8]}")
        toast.wait_for()
        shot(page, "04_run_launched")
        view = page.get_by_role("button", name="View", exact=True).or_(
            page.get_by_role("link", name="View", exact=True)
        )
        view.first.click()
        page.wait_for_url(f"**/runs/{run_id}**")

        # 3. The run page follows the run to Success.
        wait_for_run_status(page, webserver, run_id)
        page.get_by_text("Errored (0)").wait_for()
        shot(page, "05_run_success")

        # 4. The asset's page shows the row count the load recorded.
        page.goto(f"{base}/assets/shop/warehouse_customers")
        rows = shown_row_count(page)
        page.get_by_text("shop.customers").first.wait_for()
        shot(page, "06_asset_warehouse_customers")

        # 5. The clean dataset's page: the spec's description and the contract's columns with their SQL types.
        page.goto(f"{base}/assets/shop/clean_products")
        page.get_by_text("Product catalogue, a CSV file dropped into the landing zone.").first.wait_for()
        page.get_by_text("DECIMAL(12,2)").first.wait_for()
        page.get_by_text("list_price").first.wait_for()
        shot(page, "07_asset_clean_products")

        # 6. Its checks: the quarantined product shows as a failed WARN check naming the column and the rule.
        page.goto(f"{base}/assets/shop/clean_products?view=checks")
        page.get_by_text("range", exact=True).first.click()
        page.get_by_text("range on list_price >= 0 (ERROR: rows quarantined)").first.wait_for()
        page.get_by_text("1 row(s) quarantined to shop/quarantine_products").first.wait_for()
        # the list of checks says range Failed (a warning sign: failed as a WARN)
        assert re.search(r"\brange\s+Failed\b", page.inner_text("body")), "the checks list does not show range Failed"
        shot(page, "08_checks_clean_products")

        # 7. The health asset, materialized from its page: the chart itself is shown, not a file path.
        page.goto(f"{base}/assets/ops/pipeline_health")
        materialize = page.get_by_role("button", name=re.compile(r"Materialize$"))
        materialize.first.wait_for()
        page.wait_for_load_state("networkidle")
        with page.expect_response(is_launch, timeout=UI_TIMEOUT_MS) as launched:
            materialize.first.click()
        health = launched.value.json()["data"]["launchPipelineExecution"]
        assert health["__typename"] == "LaunchRunSuccess", f"launch from the UI failed: {health}"
        page.goto(f"{base}/runs/{health['run']['id']}")
        wait_for_run_status(page, webserver, health["run"]["id"])
        page.goto(f"{base}/assets/ops/pipeline_health?view=events")
        chart_row = page.get_by_role("row").filter(has_text=re.compile(r"^\s*chart\b"))
        chart_row.get_by_text("[Show Markdown]").first.click()
        chart = page.locator('img[src^="data:image/png;base64,"]')
        chart.first.wait_for()
        width = chart.first.evaluate("img => img.naturalWidth")
        shot(page, "09_health_chart")
    except BaseException:
        if not page.is_closed():
            shot(page, f"failure_{_test_name()}")
        raise

    assert {"raw_products", "clean_products", "clean_orders", "quarantine_orders", "warehouse_orders"} <= shown
    assert rows == shop_data.customers, f"the UI shows {rows} rows for shop/warehouse_customers"
    # The run came from the UI, and its rows are in the warehouse file.
    run = webserver.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName tags { key value } } } }",
        {"id": run_id},
    )["runOrError"]
    assert (run["status"], run["jobName"]) == ("SUCCESS", JOB)
    assert {"key": "dagster/from_ui", "value": "true"} in run["tags"]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM shop.customers").fetchall()[0][0] == shop_data.customers
        assert con.execute("SELECT count(*) FROM shop.products").fetchall()[0][0] == shop_data.products
        assert con.execute("SELECT product_id FROM quarantine.shop__products").fetchall() == [(str(BAD_PRODUCT),)]
    assert width > 300, f"the health chart shown is {width} px wide: not the rendered PNG"
    # what the checks tab showed is what the instance recorded: the range check failed, as a WARN
    check = webserver.graphql(CHECK_QUERY, {"path": ["shop", "clean_products"], "name": "range"})
    execution = check["assetNodeOrError"]["assetCheckOrError"]["executionForLatestMaterialization"]
    assert execution["evaluation"]["success"] is False and execution["evaluation"]["severity"] == "WARN"


BAD_SPEC = 'name: broken\nsource: {kind: files, format: csv, glob: "*.csv"}\ncolumns: [{name: a, type: INTEGR}]\n'
GOOD_SPEC = 'name: notes\nsource: {kind: files, format: csv, glob: "*.csv"}\ncolumns: [{name: note_id, type: BIGINT}]\n'


def test_the_demos_runs_and_a_bad_spec_as_the_ui_shows_them(
    browser_page, tmp_path: Path, shop_data: DemoManifest, data_dir: Path, api_server, monkeypatch
):
    """After the demo, its runs are on the Overview timeline and the job's runs page; a user's invalid spec shows its
    error (file, field, fix) on the page of the sensor that reports it, while the other pipelines stay in the
    catalog. No daemon runs: what the UI shows comes from the code location and the instance alone."""
    from dagster import DagsterInstance

    from etl_assets.cli.demo import run_reference
    from etl_assets.definitions import build_definitions
    from etl_assets.monitoring.spec_errors import SPEC_ERRORS_SENSOR
    from etl_assets_tests.webserver import running_webserver

    page = browser_page
    specs = tmp_path / "pipelines"
    specs.mkdir()
    (specs / "notes.yaml").write_text(GOOD_SPEC)
    (specs / "broken.yaml").write_text(BAD_SPEC)
    env = {"ETL_DATA_DIR": str(data_dir), "SHOP_API_URL": api_server.url}
    with running_webserver(tmp_path / "ui", env, pipelines_dir=specs) as server:
        base = server.url
        # the demo's runs, as `etl-assets demo` starts them: in its own process, on the instance the UI reads
        monkeypatch.setenv("ETL_DATA_DIR", str(data_dir))
        monkeypatch.setenv("SHOP_API_URL", api_server.url)
        monkeypatch.setenv("ETL_PIPELINES_DIR", str(specs))
        with DagsterInstance.from_config(str(server.home)) as instance:
            runs = run_reference(build_definitions(), instance, shop_data.partition_keys[:1])
        assert [r.success for r in runs] == [True, True]
        daily = next(r for r in runs if r.job == "shop_daily")
        try:
            page.goto(f"{base}/overview/activity/timeline")
            dismiss_first_visit_dialog(page, server)
            # the timeline has a row per job with runs in its window: the demo's two jobs
            page.get_by_text("shop_daily", exact=True).first.wait_for()
            page.get_by_text("shop_full_refresh", exact=True).first.wait_for()
            page.wait_for_load_state("networkidle")
            timeline = page.inner_text("body")
            shot(page, "10_overview_timeline")

            page.goto(f"{base}/locations/{LOCATION}/jobs/shop_daily/runs")
            page.get_by_text(daily.run_id[:8]).first.wait_for()
            shot(page, "11_job_runs")

            page.goto(f"{base}/locations/{LOCATION}/sensors/{SPEC_ERRORS_SENSOR}")
            page.get_by_text(re.compile(r"unknown column type 'INTEGR'")).first.wait_for()
            body = page.inner_text("body")
            shot(page, "12_invalid_spec_sensor")

            page.goto(f"{base}/assets")
            page.get_by_text("default / warehouse_notes").first.wait_for()
            page.get_by_text("shop / clean_customers").first.wait_for()
            shot(page, "13_catalog_with_a_bad_spec")
        except BaseException:
            if not page.is_closed():
                shot(page, f"failure_{_test_name()}")
            raise
    assert "broken.yaml" in body and "INTEGR" in body
    assert "shop__inventory_pipeline" not in timeline  # a job without runs has no row: the rows are the demo's runs
