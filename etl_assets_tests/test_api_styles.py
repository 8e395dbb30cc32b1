"""Protects the REST source's pagination styles, auth schemes and shared request rate against the real demo API.

Covers: every pagination style (dlt's names: page_number and offset with and without totals, cursor in the body at a
JSONPath and in a header, json_link with a relative link, header_link, single_page) returning every order of a window
once, also through 5xx, 429 and truncated bodies mid-pagination; the stops that cannot loop (a next URL handed back
again, a next link to another origin, max_pages); the JSONPath subset and its spec errors; api_key (header and query),
basic and OAuth2 client credentials (token cached, renewed on expiry and once on a 401) with their secrets only from
the environment and never in an error or log; and ``requests_per_second`` shared by two real processes. Everything
runs against ``DemoApiServer`` on a free loopback port.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from etl_assets.errors import PermanentSourceError
from etl_assets.pipelines.spec import SpecError, parse_spec_document
from etl_assets.resources.api import SOURCE_COLUMN, ApiSource, ExtractStats, RestApiSource
from etl_assets.resources.jsonpath import MISSING, compile_path, select
from etl_assets.resources.ratelimit import wait_for_slot
from etl_assets_demo import DemoApiServer, DemoManifest, FaultConfig
from etl_assets_tests.test_api_source import _source

UTC = dt.UTC
WINDOW = (dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC))
COLUMNS = ["order_id", "updated_at"]
PAGE = 37
API_KEY = "key-7Hq2mXv9LpR4sT"
PASSWORD = "pw-Jd83kQz!x0Lm"
CLIENT_SECRET = "cs-Wq5nB8vY2rTa"

# (route, records_path, pagination beyond style and page_size, requests past the last full page)
STYLES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "page_number": ("/styles/page_number", "result.items", {"total_pages_field": "meta.total_pages"}, 0),
    "page_number_no_total": ("/styles/page_number_no_total", "result.items", {"total_pages_field": None}, 1),
    "offset": ("/styles/offset", "items", {}, 0),
    "offset_no_total": ("/styles/offset_no_total", "items", {"total_field": None}, 1),
    "cursor_body": ("/styles/cursor_body", "data", {"next_cursor_field": "paging.next.cursor"}, 0),
    "cursor_header": ("/styles/cursor_header", "$", {"cursor_header": "X-Next-Cursor"}, 0),
    "json_link": ("/styles/json_link", "$.results[*]", {"next_url_field": "links.next"}, 0),
    "header_link": ("/styles/header_link", "items", {}, 0),
    "single_page": ("/styles/single_page", "data", {}, 0),
}


def _style_spec(url: str, case: str, **overrides: Any) -> ApiSource:
    route, records_path, pagination, _ = STYLES[case]
    style = case.removesuffix("_no_total").removesuffix("_body").removesuffix("_header")
    return _spec(url, route, records_path, {"style": style, "page_size": PAGE, **pagination}, **overrides)


def _spec(url: str, endpoint: str, records_path: str, pagination: dict, **overrides: Any) -> ApiSource:
    raw: dict[str, Any] = {
        "kind": "api",
        "connection": "shop_api",
        "default_url": url,
        "endpoint": endpoint,
        "records_path": records_path,
        "pagination": pagination,
        "window_params": ["ordered_from", "ordered_to"],
        "timeout_seconds": 10,
    }
    raw.update(overrides)
    return ApiSource.model_validate(raw)


def _client_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the client side logged (the demo server logs its request lines, query and all, as a server does)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("etl_assets_demo"))


def _extract(source: RestApiSource, spec: ApiSource) -> tuple[list[pa.RecordBatch], ExtractStats]:
    stats = ExtractStats()
    return list(source.extract(spec, COLUMNS, window=WINDOW, stats=stats)), stats


def _ids(batches: list[pa.RecordBatch]) -> list[int]:
    return [int(v) for b in batches for v in b.column("order_id").to_pylist()]


def _expected_ids(shop: DemoManifest) -> list[int]:
    sql = "SELECT order_id FROM read_parquet(?) WHERE ordered_at >= ? AND ordered_at < ? ORDER BY order_id"
    with duckdb.connect() as con:
        return [row[0] for row in con.execute(sql, [str(shop.orders_path), *WINDOW]).fetchall()]


# --- pagination styles -----------------------------------------------------------------------


@pytest.mark.parametrize("case", list(STYLES))
def test_every_style_returns_every_order_of_the_window_once(
    shop_data: DemoManifest, api_server: DemoApiServer, case: str
) -> None:
    batches, stats = _extract(_source(api_server.url), _style_spec(api_server.url, case))

    expected = _expected_ids(shop_data)
    assert len(expected) > 3 * PAGE, "the window must span several pages for this test to mean anything"
    assert sorted(_ids(batches)) == expected and len(_ids(batches)) == len(expected)
    pages = 1 if case == "single_page" else math.ceil(len(expected) / PAGE) + STYLES[case][3]
    assert stats.pages == pages == api_server.requests_total
    assert stats.records == len(expected) and stats.retries == 0
    sources = [b.column(SOURCE_COLUMN)[0].as_py() for b in batches]
    assert len(set(sources)) == len(sources), "each page must be told apart in _etl_source"
    assert all(s.startswith(STYLES[case][0]) for s in sources), sources


@pytest.mark.parametrize("case", [c for c in STYLES if c != "single_page"])
def test_faults_mid_pagination_are_retried_in_every_style(shop_data: DemoManifest, case: str) -> None:
    faults = FaultConfig(rate=0.3, kinds=("500", "429", "truncated"), retry_after_seconds=0, seed=7)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        batches, stats = _extract(_source(server.url), _style_spec(server.url, case))
        injected = server.faults_injected
    assert sorted(_ids(batches)) == _expected_ids(shop_data)
    assert sum(injected.values()) > 0 and stats.retries == sum(injected.values())
    assert set(stats.retry_reasons) <= {"http_500", "http_429", "truncated_body", "RemoteProtocolError"}


@pytest.mark.parametrize("style", ["json_link", "header_link"])
def test_a_next_link_to_another_origin_is_refused_before_it_is_followed(shop_data: DemoManifest, style: str) -> None:
    faults = FaultConfig(rate=1.0, kinds=("foreign_link",))
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, "/orders", "data", {"style": style, "page_size": PAGE})
        with pytest.raises(PermanentSourceError) as info:
            _extract(_source(server.url, token="tok-never-sent-away"), spec)
        # localhost is this very server: had the client followed the link, it would have counted a second request
        assert server.requests_total == 1
    message = str(info.value)
    assert "another origin" in message and "http://localhost:" in message and "SHOP_API_URL" in message


@pytest.mark.parametrize("style", ["json_link", "header_link"])
def test_a_next_link_handed_back_again_stops_paging(shop_data: DemoManifest, style: str) -> None:
    faults = FaultConfig(rate=1.0, kinds=("repeat_cursor",))
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, "/orders", "data", {"style": style, "page_size": PAGE})
        with pytest.raises(PermanentSourceError, match="already requested") as info:
            _extract(_source(server.url), spec)
        assert server.requests_total == 2  # the first page, then the link that points back at itself
    assert "page 2" in str(info.value) and "`pagination.style`" in str(info.value)


def test_max_pages_bounds_the_offset_style(api_server: DemoApiServer) -> None:
    spec = _style_spec(api_server.url, "offset_no_total")
    spec = spec.model_copy(update={"pagination": spec.pagination.model_copy(update={"max_pages": 3})})
    with pytest.raises(PermanentSourceError, match="max_pages"):
        _extract(_source(api_server.url), spec)
    assert api_server.requests_total == 3


def test_the_older_page_style_name_is_page_number() -> None:
    spec = _spec("http://127.0.0.1:9", "/orders", "data", {"style": "page"})
    assert spec.pagination.style == "page_number"


# --- JSONPath ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("data", ("data",)),
        ("$.data", ("data",)),
        ("data.items", ("data", "items")),
        ("$.results[*]", ("results",)),
        ("$['page-info'][\"next url\"]", ("page-info", "next url")),
        ("pages[0].records", ("pages", 0, "records")),
        ("$", ()),
        ("$[*]", ()),
    ],
)
def test_jsonpath_subset(path: str, steps: tuple) -> None:
    assert compile_path(path) == steps


def test_jsonpath_select() -> None:
    body = {"a": {"b": [1, {"c": None}]}}
    assert select(body, compile_path("a.b[1].c")) is None
    assert select(body, compile_path("a.x")) is MISSING
    assert select(body, compile_path("a.b[5]")) is MISSING
    assert select(body, compile_path("$")) is body


@pytest.mark.parametrize(
    ("patch", "field", "problem"),
    [
        ({"records_path": "data[?(@.x)]"}, "source.api.records_path", "filters, '..' and slices are not supported"),
        ({"records_path": "$..items"}, "source.api.records_path", "cannot be read"),
        ({"records_path": "data[*].x"}, "source.api.records_path", "[*] may only end the path"),
        ({"pagination": {"next_url_field": "a b"}}, "source.api.pagination.next_url_field", "cannot be read"),
        ({"pagination": {"style": "json_lnk"}}, "source.api.pagination.style", "did you mean 'json_link'"),
        ({"pagination": {"style": "offset", "cursor_header": "X"}}, "source.api.pagination.cursor_header", "cursor"),
        ({"auth": "bearr"}, "source.api.auth.type", "did you mean 'bearer'"),
        ({"auth": {"type": "oauth2_client_credentials"}}, "source.api.auth.token_url", "needs the token endpoint"),
        ({"auth": {"type": "oauth2_client_credentials", "token_url": "/t"}}, "source.api.auth.token_url", "absolute"),
        ({"auth": {"type": "basic", "location": "query"}}, "source.api.auth.location", "setting of auth type api_key"),
        ({"auth": {"type": "api_key", "token": "x"}}, "source.api.auth.token", "unknown key 'token'"),
        ({"requests_per_second": 0}, "source.api.requests_per_second", "greater than 0"),
    ],
)
def test_bad_source_settings_name_the_field_and_the_fix(patch: dict, field: str, problem: str) -> None:
    source = {"kind": "api", "connection": "shop_api", "default_url": "http://x", "endpoint": "/orders", **patch}
    raw = {"name": "orders", "domain": "shop", "source": source, "columns": [{"name": "a", "type": "BIGINT"}]}
    with pytest.raises(SpecError) as info:
        parse_spec_document(raw, Path("orders.yaml"))
    message = str(info.value)
    assert f"field '{field}'" in message and problem in message and "Fix: " in message, message


# --- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "credentials"),
    [
        ({"type": "api_key"}, {"api_key": API_KEY}),
        ({"type": "api_key", "location": "query"}, {"api_key": API_KEY}),
        ({"type": "api_key", "location": "query", "name": "api_key"}, {"api_key": API_KEY}),
        ("basic", {"username": "etl", "password": PASSWORD}),
    ],
)
def test_api_key_and_basic_auth(
    shop_data: DemoManifest, auth: Any, credentials: dict, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with DemoApiServer(shop_data.orders_path, api_key=API_KEY, basic=("etl", PASSWORD)) as server:
        spec = _style_spec(server.url, "header_link", auth=auth)
        batches, _ = _extract(_source(server.url, **credentials), spec)
        assert sorted(_ids(batches)) == _expected_ids(shop_data)

        wrong = {name: "wrong-value-1234" for name in credentials}
        with pytest.raises(PermanentSourceError, match="answered 401") as info:
            _extract(_source(server.url, **wrong), spec)
    assert "SHOP_API_" in str(info.value)
    stored = [b.column(SOURCE_COLUMN).to_pylist() for b in batches]
    for secret in (API_KEY, PASSWORD, "wrong-value-1234"):
        assert secret not in _client_log(caplog) and secret not in str(info.value) and secret not in str(stored)


@pytest.mark.parametrize(
    ("auth", "named"),
    [
        ("bearer", "SHOP_API_TOKEN is not set"),
        ("api_key", "SHOP_API_API_KEY is not set"),
        ("basic", "SHOP_API_USERNAME and SHOP_API_PASSWORD are not set"),
        (
            {"type": "oauth2_client_credentials", "token_url": "http://127.0.0.1:9/t"},
            "SHOP_API_CLIENT_ID and SHOP_API_CLIENT_SECRET are not set",
        ),
    ],
)
def test_missing_credentials_name_their_environment_variables(api_server: DemoApiServer, auth: Any, named: str) -> None:
    with pytest.raises(PermanentSourceError, match=named):
        _extract(_source(api_server.url), _style_spec(api_server.url, "offset", auth=auth))
    assert api_server.requests_total == 0


def _oauth(url: str) -> dict[str, Any]:
    return {"type": "oauth2_client_credentials", "token_url": f"{url}/oauth/token", "scopes": ["orders:read", "x"]}


def test_oauth2_token_is_cached_renewed_before_expiry_and_once_on_a_401(shop_data: DemoManifest) -> None:
    with DemoApiServer(shop_data.orders_path, oauth_client=("etl-client", CLIENT_SECRET), oauth_token_seconds=2) as api:
        spec = _style_spec(api.url, "cursor_body", auth=_oauth(api.url))
        source = _source(api.url, client_id="etl-client", client_secret=CLIENT_SECRET)
        expected = _expected_ids(shop_data)

        for _ in range(2):  # one token for both extractions: cached
            assert sorted(_ids(_extract(source, spec)[0])) == expected
        assert [r["scope"] for r in api.token_requests] == ["orders:read x"]
        assert {r["grant_type"] for r in api.token_requests} == {"client_credentials"}

        time.sleep(2 - 0.2 + 0.1)  # into the renewal margin (a tenth of the 2 s lifetime), still before expiry
        assert sorted(_ids(_extract(source, spec)[0])) == expected
        assert len(api.token_requests) == 2

        api.revoke_tokens()  # the provider revokes early: the 401 fetches one new token, and the page is asked again
        before = api.requests_total
        batches, stats = _extract(source, spec)
        assert sorted(_ids(batches)) == expected and stats.retries == 0
        assert len(api.token_requests) == 3
        assert api.requests_total == before + 1 + 1 + stats.pages  # the refused page, the token, every page


def test_oauth2_refusal_names_the_variables_and_never_the_secret(
    shop_data: DemoManifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with DemoApiServer(shop_data.orders_path, oauth_client=("etl-client", CLIENT_SECRET)) as api:
        spec = _style_spec(api.url, "offset", auth=_oauth(api.url))
        wrong = "cs-wrong-Zr9aQ1x"
        with pytest.raises(PermanentSourceError) as info:
            _extract(_source(api.url, client_id="etl-client", client_secret=wrong), spec)
    message = str(info.value)
    # the demo provider echoes "bad etl-client:<secret>", as careless ones do
    assert "answered 401" in message and "etl-client:***" in message, message
    assert "SHOP_API_CLIENT_ID" in message and "SHOP_API_CLIENT_SECRET" in message
    assert wrong not in message and wrong not in _client_log(caplog)


def test_an_api_key_from_the_environment_stays_out_of_errors_and_logs(
    shop_data: DemoManifest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The factory binds credentials from <CONNECTION>_* variables; a query-parameter key reaches httpx's request log
    and a server's error body, and must be masked in both."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SHOP_API_API_KEY", API_KEY)
    faults = FaultConfig(rate=1.0, kinds=("500",))
    with DemoApiServer(shop_data.orders_path, api_key=API_KEY, faults=faults) as server:
        spec = _style_spec(server.url, "offset", auth={"type": "api_key", "location": "query", "name": "api_key"})
        with pytest.raises(Exception) as info:
            _extract(_source(server.url, api_key=os.environ["SHOP_API_API_KEY"], max_attempts=2), spec)
    log = _client_log(caplog)
    assert "api_key=" in log, "httpx must have logged the request URL for this test to mean anything"
    assert API_KEY not in log and API_KEY not in str(info.value)


# --- shared request rate -----------------------------------------------------------------------

_RATE_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from etl_assets.resources.api import ApiSource, RestApiSource
    url, go = sys.argv[1], Path(sys.argv[2])
    spec = ApiSource.model_validate({
        "kind": "api", "connection": "shop_api", "default_url": url, "endpoint": "/styles/offset",
        "records_path": "items", "pagination": {"style": "offset", "page_size": 40}, "requests_per_second": 10,
    })
    source = RestApiSource(connection="shop_api", default_url=url)
    while not go.exists():  # both processes start paging together, after their imports
        time.sleep(0.01)
    print(sum(b.num_rows for b in source.extract(spec, ["order_id"])))
    """
)


def test_requests_per_second_is_shared_by_two_processes(shop_data: DemoManifest, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "ETL_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path(__file__).parents[1])}
    with DemoApiServer(shop_data.orders_path) as server:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _RATE_CHILD, server.url, str(go)], env=env, stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        time.sleep(0.5)
        go.touch()
        outputs = [child.communicate(timeout=120)[0] for child in children]
        times = sorted(server.request_times)
    assert all(child.returncode == 0 for child in children)
    with duckdb.connect() as con:
        (total,) = con.execute("SELECT count(*) FROM read_parquet(?)", [str(shop_data.orders_path)]).fetchone() or (0,)
    assert [int(out) for out in outputs] == [total, total]
    assert len(times) == 2 * math.ceil(total / 40) >= 10
    # each process alone would send 10 a second; sharing the host's rate, both together take (n - 1) / 10 s at least
    span = times[-1] - times[0]
    assert span >= 0.95 * (len(times) - 1) / 10, (span, len(times))
    assert all(sum(1 for t in times if start <= t < start + 1.0) <= 10 + 1 for start in times), "a burst past 10/s"


def test_wait_for_slot_spaces_callers_evenly(tmp_path: Path) -> None:
    started = time.monotonic()
    waits = [wait_for_slot("shop_api", 50, tmp_path) for _ in range(11)]
    assert time.monotonic() - started >= 10 / 50 * 0.95
    assert waits[0] == 0
    (tmp_path / "other").write_bytes(b"")  # another connection has its own slot
    assert wait_for_slot("other", 1, tmp_path) == 0


def test_build_resources_binds_each_credential_set_in_the_environment() -> None:
    from dagster import EnvVar

    from etl_assets.pipelines.assets import source_resource_key
    from etl_assets.pipelines.factory import build_resources

    source = {"kind": "api", "connection": "shop_api", "default_url": "http://x", "endpoint": "/o", "auth": "basic"}
    raw = {"name": "orders", "domain": "shop", "source": source, "columns": [{"name": "a", "type": "BIGINT"}]}
    loaded = parse_spec_document(raw, Path("orders.yaml"))
    env = {"SHOP_API_USERNAME": "etl", "SHOP_API_PASSWORD": PASSWORD, "SHOP_API_CLIENT_SECRET": CLIENT_SECRET}
    api = build_resources([loaded], env.get)[source_resource_key(loaded.spec)]
    assert api.username == EnvVar("SHOP_API_USERNAME") and api.password == EnvVar("SHOP_API_PASSWORD")
    assert api.client_secret == EnvVar("SHOP_API_CLIENT_SECRET")  # bound by name: the value is read at run time
    assert api.token is None and api.api_key is None and api.client_id is None
