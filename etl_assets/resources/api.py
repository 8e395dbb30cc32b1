"""REST API source: paged JSON into Arrow batches, with timeouts, classified errors and backoff."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
import pyarrow as pa
import pyarrow.compute as pc
from dagster import ConfigurableResource, get_dagster_logger
from pydantic import Field, field_validator, model_validator

from etl_assets.errors import ContractError, PermanentSourceError, TransientSourceError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.redact import redact
from etl_assets.resources.api_auth import Auth, OAuth2ClientCredentials, auth_env_vars, cached_tokens
from etl_assets.resources.jsonpath import MISSING, checked_path, compile_path, select
from etl_assets.resources.ratelimit import wait_for_slot
from etl_assets.specmodel import SpecFieldError, SpecModel, identifier
from etl_assets.sqlutil import RESERVED_COLUMN_NAMES, RESERVED_COLUMN_PREFIXES, is_identifier, is_reserved_column

# Of an error answer's body, only this much is read: the message shows its first 200 characters.
ERROR_BODY_BYTES = 64 * 1024
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_SECONDS = 60.0
# Up to this share of a Retry-After is added at random, so clients told the same wait do not all return together.
RETRY_AFTER_JITTER = 0.1


PaginationStyle = Literal["page_number", "page", "offset", "cursor", "json_link", "header_link", "single_page"]


class _RedactedLog(logging.Filter):
    """httpx logs every request's URL at INFO, query included: an api key sent as a query parameter with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


logging.getLogger("httpx").addFilter(_RedactedLog())


class Pagination(SpecModel):
    """How an API pages its results; the style names are dlt's REST client's. ``page_number``: ``page_param`` and
    ``page_size_param`` numbers, up to ``total_pages_field`` or an empty page (``page`` is its older name);
    ``offset``: ``offset_param`` and ``limit_param``, up to ``total_field`` or an empty page; ``cursor``: the next
    page's cursor at ``next_cursor_field`` in the body, or in the ``cursor_header`` response header, sent as
    ``cursor_param``; ``json_link``: the next page's URL at ``next_url_field``; ``header_link``: the next page's URL in
    an RFC 8288 ``Link: <...>; rel="next"`` header; ``single_page``: one request. The ``*_field`` settings are
    JSONPath (docs/sources-rest.md). Paging always ends: a cursor or next URL already requested,
    a page repeating an earlier one, or more than ``max_pages`` pages fail the extraction; a next URL must stay on
    the base URL's origin."""

    style: PaginationStyle = "page_number"
    page_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Records asked for per page: sent as page_size_param (page_number) or limit_param (offset, "
        "cursor, and the first request of json_link and header_link).",
    )
    page_param: str = "page"
    page_size_param: str = "page_size"
    base_page: int = Field(default=1, ge=0, description="page_number: the number of the first page.")
    total_pages_field: str | None = Field(
        default="total_pages",
        description="page_number: where the answer says how many pages there are; null (or absent from the "
        "answer): paging ends at the first empty page.",
    )
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_field: str | None = Field(
        default="total",
        description="offset: where the answer says how many records there are; null (or absent from the answer): "
        "paging ends at the first empty page.",
    )
    cursor_param: str = "cursor"
    next_cursor_field: str = Field(default="next_cursor", description="cursor: where the body holds the next cursor.")
    cursor_header: str | None = Field(
        default=None, description="cursor: the response header holding the next cursor, instead of the body."
    )
    next_url_field: str = Field(default="next", description="json_link: where the body holds the next page's URL.")
    max_pages: int = Field(
        default=100_000,
        ge=1,
        description="Most pages one extraction (one partition) may read; a partition needing more fails, so an API "
        "whose paging never ends cannot keep a run going for ever. Raise it (or page_size) for larger "
        "partitions.",
    )

    _check_paths = field_validator("total_pages_field", "total_field", "next_cursor_field", "next_url_field")(
        lambda value: value if value is None else checked_path(value)
    )

    @field_validator("style")
    @classmethod
    def _older_names(cls, value: str) -> str:
        return "page_number" if value == "page" else value  # `page` was the style's name before dlt's names

    @model_validator(mode="after")
    def _check_style_fields(self) -> Pagination:
        if self.cursor_header is not None and self.style != "cursor":
            raise SpecFieldError(
                "cursor_header",
                f"`cursor_header` is a setting of the cursor style, and this pagination is {self.style}",
                "remove `cursor_header`, or set `style: cursor`",
            )
        return self


class Incremental(SpecModel):
    """Incremental extraction: only records whose ``field`` is newer than the last loaded watermark."""

    param: str = "updated_since"
    field: str = "updated_at"
    watermark_endpoint: str | None = Field(
        default=None, description="Endpoint answering the newest `field` value; enables the watermark sensor."
    )
    watermark_field: str = "max_updated_at"


class ApiSource(SpecModel):
    """A REST API endpoint returning JSON records."""

    kind: Literal["api"]
    connection: str
    default_url: str = Field(description="Base URL used when <CONNECTION>_URL is not set in the environment.")
    endpoint: str
    records_path: str = Field(
        default="data",
        description="JSONPath of the records' list in each answer: `data`, `data.items`, `$.results[*]`; `$` for an "
        "answer that is the list itself.",
    )
    pagination: Pagination = Pagination()
    window_params: tuple[str, str] | None = Field(
        default=None, description="Query parameters carrying the partition's time window [start, end)."
    )
    incremental: Incremental | None = None
    auth: Auth = Auth()
    requests_per_second: float | None = Field(
        default=None,
        gt=0,
        le=10_000,
        description="Most requests per second to this connection, shared by every run and process of one host "
        "(a file lock in $ETL_DATA_DIR/.rate_limits; each host gets the whole rate).",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Longest wait for the connection or for any read.")
    request_deadline_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Longest a whole request may take, first byte to last; default 4 x timeout_seconds.",
    )
    max_page_bytes: int = Field(
        default=32 * 2**20,
        ge=1024,
        description="Largest page body accepted, in bytes (default 32 MiB); a larger one fails the run, as parsing "
        "it takes about 15x its size in memory for small records (json.loads, then the Arrow batch): "
        "32 MiB is about 0.5 GB at worst, and still holds 10,000 records (the largest page_size) of 3 KB "
        "each. Lower pagination.page_size, or raise this where the worker has the memory.",
    )

    _check_connection = field_validator("connection")(identifier)
    _check_records_path = field_validator("records_path")(checked_path)

    @model_validator(mode="after")
    def _check_deadline(self) -> ApiSource:
        if self.request_deadline_seconds is not None and self.request_deadline_seconds < self.timeout_seconds:
            raise ValueError(
                f"request_deadline_seconds ({self.request_deadline_seconds:g}) is shorter than "
                f"timeout_seconds ({self.timeout_seconds:g}); make it at least as long, or remove it"
            )
        return self

    def deadline_seconds(self) -> float:
        """The whole-request deadline: ``request_deadline_seconds``, or four times ``timeout_seconds``."""
        return self.request_deadline_seconds or 4 * self.timeout_seconds

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"endpoint {value!r} must be a path starting with '/', e.g. /orders")
        return value


@dataclass
class ExtractStats:
    """What one extraction did, for materialization metadata."""

    pages: int = 0
    records: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    max_watermark: str | None = None


def _to_text_batch(records: list[dict], columns: list[str], source: str) -> pa.RecordBatch:
    """One API page as a batch of text columns: the raw layer keeps values as delivered; validation casts them.

    Each value becomes the text of its JSON kind: a string as is, an integer with every digit, a float as Python
    spells it (``20.0``, ``nan``, ``inf``; a ``Decimal``, from ``json.loads(parse_float=Decimal)``, exactly as
    delivered), a boolean as ``true``/``false``, null as null. An object or array in a column beyond the contract is
    kept as its JSON text.

    Raises:
        ContractError: a record key is not an SQL identifier, is one of the platform's own columns
            (:func:`~etl_assets.sqlutil.is_reserved_column`: ``_etl_*``, ``filename``, ...) or differs only in case
            from another key or contract column; or a contract column holds an object or array, which no scalar type
            can take.
    """
    seen = dict.fromkeys(columns)
    for record in records:
        seen.update(dict.fromkeys(record))
    _check_keys(list(seen), source)
    contract = set(columns)
    arrays, names = [], []
    for name in seen:
        values = [r.get(name) for r in records]
        arrays.append(_text_array(values, name, name in contract, source))
        names.append(name)
    arrays.append(pa.array([source] * len(records), type=pa.string()))
    names.append(SOURCE_COLUMN)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _check_keys(names: list, source: str) -> None:
    """Refuse the keys of a page that cannot become columns (see :func:`_to_text_batch`), naming them all."""
    problems = []
    bad = [n for n in names if not isinstance(n, str) or not is_identifier(n)]
    if bad:
        problems.append(
            f"keys {_names(bad)} are not SQL identifiers (letters, digits and underscores, not "
            "starting with a digit, at most 63 characters)"
        )
    names = [n for n in names if n not in bad]
    platform = [n for n in names if is_reserved_column(n)]
    if platform:
        reserved = ", ".join([*(f"{prefix}*" for prefix in RESERVED_COLUMN_PREFIXES), *RESERVED_COLUMN_NAMES])
        problems.append(f"keys {_names(platform)} collide with the platform's own columns ({reserved})")
    by_case: dict[str, list[str]] = {}
    for n in names:
        by_case.setdefault(n.lower(), []).append(n)
    clashes = [group for group in by_case.values() if len(group) > 1]
    if clashes:
        problems.append(
            "keys differ only in case, which SQL does not tell apart: " + "; ".join(_names(group) for group in clashes)
        )
    if problems:
        raise ContractError(
            f"{source}: record {'; '.join(problems)}. Rename them in the source (or have its owner do so): contract "
            "columns are plain identifiers, and every key of a page becomes a column of the raw data"
        )


def _names(names: list) -> str:
    shown = ", ".join(repr(n) for n in names[:10])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > 10 else ''}]"


def _batch_digest(batch: pa.RecordBatch) -> bytes:
    """A digest of a page's values, column by column (``_etl_source``, which names the page, left out).

    Hashes each text column's value lengths (null as -1) and its UTF-8 bytes, straight from the Arrow buffers: equal
    digests mean equal records, at a small part of the cost of parsing the page.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, column in zip(batch.schema.names, batch.columns):
        if name == SOURCE_COLUMN:
            continue
        digest.update(name.encode() + b"\0")
        lengths = pc.fill_null(pc.binary_length(column), -1)  # pyright: ignore[reportAttributeAccessIssue]
        digest.update(memoryview(lengths.buffers()[1])[lengths.offset * 4 : (lengths.offset + len(column)) * 4])
        _, offsets, data = column.buffers()
        if data is not None and len(column):
            bounds = memoryview(offsets).cast("i")
            digest.update(memoryview(data)[bounds[column.offset] : bounds[column.offset + len(column)]])
    return digest.digest()


def _text_array(values: list, name: str, in_contract: bool, source: str) -> pa.Array:
    """``values`` of one column as text (see :func:`_to_text_batch`); one kind per column is converted by Arrow."""
    kinds = {type(v) for v in values} - {type(None)}
    if kinds <= {str}:
        return pa.array(values, type=pa.string())
    if kinds == {bool}:
        return pa.array(values, type=pa.bool_()).cast(pa.string())
    if kinds == {int}:
        try:
            return pa.array(values, type=pa.int64()).cast(pa.string())
        except (OverflowError, pa.ArrowInvalid):
            pass  # past int64: spelt out one by one below
    if kinds == {float}:  # Arrow would spell 20.0 as "20"
        return pa.array([None if v is None else repr(v) for v in values], type=pa.string())
    if in_contract and kinds & {dict, list}:
        row = next(i for i, v in enumerate(values) if isinstance(v, (dict, list)))
        raise ContractError(
            f"{source}: column {name} holds an object or array (record {row + 1} of the page), which cannot be "
            "cast to a scalar contract type; fix the source, or remove the column from the spec's columns to load it as JSON text"
        )
    return pa.array([_scalar_text(v) for v in values], type=pa.string())


def _scalar_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)  # nested: its JSON text


@dataclass
class _Answer:
    """One page as received: the parsed body, the response headers and the URL it came from (after redirects)."""

    body: dict | list
    headers: httpx.Headers
    url: httpx.URL
    links: dict


class _ApiKey(httpx.Auth):
    """An API key in a header or a query parameter, on every request (next links included: they stay on the origin)."""

    def __init__(self, auth: Auth, key: str) -> None:
        self.location, self.name, self.key = auth.location, auth.key_name(), key

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        if self.location == "header":
            request.headers[self.name] = self.key
        else:
            request.url = request.url.copy_set_param(self.name, self.key)
        yield request


class RestApiSource(ConfigurableResource):
    """A JSON REST API.

    Credentials (see :func:`~etl_assets.resources.api_auth.auth_env_vars`) are bound with ``EnvVar`` so they never
    appear in config or logs; only those of the spec's ``auth.type`` are used.

    Attributes:
        connection: Connection name from the spec (``shop_api``).
        default_url: Base URL when ``url`` is not set.
        url: Base URL from the environment (``EnvVar("<CONNECTION>_URL")``).
        token: Bearer token (``<CONNECTION>_TOKEN``).
        api_key: API key (``<CONNECTION>_API_KEY``).
        username: HTTP Basic user (``<CONNECTION>_USERNAME``).
        password: HTTP Basic password (``<CONNECTION>_PASSWORD``).
        client_id: OAuth2 client id (``<CONNECTION>_CLIENT_ID``).
        client_secret: OAuth2 client secret (``<CONNECTION>_CLIENT_SECRET``).
        max_attempts: Attempts per request before a transient error is given up on.
        backoff_seconds: First backoff; doubles each attempt, with full jitter.
        max_backoff_seconds: Ceiling of one backoff sleep.
    """

    connection: str
    default_url: str
    url: str | None = None
    token: str | None = None
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    max_attempts: int = 6
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 10.0

    def base_url(self) -> str:
        """The base URL requests go to, as configured: it may hold ``user:password@``; never show it."""
        return (self.url or self.default_url).rstrip("/")

    def display_url(self) -> str:
        """:meth:`base_url` safe to show or store: userinfo and known secrets masked (``http://***@host``)."""
        return self._redact(self.base_url())

    def _secrets(self) -> list[str | None]:
        basic = None
        if self.username is not None and self.password:
            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return [self.token, self.api_key, self.password, self.client_secret, basic, *cached_tokens()]

    def _redact(self, text: str) -> str:
        """``text`` (built from server answers or URLs) with every credential and any other known secret masked."""
        return redact(text, extra=self._secrets())

    def _credentials(self, spec: ApiSource) -> dict[str, str]:
        """The credentials ``spec.auth`` needs, by resource field.

        Raises:
            PermanentSourceError: one is not configured; names its environment variable.
        """
        needed = auth_env_vars(self.connection, spec.auth.type)
        missing = [env for name, env in needed.items() if not getattr(self, name)]
        if missing:
            raise PermanentSourceError(
                f"{self.connection}: the spec asks for {spec.auth.type} auth but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; set {' and '.join(missing)} in the environment"
            )
        return {name: getattr(self, name) for name in needed}

    def client(self, spec: ApiSource) -> httpx.Client:
        """A client for ``spec``'s requests: its auth, its timeout and, with ``requests_per_second``, the host's
        shared request rate (each attempt, retries included, waits for its slot)."""
        headers = {"Accept": "application/json", "User-Agent": "etl-assets"}
        creds = self._credentials(spec)
        auth: httpx.Auth | None = None
        if spec.auth.type == "bearer":
            headers["Authorization"] = f"Bearer {creds['token']}"
        elif spec.auth.type == "api_key":
            auth = _ApiKey(spec.auth, creds["api_key"])
        elif spec.auth.type == "basic":
            auth = httpx.BasicAuth(creds["username"], creds["password"])
        elif spec.auth.type == "oauth2_client_credentials":
            auth = OAuth2ClientCredentials(
                self.connection,
                spec.auth,
                creds["client_id"],
                creds["client_secret"],
                spec.timeout_seconds,
                self._redact,
            )
        hooks: dict = {}
        if spec.requests_per_second is not None:
            rate, connection = spec.requests_per_second, self.connection
            hooks["request"] = [lambda _request: wait_for_slot(connection, rate)]
        return httpx.Client(
            base_url=self.base_url(), headers=headers, auth=auth, timeout=spec.timeout_seconds, event_hooks=hooks
        )

    def get_json(
        self,
        client: httpx.Client,
        url: str,
        params: dict | None,
        stats: ExtractStats,
        deadline_seconds: float | None = None,
        max_bytes: int | None = None,
        page: int | None = None,
    ) -> dict:
        """GET a JSON object with retries on transient failures; permanent ones raise at once (see :meth:`fetch`)."""
        body = self.fetch(client, url, params, stats, deadline_seconds, max_bytes, page).body
        assert isinstance(body, dict)  # fetch refuses anything else without allow_array
        return body

    def fetch(
        self,
        client: httpx.Client,
        url: str,
        params: dict | None,
        stats: ExtractStats,
        deadline_seconds: float | None = None,
        max_bytes: int | None = None,
        page: int | None = None,
        allow_array: bool = False,
    ) -> _Answer:
        """GET with retries on transient failures; permanent ones raise at once.

        The body is read in chunks against a deadline for the whole request (``deadline_seconds``; httpx's timeout
        bounds each wait, so a server sending a byte now and then would otherwise hold the request for ever) and
        against ``max_bytes`` (refused on its ``Content-Length`` before any of it is read, or as soon as more has
        arrived), and parsed with non-integer numbers as ``Decimal``, so a price with more digits than a float holds
        arrives as delivered. ``stats.retries`` counts the retries made; ``stats.retry_reasons`` every failed
        attempt by reason. ``page`` only names the page in messages. Every message is redacted (the credentials, URL
        userinfo and known secrets masked), as servers echo credentials in their errors.

        Args:
            allow_array: A JSON array is a valid body too (an API answering its records' list bare).

        Raises:
            PermanentSourceError: 4xx other than 408/425/429, a body that is valid JSON of the wrong shape, or a
                body larger than ``max_bytes``.
            ContractError: the body is JSON nested deeper than the parser can follow: data no retry changes.
            TransientSourceError: the attempts ran out.
        """
        log = get_dagster_logger()
        what = self._redact(f"GET {url}" + (f" page {page}" if page is not None else ""))
        for attempt in range(1, self.max_attempts + 1):
            wait = None
            deadline = time.monotonic() + deadline_seconds if deadline_seconds else None
            try:
                with client.stream("GET", url, params=params) as response:
                    if response.status_code in TRANSIENT_STATUS:
                        reason = f"http_{response.status_code}"
                        wait = _retry_after(response)
                    elif response.status_code >= 400:
                        text = _read_within(response, deadline, ERROR_BODY_BYTES, cut=True).decode(
                            "utf-8", errors="replace"
                        )
                        raise PermanentSourceError(
                            self._redact(
                                f"{self.connection}: GET {response.request.url.path} answered {response.status_code}"
                                f" {_short(text)}; {self._fix_for(response.status_code)}"
                            )
                        )
                    else:
                        try:
                            raw = _read_within(response, deadline, max_bytes)
                        except _BodyTooLarge as exc:
                            raise PermanentSourceError(
                                self._redact(
                                    f"{self.connection}: {what}: the body is larger than max_page_bytes ({max_bytes:,} "
                                    f"bytes; {exc}), refused before it was read in full, as parsing takes about 15x its "
                                    "size in memory; lower `pagination.page_size` in the spec so pages are smaller, or "
                                    "raise the source's `max_page_bytes` where the worker has the memory"
                                )
                            ) from None
                        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads would
                        del raw  # the bytes go before parsing starts: one copy of the body less at the peak
                        try:
                            body = json.loads(text, parse_float=Decimal)
                        except RecursionError:
                            raise ContractError(
                                self._redact(
                                    f"{self.connection}: {what}: the body is JSON nested deeper than the parser can follow "
                                    f"(about {sys.getrecursionlimit()} levels); records must be objects of scalars, or "
                                    "of shallow objects and arrays: fix the source, or have its owner do so"
                                )
                            ) from None
                        del text
                        if not isinstance(body, dict) and not (allow_array and isinstance(body, list)):
                            raise PermanentSourceError(
                                self._redact(
                                    f"{self.connection}: {what} returned JSON {type(body).__name__}, expected an object"
                                )
                            )
                        return _Answer(body, response.headers, response.url, response.links)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason = type(exc).__name__
            except _DeadlineExceeded:
                reason = "deadline_exceeded"
            except json.JSONDecodeError:
                reason = "truncated_body"
            except UnicodeDecodeError:  # a body cut inside a multi-byte character, or a server sending bad bytes
                reason = "undecodable_body"
            stats.retry_reasons[reason] = stats.retry_reasons.get(reason, 0) + 1
            if attempt == self.max_attempts:
                raise TransientSourceError(
                    self._redact(f"{self.connection}: {what} failed {attempt} times, last with {reason}")
                )
            stats.retries += 1
            if wait is not None:  # the server's wait is a floor
                sleep = wait * (1 + random.uniform(0, RETRY_AFTER_JITTER))
            else:
                sleep = random.uniform(0, min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1)))
            log.warning(
                self._redact(
                    f"{self.connection}: transient {reason} on {what}, attempt {attempt}; retrying in {sleep:.2f}s"
                )
            )
            time.sleep(sleep)
        raise AssertionError("unreachable")

    def _fix_for(self, status: int) -> str:
        if status in (401, 403):
            configured = [
                env
                for kind in ("bearer", "api_key", "basic", "oauth2_client_credentials")
                for name, env in auth_env_vars(self.connection, kind).items()
                if getattr(self, name)
            ]
            shown = " and ".join(configured) or f"{self.connection.upper()}_TOKEN"
            return f"check the credentials in {shown} and their permissions, and the spec's `auth`"
        if status == 404:
            return "check `endpoint` in the spec and the base URL"
        return "check the request parameters in the spec"

    def extract(
        self,
        spec: ApiSource,
        columns: list[str],
        window: tuple[datetime, datetime] | None = None,
        updated_since: str | None = None,
        stats: ExtractStats | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Yield one Arrow batch (text columns plus ``_etl_source``) per page.

        Paging is bounded: a cursor or next URL handed back that this extraction already requested, a page whose
        records are those of an earlier page (a server ignoring ``page``, or the cursor), more than
        ``pagination.max_pages`` pages, or a body beyond ``max_page_bytes`` fail at once with a
        :class:`PermanentSourceError` instead of requesting for ever (or holding a page too big for memory); so does a
        next URL on another origin than the base URL (following it would hand the credentials to that host). Only
        one page's records are held at a time.

        Args:
            spec: The spec's source section.
            columns: Contract columns, always present in the batches (null when the API omits them).
            window: The partition's [start, end), sent in ``spec.window_params``.
            updated_since: Incremental watermark, sent as ``spec.incremental.param``.
            stats: Filled with pages, records, retries and the highest ``incremental.field`` seen.

        Raises:
            PermanentSourceError: see above, and :meth:`fetch`.
            ContractError: a page's keys cannot be columns, or its JSON is nested too deep (see :meth:`fetch`).
        """
        stats = stats if stats is not None else ExtractStats()
        params: dict[str, str | int] = {}
        if window is not None:
            if spec.window_params is None:
                raise PermanentSourceError(
                    f"{spec.endpoint}: a partitioned api source needs `window_params` in its spec"
                )
            params[spec.window_params[0]] = window[0].isoformat()
            params[spec.window_params[1]] = window[1].isoformat()
        if updated_since is not None and spec.incremental is not None:
            params[spec.incremental.param] = updated_since
        pag = spec.pagination
        where = f"{self.connection}: GET {spec.endpoint}"
        records_path = compile_path(spec.records_path)
        # digests, not values: a cursor may be long, and a partition may have up to max_pages of them
        cursors_sent: dict[bytes, int] = {}  # cursor (or next URL) digest -> the page requested with it
        pages_seen: dict[bytes, int] = {}  # records digest -> the first page holding them
        origin = _origin(httpx.URL(self.base_url()))
        with self.client(spec) as client:
            url: str = spec.endpoint
            page = 1
            cursor: str | None = None
            offset = 0
            link: str | None = None  # json_link / header_link: the next page's URL, which carries its own query
            while True:
                if page > pag.max_pages:
                    raise PermanentSourceError(
                        self._redact(
                            f"{where}: page {pag.max_pages} says more pages follow, but one extraction may read at most "
                            f"pagination.max_pages = {pag.max_pages:,} pages; raise `pagination.max_pages` in the spec "
                            "(or `pagination.page_size`) if the partition really is that large, or check that the "
                            "API's paging ends"
                        )
                    )
                page_params: dict[str, str | int] | None = dict(params)
                if pag.style == "page_number":
                    page_params.update({pag.page_param: pag.base_page + page - 1, pag.page_size_param: pag.page_size})
                    source = f"{spec.endpoint}?{pag.page_param}={pag.base_page + page - 1}"
                elif pag.style == "offset":
                    page_params.update({pag.offset_param: offset, pag.limit_param: pag.page_size})
                    source = f"{spec.endpoint}?{pag.offset_param}={offset}"
                elif pag.style == "cursor":
                    page_params[pag.limit_param] = pag.page_size
                    if cursor:
                        page_params[pag.cursor_param] = cursor
                        cursors_sent[_digest(cursor)] = page
                    source = f"{spec.endpoint}?{pag.cursor_param}={cursor or ''}"
                elif pag.style in ("json_link", "header_link"):
                    if link is None:
                        page_params[pag.limit_param] = pag.page_size
                        source = spec.endpoint
                    else:
                        url, page_params = link, None
                        cursors_sent[_digest(link)] = page
                        parts = httpx.URL(link)
                        source = parts.raw_path.decode("ascii", errors="replace")
                else:  # single_page
                    source = spec.endpoint
                answer = self.fetch(
                    client,
                    url,
                    page_params,
                    stats,
                    spec.deadline_seconds(),
                    max_bytes=spec.max_page_bytes,
                    page=page,
                    allow_array=True,
                )
                body = answer.body
                records = select(body, records_path)
                if not isinstance(records, list):
                    keys = f"; its top-level keys are {_names(list(body))}" if isinstance(body, dict) else ""
                    found = "absent" if records is MISSING else f"a JSON {type(records).__name__}"
                    raise PermanentSourceError(
                        self._redact(
                            f"{where} page {page}: `{spec.records_path}` is {found}, not a list{keys}; fix "
                            "`records_path` in the spec (a JSONPath such as data.items or $.results[*])"
                        )
                    )
                stats.pages += 1
                more = bool(records)
                if pag.style == "page_number":
                    total = _field(body, pag.total_pages_field)
                    more = more and not (isinstance(total, int) and page >= total)
                elif pag.style == "offset":
                    offset += pag.page_size
                    total = _field(body, pag.total_field)
                    more = more and not (isinstance(total, int) and offset >= total)
                elif pag.style == "cursor":
                    found = (
                        answer.headers.get(pag.cursor_header)
                        if pag.cursor_header
                        else _field(body, pag.next_cursor_field)
                    )
                    cursor = None if found is None or found == "" else str(found)
                    more = more and cursor is not None
                    if more and _digest(cursor) in cursors_sent:
                        named = f"header `{pag.cursor_header}`" if pag.cursor_header else f"`{pag.next_cursor_field}`"
                        raise PermanentSourceError(
                            self._redact(
                                f"{where} page {page}: the answer's {named} is "
                                f"{_short(str(cursor), 60)!r}, the cursor page {cursors_sent[_digest(cursor)]} was "
                                "already requested with: the API does not advance, and following it would never end. "
                                "Check `pagination.next_cursor_field` (or `cursor_header`) and "
                                f"`pagination.cursor_param` (now {pag.cursor_param!r}) against the API's documentation, "
                                "or report the API's paging bug to its owner"
                            )
                        )
                elif pag.style in ("json_link", "header_link"):
                    found = (
                        _field(body, pag.next_url_field)
                        if pag.style == "json_link"
                        else answer.links.get("next", {}).get("url")
                    )
                    link = None
                    if isinstance(found, str) and found:
                        link = str(answer.url.join(found))  # a relative link is relative to the page it came with
                        named = f"`{pag.next_url_field}`" if pag.style == "json_link" else 'Link header\'s rel="next"'
                        if _origin(httpx.URL(link)) != origin:
                            raise PermanentSourceError(
                                self._redact(
                                    f"{where} page {page}: the answer's {named} points to "
                                    f"{_origin_text(httpx.URL(link))}, another origin than the base URL's "
                                    f"({_origin_text(httpx.URL(self.base_url()))}); following it would send the "
                                    f"connection's credentials there, so it is refused. If the API really moved, set "
                                    f"{self.connection.upper()}_URL (or `default_url`) to its new base URL"
                                )
                            )
                        if _digest(link) in cursors_sent:
                            raise PermanentSourceError(
                                self._redact(
                                    f"{where} page {page}: the answer's {named} is the URL page "
                                    f"{cursors_sent[_digest(link)]} was already requested with: the API does not "
                                    "advance, and following it would never end; check `pagination.style` (and "
                                    "`next_url_field`) against the API's documentation, or report the API's paging bug "
                                    "to its owner"
                                )
                            )
                    more = link is not None
                else:
                    more = False
                del body, answer  # from here on only this page's records are held, no longer than its batch needs them
                if records:
                    stats.records += len(records)
                    try:
                        batch = _to_text_batch(records, columns, self._redact(source))
                    except RecursionError:  # nested values too deep to spell as JSON text
                        raise ContractError(
                            f"{where} page {page}: a record holds values nested deeper than can be kept as JSON text; "
                            "fix the source, or have its owner do so"
                        ) from None
                    del records
                    digest = _batch_digest(batch)
                    if digest in pages_seen:
                        raise PermanentSourceError(
                            self._redact(
                                f"{where} page {page}: its {batch.num_rows:,} records are those of page "
                                f"{pages_seen[digest]}: {_repeat_fix(pag)}"
                            )
                        )
                    pages_seen[digest] = page
                    if spec.incremental is not None and spec.incremental.field in batch.schema.names:
                        top = pc.max(batch.column(spec.incremental.field)).as_py()  # pyright: ignore[reportAttributeAccessIssue]
                        if top is not None and (stats.max_watermark is None or top > stats.max_watermark):
                            stats.max_watermark = top
                    yield batch
                    del batch
                else:
                    del records
                if not more:
                    return
                page += 1


def _repeat_fix(pag: Pagination) -> str:
    """What a page repeating an earlier one says about the API, and the fix."""
    if pag.style == "page_number":
        return (
            f"the API ignores the page parameter {pag.page_param!r}, so paging would never end (or load every record "
            "again); set `pagination.page_param` and `pagination.page_size_param` to the parameters the API reads, "
            "or use `pagination.style: cursor` if it pages by cursor"
        )
    if pag.style == "offset":
        return (
            f"the API ignores the offset parameter {pag.offset_param!r}, so paging would never end; set "
            "`pagination.offset_param` and `pagination.limit_param` to the parameters the API reads"
        )
    if pag.style == "cursor":
        return (
            f"the API ignores the cursor parameter {pag.cursor_param!r}, so paging would never end; set "
            "`pagination.cursor_param` to the parameter the API reads"
        )
    return (
        "the API's next links do not advance, so paging would never end; check `pagination.style` against the API's "
        "documentation, or report the API's paging bug to its owner"
    )


def _field(body: object, path: str | None) -> object:
    """The value at JSONPath ``path`` of ``body``; None when ``path`` is None or the body has no such value."""
    if path is None:
        return None
    value = select(body, compile_path(path))
    return None if value is MISSING else value


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _origin_text(url: httpx.URL) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


def _digest(value: object) -> bytes:
    return hashlib.blake2b(str(value).encode(), digest_size=16).digest()


class _DeadlineExceeded(Exception):
    """The whole request took longer than its deadline (each read arrived within the timeout)."""


class _BodyTooLarge(Exception):
    """The body is larger than the most bytes accepted; the text says how that was found."""


def _read_within(
    response: httpx.Response, deadline: float | None, limit: int | None = None, cut: bool = False
) -> bytearray:
    """The body of a streamed response, given up on once ``deadline`` (``time.monotonic()``) has passed.

    A body longer than ``limit`` bytes raises :class:`_BodyTooLarge` (on its ``Content-Length``, before any of it is
    read, or once more has arrived: at most one network chunk past the limit is held), or with ``cut`` is returned
    cut at the limit. Bytes are counted decoded (after gzip), as that is what the parser holds.
    """
    if limit is not None and not cut and "content-encoding" not in response.headers:
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            raise _BodyTooLarge(f"Content-Length {int(announced):,}")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if limit is not None and len(body) > limit:
            if cut:
                del body[limit:]
                break
            raise _BodyTooLarge(f"more than {limit:,} bytes arrived")
        if deadline is not None and time.monotonic() > deadline:
            raise _DeadlineExceeded()
    return body


def _retry_after(response: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (a number, or an HTTP date), within [0, MAX_RETRY_AFTER_SECONDS]."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:  # RFC 9110's other form, an HTTP date
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # neither: the client's own backoff applies
        if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, source unknown"
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _short(text: str, chars: int = 200) -> str:
    return text[:chars].replace("\n", " ")
