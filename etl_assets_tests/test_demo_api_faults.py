"""Protects the demo API's opt-in faults that no retry fixes, as a plain HTTP client observes them.

Covers: ``repeat_cursor`` (the next cursor, ``next`` link and ``Link`` header are the request's own cursor),
``ignore_page`` (page 1's records whatever ``page`` says, with no page count), ``huge_page`` and
``huge_page_chunked`` (a body of about ``huge_page_bytes`` of small records, announced or chunked, and counted
as sent), ``deep_json`` (nested past any JSON parser's limit), ``echo_auth`` (403 echoing the credentials),
``extra_keys`` (keys added to every record), their configuration through ``FaultConfig.parse``, and none of them
being in the default stress mix. Runs against ``DemoApiServer`` on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from etl_assets_demo import DemoApiServer, DemoManifest, FaultConfig
from etl_assets_demo.api_server import FAULT_KINDS, OPT_IN_FAULT_KINDS

TOKEN = "tok-Zq8vN3rW5yKp0xL"


@contextlib.contextmanager
def _faulty(shop: DemoManifest, **faults: Any) -> Iterator[tuple[DemoApiServer, httpx.Client]]:
    """The demo API injecting ``FaultConfig(**faults)``, and a client of it."""
    with (
        DemoApiServer(shop.orders_path, faults=FaultConfig(**faults)) as api,
        httpx.Client(base_url=api.url, timeout=10) as http,
    ):
        yield api, http


def test_repeat_cursor_hands_back_the_cursor_it_was_given(shop_data: DemoManifest) -> None:
    with _faulty(shop_data, rate=1.0, kinds=("repeat_cursor",)) as (api, http):
        first = http.get("/orders", params={"limit": 10})
        cursor = first.json()["next_cursor"]
        assert cursor and len(first.json()["data"]) == 10  # the first page (no cursor) is answered normally
        second = http.get("/orders", params={"limit": 10, "cursor": cursor})
        body = second.json()
        assert [r["order_id"] for r in body["data"]] == [r["order_id"] + 10 for r in first.json()["data"]]
        assert body["next_cursor"] == cursor
        assert body["next"] == f"{api.url}/orders?limit=10&cursor={cursor}"
        assert second.headers["link"] == f'<{body["next"]}>; rel="next"'
        assert api.faults_injected == {"repeat_cursor": 2} and api.requests_total == 2


def test_ignore_page_answers_the_first_page_without_a_count(shop_data: DemoManifest) -> None:
    with _faulty(shop_data, rate=1.0, kinds=("ignore_page",)) as (api, http):
        pages = [http.get("/orders", params={"page": page, "page_size": 7}).json() for page in (1, 2, 5)]
        assert all(p["data"] == pages[0]["data"] and len(p["data"]) == 7 for p in pages)
        assert all("total_pages" not in p and "total" not in p for p in pages)
        cursor_page = http.get("/orders", params={"limit": 7}).json()  # cursor paging is not affected
        assert cursor_page["data"] == pages[0]["data"] and cursor_page["next_cursor"]


@pytest.mark.parametrize("kind", ["huge_page", "huge_page_chunked"])
def test_huge_pages_are_as_large_as_configured(shop_data: DemoManifest, kind: str) -> None:
    faults = FaultConfig(rate=1.0, kinds=(kind,), huge_page_bytes=3_000_000)
    with DemoApiServer(shop_data.orders_path, faults=faults) as api, httpx.Client(base_url=api.url, timeout=10) as http:
        response = http.get("/orders", params={"limit": 10})
        deadline = time.monotonic() + 10
        while not api.huge_bodies_sent and time.monotonic() < deadline:
            time.sleep(0.01)
        sent = api.huge_bodies_sent
    assert response.status_code == 200
    if kind == "huge_page":
        assert response.headers["content-length"] == str(len(response.content))
    else:
        assert "content-length" not in response.headers and response.headers["transfer-encoding"] == "chunked"
    assert 3_000_000 - 300 < len(response.content) <= 3_000_000
    assert sent == [len(response.content)]
    body = response.json()
    ids = [r["order_id"] for r in body["data"]]
    assert len(ids) == len(set(ids)) > 14_000 and body["next_cursor"] is None and body["total_pages"] == 1


def test_deep_json_is_nested_past_the_parser(shop_data: DemoManifest) -> None:
    with _faulty(shop_data, rate=1.0, kinds=("deep_json",)) as (api, http):
        response = http.get("/orders")
        assert response.status_code == 200 and response.content.count(b"[") == 100_001
        with pytest.raises(RecursionError):
            json.loads(response.content)


def test_echo_auth_echoes_the_credentials(shop_data: DemoManifest) -> None:
    faults = FaultConfig(rate=1.0, kinds=("echo_auth",))
    with (
        DemoApiServer(shop_data.orders_path, token=TOKEN, faults=faults) as api,
        httpx.Client(base_url=api.url) as http,
    ):
        echoed = http.get("/orders", headers={"Authorization": f"Bearer {TOKEN}"})
        refused = http.get("/orders")  # auth comes first: no token, no echo
    assert echoed.status_code == 403
    assert echoed.json() == {"error": f"token {TOKEN} may not read /orders", "authorization": f"Bearer {TOKEN}"}
    assert refused.status_code == 401


def test_extra_keys_are_added_to_every_record(shop_data: DemoManifest) -> None:
    with _faulty(shop_data, rate=1.0, kinds=("extra_keys",), extra_keys=("First Name", "_etl_source")) as (api, http):
        for params in ({"page_size": 5}, {"limit": 5}):
            records = http.get("/orders", params=params).json()["data"]
            assert len(records) == 5
            assert all(
                r["First Name"] == "First Name" and r["_etl_source"] == "_etl_source" and "order_id" in r
                for r in records
            )


def test_opt_in_faults_are_configured_by_name_only() -> None:
    assert not set(OPT_IN_FAULT_KINDS) & set(FAULT_KINDS)
    assert FaultConfig().kinds == FAULT_KINDS
    assert FaultConfig.parse(
        "rate=1,kinds=huge_page_chunked+deep_json,huge_page_bytes=1000,extra_keys=First Name+_etl_x"
    ) == FaultConfig(
        rate=1.0, kinds=("huge_page_chunked", "deep_json"), huge_page_bytes=1000, extra_keys=("First Name", "_etl_x")
    )
    assert FaultConfig.parse("fail_page=2,fail_page_kind=ignore_page").fail_page_kind == "ignore_page"
    with pytest.raises(ValueError, match="huge_page_bytes"):
        FaultConfig(huge_page_bytes=10)
