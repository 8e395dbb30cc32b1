"""Error classes. Transient errors are worth retrying; permanent ones need a person and fail at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from dagster import Failure, MetadataValue

from etl_assets.redact import redact, redact_metadata, scrub_exception


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
    """Data broke its contract in a way that cannot be quarantined row by row (a missing required column).

    ``input_at_fault`` says the delivered input itself is the cause, so running the same input again fails the
    same way (a landing file failing like this goes to landing quarantine).
    """

    error_class = "data_quality"
    input_at_fault = True


class UpstreamNotReadyError(ContractError):
    """Validation needs data that is not there yet (a referenced dataset never loaded): the input is not at fault,
    and a re-run after the upstream has loaded passes."""

    input_at_fault = False


# Failure metadata keys this module sets (monitoring and the landing sensors read them).
META_ERROR_CLASS = "error_class"
META_INPUT_AT_FAULT = "input_at_fault"


@contextmanager
def no_retry_for_permanent_errors() -> Iterator[None]:
    """Turn permanent errors into a Dagster ``Failure`` that the step's RetryPolicy does not retry.

    Every error leaving the block has secrets masked (URL userinfo, tokens, known secret values) in its message
    and in those of its causes, since Dagster stores the whole chain in the event log; other errors keep their
    class, so the RetryPolicy still retries them.
    """
    try:
        yield
    except (PermanentSourceError, ContractError) as exc:
        safe = scrub_exception(exc)
        metadata: dict[str, str | bool] = {META_ERROR_CLASS: exc.error_class}
        if isinstance(exc, ContractError):
            metadata[META_INPUT_AT_FAULT] = exc.input_at_fault
        raise Failure(
            description=redact(f"{exc.error_class} error: {safe}"),
            metadata=cast("dict[str, str | bool]", redact_metadata(metadata)),  # redaction keeps each value's type
            allow_retries=False,
        ) from safe
    except Failure as exc:
        safe = scrub_exception(exc)
        exc.description = redact(exc.description or "") or exc.description
        exc.metadata = cast("dict[str, MetadataValue]", redact_metadata(exc.metadata or {}))
        raise safe if safe is not exc else exc  # noqa: B904 (the failure itself, its cause chain as scrubbed)
    except Exception as exc:
        safe = scrub_exception(exc)
        if safe is exc:
            raise
        raise safe.with_traceback(exc.__traceback__) from safe.__cause__
