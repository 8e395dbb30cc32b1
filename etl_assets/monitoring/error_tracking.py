"""Error tracking: classify each failed run and record it in the warehouse (``ops.errors``, ``ops.error_summary``).

A failure is put in one of four classes:

* ``transient``: a source kept failing in a way that may pass (429, 5xx, timeouts); the request retries and the
  step's RetryPolicy were spent (:class:`~etl_assets.errors.TransientSourceError`).
* ``permanent``: a source refused for a reason a retry cannot fix (401/403/404, a missing file or table).
* ``data_quality``: the data broke its contract (a missing required column) or a blocking asset check failed.
* ``infrastructure``: anything else (a crashed run worker, a lost lock, a bug, a full disk).

The platform's own errors carry their class: ``Failure`` metadata ``error_class`` (set by
:func:`~etl_assets.errors.no_retry_for_permanent_errors`), or the ``error_class`` attribute of the
:class:`~etl_assets.errors.EtlError` subclass found in the error's cause chain.

Writes are one short transaction each. When the warehouse cannot take them (another process holds the file for too
long, the file is corrupt, the disk is full), the records wait in a spool file
(``$ETL_DATA_DIR/ops/errors_pending.jsonl``) and are written by the next write or flush (the run-failure sensor's
next record, the check-failure sensor's ticks, the pipeline health asset). Messages are stored with secrets masked
(:func:`etl_assets.redact.redact`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DagsterRun

from etl_assets import errors as etl_errors
from etl_assets.keys import Pipeline, parse_key, parse_ref, pipeline_job_name
from etl_assets.monitoring.warehouse_io import WarehouseBusy, table_exists, warehouse_session
from etl_assets.redact import redact
from etl_assets.resources.targets import DuckDBWarehouse
from etl_assets.settings import current_settings
from etl_assets.sqlutil import qualified, quote_ident

TRANSIENT = "transient"
PERMANENT = "permanent"
DATA_QUALITY = "data_quality"
INFRASTRUCTURE = "infrastructure"
ERROR_CLASSES = (TRANSIENT, PERMANENT, DATA_QUALITY, INFRASTRUCTURE)

OPS_SCHEMA = "ops"
ERRORS_TABLE = "errors"
SUMMARY_VIEW = "error_summary"
RUN_LEVEL_STEP = "(run)"
MAX_MESSAGE_CHARS = 2000
# Dagster's own error for a blocking asset check that failed: the data, not the platform, is at fault.
_CHECK_FAILED_ERRORS = {"DagsterAssetCheckFailedError"}


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _class_by_exception_name() -> dict[str, str]:
    """``{exception class name: error_class}`` for the platform's error hierarchy (read at call time)."""
    return {c.__name__: c.error_class for c in [etl_errors.EtlError, *_subclasses(etl_errors.EtlError)]}


def _error_chain(error) -> Iterator:
    """The error and its causes and contexts (``SerializableErrorInfo``), outermost first."""
    seen = 0
    pending = [error]
    while pending and seen < 20:
        info = pending.pop(0)
        if info is None:
            continue
        seen += 1
        yield info
        pending += [getattr(info, "cause", None), getattr(info, "context", None)]


def classify_error(error, failure_metadata: Mapping | None = None) -> str:
    """The error class of one failure.

    Args:
        error: The failure's ``SerializableErrorInfo`` (``step_failure_data.error``), or None.
        failure_metadata: ``Failure`` metadata (``step_failure_data.user_failure_data.metadata``), if any.

    Returns:
        One of :data:`ERROR_CLASSES`.
    """
    declared = (failure_metadata or {}).get("error_class")
    declared = getattr(declared, "value", declared)
    if declared in ERROR_CLASSES:
        return declared
    by_name = _class_by_exception_name()
    for info in _error_chain(error):
        name = getattr(info, "cls_name", None)
        if name in by_name:
            return by_name[name] if by_name[name] in ERROR_CLASSES else INFRASTRUCTURE
        if name in _CHECK_FAILED_ERRORS:
            return DATA_QUALITY
    return INFRASTRUCTURE


@dataclass(frozen=True)
class ErrorRecord:
    """One failure of one run, as stored in ``ops.errors``.

    Attributes:
        run_id: The failed run.
        job_name: Its job.
        pipeline: The spec (pipeline) the failed step belongs to, or the job name when none does.
        step_key: The failed step, or ``(run)`` when the run failed outside any step.
        asset_key: The asset the step materializes (``shop/raw_orders``), or empty.
        partition: The run's partition, or empty.
        error_class: One of :data:`ERROR_CLASSES`.
        message: What went wrong, as the step reported it (at most 2,000 characters).
        failed_at: When the failure happened (UTC).
    """

    run_id: str
    job_name: str
    pipeline: str
    step_key: str
    asset_key: str
    partition: str
    error_class: str
    message: str
    failed_at: datetime

    def to_json(self) -> dict:
        """A JSON-serializable dict (``failed_at`` as ISO 8601)."""
        data = asdict(self)
        data["failed_at"] = self.failed_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> ErrorRecord:
        """The inverse of :meth:`to_json`."""
        return cls(**{**data, "failed_at": datetime.fromisoformat(data["failed_at"])})


def pipeline_for_asset(asset_key: AssetKey | None, pipelines: Iterable[str]) -> str | None:
    """The pipeline that owns ``asset_key`` (``shop/warehouse_orders`` -> ``shop.orders``), if it is one of
    ``pipelines`` (references, ``<domain>.<name>``)."""
    parsed = parse_key(asset_key) if asset_key is not None else None
    if parsed is None:
        return None
    ref = parsed.ref
    return ref if ref in set(pipelines) else None


def pipeline_for_job(job_name: str, pipelines: Iterable[str]) -> str:
    """``shop__orders_pipeline`` -> ``shop.orders``, if it is one of ``pipelines``; any other job stands for itself."""
    by_job = {pipeline_job_name(parse_ref(ref) or Pipeline("", ref)): ref for ref in pipelines}
    return by_job.get(job_name, job_name)


def step_asset_keys(instance: DagsterInstance, run: DagsterRun) -> dict[str, list[AssetKey]]:
    """``{step key: [asset keys it materializes]}`` from the run's execution plan snapshot.

    The plan is what the run was going to do, so this also names the assets of steps that failed before
    materializing anything.
    """
    if not run.execution_plan_snapshot_id:
        return {}
    snapshot = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    mapping: dict[str, list[AssetKey]] = {}
    for step in snapshot.steps if snapshot else []:
        keys = []
        for output in step.outputs:
            key = getattr(getattr(output, "properties", None), "asset_key", None)
            if key is not None and key not in keys:
                keys.append(key)
        mapping[step.key] = keys
    return mapping


def _fallback_asset_key(step_key: str) -> AssetKey | None:
    """``shop__raw_orders`` -> ``shop/raw_orders`` when no plan is available (asset ops are named after their key)."""
    parts = step_key.split("__")
    return AssetKey(parts) if len(parts) > 1 else None


_WRAPPERS = {"RetryRequestedFromPolicy", "DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}


def failure_message(error, description: str | None = None) -> str:
    """What went wrong, for a person: the platform's ``Failure`` description, else the underlying exception.

    Dagster wraps a step's exception (``RetryRequestedFromPolicy`` once the RetryPolicy is spent,
    ``DagsterExecutionStepExecutionError``); the message names the exception inside and notes spent retries.
    """
    if description:
        return description
    chain = list(_error_chain(error))
    root = next((i for i in chain if getattr(i, "cls_name", None) not in _WRAPPERS), chain[0] if chain else None)
    if root is None:
        return ""
    text = (root.message or "").strip()
    qualified_name = text.split(":", 1)[0]
    if qualified_name.endswith(root.cls_name):
        text = text[len(qualified_name) + 1 :].strip()
    message = f"{root.cls_name}: {text}"
    retries = next((i for i in chain if getattr(i, "cls_name", None) == "RetryRequestedFromPolicy"), None)
    if retries is not None:
        message += f" ({(retries.message or '').strip()})"
    return message


def _truncate(message: str) -> str:
    """``message`` with secrets masked (before cutting, so no secret is cut beyond recognition), at most
    :data:`MAX_MESSAGE_CHARS` characters."""
    message = redact((message or "").strip())
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def records_for_failed_run(
    instance: DagsterInstance,
    run: DagsterRun,
    step_failure_events: Sequence,
    run_failure_message: str,
    pipelines: Iterable[str],
    failed_at: datetime | None = None,
) -> list[ErrorRecord]:
    """Classify a failed run: one record per failed step, or one run-level record when no step failed.

    Args:
        instance: The Dagster instance (for the run's execution plan).
        run: The failed run.
        step_failure_events: Its ``STEP_FAILURE`` events (``RunFailureSensorContext.get_step_failure_events()``).
        run_failure_message: The run failure event's message, used when no step failed.
        pipelines: Names of the pipelines (specs) of the code location.
        failed_at: When the run failed; defaults to now.
    """
    pipelines = list(pipelines)
    failed_at = failed_at or datetime.now(UTC)
    partition = run.tags.get("dagster/partition", "")
    assets_by_step = step_asset_keys(instance, run)
    records = []
    for event in step_failure_events:
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        metadata = user.metadata if user else {}
        message = (
            failure_message(data.error if data else None, user.description if user else None)
            or event.message
            or "step failed"
        )
        keys = assets_by_step.get(event.step_key) or [k for k in [_fallback_asset_key(event.step_key)] if k]
        asset = keys[0] if keys else None
        pipeline = pipeline_for_asset(asset, pipelines) or pipeline_for_job(run.job_name, pipelines)
        records.append(
            ErrorRecord(
                run_id=run.run_id,
                job_name=run.job_name,
                pipeline=pipeline,
                step_key=event.step_key,
                asset_key=asset.to_user_string() if asset else "",
                partition=partition,
                error_class=classify_error(data.error if data else None, metadata),
                message=_truncate(message),
                failed_at=failed_at,
            )
        )
    if not records:
        records.append(
            ErrorRecord(
                run_id=run.run_id,
                job_name=run.job_name,
                pipeline=pipeline_for_job(run.job_name, pipelines),
                step_key=RUN_LEVEL_STEP,
                asset_key="",
                partition=partition,
                error_class=INFRASTRUCTURE,
                message=_truncate(run_failure_message or "run failed outside any step"),
                failed_at=failed_at,
            )
        )
    return records


_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {quote_ident(OPS_SCHEMA)}",
    f"""CREATE TABLE IF NOT EXISTS {qualified(OPS_SCHEMA, ERRORS_TABLE)} (
        run_id VARCHAR NOT NULL,
        job_name VARCHAR NOT NULL,
        pipeline VARCHAR NOT NULL,
        step_key VARCHAR NOT NULL,
        asset_key VARCHAR NOT NULL,
        partition_key VARCHAR NOT NULL,
        error_class VARCHAR NOT NULL,
        message VARCHAR NOT NULL,
        failed_at TIMESTAMPTZ NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL
    )""",
    f"""CREATE OR REPLACE VIEW {qualified(OPS_SCHEMA, SUMMARY_VIEW)} AS
        SELECT pipeline, error_class, count(*) AS errors, count(DISTINCT run_id) AS runs,
               min(failed_at) AS first_seen, max(failed_at) AS last_seen
        FROM {qualified(OPS_SCHEMA, ERRORS_TABLE)}
        GROUP BY pipeline, error_class""",
]
_COLUMNS = [
    "run_id",
    "job_name",
    "pipeline",
    "step_key",
    "asset_key",
    "partition_key",
    "error_class",
    "message",
    "failed_at",
    "recorded_at",
]


def ensure_error_tables(con) -> None:
    """Create ``ops.errors`` and the ``ops.error_summary`` view if missing (call inside a transaction)."""
    for statement in _DDL:
        con.execute(statement)


class ErrorStore:
    """``ops.errors`` in the DuckDB warehouse, with a spool for records that could not be written yet.

    Args:
        warehouse: The warehouse resource.
        spool_path: Where records wait while the warehouse is busy; default ``$ETL_DATA_DIR/ops/errors_pending.jsonl``.
        wait_seconds: How long one write waits for another process to release the warehouse file.
    """

    def __init__(self, warehouse: DuckDBWarehouse, spool_path: Path | None = None, wait_seconds: float = 10.0):
        self.warehouse = warehouse
        self.spool_path = spool_path or current_settings().data_dir / "ops" / "errors_pending.jsonl"
        self.wait_seconds = wait_seconds
        # why the last record() or flush() could not write to the warehouse (None when it could)
        self.last_problem: str | None = None

    @contextmanager
    def _spool_lock(self) -> Iterator[None]:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, records: Sequence[ErrorRecord]) -> None:
        now = datetime.now(UTC)
        rows = [
            [
                r.run_id,
                r.job_name,
                r.pipeline,
                r.step_key,
                r.asset_key,
                r.partition,
                r.error_class,
                r.message,
                r.failed_at,
                now,
            ]
            for r in records
        ]
        run_ids = sorted({r.run_id for r in records})
        table = qualified(OPS_SCHEMA, ERRORS_TABLE)
        with warehouse_session(self.warehouse, wait_seconds=self.wait_seconds) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                ensure_error_tables(con)
                # A run's records are replaced as a whole, so recording a run twice leaves one set.
                con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?))", [run_ids])
                con.executemany(
                    f"INSERT INTO {table} ({', '.join(quote_ident(c) for c in _COLUMNS)})"
                    f" VALUES ({', '.join('?' for _ in _COLUMNS)})",
                    rows,
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _take_spool(self) -> list[ErrorRecord]:
        if not self.spool_path.exists():
            return []
        records = []
        for line in self.spool_path.read_text(errors="replace").splitlines():
            try:
                records.append(ErrorRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError):  # a line cut short by a crash mid-write (never fsynced)
                continue
        return records

    def record(self, records: Sequence[ErrorRecord]) -> bool:
        """Write ``records`` (and any spooled ones) in one short transaction; messages have secrets masked.

        Any failure to write (the warehouse busy, its file corrupt or unreadable, a full disk) spools the records
        for the next write or :meth:`flush`; why is kept in :attr:`last_problem`.

        Returns:
            True when written to the warehouse; False when the records were spooled instead.

        Raises:
            OSError: the spool itself could not be written (nothing was stored).
        """
        records = [replace(r, message=_truncate(r.message)) for r in records]
        self.last_problem = None
        with self._spool_lock():
            pending = self._take_spool()
            # one record per (run, step), the newest winning, so a run spooled and then recorded is written once
            everything = list({(r.run_id, r.step_key): r for r in [*pending, *records]}.values())
            if not everything:
                return True
            try:
                self._write(everything)
            except Exception as exc:  # noqa: BLE001 - whatever keeps the warehouse from taking them, keep them
                self.last_problem = (
                    str(exc) if isinstance(exc, WarehouseBusy) else f"{type(exc).__name__}: {redact(str(exc))}"
                )
                if records:
                    with open(self.spool_path, "a") as spool:
                        for r in records:
                            spool.write(json.dumps(r.to_json(), sort_keys=True) + "\n")
                        spool.flush()
                        os.fsync(spool.fileno())
                return False
            self.spool_path.unlink(missing_ok=True)
            return True

    def flush(self) -> bool:
        """Write spooled records, if any. Returns False when the warehouse is still busy."""
        return self.record([])

    def has_pending(self) -> bool:
        """Whether the spool holds anything (cheap: no lock, no warehouse)."""
        try:
            return self.spool_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def pending(self) -> int:
        """How many records wait in the spool."""
        with self._spool_lock():
            return len(self._take_spool())


def read_error_counts(
    warehouse: DuckDBWarehouse, since: datetime, wait_seconds: float = 30.0
) -> dict[tuple[str, str], int]:
    """``{(pipeline, error_class): errors}`` recorded since ``since`` (empty when nothing was recorded yet)."""
    if not warehouse.db_path().exists():
        return {}
    with warehouse_session(warehouse, read_only=True, wait_seconds=wait_seconds) as con:
        if not table_exists(con, OPS_SCHEMA, ERRORS_TABLE):
            return {}
        rows = con.execute(
            f"SELECT pipeline, error_class, count(*) FROM {qualified(OPS_SCHEMA, ERRORS_TABLE)}"
            " WHERE failed_at >= ? GROUP BY ALL",
            [since],
        ).fetchall()
    return {(p, c): n for p, c, n in rows}
