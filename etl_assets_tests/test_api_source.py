"""Protects the REST API source (``RestApiSource.extract``) against the real demo shop API.

Covers: both pagination styles returning every order of a time window exactly once as Arrow
batches of text columns tagged with their page/cursor in ``_etl_source``; the incremental
``updated_since`` filter and the watermark reported in ``ExtractStats``; bearer auth (right,
missing and wrong token); permanent errors (404, 400) failing at once without retries;
transient faults (500/503/429/truncated bodies/slow answers) being retried until every record
arrives exactly once; giving up after ``max_attempts``; ``Retry-After`` parsing and obeying;
and the token never reaching the logs. Bounded extraction: a cursor handed back again (or a
cycle), a server ignoring ``page``, more than ``pagination.max_pages`` pages and a body beyond
``max_page_bytes`` (announced or chunked) each fail at once with a PermanentSourceError after
exactly the requests needed; JSON nested too deep and record keys that cannot be columns are
ContractErrors, not retried; an error body echoing the token and a base URL with userinfo are
shown redacted. Everything runs against ``DemoApiServer`` on a free loopback port serving a small
generated Parquet file, with short timeouts and backoffs.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.server
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pytest

from etl_assets.errors import ContractError, PermanentSourceError, TransientSourceError
from etl_assets.pipelines.spec import ApiSource
from etl_assets.resources.api import (
    MAX_RETRY_AFTER_SECONDS,
    RETRY_AFTER_JITTER,
    SOURCE_COLUMN,
    ExtractStats,
    RestApiSource,
    _retry_after,
)
from etl_assets_demo import DemoApiServer, DemoManifest, FaultConfig

UTC = dt.UTC
# conftest's shop_data starts on 2024-01-01 and spans three days; the middle day has ~400 orders.
WINDOW = (dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC))
API_COLUMNS = [
    "order_id",
    "customer_id",
    "product_id",
    "quantity",
    "unit_price",
    "currency",
    "status",
    "ordered_at",
    "updated_at",
]
# A contract column the API never sends: it must still be present, all null.
CONTRACT = [*API_COLUMNS, "coupon_code"]
TOKEN = "tok-Zq8vN3rW5yKp0xL"
HTTP_FAULTS = ("500", "503", "429")


def _spec(url: str, **overrides: Any) -> ApiSource:
    raw: dict[str, object] = {
        "kind": "api",
        "connection": "shop_api",
        "default_url": url,
        "endpoint": "/orders",
        "records_path": "data",
        "pagination": {"style": "cursor", "page_size": 2000},
        "window_params": ["ordered_from", "ordered_to"],
        "incremental": {"param": "updated_since", "field": "updated_at"},
        "timeout_seconds": 10,
    }
    raw.update(overrides)
    return ApiSource.model_validate(raw)


def _source(url: str, **overrides: Any) -> RestApiSource:
    settings: dict[str, Any] = {"max_attempts": 8, "backoff_seconds": 0.01, "max_backoff_seconds": 0.05}
    settings.update(overrides)
    return RestApiSource(connection="shop_api", default_url=url, **settings)


def _extract(source: RestApiSource, spec: ApiSource, **kwargs: Any) -> tuple[list[pa.RecordBatch], ExtractStats]:
    stats = ExtractStats()
    batches = list(source.extract(spec, CONTRACT, stats=stats, **kwargs))
    return batches, stats


def _ids(batches: list[pa.RecordBatch]) -> list[int]:
    return [int(v) for b in batches for v in b.column("order_id").to_pylist()]


def _expected_ids(
    shop: DemoManifest, where: str = "ordered_at >= ? AND ordered_at < ?", params: tuple = WINDOW
) -> list[int]:
    sql = f"SELECT order_id FROM read_parquet(?) WHERE {where} ORDER BY order_id"
    with duckdb.connect() as con:
        return [row[0] for row in con.execute(sql, [str(shop.orders_path), *params]).fetchall()]


def _max_updated_us(shop: DemoManifest) -> int:
    sql = "SELECT epoch_us(max(updated_at)) FROM read_parquet(?) WHERE ordered_at >= ? AND ordered_at < ?"
    with duckdb.connect() as con:
        row = con.execute(sql, [str(shop.orders_path), *WINDOW]).fetchone()
    assert row is not None
    return row[0]


def _epoch_us(text: str) -> int:
    return (dt.datetime.fromisoformat(text) - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


@pytest.fixture
def token_server(shop_data: DemoManifest) -> Iterator[DemoApiServer]:
    with DemoApiServer(shop_data.orders_path, token=TOKEN) as server:
        yield server


# --- pagination ------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["page", "cursor"])
def test_pagination_returns_every_order_of_the_window_once(
    shop_data: DemoManifest, api_server: DemoApiServer, style: str
) -> None:
    page_size = 37
    spec = _spec(api_server.url, pagination={"style": style, "page_size": page_size})

    batches, stats = _extract(_source(api_server.url), spec, window=WINDOW)

    expected = _expected_ids(shop_data)
    n = len(expected)
    assert n > 3 * page_size, "the window must span several pages for this test to mean anything"
    ids = _ids(batches)
    assert len(ids) == len(set(ids)), "an order was delivered twice"
    assert sorted(ids) == expected
    assert len(batches) == math.ceil(n / page_size)
    # page style stops at total_pages; cursor style ends on the page whose next_cursor is null
    assert stats.pages == (math.ceil(n / page_size) if style == "page" else n // page_size + 1)
    assert stats.records == n
    assert stats.retries == 0 and stats.retry_reasons == {}
    assert stats.max_watermark is not None
    assert _epoch_us(stats.max_watermark) == _max_updated_us(shop_data)

    for batch in batches:
        assert isinstance(batch, pa.RecordBatch)
        assert batch.schema.names == [*CONTRACT, SOURCE_COLUMN]
        assert all(field.type == pa.string() for field in batch.schema), batch.schema
        assert batch.column("coupon_code").null_count == batch.num_rows
        assert len(set(batch.column(SOURCE_COLUMN).to_pylist())) == 1
    sources = [b.column(SOURCE_COLUMN)[0].as_py() for b in batches]
    if style == "page":
        assert sources == [f"/orders?page={i}" for i in range(1, len(batches) + 1)]
    else:
        assert sources[0] == "/orders?cursor="
        assert all(s.startswith("/orders?cursor=") and len(s) > len("/orders?cursor=") for s in sources[1:])
        assert len(set(sources)) == len(sources)


def test_text_values_match_the_upstream_file(shop_data: DemoManifest, api_server: DemoApiServer) -> None:
    batches, _ = _extract(_source(api_server.url), _spec(api_server.url), window=WINDOW)
    table = pa.Table.from_batches(batches)
    first = {name: table.column(name)[0].as_py() for name in API_COLUMNS}
    sql = "SELECT customer_id, quantity, CAST(unit_price AS VARCHAR), currency FROM read_parquet(?) WHERE order_id = ?"
    with duckdb.connect() as con:
        row = con.execute(sql, [str(shop_data.orders_path), int(first["order_id"])]).fetchone()
    assert row is not None
    customer_id, quantity, unit_price, currency = row
    assert (first["customer_id"], first["quantity"], first["unit_price"], first["currency"]) == (
        str(customer_id),
        str(quantity),
        unit_price,
        currency,
    )


def test_updated_since_returns_only_newer_records(shop_data: DemoManifest, api_server: DemoApiServer) -> None:
    source, spec = _source(api_server.url), _spec(api_server.url, pagination={"style": "cursor", "page_size": 100})
    batches, _ = _extract(source, spec, window=WINDOW)
    updated = sorted(v for b in batches for v in b.column("updated_at").to_pylist())
    watermark = updated[len(updated) // 2]

    newer, stats = _extract(source, spec, window=WINDOW, updated_since=watermark)

    expected = _expected_ids(
        shop_data,
        "ordered_at >= ? AND ordered_at < ? AND updated_at > ?",
        (*WINDOW, dt.datetime.fromisoformat(watermark)),
    )
    assert 0 < len(expected) < len(updated)
    assert sorted(_ids(newer)) == expected
    assert stats.max_watermark == updated[-1]

    nothing, stats = _extract(source, spec, window=WINDOW, updated_since=updated[-1])
    assert nothing == [] and stats.records == 0 and stats.max_watermark is None


def test_window_without_window_params_is_a_permanent_error(api_server: DemoApiServer) -> None:
    with pytest.raises(PermanentSourceError, match="window_params"):
        _extract(_source(api_server.url), _spec(api_server.url, window_params=None), window=WINDOW)
    assert api_server.requests_total == 0


# --- auth and permanent errors ---------------------------------------------------------------


def test_bearer_token_is_sent(shop_data: DemoManifest, token_server: DemoApiServer) -> None:
    spec = _spec(token_server.url, auth="bearer")
    batches, stats = _extract(_source(token_server.url, token=TOKEN), spec, window=WINDOW)
    assert sorted(_ids(batches)) == _expected_ids(shop_data)
    assert stats.retries == 0


def test_missing_token_names_the_env_var_without_calling_the_api(token_server: DemoApiServer) -> None:
    spec = _spec(token_server.url, auth="bearer")
    with pytest.raises(PermanentSourceError, match="SHOP_API_TOKEN"):
        _extract(_source(token_server.url), spec, window=WINDOW)
    assert token_server.requests_total == 0


@pytest.mark.parametrize(
    ("auth", "token"),
    [("bearer", "wrong-token-value"), ("none", None)],
    ids=["wrong-token", "spec-without-auth"],
)
def test_rejected_token_fails_at_once_without_retries(
    token_server: DemoApiServer, auth: str, token: str | None
) -> None:
    stats = ExtractStats()
    with pytest.raises(PermanentSourceError, match="401") as info:
        list(
            _source(token_server.url, token=token).extract(
                _spec(token_server.url, auth=auth), CONTRACT, window=WINDOW, stats=stats
            )
        )
    assert "SHOP_API_TOKEN" in str(info.value)
    assert token_server.requests_total == 1
    assert stats.retries == 0
    if token:
        assert token not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "status", "hint"),
    [
        ({"endpoint": "/no-such-endpoint"}, "404", "endpoint"),
        ({"window_params": ["from", "to"]}, "400", "parameters"),
    ],
    ids=["unknown-endpoint", "unknown-parameter"],
)
def test_client_errors_are_permanent_and_not_retried(
    api_server: DemoApiServer, overrides: dict, status: str, hint: str
) -> None:
    stats = ExtractStats()
    with pytest.raises(PermanentSourceError, match=status) as info:
        list(_source(api_server.url).extract(_spec(api_server.url, **overrides), CONTRACT, window=WINDOW, stats=stats))
    assert hint in str(info.value)
    assert api_server.requests_total == 1
    assert stats.retries == 0


# --- transient faults ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["page", "cursor"])
def test_transient_faults_are_retried_until_every_record_arrives_once(shop_data: DemoManifest, style: str) -> None:
    faults = FaultConfig(rate=0.3, kinds=(*HTTP_FAULTS, "truncated"), retry_after_seconds=0, seed=11)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, pagination={"style": style, "page_size": 20})
        batches, stats = _extract(_source(server.url), spec, window=WINDOW)
        injected, requests = server.faults_injected, server.requests_total

    ids = _ids(batches)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == _expected_ids(shop_data)
    assert set(injected) == {*HTTP_FAULTS, "truncated"}, f"seed should exercise every kind, got {injected}"
    # every fault costs exactly one retry, and every other request is a page
    assert stats.retries == sum(injected.values()) == requests - stats.pages
    for kind in HTTP_FAULTS:
        assert stats.retry_reasons.get(f"http_{kind}") == injected[kind]
    transport = {reason: n for reason, n in stats.retry_reasons.items() if not reason.startswith("http_")}
    assert sum(transport.values()) == injected["truncated"], stats.retry_reasons


def test_slow_answers_beyond_the_timeout_are_retried_as_timeouts(shop_data: DemoManifest) -> None:
    faults = FaultConfig(rate=0.5, kinds=("slow",), slow_seconds=3.0, seed=2)  # two slow answers
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, pagination={"style": "cursor", "page_size": 150}, timeout_seconds=0.5)
        started = time.monotonic()
        batches, stats = _extract(_source(server.url), spec, window=WINDOW)
        elapsed = time.monotonic() - started
        slow = server.faults_injected.get("slow", 0)

    assert sorted(_ids(batches)) == _expected_ids(shop_data)
    assert slow >= 1
    assert set(stats.retry_reasons) == {"ReadTimeout"}
    assert stats.retry_reasons["ReadTimeout"] >= slow
    # the client gave up on each slow answer instead of waiting the server's 3 s out
    assert elapsed < slow * faults.slow_seconds


@pytest.mark.slow
def test_a_body_dripping_past_the_request_deadline_is_retried(shop_data: DemoManifest) -> None:
    """Every piece of a "drip" body arrives well within the read timeout, so only the whole-request deadline can
    stop it: the client gives up on each and asks again, instead of waiting every drip out."""
    faults = FaultConfig(rate=0.5, kinds=("drip",), slow_seconds=4.0, seed=2)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(
            server.url, pagination={"style": "cursor", "page_size": 150}, timeout_seconds=2, request_deadline_seconds=2
        )
        started = time.monotonic()
        batches, stats = _extract(_source(server.url), spec, window=WINDOW)
        elapsed = time.monotonic() - started
        dripped = server.faults_injected.get("drip", 0)

    assert sorted(_ids(batches)) == _expected_ids(shop_data)
    assert dripped >= 1
    assert stats.retry_reasons == {"deadline_exceeded": dripped}
    assert elapsed < dripped * faults.slow_seconds


def test_a_request_deadline_shorter_than_the_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"request_deadline_seconds \(1\) is shorter than timeout_seconds \(5\)"):
        _spec("http://127.0.0.1:9", timeout_seconds=5, request_deadline_seconds=1)
    assert _spec("http://127.0.0.1:9", timeout_seconds=5).deadline_seconds() == 20


@pytest.fixture
def fixed_page_server() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server answering every GET with the next body of a list the test fills."""
    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = bodies.pop(0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_decimals_beyond_a_float_arrive_exactly_as_delivered(fixed_page_server: tuple[str, list[bytes]]) -> None:
    url, bodies = fixed_page_server
    bodies.append(
        b'{"data": [{"order_id": 1, "unit_price": 0.12345678901234567891},'
        b' {"order_id": 2, "unit_price": 20.0}, {"order_id": 3, "unit_price": 1.5e-7},'
        b' {"order_id": 4, "unit_price": 123456789012345678.25}], "total_pages": 1}'
    )
    spec = _spec(url, pagination={"style": "page", "page_size": 10}, window_params=None, incremental=None)
    batches, stats = _extract(_source(url), spec)
    prices = [v for b in batches for v in b.column("unit_price").to_pylist()]
    # a float would have given 0.12345678901234568 and 1.2345678901234568e+17
    assert prices == ["0.12345678901234567891", "20.0", "1.5E-7", "123456789012345678.25"]
    assert stats.pages == 1 and stats.retries == 0


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_persistent_failure_gives_up_after_max_attempts(shop_data: DemoManifest, max_attempts: int) -> None:
    with DemoApiServer(shop_data.orders_path, faults=FaultConfig(rate=1.0, kinds=("500",))) as server:
        stats = ExtractStats()
        with pytest.raises(TransientSourceError, match=f"failed {max_attempts} times, last with http_500"):
            list(
                _source(server.url, max_attempts=max_attempts).extract(
                    _spec(server.url), CONTRACT, window=WINDOW, stats=stats
                )
            )
        assert server.requests_total == max_attempts
    assert stats.retries == max_attempts - 1  # the last failed attempt is given up on, not retried
    assert stats.retry_reasons == {"http_500": max_attempts}
    assert stats.pages == 0


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("2", 2.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("  7 ", 7.0),
        ("3600", MAX_RETRY_AFTER_SECONDS),
        ("inf", MAX_RETRY_AFTER_SECONDS),
        ("soon", None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # an HTTP date already past: no wait
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
        ("Wed, 32 Foo 2015", None),  # neither form: the client's own backoff
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    headers = {} if header is None else {"Retry-After": header}
    assert _retry_after(httpx.Response(429, headers=headers)) == expected


@pytest.mark.parametrize(("ahead", "expected"), [(5, 5.0), (3600, MAX_RETRY_AFTER_SECONDS)])
def test_retry_after_as_an_http_date_is_the_seconds_until_then(ahead: int, expected: float) -> None:
    when = email.utils.format_datetime(dt.datetime.now(UTC) + dt.timedelta(seconds=ahead), usegmt=True)
    wait = _retry_after(httpx.Response(429, headers={"Retry-After": when}))
    assert wait is not None and expected - 1.5 <= wait <= expected  # the date has whole seconds


def test_retry_after_nan_is_not_a_sleep_duration() -> None:
    wait = _retry_after(httpx.Response(503, headers={"Retry-After": "nan"}))
    assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER_SECONDS


@pytest.mark.parametrize(("kind", "announced"), [("429", 1.0), ("503", 1.0), ("500", 0.0)])
def test_retry_after_header_sets_the_wait(
    shop_data: DemoManifest, caplog: pytest.LogCaptureFixture, kind: str, announced: float
) -> None:
    """With a negligible own backoff, the wait announced before the retry is the server's Retry-After (1 s) plus
    at most its jitter share."""
    caplog.set_level(logging.WARNING)
    faults = FaultConfig(rate=1.0, kinds=(kind,), retry_after_seconds=1)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        source = _source(server.url, max_attempts=2, backoff_seconds=0.001, max_backoff_seconds=0.001)
        started = time.monotonic()
        with pytest.raises(TransientSourceError):
            _extract(source, _spec(server.url), window=WINDOW)
        elapsed = time.monotonic() - started
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1, retries
    announced_wait = re.search(r"retrying in ([0-9.]+)s$", retries[0])
    assert announced_wait is not None, retries[0]
    waited = float(announced_wait.group(1))
    assert announced <= waited <= announced * (1 + RETRY_AFTER_JITTER) + 0.005, retries[0]  # log rounds to 0.01
    if kind != "500":
        assert elapsed >= 1.0  # time.sleep never returns early


# --- secrets ---------------------------------------------------------------------------------


def test_token_never_appears_in_logs(
    shop_data: DemoManifest, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logging included
    # the resource, not the spec, decides the URL; one spec serves both servers below
    spec = _spec("http://127.0.0.1:9", auth="bearer", pagination={"style": "cursor", "page_size": 50})
    flaky = FaultConfig(rate=0.4, kinds=("500", "429", "truncated"), retry_after_seconds=0, seed=11)
    with DemoApiServer(shop_data.orders_path, token=TOKEN, faults=flaky) as server:
        batches, stats = _extract(_source(server.url, token=TOKEN), spec, window=WINDOW)
    down = FaultConfig(rate=1.0, kinds=("503",), retry_after_seconds=0)
    with DemoApiServer(shop_data.orders_path, token=TOKEN, faults=down) as server:
        with pytest.raises(TransientSourceError) as failed:
            _extract(_source(server.url, token=TOKEN, max_attempts=2), spec, window=WINDOW)

    assert sorted(_ids(batches)) == _expected_ids(shop_data)
    assert stats.retries > 0
    assert sum("transient" in r.getMessage() for r in caplog.records) >= stats.retries, "retries should be logged"
    assert any(r.name.startswith("httpx") for r in caplog.records), "HTTP client logging should have been captured"
    out, err = capfd.readouterr()
    for text in (caplog.text, *(r.getMessage() for r in caplog.records), out, err, str(failed.value)):
        assert TOKEN not in text


# --- bounded paging --------------------------------------------------------------------------


def _extract_until_error(
    source: RestApiSource, spec: ApiSource, error: type[Exception], **kwargs: Any
) -> tuple[list[pa.RecordBatch], ExtractStats, Exception]:
    """The batches yielded before ``error`` was raised, the stats, and the error."""
    stats, batches = ExtractStats(), []
    with pytest.raises(error) as info:
        for batch in source.extract(spec, CONTRACT, stats=stats, **kwargs):
            batches.append(batch)
    assert type(info.value) is error
    return batches, stats, info.value


@pytest.mark.parametrize(
    ("faults", "page"),
    [
        (FaultConfig(rate=1.0, kinds=("repeat_cursor",)), 2),
        (FaultConfig(fail_page=3, fail_page_kind="repeat_cursor"), 3),
    ],
    ids=["every-page", "third-page"],
)
def test_a_cursor_handed_back_again_fails_at_once(shop_data: DemoManifest, faults: FaultConfig, page: int) -> None:
    """A server answering with the cursor it was just given would be asked for that page for ever."""
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, pagination={"style": "cursor", "page_size": 37})
        batches, stats, error = _extract_until_error(_source(server.url), spec, PermanentSourceError, window=WINDOW)
        requests = server.requests_total

    assert requests == page  # the repeated cursor is refused, not requested again
    assert stats.pages == page and stats.retries == 0
    assert len(batches) == page - 1  # the page answering with the old cursor is not yielded
    assert _ids(batches) == _expected_ids(shop_data)[: 37 * (page - 1)]
    message = str(error)
    assert message.startswith(f"shop_api: GET /orders page {page}: the answer's `next_cursor` is '")
    assert f"the cursor page {page} was already requested with" in message
    assert (
        "never end" in message
        and "`pagination.next_cursor_field`" in message
        and "`pagination.cursor_param`" in message
    )


def test_a_cursor_cycle_fails_when_it_comes_round(fixed_page_server: tuple[str, list[bytes]]) -> None:
    """Cursors A, B, then A again: the third answer sends the client back to page 2."""
    url, bodies = fixed_page_server
    bodies += [
        b'{"data": [{"order_id": 1}], "next_cursor": "A"}',
        b'{"data": [{"order_id": 2}], "next_cursor": "B"}',
        b'{"data": [{"order_id": 3}], "next_cursor": "A"}',
    ]
    spec = _spec(url, window_params=None, incremental=None)
    batches, stats, error = _extract_until_error(_source(url), spec, PermanentSourceError)
    assert bodies == [] and stats.pages == 3 and _ids(batches) == [1, 2]
    assert "GET /orders page 3: the answer's `next_cursor` is 'A', the cursor page 2 was already requested with" in str(
        error
    )


@pytest.mark.parametrize(
    ("faults", "page"),
    [(FaultConfig(rate=1.0, kinds=("ignore_page",)), 2), (FaultConfig(fail_page=3, fail_page_kind="ignore_page"), 3)],
    ids=["every-page", "third-page"],
)
def test_a_server_ignoring_the_page_parameter_fails_at_the_first_repeated_page(
    shop_data: DemoManifest, faults: FaultConfig, page: int
) -> None:
    """Such a server (and no page count) answers page 1 for ever: 1,189 requests until killed, before the bound."""
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, pagination={"style": "page", "page_size": 37})
        batches, stats, error = _extract_until_error(_source(server.url), spec, PermanentSourceError, window=WINDOW)
        requests = server.requests_total

    assert requests == page and stats.pages == page and stats.retries == 0
    assert _ids(batches) == _expected_ids(shop_data)[: 37 * (page - 1)]
    message = str(error)
    assert message.startswith(
        f"shop_api: GET /orders page {page}: its 37 records are those of page 1: the API ignores "
        "the page parameter 'page', so paging would never end"
    )
    assert "`pagination.page_param`" in message and "`pagination.style: cursor`" in message


@pytest.mark.parametrize("style", ["page", "cursor"])
def test_max_pages_bounds_one_extraction(shop_data: DemoManifest, api_server: DemoApiServer, style: str) -> None:
    n = len(_expected_ids(shop_data))
    needed = math.ceil(n / 37) if style == "page" else n // 37 + 1  # cursor style ends on a page with no next cursor
    source = _source(api_server.url)

    batches, stats = _extract(
        source, _spec(api_server.url, pagination={"style": style, "page_size": 37, "max_pages": needed}), window=WINDOW
    )
    assert stats.pages == needed and len(_ids(batches)) == n
    assert api_server.requests_total == needed

    spec = _spec(api_server.url, pagination={"style": style, "page_size": 37, "max_pages": 3})
    batches, stats, error = _extract_until_error(source, spec, PermanentSourceError, window=WINDOW)
    assert api_server.requests_total == needed + 3  # page 4 is never asked for
    assert stats.pages == 3 and len(batches) == 3
    message = str(error)
    assert message.startswith(
        "shop_api: GET /orders: page 3 says more pages follow, but one extraction may read at "
        "most pagination.max_pages = 3 pages; raise `pagination.max_pages` in the spec"
    )


def test_max_pages_default_and_bound() -> None:
    assert _spec("http://127.0.0.1:9").pagination.max_pages == 100_000
    with pytest.raises(ValueError, match="max_pages"):
        _spec("http://127.0.0.1:9", pagination={"max_pages": 0})


# --- bounded pages ---------------------------------------------------------------------------


def _sent_bodies(server: DemoApiServer, count: int) -> list[int]:
    """``server.huge_bodies_sent`` once ``count`` bodies have ended (a refused one ends when the client hangs up)."""
    deadline = time.monotonic() + 10
    while len(server.huge_bodies_sent) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.huge_bodies_sent


@pytest.mark.parametrize(
    ("kind", "found"),
    [("huge_page", "Content-Length 65,999,"), ("huge_page_chunked", "more than 1,048,576 bytes arrived")],
    ids=["announced", "chunked"],
)
def test_a_page_beyond_max_page_bytes_is_refused_without_retries(
    shop_data: DemoManifest, kind: str, found: str
) -> None:
    faults = FaultConfig(rate=1.0, kinds=(kind,), huge_page_bytes=66_000_000)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, max_page_bytes=2**20)
        batches, stats, error = _extract_until_error(_source(server.url), spec, PermanentSourceError, window=WINDOW)
        requests, sent = server.requests_total, _sent_bodies(server, 1)

    assert batches == [] and requests == 1 and stats.retries == 0 and stats.pages == 0
    message = str(error)
    assert message.startswith(
        f"shop_api: GET /orders page 1: the body is larger than max_page_bytes (1,048,576 bytes; {found}"
    )
    assert "lower `pagination.page_size`" in message and "raise the source's `max_page_bytes`" in message
    # Refused on its Content-Length, or read no further than the limit when sent chunked: the server got out no more
    # of the 66 MB than the socket buffers took (0.2-1.6 MB on an idle machine; the kernel grows them under load, to
    # at most tcp_rmem's 32 MiB plus tcp_wmem's 4 MiB here), never the page.
    assert len(sent) == 1 and sent[0] < 40_000_000, sent


@pytest.mark.parametrize("kind", ["huge_page", "huge_page_chunked"])
def test_a_page_within_max_page_bytes_is_read(shop_data: DemoManifest, kind: str) -> None:
    faults = FaultConfig(rate=1.0, kinds=(kind,), huge_page_bytes=1_000_000)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        batches, stats = _extract(_source(server.url), _spec(server.url, max_page_bytes=1_000_000), window=WINDOW)
        sent = _sent_bodies(server, 1)
    ids = _ids(batches)
    assert stats.pages == 1 and len(ids) == stats.records == len(set(ids)) > 4000
    assert len(sent) == 1 and 1_000_000 - 300 < sent[0] <= 1_000_000  # all of it (records are 209 bytes)


def test_max_page_bytes_default_and_bound() -> None:
    assert _spec("http://127.0.0.1:9").max_page_bytes == 32 * 2**20
    with pytest.raises(ValueError, match="max_page_bytes"):
        _spec("http://127.0.0.1:9", max_page_bytes=1023)


def test_json_nested_too_deep_is_a_data_error_not_retried(shop_data: DemoManifest) -> None:
    with DemoApiServer(shop_data.orders_path, faults=FaultConfig(rate=1.0, kinds=("deep_json",))) as server:
        batches, stats, error = _extract_until_error(
            _source(server.url), _spec(server.url), ContractError, window=WINDOW
        )
        requests = server.requests_total
    assert batches == [] and requests == 1 and stats.retries == 0 and stats.retry_reasons == {}
    assert isinstance(error, ContractError) and error.error_class == "data_quality"
    assert str(error).startswith(
        "shop_api: GET /orders page 1: the body is JSON nested deeper than the parser can follow"
    )
    assert error.__cause__ is None and error.__suppress_context__


# --- record keys that cannot be columns ------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (("First Name",), "record keys ['First Name'] are not SQL identifiers"),
        (("1st",), "record keys ['1st'] are not SQL identifiers"),
        (("_etl_source",), "record keys ['_etl_source'] collide with the platform's own columns"),
        (("_ETL_loaded_at",), "record keys ['_ETL_loaded_at'] collide with the platform's own columns"),
        (("filename",), "record keys ['filename'] collide with the platform's own columns"),
        (("File_Row_Number",), "record keys ['File_Row_Number'] collide with the platform's own columns"),
        (("Status",), "record keys differ only in case, which SQL does not tell apart: ['status', 'Status']"),
        (
            ("Coupon_Code",),
            "record keys differ only in case, which SQL does not tell apart: ['coupon_code', 'Coupon_Code']",
        ),
        (
            ("First Name", "_etl_run_id", "STATUS"),
            "record keys ['First Name'] are not SQL identifiers (letters, digits and underscores, not starting with a "
            "digit, at most 63 characters); keys ['_etl_run_id'] collide with the platform's own columns (_etl_*, "
            "__etl*, __typed_*, filename, file_row_number); keys differ only in case, which SQL does not tell apart: ['status', 'STATUS']",
        ),
    ],
    ids=[
        "space",
        "digit-first",
        "etl-source",
        "etl-prefix",
        "filename",
        "file-row-number",
        "case",
        "case-of-contract",
        "all",
    ],
)
@pytest.mark.parametrize("style", ["page", "cursor"])
def test_record_keys_that_cannot_be_columns_fail_at_once(
    shop_data: DemoManifest, style: str, keys: tuple[str, ...], named: str
) -> None:
    faults = FaultConfig(fail_page=2, fail_page_kind="extra_keys", extra_keys=keys)
    with DemoApiServer(shop_data.orders_path, faults=faults) as server:
        spec = _spec(server.url, pagination={"style": style, "page_size": 37})
        batches, stats, error = _extract_until_error(_source(server.url), spec, ContractError, window=WINDOW)
        requests = server.requests_total
    assert requests == 2 and stats.retries == 0 and len(batches) == 1
    message = str(error)
    # the page is named as its batches' _etl_source would have named it
    assert re.match(r"/orders\?page=2: " if style == "page" else r"/orders\?cursor=[A-Za-z0-9_-]+: ", message), message
    assert named in message
    assert message.endswith(
        "Rename them in the source (or have its owner do so): contract columns are plain "
        "identifiers, and every key of a page becomes a column of the raw data"
    )


# --- secrets in messages ---------------------------------------------------------------------


def test_an_error_body_echoing_the_token_is_redacted(shop_data: DemoManifest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    faults = FaultConfig(rate=1.0, kinds=("echo_auth",))
    with DemoApiServer(shop_data.orders_path, token=TOKEN, faults=faults) as server:
        spec = _spec(server.url, auth="bearer")
        batches, stats, error = _extract_until_error(
            _source(server.url, token=TOKEN), spec, PermanentSourceError, window=WINDOW
        )
        requests = server.requests_total
    assert batches == [] and requests == 1 and stats.retries == 0
    message = str(error)
    assert TOKEN not in message and TOKEN not in caplog.text
    # the body said `token <token> may not read /orders` and `"authorization":"Bearer <token>"`
    assert message.startswith(
        'shop_api: GET /orders answered 403 {"error":"token *** may not read /orders",'
        '"authorization":"Bearer ***"}; check the credentials in SHOP_API_TOKEN'
    ), message


def test_a_base_url_with_userinfo_is_shown_masked(shop_data: DemoManifest, api_server: DemoApiServer) -> None:
    host = api_server.url.removeprefix("http://")
    source = RestApiSource(connection="shop_api", default_url="http://127.0.0.1:9", url=f"http://etl:pa55-w0rd@{host}/")
    assert source.base_url() == f"http://etl:pa55-w0rd@{host}"  # what requests go to
    assert source.display_url() == f"http://***@{host}"
    assert _source(api_server.url).display_url() == api_server.url

    batches, _ = _extract(source, _spec(api_server.url), window=WINDOW)
    assert sorted(_ids(batches)) == _expected_ids(shop_data)
    with pytest.raises(PermanentSourceError, match="404") as info:
        _extract(source, _spec(api_server.url, endpoint="/no-such-endpoint"), window=WINDOW)
    assert "pa55-w0rd" not in str(info.value)
