"""Error classes. Transient errors are worth retrying; permanent ones need a person and fail at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Failure


class EtlError(RuntimeError):
    """Base of the platform's errors; ``error_class`` is recorded by monitoring."""

    error_class = "infrastructure"


class TransientSourceError(EtlError):
    """A source failed in a way that may pass (429, 5xx, timeout, dropped connection); retries were spent."""

    error_class = "transient"


class PermanentSourceError(EtlError):
    """A source refused the request for a reason a retry cannot fix (401/403/404, bad config, wrong shape)."""

    error_class = "permanent"


class ContractError(EtlError):
    """Data broke its contract in a way that cannot be quarantined row by row (a missing required column)."""

    error_class = "data_quality"


@contextmanager
def no_retry_for_permanent_errors() -> Iterator[None]:
    """Turn permanent errors into a Dagster ``Failure`` that the step's RetryPolicy does not retry."""
    try:
        yield
    except (PermanentSourceError, ContractError) as exc:
        raise Failure(
            description=f"{exc.error_class} error: {exc}",
            metadata={"error_class": exc.error_class},
            allow_retries=False,
        ) from exc
