"""Protects the demo shop upstreams that the reference pipelines and their tests rely on.

Covers deterministic generation (byte-identical reruns, referential integrity, file
layouts) and the loopback REST API: both pagination styles returning every order exactly
once, filters, parameter validation, bearer auth, and each injectable fault as an HTTP
client really observes it; and the packaged shop specs moved to other days than the demo's
week (``etl_assets_demo.spans``), as the stress and the benchmarks run them. Everything runs
against real files under ``tmp_path`` and a real server on a free loopback port.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from etl_assets.keys import Pipeline, pipeline_ref
from etl_assets_demo import DemoApiServer, DemoManifest, FaultConfig, generate_shop_data, load_manifest

ORDERS = 2000
DAYS = 3
START = dt.date(2024, 3, 30)
SEED = 7
TOKEN = "s3cret-token"
API_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
# the landing folders of the shop pipelines the drops are for (a pipeline's folder is its <domain>.<name>)
PRODUCTS, FX_RATES, INVENTORY = (pipeline_ref(Pipeline("shop", name)) for name in ("products", "fx_rates", "inventory"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> DemoManifest:
    return generate_shop_data(tmp_path_factory.mktemp("shop"), orders=ORDERS, days=DAYS, start=START, seed=SEED)


@pytest.fixture(scope="module")
def client(shop: DemoManifest) -> Iterator[httpx.Client]:
    with DemoApiServer(shop.orders_path) as api, httpx.Client(base_url=api.url, timeout=10) as http:
        yield http


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _order_ids(manifest: DemoManifest, where: str, params: list[object]) -> list[int]:
    sql = f"SELECT order_id FROM read_parquet(?) WHERE {where} ORDER BY order_id"
    return [row[0] for row in duckdb.execute(sql, [str(manifest.orders_path), *params]).fetchall()]


def _epoch_us(manifest: DemoManifest, column: str, order_id: int) -> int:
    sql = f"SELECT epoch_us({column}) FROM read_parquet(?) WHERE order_id = ?"
    row = duckdb.execute(sql, [str(manifest.orders_path), order_id]).fetchone()
    assert row is not None, order_id
    return row[0]


def _iso(epoch_us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=epoch_us)).isoformat()


def _fetch_all_by_cursor(http: httpx.Client, params: dict[str, str | int]) -> list[int]:
    ids: list[int] = []
    response = http.get("/orders", params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [record["order_id"] for record in body["data"]]
        if body["next"] is None:
            assert body["next_cursor"] is None
            assert "link" not in response.headers
            return ids
        assert response.headers["link"] == f'<{body["next"]}>; rel="next"'
        response = http.get(body["next"])


def test_generation_is_byte_identical_for_same_arguments_and_differs_by_seed(tmp_path: Path) -> None:
    args = {"orders": ORDERS, "days": DAYS, "start": START}
    generate_shop_data(tmp_path / "a", seed=SEED, **args)
    generate_shop_data(tmp_path / "b", seed=SEED, **args)
    generate_shop_data(tmp_path / "c", seed=SEED + 1, **args)

    first, second, other = (_files(tmp_path / name) for name in "abc")
    assert first == second
    assert set(first) == set(other)
    for name in ("upstream/orders.parquet", "sources/shop.sqlite", f"landing/{PRODUCTS}/products.csv"):
        assert first[name] != other[name], name


def test_regeneration_replaces_previous_output(tmp_path: Path) -> None:
    generate_shop_data(tmp_path, orders=500, days=4, start=START)
    manifest = generate_shop_data(tmp_path, orders=300, days=2, start=START)

    assert load_manifest(tmp_path) == manifest
    assert manifest.partition_keys == ["2024-03-30", "2024-03-31"]
    assert sorted(p.name for p in (tmp_path / "landing" / INVENTORY).iterdir()) == [
        "inventory_2024-03-30.ndjson",
        "inventory_2024-03-31.ndjson",
    ]
    assert pq.read_metadata(manifest.orders_path).num_rows == 300
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_orders_schema_counts_and_value_ranges(shop: DemoManifest) -> None:
    table = pq.read_table(shop.orders_path)
    assert [(field.name, field.type) for field in table.schema] == [
        ("order_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("product_id", pa.int64()),
        ("quantity", pa.int32()),
        ("unit_price", pa.decimal128(12, 2)),
        ("currency", pa.string()),
        ("status", pa.string()),
        ("ordered_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
    assert table.column("order_id").to_pylist() == list(range(1, ORDERS + 1))
    assert (shop.customers, shop.products) == (100, 20)
    assert pc.min(table["quantity"]).as_py() == 1 and pc.max(table["quantity"]).as_py() == 5  # pyright: ignore[reportAttributeAccessIssue]
    assert pc.min(table["unit_price"]).as_py() > 0  # pyright: ignore[reportAttributeAccessIssue]
    assert set(table["currency"].to_pylist()) == {"USD", "EUR", "GBP"}
    assert set(table["status"].to_pylist()) == {"placed", "shipped", "cancelled"}

    window_start = dt.datetime.combine(START, dt.time(), dt.UTC)
    assert pc.min(table["ordered_at"]).as_py() >= window_start  # pyright: ignore[reportAttributeAccessIssue]
    assert pc.max(table["ordered_at"]).as_py() < window_start + dt.timedelta(days=DAYS)  # pyright: ignore[reportAttributeAccessIssue]
    lag_us = pc.subtract(table["updated_at"].cast(pa.int64()), table["ordered_at"].cast(pa.int64()))  # pyright: ignore[reportAttributeAccessIssue]
    assert pc.min(lag_us).as_py() >= 0  # pyright: ignore[reportAttributeAccessIssue]
    assert pc.max(lag_us).as_py() <= 48 * 3600 * 10**6  # pyright: ignore[reportAttributeAccessIssue]
    orders_per_day = pc.value_counts(pc.floor_temporal(table["ordered_at"], unit="day")).field("counts")  # pyright: ignore[reportAttributeAccessIssue]
    assert len(orders_per_day) == DAYS
    assert min(orders_per_day.to_pylist()) > ORDERS / DAYS * 0.9


def test_orders_reference_existing_customers_and_products(shop: DemoManifest) -> None:
    with sqlite3.connect(shop.sqlite_path) as con:
        customers = con.execute("SELECT * FROM customers ORDER BY customer_id").fetchall()
    assert [row[0] for row in customers] == list(range(1, shop.customers + 1))
    sqlite_timestamp = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
    for _, name, email, country, created_at, updated_at in customers:
        assert name and "@" in email
        assert country in {"US", "DE", "FR", "GB", "JP", "BR", "IN", "CA"}
        assert sqlite_timestamp.fullmatch(created_at) and sqlite_timestamp.fullmatch(updated_at)
        assert created_at <= updated_at

    products_csv = shop.landing_dir / PRODUCTS / "products.csv"
    with products_csv.open(newline="") as handle:
        products = list(csv.DictReader(handle))
    assert products_csv.read_text().splitlines()[0] == "product_id,sku,name,category,list_price"
    assert [int(p["product_id"]) for p in products] == list(range(1, shop.products + 1))
    assert all(re.fullmatch(r"[1-9][0-9]*\.[0-9]{2}", p["list_price"]) for p in products)

    table = pq.read_table(shop.orders_path, columns=["customer_id", "product_id"])
    assert set(table["customer_id"].to_pylist()) <= {row[0] for row in customers}
    assert set(table["product_id"].to_pylist()) <= {int(p["product_id"]) for p in products}


def test_landing_files(shop: DemoManifest) -> None:
    fx = json.loads((shop.landing_dir / FX_RATES / "fx_rates.json").read_text())
    assert fx == [
        {"currency": "USD", "rate_to_usd": 1.0},
        {"currency": "EUR", "rate_to_usd": 1.08},
        {"currency": "GBP", "rate_to_usd": 1.27},
    ]
    inventory_dir = shop.landing_dir / INVENTORY
    assert sorted(p.name for p in inventory_dir.iterdir()) == [f"inventory_{key}.ndjson" for key in shop.partition_keys]
    for key in shop.partition_keys:
        rows = [json.loads(line) for line in (inventory_dir / f"inventory_{key}.ndjson").read_text().splitlines()]
        assert [row["product_id"] for row in rows] == list(range(1, shop.products + 1))
        assert all(row["snapshot_date"] == key and row["on_hand"] >= 0 for row in rows)


def test_records_match_the_parquet_file(shop: DemoManifest, client: httpx.Client) -> None:
    response = client.get("/orders", params={"page_size": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    records = response.json()["data"]
    expected = pq.read_table(shop.orders_path).slice(0, 3).to_pylist()
    for record, row in zip(records, expected, strict=True):
        assert API_TIMESTAMP.fullmatch(record["ordered_at"]) and API_TIMESTAMP.fullmatch(record["updated_at"])
        assert record == {
            **row,
            "unit_price": str(row["unit_price"]),
            "ordered_at": record["ordered_at"],
            "updated_at": record["updated_at"],
        }
        assert dt.datetime.fromisoformat(record["ordered_at"]) == row["ordered_at"]
        assert dt.datetime.fromisoformat(record["updated_at"]) == row["updated_at"]


def _window(shop: DemoManifest) -> tuple[dict[str, str], list[int]]:
    """A half-open window whose bounds are exactly the ordered_at of two real orders."""
    lo, hi = _epoch_us(shop, "ordered_at", 500), _epoch_us(shop, "ordered_at", 1400)
    expected = _order_ids(shop, "epoch_us(ordered_at) >= ? AND epoch_us(ordered_at) < ?", [lo, hi])
    assert 500 in expected and 1400 not in expected
    return {"ordered_from": _iso(lo), "ordered_to": _iso(hi)}, expected


def test_page_pagination_returns_each_order_in_window_once(shop: DemoManifest, client: httpx.Client) -> None:
    window, expected = _window(shop)
    first = client.get("/orders", params={**window, "page_size": 97}).json()
    assert (first["page"], first["page_size"], first["total"]) == (1, 97, len(expected))
    assert first["total_pages"] == -(-len(expected) // 97)

    ids = [record["order_id"] for record in first["data"]]
    for page in range(2, first["total_pages"] + 2):
        body = client.get("/orders", params={**window, "page_size": 97, "page": page}).json()
        ids += [record["order_id"] for record in body["data"]]
    assert ids == expected


def test_cursor_pagination_returns_each_order_in_window_once(shop: DemoManifest, client: httpx.Client) -> None:
    window, expected = _window(shop)
    assert _fetch_all_by_cursor(client, {**window, "limit": 113}) == expected
    assert _fetch_all_by_cursor(client, {"limit": 5000}) == list(range(1, ORDERS + 1))


def test_updated_since_is_strictly_after(shop: DemoManifest, client: httpx.Client) -> None:
    since = _epoch_us(shop, "updated_at", 1000)
    expected = _order_ids(shop, "epoch_us(updated_at) > ?", [since])
    assert 0 < len(expected) < ORDERS and 1000 not in expected
    assert _fetch_all_by_cursor(client, {"updated_since": _iso(since), "limit": 250}) == expected


def test_watermark(shop: DemoManifest, client: httpx.Client) -> None:
    body = client.get("/orders/watermark").json()
    latest = pc.max(pq.read_table(shop.orders_path, columns=["updated_at"])["updated_at"]).as_py()  # pyright: ignore[reportAttributeAccessIssue]
    assert body["count"] == ORDERS
    assert dt.datetime.fromisoformat(body["max_updated_at"]) == latest


def test_server_reads_the_file_at_request_time(tmp_path: Path) -> None:
    manifest = generate_shop_data(tmp_path, orders=300, days=1)
    with DemoApiServer(manifest.orders_path) as api:
        assert httpx.get(f"{api.url}/orders/watermark").json()["count"] == 300
        generate_shop_data(tmp_path, orders=450, days=1)
        assert httpx.get(f"{api.url}/orders/watermark").json()["count"] == 450


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"page": "0"}, "page"),
        ({"page": "two"}, "page"),
        ({"page_size": "5001"}, "page_size"),
        ({"page_size": ""}, "page_size"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "10", "cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "b3JkZXJfaWQ6Mg"}, "limit"),
        ({"limit": "10", "page": "2"}, "limit"),
        ({"ordered_from": "yesterday"}, "ordered_from"),
        ({"ordered_to": "2024-13-01T00:00:00Z"}, "ordered_to"),
        ({"ordered_from": "2024-04-02T00:00:00Z", "ordered_to": "2024-04-01T00:00:00Z"}, "ordered_from"),
        ({"updated_since": "2024-04-01T25:00:00Z"}, "updated_since"),
        ({"sort": "desc"}, "sort"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_parameter(
    client: httpx.Client, params: dict[str, str], named: str
) -> None:
    response = client.get("/orders", params=params)
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_unknown_paths_methods_and_parameters(client: httpx.Client) -> None:
    assert client.get("/customers").status_code == 404
    assert client.post("/orders").status_code == 405
    assert client.get("/orders/watermark", params={"since": "x"}).status_code == 400
    assert client.get("/health").json() == {"status": "ok"}


def test_bearer_token_is_required_except_for_health(shop: DemoManifest) -> None:
    with DemoApiServer(shop.orders_path, token=TOKEN) as api, httpx.Client(base_url=api.url) as http:
        for path in ("/orders", "/orders/watermark"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                response = http.get(path, headers=headers)
                assert response.status_code == 401
                assert response.json() == {"error": "missing or invalid credentials"}
            assert http.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert http.get("/health").status_code == 200


@pytest.mark.parametrize("kind", ["500", "503", "429"])
def test_error_faults(shop: DemoManifest, kind: str) -> None:
    faults = FaultConfig(rate=1.0, kinds=(kind,), retry_after_seconds=2)
    with DemoApiServer(shop.orders_path, faults=faults) as api, httpx.Client(base_url=api.url) as http:
        responses = [http.get("/orders"), http.get("/orders/watermark")]
        assert http.get("/health").status_code == 200
        assert api.faults_injected == {kind: 2}
        assert api.requests_total == 3
    for response in responses:
        assert response.status_code == int(kind)
        assert response.json()["error"]
        if kind != "500":
            assert response.headers["retry-after"] == "2"


def test_truncated_fault_breaks_the_body(shop: DemoManifest) -> None:
    faults = FaultConfig(rate=1.0, kinds=("truncated",))
    with DemoApiServer(shop.orders_path, faults=faults) as api, httpx.Client(base_url=api.url) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.get("/orders")
        assert api.faults_injected == {"truncated": 1}


def test_slow_fault_delays_a_normal_answer(shop: DemoManifest) -> None:
    faults = FaultConfig(rate=1.0, kinds=("slow",), slow_seconds=0.5)
    with DemoApiServer(shop.orders_path, faults=faults) as api, httpx.Client(base_url=api.url) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.get("/orders", timeout=0.1)
        started = time.monotonic()
        response = http.get("/orders", params={"limit": 10}, timeout=5)
        assert time.monotonic() - started >= 0.5
        assert response.status_code == 200 and len(response.json()["data"]) == 10
        assert api.faults_injected == {"slow": 2}


def test_zero_fault_rate_injects_nothing(shop: DemoManifest) -> None:
    with DemoApiServer(shop.orders_path, faults=FaultConfig(rate=0.0)) as api, httpx.Client(base_url=api.url) as http:
        statuses = {http.get("/orders", params={"page_size": 5}).status_code for _ in range(40)}
        assert statuses == {200}
        assert api.faults_injected == {}
        assert api.requests_total == 40


def test_faults_are_reproducible_for_a_seed(shop: DemoManifest) -> None:
    def statuses() -> list[int]:
        faults = FaultConfig(rate=0.5, kinds=("500", "503", "429"), seed=11)
        with DemoApiServer(shop.orders_path, faults=faults) as api, httpx.Client(base_url=api.url) as http:
            return [http.get("/orders/watermark").status_code for _ in range(30)]

    first = statuses()
    assert first == statuses()
    assert {200, 500, 503, 429} <= set(first)


def test_fault_config_parse() -> None:
    assert FaultConfig.parse("rate=0.1,kinds=500+429+truncated,slow_seconds=2") == FaultConfig(
        rate=0.1, kinds=("500", "429", "truncated"), slow_seconds=2.0
    )
    assert FaultConfig.parse("") == FaultConfig()
    for spec in ("rate=1.5", "kinds=500+teapot", "nope=1", "rate", "rate=0.1,rate=0.2", "seed=x"):
        with pytest.raises(ValueError):
            FaultConfig.parse(spec)


def test_the_shop_specs_over_other_days_move_every_daily_pipeline_together(data_dir):
    from etl_assets.definitions import build_definitions
    from etl_assets.pipelines.spec import load_specs
    from etl_assets_demo.spans import shop_specs_over

    packaged = {s.spec.name: s.spec for s in load_specs()}
    moved = {s.spec.name: s.spec for s in shop_specs_over(dt.date(2024, 3, 1), 30)}
    assert set(moved) == set(packaged)
    for name, spec in moved.items():
        if packaged[name].partitions.type == "none":
            assert spec == packaged[name]
        else:
            assert (spec.partitions.start, spec.partitions.last) == (dt.date(2024, 3, 1), dt.date(2024, 3, 30))
            assert spec.model_copy(update={"partitions": packaged[name].partitions}) == packaged[name], name
    job = build_definitions(shop_specs_over(dt.date(2024, 3, 1), 30)).resolve_job_def("shop_daily")
    assert job.partitions_def is not None and len(job.partitions_def.get_partition_keys()) == 30
    with pytest.raises(ValueError, match="days must be >= 1, got 0"):
        shop_specs_over(dt.date(2024, 3, 1), 0)
