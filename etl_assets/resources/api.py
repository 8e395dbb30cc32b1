"""REST API source: paged JSON into Arrow batches, with timeouts, classified errors and backoff."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import httpx
import pyarrow as pa
import pyarrow.compute as pc
from dagster import ConfigurableResource, get_dagster_logger

from etl_assets.errors import ContractError, PermanentSourceError, TransientSourceError
from etl_assets.pipelines.spec import ApiSource

SOURCE_COLUMN = "_etl_source"
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_SECONDS = 60.0
# Up to this share of a Retry-After is added at random, so clients told the same wait do not all return together.
RETRY_AFTER_JITTER = 0.1


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
        ContractError: a contract column holds an object or array, which no scalar type can take.
    """
    seen = dict.fromkeys(columns)
    for record in records:
        seen.update(dict.fromkeys(record))
    contract = set(columns)
    arrays, names = [], []
    for name in seen:
        values = [r.get(name) for r in records]
        arrays.append(_text_array(values, name, name in contract, source))
        names.append(name)
    arrays.append(pa.array([source] * len(records), type=pa.string()))
    names.append(SOURCE_COLUMN)
    return pa.RecordBatch.from_arrays(arrays, names=names)


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


class RestApiSource(ConfigurableResource):
    """A JSON REST API.

    Attributes:
        connection: Connection name from the spec (``shop_api``).
        default_url: Base URL when ``url`` is not set.
        url: Base URL from the environment (``EnvVar("<CONNECTION>_URL")``).
        token: Bearer token; bind it with ``EnvVar`` so it never appears in config or logs.
        max_attempts: Attempts per request before a transient error is given up on.
        backoff_seconds: First backoff; doubles each attempt, with full jitter.
        max_backoff_seconds: Ceiling of one backoff sleep.
    """

    connection: str
    default_url: str
    url: str | None = None
    token: str | None = None
    max_attempts: int = 6
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 10.0

    def base_url(self) -> str:
        return (self.url or self.default_url).rstrip("/")

    def client(self, spec: ApiSource) -> httpx.Client:
        headers = {"Accept": "application/json", "User-Agent": "etl-assets"}
        if spec.auth == "bearer":
            if not self.token:
                raise PermanentSourceError(
                    f"{self.connection}: the spec asks for bearer auth but no token is configured; "
                    f"set {self.connection.upper()}_TOKEN in the environment"
                )
            headers["Authorization"] = f"Bearer {self.token}"
        return httpx.Client(base_url=self.base_url(), headers=headers, timeout=spec.timeout_seconds)

    def get_json(self, client: httpx.Client, url: str, params: dict | None, stats: ExtractStats,
                 deadline_seconds: float | None = None) -> dict:
        """GET with retries on transient failures; permanent ones raise at once.

        The body is read in chunks against a deadline for the whole request (``deadline_seconds``; httpx's timeout
        bounds each wait, so a server sending a byte now and then would otherwise hold the request for ever), and
        parsed with non-integer numbers as ``Decimal``, so a price with more digits than a float holds arrives as
        delivered. ``stats.retries`` counts the retries made; ``stats.retry_reasons`` every failed attempt by reason.

        Raises:
            PermanentSourceError: 4xx other than 408/425/429, or a body that is valid JSON of the wrong shape.
            TransientSourceError: the attempts ran out.
        """
        log = get_dagster_logger()
        for attempt in range(1, self.max_attempts + 1):
            wait = None
            deadline = time.monotonic() + deadline_seconds if deadline_seconds else None
            try:
                with client.stream("GET", url, params=params) as response:
                    if response.status_code in TRANSIENT_STATUS:
                        reason = f"http_{response.status_code}"
                        wait = _retry_after(response)
                    elif response.status_code >= 400:
                        text = _read_within(response, deadline).decode("utf-8", errors="replace")
                        raise PermanentSourceError(
                            f"{self.connection}: GET {response.request.url.path} answered {response.status_code}"
                            f" {_short(text)}; {_fix_for(response.status_code, self.connection)}"
                        )
                    else:
                        body = json.loads(_read_within(response, deadline), parse_float=Decimal)
                        if not isinstance(body, dict):
                            raise PermanentSourceError(
                                f"{self.connection}: GET {url} returned JSON {type(body).__name__}, expected an object"
                            )
                        return body
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
                    f"{self.connection}: GET {url} failed {attempt} times, last with {reason}"
                )
            stats.retries += 1
            if wait is not None:  # the server's wait is a floor
                sleep = wait * (1 + random.uniform(0, RETRY_AFTER_JITTER))
            else:
                sleep = random.uniform(0, min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1)))
            log.warning(f"{self.connection}: transient {reason} on GET {url}, attempt {attempt}; retrying in {sleep:.2f}s")
            time.sleep(sleep)
        raise AssertionError("unreachable")

    def extract(
        self,
        spec: ApiSource,
        columns: list[str],
        window: tuple[datetime, datetime] | None = None,
        updated_since: str | None = None,
        stats: ExtractStats | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Yield one Arrow batch (text columns plus ``_etl_source``) per page.

        Args:
            spec: The spec's source section.
            columns: Contract columns, always present in the batches (null when the API omits them).
            window: The partition's [start, end), sent in ``spec.window_params``.
            updated_since: Incremental watermark, sent as ``spec.incremental.param``.
            stats: Filled with pages, records, retries and the highest ``incremental.field`` seen.
        """
        stats = stats if stats is not None else ExtractStats()
        params: dict[str, str | int] = {}
        if window is not None:
            if spec.window_params is None:
                raise PermanentSourceError(f"{spec.endpoint}: a partitioned api source needs `window_params` in its spec")
            params[spec.window_params[0]] = window[0].isoformat()
            params[spec.window_params[1]] = window[1].isoformat()
        if updated_since is not None and spec.incremental is not None:
            params[spec.incremental.param] = updated_since
        pag = spec.pagination
        with self.client(spec) as client:
            url: str = spec.endpoint
            page = 1
            cursor: str | None = None
            while True:
                page_params = dict(params)
                if pag.style == "page":
                    page_params.update({pag.page_param: page, pag.page_size_param: pag.page_size})
                else:
                    page_params[pag.limit_param] = pag.page_size
                    if cursor:
                        page_params[pag.cursor_param] = cursor
                body = self.get_json(client, url, page_params, stats, spec.deadline_seconds())
                records = body.get(spec.records_path)
                if not isinstance(records, list):
                    raise PermanentSourceError(
                        f"{self.connection}: GET {spec.endpoint} page {page}: `{spec.records_path}` is not a list; "
                        f"fix `records_path` in the spec"
                    )
                stats.pages += 1
                if records:
                    stats.records += len(records)
                    batch = _to_text_batch(records, columns, f"{spec.endpoint}?page={page}" if pag.style == "page" else f"{spec.endpoint}?cursor={cursor or ''}")
                    if spec.incremental is not None and spec.incremental.field in batch.schema.names:
                        top = pc.max(batch.column(spec.incremental.field)).as_py()
                        if top is not None and (stats.max_watermark is None or top > stats.max_watermark):
                            stats.max_watermark = top
                    yield batch
                if pag.style == "page":
                    total = body.get(pag.total_pages_field)
                    if not records or (isinstance(total, int) and page >= total):
                        return
                    page += 1
                else:
                    cursor = body.get(pag.next_cursor_field)
                    if not cursor or not records:
                        return
                    page += 1


class _DeadlineExceeded(Exception):
    """The whole request took longer than its deadline (each read arrived within the timeout)."""


def _read_within(response: httpx.Response, deadline: float | None) -> bytes:
    """The body of a streamed response, given up on once ``deadline`` (``time.monotonic()``) has passed."""
    chunks = []
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise _DeadlineExceeded()
    return b"".join(chunks)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP-date form is rare for these APIs; the client's own backoff applies
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _short(text: str) -> str:
    return text[:200].replace("\n", " ")


def _fix_for(status: int, connection: str) -> str:
    if status in (401, 403):
        return f"check the token in {connection.upper()}_TOKEN and its permissions"
    if status == 404:
        return "check `endpoint` in the spec and the base URL"
    return "check the request parameters in the spec"
