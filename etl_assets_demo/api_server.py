"""Loopback REST API serving the demo shop's orders, with optional auth and fault injection.

The server behaves like a typical paginated SaaS API so that REST ingestion can be
exercised end to end:

* ``GET /health`` returns ``{"status": "ok"}``; it never needs auth and is never faulted.
* ``GET /orders`` filters on ``ordered_from`` / ``ordered_to`` (half-open on ``ordered_at``)
  and ``updated_since`` (strictly after, on ``updated_at``), ordered by ``order_id``. It pages
  with ``page`` / ``page_size`` by default, or with keyset pagination when ``limit`` (and
  optionally ``cursor``) is given, in which case ``next`` and an RFC 8288 ``Link`` header
  point to the following page.
* ``GET /orders/watermark`` returns the latest ``updated_at`` and the row count.
* ``GET /styles/<style>`` serves the same orders in each pagination style of the REST client (page numbers or
  offsets with and without totals, a cursor in the body or a header, a link in the body or a ``Link`` header, a
  single page), each in the shape such APIs answer (see ``_STYLE_PARAMS``).
* Auth, when configured: a bearer token, an API key (``X-API-Key`` or ``?api_key=``), HTTP Basic, or OAuth2 client
  credentials, whose tokens ``POST /oauth/token`` grants.

Faults (:class:`FaultConfig`) imitate the ways real APIs fail: errors and stalls that pass on a retry, and opt-in
misbehaviour that no retry fixes (a cursor that never advances, a ``page`` parameter ignored, a page too big to
hold, a body nested too deep to parse, an error body echoing the caller's credentials, record keys that cannot be
columns).

Orders are read from the Parquet file on every request, so rewriting the file changes
what the API serves without restarting it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import datetime as dt
import functools
import hmac
import json
import logging
import math
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, Self, cast
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import duckdb

__all__ = ["FAULT_KINDS", "OPT_IN_FAULT_KINDS", "DemoApiServer", "FaultConfig", "run_server"]

_log = logging.getLogger(__name__)

FAULT_KINDS: tuple[str, ...] = ("500", "503", "429", "slow", "truncated")
"""The faults :class:`FaultConfig` draws from by default (the stress mix)."""
OPT_IN_FAULT_KINDS: tuple[str, ...] = (
    "drip",
    "repeat_cursor",
    "ignore_page",
    "huge_page",
    "huge_page_chunked",
    "deep_json",
    "echo_auth",
    "extra_keys",
    "foreign_link",
)
"""Faults injected only when asked for by name."""
_ALL_FAULT_KINDS = FAULT_KINDS + OPT_IN_FAULT_KINDS
_DRIP_PIECES = 10
_DEEP_JSON_DEPTH = 100_000
_HUGE_PIECE_BYTES = 64 * 1024
# One small order-like record of a "huge_page" body; every order_id has nine digits, so every record is as long.
_HUGE_RECORD = (
    '{{"order_id":{order_id},"customer_id":42,"product_id":7,"quantity":2,"unit_price":"19.99","currency":"EUR",'
    '"status":"paid","ordered_at":"2024-01-02T10:00:00.000000Z","updated_at":"2024-01-02T10:00:00.000000Z"}}'
)
_HUGE_FIRST_ID = 100_000_000
_HUGE_HEAD = b'{"data":['
_HUGE_TAIL = b'],"next_cursor":null,"next":null,"page":1,"total_pages":1}'

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000

_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_FILTERS: tuple[tuple[str, str], ...] = (
    ("ordered_from", "ordered_at >= ?"),
    ("ordered_to", "ordered_at < ?"),
    ("updated_since", "updated_at > ?"),
)
_ORDERS_PARAMS = frozenset({name for name, _ in _FILTERS} | {"page", "page_size", "limit", "cursor"})
_FILTER_PARAMS = frozenset(name for name, _ in _FILTERS)
# One route per pagination style of the REST client (dlt's names), each answering in the shape such APIs do: records
# under a nested key, a top-level array, totals or none, the cursor in the body or a header, links relative or absolute.
_STYLE_PARAMS: dict[str, frozenset[str]] = {
    "/styles/page_number": _FILTER_PARAMS | {"page", "page_size"},  # {"result": {"items"}, "meta": {"total_pages"}}
    "/styles/page_number_no_total": _FILTER_PARAMS | {"page", "page_size"},  # {"result": {"items"}}
    "/styles/offset": _FILTER_PARAMS | {"offset", "limit"},  # {"items", "total"}
    "/styles/offset_no_total": _FILTER_PARAMS | {"offset", "limit"},  # {"items"}
    "/styles/cursor_body": _FILTER_PARAMS | {"limit", "cursor"},  # {"data", "paging": {"next": {"cursor"}}}
    "/styles/cursor_header": _FILTER_PARAMS | {"limit", "cursor"},  # a bare array; X-Next-Cursor header
    "/styles/json_link": _FILTER_PARAMS | {"limit", "cursor"},  # {"results", "links": {"next": relative URL}}
    "/styles/header_link": _FILTER_PARAMS | {"limit", "cursor"},  # {"items"}; Link: <absolute URL>; rel="next"
    "/styles/single_page": _FILTER_PARAMS,  # {"data"}: every record at once
}
_ORDER_COLUMNS = (
    "order_id",
    "customer_id",
    "product_id",
    "quantity",
    "unit_price",
    "currency",
    "status",
    "ordered_at",
    "updated_at",
)
# Paging bare order_ids first and formatting only the selected rows keeps deep pages
# cheap: DuckDB otherwise evaluates the formatting expressions for every skipped row.
_SELECT_PAGE = f"""
    WITH page AS (
        SELECT order_id FROM read_parquet(?) WHERE {{where}} ORDER BY order_id LIMIT ? OFFSET ?
    )
    SELECT order_id, customer_id, product_id, quantity,
           CAST(unit_price AS VARCHAR),
           currency, status,
           strftime(make_timestamp(epoch_us(ordered_at)), '{_TIMESTAMP_FORMAT}'),
           strftime(make_timestamp(epoch_us(updated_at)), '{_TIMESTAMP_FORMAT}')
    FROM read_parquet(?)
    WHERE order_id IN (SELECT order_id FROM page)
    ORDER BY order_id
"""
_SELECT_COUNT = "SELECT count(*) FROM read_parquet(?) WHERE {where}"
_SELECT_WATERMARK = f"""
    SELECT strftime(make_timestamp(epoch_us(max(updated_at))), '{_TIMESTAMP_FORMAT}'), count(*)
    FROM read_parquet(?)
"""
_CURSOR_PREFIX = "order_id:"
_UNSIGNED_INT = re.compile(r"[0-9]{1,12}")
_HANDLER_IDLE_TIMEOUT_SECONDS = 60
_SHUTDOWN_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class FaultConfig:
    """Which faults the API injects into ``/orders*`` responses, and how often.

    Attributes:
        rate: Fraction of ``/orders*`` requests (0..1) that receive a fault.
        kinds: Faults to choose from uniformly: ``"500"`` and ``"503"`` answer with that
            status, ``"429"`` answers Too Many Requests with ``Retry-After``, ``"slow"``
            sleeps ``slow_seconds`` before answering normally, and ``"truncated"`` sends a
            200 whose body stops halfway through the announced ``Content-Length`` before
            the connection is closed. Opt-in (:data:`OPT_IN_FAULT_KINDS`), each a server bug no retry fixes
            except ``"drip"``:

            * ``"drip"`` sends a correct 200 whose body comes in ten pieces spread over ``slow_seconds``, each
              in time for any read timeout.
            * ``"repeat_cursor"``: a cursor-style page whose ``next_cursor`` (and ``next``/``Link``) is the
              cursor the request came with, so a client following it asks for the same page for ever; a
              request without a cursor (the first page) is answered normally.
            * ``"ignore_page"``: a page-style answer from a server that knows no ``page`` parameter: the
              first page's records whatever ``page`` asks for, and no ``total_pages``/``total``.
            * ``"huge_page"``: a 200 with ``Content-Length`` whose body is ``huge_page_bytes`` of small
              order-like records (a single last page); ``"huge_page_chunked"``: the same body sent chunked,
              with no length announced. Both are written in 64 KiB pieces; :attr:`DemoApiServer.huge_bodies_sent`
              records how much of each got out before the body ended or the client hung up.
            * ``"deep_json"``: a 200 whose one record holds an array nested 100,000 levels deep.
            * ``"echo_auth"``: 403 whose JSON body echoes the request's ``Authorization`` header and its
              credentials, as careless APIs do.
            * ``"foreign_link"``: an answer's next link (``next`` of ``/orders``, ``links.next`` of
              ``/styles/json_link``, the ``Link`` header) names this server as ``localhost`` instead of
              ``127.0.0.1``, another origin: a client that followed it would hand its credentials to another host.
            * ``"extra_keys"``: every record of an ``/orders`` answer also has the keys ``extra_keys``
              (each holding its own name), e.g. ``First Name`` or ``_etl_source``.
        retry_after_seconds: ``Retry-After`` value sent with 429 and 503 responses.
        slow_seconds: Delay applied by the ``"slow"`` fault; how long a ``"drip"`` body takes.
        seed: Seed of the generator deciding which requests are faulted, so that a given
            sequence of requests always meets the same faults.
        fail_page: Page number (1-based, of ``GET /orders`` in either pagination style) whose
            first ``fail_page_times`` requests get ``fail_page_kind``, whatever ``rate`` says;
            0 turns this off. Counted per distinct request (path and query), so a client that
            asks again for the same page meets the fault until the count is spent, and a
            second partition's page k is faulted as well.
        fail_page_times: How many requests of each such page fail.
        fail_page_kind: The fault those requests get, one of :data:`FAULT_KINDS` or :data:`OPT_IN_FAULT_KINDS`.
        huge_page_bytes: Size of a ``"huge_page"`` body; the default, 66 MB, is a page of about 320,000
            small records.
        extra_keys: Keys the ``"extra_keys"`` fault adds to every record.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after_seconds: int = 1
    slow_seconds: float = 3.0
    seed: int = 0
    fail_page: int = 0
    fail_page_times: int = 1
    fail_page_kind: str = "500"
    huge_page_bytes: int = 66_000_000
    extra_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "extra_keys", tuple(self.extra_keys))
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {self.rate}")
        if not self.kinds:
            raise ValueError("at least one fault kind is required")
        unknown = sorted(set(self.kinds) - set(_ALL_FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected some of {list(_ALL_FAULT_KINDS)}")
        if self.retry_after_seconds < 0:
            raise ValueError(f"retry_after_seconds must be >= 0, got {self.retry_after_seconds}")
        if self.slow_seconds < 0:
            raise ValueError(f"slow_seconds must be >= 0, got {self.slow_seconds}")
        if self.fail_page < 0 or self.fail_page_times < 0:
            raise ValueError(
                f"fail_page and fail_page_times must be >= 0, got {self.fail_page}, {self.fail_page_times}"
            )
        if self.fail_page_kind not in _ALL_FAULT_KINDS:
            raise ValueError(
                f"unknown fail_page_kind {self.fail_page_kind!r}; expected one of {list(_ALL_FAULT_KINDS)}"
            )
        if self.huge_page_bytes < len(_HUGE_HEAD) + len(_HUGE_TAIL):
            raise ValueError(
                f"huge_page_bytes must be at least {len(_HUGE_HEAD) + len(_HUGE_TAIL)}, got {self.huge_page_bytes}"
            )

    @classmethod
    def parse(cls, spec: str) -> FaultConfig:
        """Parses a command-line fault specification.

        Args:
            spec: Comma-separated ``key=value`` pairs naming fields of this class, with
                ``kinds`` and ``extra_keys`` joined by ``+``, e.g.
                ``"rate=0.1,kinds=500+429+truncated,slow_seconds=2"`` or
                ``"fail_page=3,fail_page_times=6,fail_page_kind=503"``.
                Omitted fields keep their defaults; an empty string means no faults.

        Returns:
            The parsed configuration.

        Raises:
            ValueError: If a key is unknown, repeated or malformed, or a value is invalid.
        """
        converters: dict[str, Callable[[str], Any]] = {
            "rate": float,
            "kinds": lambda value: tuple(kind for kind in value.split("+") if kind),
            "retry_after_seconds": int,
            "slow_seconds": float,
            "seed": int,
            "fail_page": int,
            "fail_page_times": int,
            "fail_page_kind": str,
            "huge_page_bytes": int,
            "extra_keys": lambda value: tuple(key for key in value.split("+") if key),
        }
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in converters:
                raise ValueError(
                    f"invalid fault spec item {item!r}; expected key=value with a key in {sorted(converters)}"
                )
            if key in values:
                raise ValueError(f"fault spec sets {key!r} more than once")
            try:
                values[key] = converters[key](value.strip())
            except ValueError as exc:
                raise ValueError(f"invalid value for {key!r} in fault spec: {value!r}") from exc
        return cls(**values)


class _BadRequest(Exception):
    """A client error reported as 400 with the message as the ``error`` field."""


@dataclass(frozen=True)
class _Response:
    status: HTTPStatus
    payload: Any  # a JSON object, or (``/styles/cursor_header``) an array
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode("utf-8")


def _foreign(response: _Response) -> _Response:
    """``response`` with its next links on ``localhost``: another origin than ``127.0.0.1``, the same server."""

    def moved(link: str) -> str:
        path = urlsplit(link)._replace(scheme="", netloc="").geturl()
        port = urlsplit(link).port or 80 if "://" in link else None
        return f"http://localhost:{port}{path}" if port else f"http://localhost{path}"

    payload, headers = response.payload, dict(response.headers)
    if isinstance(payload, dict) and payload.get("next"):
        payload = {**payload, "next": moved(payload["next"])}
    if isinstance(payload, dict) and isinstance(payload.get("links"), dict) and payload["links"].get("next"):
        payload = {**payload, "links": {**payload["links"], "next": moved(payload["links"]["next"])}}
    if "Link" in headers:
        headers["Link"] = re.sub(r"<([^>]*)>", lambda m: f"<{moved(m.group(1))}>", headers["Link"])
    return _Response(response.status, payload, headers)


def _basic_credentials(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _encode_cursor(order_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{order_id}".encode()).decode().rstrip("=")


def _huge_body(size: int) -> tuple[int, Iterator[bytes]]:
    """The length of a ``"huge_page"`` body of at most ``size`` bytes, and the body in ~64 KiB pieces, made as sent."""
    record_bytes = len(_HUGE_RECORD.format(order_id=_HUGE_FIRST_ID))
    count = (size - len(_HUGE_HEAD) - len(_HUGE_TAIL) + 1) // (record_bytes + 1)  # records and the commas between
    length = len(_HUGE_HEAD) + len(_HUGE_TAIL) + count * (record_bytes + 1) - (1 if count else 0)
    per_piece = max(1, _HUGE_PIECE_BYTES // (record_bytes + 1))

    def pieces() -> Iterator[bytes]:
        yield _HUGE_HEAD
        for start in range(0, count, per_piece):
            records = ",".join(
                _HUGE_RECORD.format(order_id=_HUGE_FIRST_ID + i) for i in range(start, min(start + per_piece, count))
            )
            yield (records if start == 0 else "," + records).encode()
        yield _HUGE_TAIL

    return length, pieces()


def _deep_body(depth: int) -> bytes:
    return (
        b'{"data":[{"order_id":1,"payload":'
        + b"[" * depth
        + b"]" * depth
        + b'}],"next_cursor":null,"next":null,"page":1,"total_pages":1}'
    )


def _next_url(params: Mapping[str, str], host: str, limit: int, cursor: str) -> str:
    filters = {name: params[name] for name, _ in _FILTERS if name in params}
    return f"http://{host}/orders?{urlencode({**filters, 'limit': limit, 'cursor': cursor})}"


def _decode_cursor(cursor: str) -> int:
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    prefix, _, order_id = decoded.partition(_CURSOR_PREFIX)
    if prefix or not _UNSIGNED_INT.fullmatch(order_id):
        raise _BadRequest("cursor is not a cursor returned by this API")
    return int(order_id)


def _single_values(query: str, allowed: frozenset[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, given in parse_qs(query, keep_blank_values=True).items():
        if name not in allowed:
            raise _BadRequest(f"unknown parameter {name!r}; allowed: {sorted(allowed)}")
        if len(given) > 1:
            raise _BadRequest(f"parameter {name!r} given more than once")
        values[name] = given[0]
    return values


def _filter_conditions(params: Mapping[str, str]) -> tuple[list[str], list[Any]]:
    """The WHERE conditions and their values for the ``/orders`` filters present in ``params``."""
    bounds = {name: _timestamp_param(params, name) for name, _ in _FILTERS}
    if bounds["ordered_from"] and bounds["ordered_to"] and bounds["ordered_from"] > bounds["ordered_to"]:
        raise _BadRequest("ordered_from must not be later than ordered_to")
    conditions = [condition for name, condition in _FILTERS if bounds[name] is not None]
    values = [value for value in bounds.values() if value is not None]
    return conditions, values


def _conjunction(conditions: list[str]) -> str:
    return " AND ".join(conditions) or "true"


def _int_param(params: Mapping[str, str], name: str, default: int | None, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise _BadRequest(f"{name} is required")
        return default
    if not _UNSIGNED_INT.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise _BadRequest(f"{name} must be an integer between 1 and {maximum}, got {raw!r}")
    return int(raw)


def _timestamp_param(params: Mapping[str, str], name: str) -> dt.datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an ISO-8601 timestamp, got {raw!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class _HttpServer(ThreadingHTTPServer):
    """Threading HTTP server that can sever idle keep-alive connections on shutdown."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: DemoApiServer) -> None:
        self.app = app
        self._open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a potentially slow DNS lookup
        # that serves no purpose here.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = cast(tuple[str, int], self.server_address[:2])  # an AF_INET address

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._sockets_lock:
            self._open_sockets.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._sockets_lock:
            self._open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._sockets_lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            _log.debug("connection from %s dropped", client_address, exc_info=True)
        else:
            _log.exception("error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _HANDLER_IDLE_TIMEOUT_SECONDS
    # Headers and body go out in separate writes; with Nagle's algorithm on, the body
    # waits for the client's delayed ACK (~40 ms per keep-alive request).
    disable_nagle_algorithm = True
    server: _HttpServer

    def do_GET(self) -> None:
        self.server.app._handle_get(self)

    def _method_not_allowed(self) -> None:
        self.server.app._count_request()
        self.send_json(
            _Response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} not allowed"}, {"Allow": "GET"})
        )

    def do_POST(self) -> None:
        self.server.app._handle_post(self)

    do_PUT = do_PATCH = do_DELETE = _method_not_allowed

    def send_json(self, response: _Response, *, truncate: bool = False, drip_seconds: float = 0.0) -> None:
        body = response.body()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if drip_seconds > 0:
            self._drip(body, drip_seconds)
            return
        self.wfile.write(body[: len(body) // 2] if truncate else body)

    def send_body(self, status: HTTPStatus, body: bytes) -> None:
        """A JSON body sent as it is (one that ``json.dumps`` could not make, e.g. nested beyond its limit)."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_pieces(self, status: HTTPStatus, pieces: Iterator[bytes], length: int | None) -> int:
        """A JSON body written piece by piece, with ``Content-Length`` when ``length`` is given, else chunked.

        Returns:
            The body bytes written before it ended or the client hung up.
        """
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        try:
            for piece in pieces:
                self.wfile.write(piece if length is not None else b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if length is None:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client refused the body
        return sent

    def _drip(self, body: bytes, seconds: float) -> None:
        step = -(-len(body) // _DRIP_PIECES)
        try:
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.wfile.flush()
                time.sleep(seconds / _DRIP_PIECES)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up on the slow body

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)


class DemoApiServer:
    """HTTP server exposing the demo orders Parquet file as a paginated JSON API.

    Requests are served on daemon threads; each one queries the Parquet file through its
    own cursor of a shared in-memory DuckDB connection.

    Example:
        >>> with DemoApiServer(manifest.orders_path) as api:
        ...     httpx.get(f"{api.url}/orders", params={"limit": 100}).json()
    """

    def __init__(
        self,
        orders_path: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        faults: FaultConfig | None = None,
        api_key: str | None = None,
        basic: tuple[str, str] | None = None,
        oauth_client: tuple[str, str] | None = None,
        oauth_token_seconds: float = 3600.0,
    ) -> None:
        """Configures the server without binding a socket.

        Args:
            orders_path: Parquet file with the orders to serve; read on every request.
            host: IPv4 address to listen on.
            port: TCP port to listen on; 0 picks a free port at :meth:`start`.
            token: When set, every endpoint except ``/health`` requires
                ``Authorization: Bearer <token>``.
            faults: Fault injection for ``/orders*`` requests; ``None`` disables it.
            api_key: When set, a request may authenticate with it in the ``X-API-Key`` header or the ``api_key``
                query parameter.
            basic: When set, a request may authenticate with this (user, password) by HTTP Basic.
            oauth_client: When set, ``POST /oauth/token`` grants this (client id, client secret) bearer tokens by
                OAuth2's client-credentials flow (the client authenticating by HTTP Basic, as RFC 6749 2.3.1 has
                it), each valid for ``oauth_token_seconds``; a request may authenticate with one of them.
            oauth_token_seconds: Lifetime of an OAuth2 token (``expires_in``).

        With several of ``token``, ``api_key``, ``basic`` and ``oauth_client`` set, any one of them admits a request;
        with none, every request is admitted.
        """
        self._api_key, self._basic, self._oauth_client = api_key, basic, oauth_client
        self._oauth_token_seconds = oauth_token_seconds
        self._oauth_tokens: dict[str, float] = {}  # token -> expiry, time.monotonic()
        self._token_requests: list[dict[str, str]] = []
        self._request_times: list[float] = []
        self._orders_path = str(orders_path)
        self._address = (host, port)
        self._token = token
        self._faults = faults
        self._fault_rng = random.Random(faults.seed if faults else 0)
        self._lock = threading.Lock()
        self._requests_total = 0
        self._faults_injected: collections.Counter[str] = collections.Counter()
        self._page_requests: collections.Counter[tuple[str, ...]] = collections.Counter()
        self._huge_bodies_sent: list[int] = []
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        # Not closed by stop(): DuckDB refuses to close a connection while a cursor of it is
        # still querying, which handlers outliving stop() (e.g. "slow" faults) may be doing.
        self._con = duckdb.connect()
        self._routes: dict[str, tuple[Callable[[dict[str, str], str], _Response], frozenset[str]]] = {
            "/orders": (self._orders, _ORDERS_PARAMS),
            "/orders/watermark": (self._watermark, frozenset()),
            **{
                route: (functools.partial(self._styled, route=route), allowed)
                for route, allowed in _STYLE_PARAMS.items()
            },
        }

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:41234``."""
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests_total(self) -> int:
        """Number of requests received so far, including faulted and rejected ones."""
        with self._lock:
            return self._requests_total

    @property
    def faults_injected(self) -> dict[str, int]:
        """Number of injected faults per kind; kinds never injected are absent."""
        with self._lock:
            return dict(self._faults_injected)

    @property
    def huge_bodies_sent(self) -> list[int]:
        """Body bytes each ``"huge_page"``/``"huge_page_chunked"`` answer wrote, in order, once it ended: all of
        the body, or what got out before the client hung up (the rest of a refused body fills socket buffers)."""
        with self._lock:
            return list(self._huge_bodies_sent)

    def start(self) -> Self:
        """Binds the socket and serves requests on a background daemon thread.

        Returns:
            This server, so that ``api = DemoApiServer(path).start()`` works.

        Raises:
            RuntimeError: If the server is already running.
            OSError: If the address cannot be bound.
        """
        if self._httpd is not None:
            raise RuntimeError("the server is already running")
        self._httpd = _HttpServer(self._address, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
            name=f"demo-api-{self._httpd.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, severs open connections and releases the port. Idempotent."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_open_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def request_times(self) -> list[float]:
        """When each request arrived (``time.time()``, comparable across processes), in order."""
        with self._lock:
            return list(self._request_times)

    @property
    def token_requests(self) -> list[dict[str, str]]:
        """The form of each ``POST /oauth/token`` request (``grant_type``, ``scope``), in order."""
        with self._lock:
            return list(self._token_requests)

    def revoke_tokens(self) -> None:
        """Forgets every OAuth2 token granted, as a provider revoking them before their expiry does."""
        with self._lock:
            self._oauth_tokens.clear()

    def _count_request(self) -> None:
        with self._lock:
            self._requests_total += 1
            self._request_times.append(time.time())

    def _fault_config(self) -> FaultConfig:
        """The fault injection, once a fault was drawn (which only happens when there is one)."""
        assert self._faults is not None
        return self._faults

    def _draw_fault(self) -> str | None:
        if self._faults is None or self._faults.rate == 0:
            return None
        with self._lock:
            if self._fault_rng.random() >= self._faults.rate:
                return None
            kind = self._fault_rng.choice(self._faults.kinds)
            self._faults_injected[kind] += 1
            return kind

    def _draw_page_fault(self, path: str, query: str) -> str | None:
        """``fail_page_kind`` for the first ``fail_page_times`` requests of page ``fail_page`` of ``/orders``."""
        faults = self._faults
        if faults is None or not faults.fail_page or path != "/orders":
            return None
        try:
            params = _single_values(query, _ORDERS_PARAMS)
            page = self._page_number(params)
        except _BadRequest:
            return None  # answered as a bad request by the route
        if page != faults.fail_page:
            return None
        signature = (path, *sorted(f"{k}={v}" for k, v in params.items()))
        with self._lock:
            if self._page_requests[signature] >= faults.fail_page_times:
                return None
            self._page_requests[signature] += 1
            self._faults_injected[faults.fail_page_kind] += 1
            return faults.fail_page_kind

    def _page_number(self, params: dict[str, str]) -> int:
        """The 1-based page a ``/orders`` request asks for; for a cursor, the rows up to it divided by ``limit``."""
        if "limit" not in params and "cursor" not in params:
            return _int_param(params, "page", 1, 10**9)
        if "cursor" not in params:
            return 1
        limit = _int_param(params, "limit", None, MAX_PAGE_SIZE)
        conditions, values = _filter_conditions(params)
        conditions.append("order_id <= ?")
        values.append(_decode_cursor(params["cursor"]))
        (before,) = self._query(_SELECT_COUNT.format(where=_conjunction(conditions)), [self._orders_path, *values])[0]
        return before // limit + 1

    def _authorized(self, authorization: str | None, api_key: str | None) -> bool:
        schemes = (self._token, self._api_key, self._basic, self._oauth_client)
        if all(scheme is None for scheme in schemes):
            return True
        scheme, _, credentials = (authorization or "").partition(" ")
        credentials = credentials.strip()
        if self._api_key is not None and api_key is not None and hmac.compare_digest(api_key, self._api_key):
            return True
        if scheme.lower() == "bearer":
            if self._token is not None and hmac.compare_digest(credentials.encode(), self._token.encode()):
                return True
            with self._lock:
                expiry = self._oauth_tokens.get(credentials)
            return expiry is not None and time.monotonic() < expiry
        if scheme.lower() == "basic" and self._basic is not None:
            return hmac.compare_digest(credentials.encode(), _basic_credentials(*self._basic).encode())
        return False

    def _handle_post(self, handler: _Handler) -> None:
        """``POST /oauth/token``: OAuth2's client-credentials grant (RFC 6749 4.4); every other POST is refused."""
        self._count_request()
        if urlsplit(handler.path).path != "/oauth/token" or self._oauth_client is None:
            handler.send_json(
                _Response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method POST not allowed"}, {"Allow": "GET"})
            )
            return
        length = int(handler.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode("ascii", "replace")).items()}
        with self._lock:
            self._token_requests.append(form)
        given = (handler.headers.get("Authorization") or "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), _basic_credentials(*self._oauth_client).encode()):
            try:
                shown = base64.b64decode(given).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                shown = given
            # echoed, as careless providers do: the client must keep it out of its messages
            handler.send_json(
                _Response(HTTPStatus.UNAUTHORIZED, {"error": "invalid_client", "error_description": f"bad {shown}"})
            )
            return
        if form.get("grant_type") != "client_credentials":
            handler.send_json(_Response(HTTPStatus.BAD_REQUEST, {"error": "unsupported_grant_type"}))
            return
        token = base64.urlsafe_b64encode(random.randbytes(24)).decode()
        with self._lock:
            self._oauth_tokens[token] = time.monotonic() + self._oauth_token_seconds
        handler.send_json(
            _Response(
                HTTPStatus.OK,
                {"access_token": token, "token_type": "Bearer", "expires_in": self._oauth_token_seconds},
                {"Cache-Control": "no-store"},
            )
        )

    def _handle_get(self, handler: _Handler) -> None:
        self._count_request()
        url = urlsplit(handler.path)
        path = url.path.rstrip("/") or "/"
        if path == "/health":
            handler.send_json(_Response(HTTPStatus.OK, {"status": "ok"}))
            return
        if path not in self._routes:
            handler.send_json(_Response(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"}))
            return
        query_key = None
        if self._api_key is not None:  # the key is no parameter of the route: taken out before the route reads them
            pairs = parse_qsl(url.query, keep_blank_values=True)
            query_key = next((v for k, v in pairs if k == "api_key"), None)
            url = url._replace(query=urlencode([(k, v) for k, v in pairs if k != "api_key"]))
        if not self._authorized(handler.headers.get("Authorization"), handler.headers.get("X-API-Key") or query_key):
            handler.send_json(
                _Response(
                    HTTPStatus.UNAUTHORIZED,
                    {"error": "missing or invalid credentials"},
                    {"WWW-Authenticate": 'Bearer realm="demo-shop"'},
                )
            )
            return

        fault = self._draw_page_fault(path, url.query) or self._draw_fault()
        if fault in ("500", "503", "429"):
            handler.send_json(self._fault_response(fault))
            return
        if fault == "echo_auth":
            handler.send_json(self._echo_auth_response(handler.headers.get("Authorization"), url.path))
            return
        if fault == "deep_json":
            handler.send_body(HTTPStatus.OK, _deep_body(_DEEP_JSON_DEPTH))
            return
        if fault in ("huge_page", "huge_page_chunked"):
            length, pieces = _huge_body(self._fault_config().huge_page_bytes)
            sent = handler.send_pieces(HTTPStatus.OK, pieces, length if fault == "huge_page" else None)
            with self._lock:
                self._huge_bodies_sent.append(sent)
            return
        if fault == "slow":
            time.sleep(self._fault_config().slow_seconds)

        route, allowed_params = self._routes[path]
        host = handler.headers.get("Host") or "{}:{}".format(*handler.server.server_address[:2])
        try:
            params = _single_values(url.query, allowed_params)
            paged = path == "/orders" and "limit" not in params and "cursor" not in params
            if fault == "ignore_page" and paged:
                params.pop("page", None)
            response = route(params, host)
            if fault == "ignore_page" and paged and response.status == HTTPStatus.OK:
                payload = {k: v for k, v in response.payload.items() if k not in ("total_pages", "total")}
                response = dataclasses.replace(response, payload=payload)
            answered = path == "/orders" and response.status == HTTPStatus.OK
            if fault == "repeat_cursor" and answered and "cursor" in params:
                response = self._pointing_back(response, params, host)
            if fault == "foreign_link" and response.status == HTTPStatus.OK:
                response = _foreign(response)
            if fault == "extra_keys" and answered:
                extra = {key: key for key in self._fault_config().extra_keys}
                records = [{**record, **extra} for record in response.payload["data"]]
                response = dataclasses.replace(response, payload={**response.payload, "data": records})
        except _BadRequest as exc:
            response = _Response(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:
            _log.exception("GET %s failed", handler.path)
            response = _Response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc}"})
        handler.send_json(
            response,
            truncate=fault == "truncated",
            drip_seconds=self._fault_config().slow_seconds if fault == "drip" else 0.0,
        )

    @staticmethod
    def _pointing_back(response: _Response, params: Mapping[str, str], host: str) -> _Response:
        """``response`` with its next cursor (field, link and header) the request's own cursor."""
        next_url = _next_url(params, host, int(params["limit"]), params["cursor"])
        payload = {**response.payload, "next_cursor": params["cursor"], "next": next_url}
        return _Response(response.status, payload, {**response.headers, "Link": f'<{next_url}>; rel="next"'})

    @staticmethod
    def _echo_auth_response(authorization: str | None, path: str) -> _Response:
        credentials = (authorization or "").partition(" ")[2].strip()
        return _Response(
            HTTPStatus.FORBIDDEN,
            {"error": f"token {credentials or '(none)'} may not read {path}", "authorization": authorization},
        )

    def _fault_response(self, kind: str) -> _Response:
        retry_after = {"Retry-After": str(self._fault_config().retry_after_seconds)}
        if kind == "429":
            return _Response(HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate limit exceeded"}, retry_after)
        if kind == "503":
            return _Response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "service temporarily unavailable"}, retry_after)
        return _Response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal server error"})

    def _query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._con.cursor() as cur:
            return cur.execute(sql, params).fetchall()

    def _page(self, conditions: list[str], values: list[Any], limit: int, offset: int) -> list[dict[str, Any]]:
        sql = _SELECT_PAGE.format(where=_conjunction(conditions))
        rows = self._query(sql, [self._orders_path, *values, limit, offset, self._orders_path])
        return [dict(zip(_ORDER_COLUMNS, row)) for row in rows]

    def _orders(self, params: dict[str, str], host: str) -> _Response:
        conditions, values = _filter_conditions(params)

        if "limit" in params or "cursor" in params:
            if "page" in params or "page_size" in params:
                raise _BadRequest("page/page_size cannot be combined with limit/cursor")
            return self._orders_by_cursor(params, conditions, values, host)

        page = _int_param(params, "page", 1, 10**9)
        page_size = _int_param(params, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        count_sql = _SELECT_COUNT.format(where=_conjunction(conditions))
        (total,) = self._query(count_sql, [self._orders_path, *values])[0]
        return _Response(
            HTTPStatus.OK,
            {
                "data": self._page(conditions, values, page_size, (page - 1) * page_size),
                "page": page,
                "page_size": page_size,
                "total_pages": math.ceil(total / page_size),
                "total": total,
            },
        )

    def _orders_by_cursor(
        self, params: dict[str, str], conditions: list[str], values: list[Any], host: str
    ) -> _Response:
        limit = _int_param(params, "limit", None, MAX_PAGE_SIZE)
        if "cursor" in params:
            conditions = [*conditions, "order_id > ?"]
            values = [*values, _decode_cursor(params["cursor"])]
        data = self._page(conditions, values, limit + 1, 0)
        if len(data) <= limit:
            return _Response(HTTPStatus.OK, {"data": data, "next_cursor": None, "next": None})
        data = data[:limit]
        next_cursor = _encode_cursor(data[-1]["order_id"])
        next_url = _next_url(params, host, limit, next_cursor)
        return _Response(
            HTTPStatus.OK,
            {"data": data, "next_cursor": next_cursor, "next": next_url},
            {"Link": f'<{next_url}>; rel="next"'},
        )

    def _styled(self, params: dict[str, str], host: str, route: str = "") -> _Response:
        """One of the ``/styles/*`` answers (see :data:`_STYLE_PARAMS`), over the ``/orders`` filters."""
        conditions, values = _filter_conditions(params)
        (total,) = self._query(_SELECT_COUNT.format(where=_conjunction(conditions)), [self._orders_path, *values])[0]
        if route in ("/styles/page_number", "/styles/page_number_no_total"):
            page = _int_param(params, "page", 1, 10**9)
            size = _int_param(params, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            result: dict[str, Any] = {"result": {"items": self._page(conditions, values, size, (page - 1) * size)}}
            if route == "/styles/page_number":
                result["meta"] = {"total_pages": math.ceil(total / size)}
            return _Response(HTTPStatus.OK, result)
        if route in ("/styles/offset", "/styles/offset_no_total"):
            offset = int(params["offset"]) if _UNSIGNED_INT.fullmatch(params.get("offset", "0")) else -1
            if offset < 0:
                raise _BadRequest(f"offset must be an integer >= 0, got {params.get('offset')!r}")
            limit = _int_param(params, "limit", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            result = {"items": self._page(conditions, values, limit, offset)}
            if route == "/styles/offset":
                result["total"] = total
            return _Response(HTTPStatus.OK, result)
        if route == "/styles/single_page":
            return _Response(HTTPStatus.OK, {"data": self._page(conditions, values, max(total, 1), 0)})
        # keyset styles: the next page starts after the last order_id of this one
        limit = _int_param(params, "limit", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if "cursor" in params:
            conditions, values = [*conditions, "order_id > ?"], [*values, _decode_cursor(params["cursor"])]
        data = self._page(conditions, values, limit + 1, 0)
        cursor = _encode_cursor(data[limit - 1]["order_id"]) if len(data) > limit else None
        data = data[:limit]
        filters = {name: params[name] for name, _ in _FILTERS if name in params}
        link = f"{route}?{urlencode({**filters, 'limit': limit, 'cursor': cursor})}" if cursor else None
        if route == "/styles/cursor_body":
            return _Response(HTTPStatus.OK, {"data": data, "paging": {"next": {"cursor": cursor}}})
        if route == "/styles/cursor_header":
            return _Response(HTTPStatus.OK, data, {"X-Next-Cursor": cursor} if cursor else {})
        if route == "/styles/json_link":  # a relative link, as many APIs send
            return _Response(HTTPStatus.OK, {"results": data, "links": {"next": link}})
        headers = {"Link": f'<http://{host}{link}>; rel="next", <http://{host}{route}>; rel="first"'} if link else {}
        return _Response(HTTPStatus.OK, {"items": data}, headers)

    def _watermark(self, params: dict[str, str], host: str) -> _Response:
        max_updated_at, count = self._query(_SELECT_WATERMARK, [self._orders_path])[0]
        return _Response(HTTPStatus.OK, {"max_updated_at": max_updated_at, "count": count})


def run_server(
    orders_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    faults: FaultConfig | None = None,
) -> None:
    """Serves the demo API in the foreground until interrupted with Ctrl-C.

    Args:
        orders_path: Parquet file with the orders to serve.
        host: IPv4 address to listen on.
        port: TCP port to listen on; 0 picks a free port.
        token: Bearer token required by every endpoint except ``/health``, if set.
        faults: Fault injection for ``/orders*`` requests; ``None`` disables it.
    """
    with DemoApiServer(orders_path, host=host, port=port, token=token, faults=faults) as server:
        print(f"Demo shop API listening on {server.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"Stopping after {server.requests_total} requests", flush=True)
