"""Fault-injection stress of the reference ``orders`` pipeline: many daily partitions against a flaky demo API.

Shared by ``benchmarks/stress_faults.py`` (1,000 partitions) and ``etl_assets_tests/test_stress_faults.py``
(50 partitions). Each partition is one run of the real ``shop__orders_pipeline`` job (raw/orders from the demo REST
API, clean/quarantine, warehouse/orders in DuckDB), launched once with ``execute_in_process`` against a real
DagsterInstance while the demo API server fails a share of its ``/orders`` requests with 500, 503, 429 (with
``Retry-After``), answers slower than the client's timeout, or sends a 200 whose body stops halfway.

The stress runs the packaged specs with ``orders`` adjusted (:func:`stress_specs`): a 1 s client timeout so a
"slow" answer (1.5 s) is a timeout without costing the spec's 20 s per fault, a small page size so every
partition is fetched in several pages and faults land mid-pagination, and the shop's partitions spanning the
generated data's days (:func:`etl_assets_demo.spans.shop_specs_over`). Everything else (request retries with backoff and jitter, the step RetryPolicy, validation,
the warehouse load) is the platform's own code and defaults.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from etl_assets.keys import Pipeline, clean_key, dagster_name, pipeline_job_name, raw_key
from etl_assets_demo.api_server import FAULT_KINDS, DemoApiServer, FaultConfig
from etl_assets_demo.data import DemoManifest

__all__ = [
    "FAULT_KINDS",
    "PartitionOutcome",
    "PhaseResult",
    "StressSettings",
    "WarehouseComparison",
    "compare_warehouse",
    "PhaseRunner",
    "load_dimensions",
    "run_phase",
    "stress_environment",
    "stress_specs",
]

ORDERS = Pipeline("shop", "orders")
ORDERS_JOB = pipeline_job_name(ORDERS)
DIMENSIONS_JOB = "shop_full_refresh"
RAW_ORDERS = raw_key(Pipeline("shop", "orders")).to_user_string()
CLEAN_ORDERS = clean_key(Pipeline("shop", "orders")).to_user_string()
ORDER_COLUMNS = (
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
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
# The warning RestApiSource.get_json logs before each backoff sleep; the only record of how long it slept.
_BACKOFF_LOG = re.compile(r"transient (?P<reason>\S+) on GET .*; retrying in (?P<seconds>[0-9.]+)s")
REASON_KIND = {
    "http_500": "500",
    "http_503": "503",
    "http_429": "429",
    "ReadTimeout": "slow",
    "RemoteProtocolError": "truncated",
    "ReadError": "truncated",
    "truncated_body": "truncated",
    "undecodable_body": "truncated",
    "deadline_exceeded": "drip",
}
"""The fault kind each retry reason of ``RestApiSource.get_json`` answers to (a timeout can also be load)."""


@dataclass(frozen=True)
class StressSettings:
    """How hard the stress pushes, and the client settings it runs the ``orders`` spec with.

    Attributes:
        fault_rate: Share of ``/orders`` requests the demo API faults.
        kinds: Fault kinds, drawn uniformly (500, 503, 429, slow, truncated by default).
        timeout_seconds: The orders spec's client timeout for the stress (the packaged spec says 20 s).
        slow_seconds: How long a "slow" fault stalls; above ``timeout_seconds``, so it is a client timeout.
        retry_after_seconds: ``Retry-After`` the demo API sends with 429 and 503 (the client obeys it, capped).
        page_size: The orders spec's page size for the stress (the packaged spec says 2,000).
        seed: Seed of the server's fault draws.
    """

    fault_rate: float = 0.10
    kinds: tuple[str, ...] = FAULT_KINDS
    timeout_seconds: float = 1.0
    slow_seconds: float = 1.5
    retry_after_seconds: int = 1
    page_size: int = 50
    seed: int = 7

    def faults(self) -> FaultConfig:
        return FaultConfig(
            rate=self.fault_rate,
            kinds=self.kinds,
            retry_after_seconds=self.retry_after_seconds,
            slow_seconds=self.slow_seconds,
            seed=self.seed,
        )


def stress_specs(manifest: DemoManifest, settings: StressSettings):
    """The packaged specs over the days of ``manifest``, with ``orders`` changed only where the stress needs it (see
    the module docstring)."""
    from etl_assets.resources.api import ApiSource
    from etl_assets_demo.spans import shop_specs_over

    specs = []
    for loaded in shop_specs_over(manifest.start, manifest.days):
        spec = loaded.spec
        if spec.name == "orders":
            assert isinstance(spec.source, ApiSource), "the packaged orders pipeline reads the shop API"
            source = spec.source.model_copy(
                update={
                    "timeout_seconds": settings.timeout_seconds,
                    "pagination": spec.source.pagination.model_copy(update={"page_size": settings.page_size}),
                }
            )
            loaded = loaded.model_copy(update={"spec": spec.model_copy(update={"source": source})})
        specs.append(loaded)
    return specs


@contextlib.contextmanager
def stress_environment(data_dir: Path, api_url: str) -> Iterator[None]:
    """``ETL_DATA_DIR`` and ``SHOP_API_URL`` for the stress, only the packaged specs, the local executor; restored after."""
    wanted = {"ETL_DATA_DIR": str(data_dir), "SHOP_API_URL": api_url, "ETL_PIPELINES_DIR": None, "ETL_ENV": None}
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, value in wanted.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class PartitionOutcome:
    """One partition's run(s). ``first_launch_ok`` is the figure that counts: no person re-launched it."""

    partition: str
    run_id: str
    first_launch_ok: bool
    seconds: float
    cpu_seconds: float = 0.0
    request_retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    backoff_seconds: dict[str, float] = field(default_factory=dict)
    step_retries: int = 0
    failed_checks: list[str] = field(default_factory=list)
    error: str = ""
    relaunches: int = 0
    final_ok: bool = False


@dataclass
class PhaseResult:
    """A sequence of partitions run against one demo API server."""

    label: str
    faults: FaultConfig | None
    outcomes: list[PartitionOutcome]
    wall_seconds: float  # inside the phase's execute_in_process calls (first launches and relaunches)
    requests: int
    faults_injected: dict[str, int]

    @property
    def partitions(self) -> int:
        return len(self.outcomes)

    @property
    def first_launch_ok(self) -> int:
        return sum(o.first_launch_ok for o in self.outcomes)

    @property
    def success_share(self) -> float:
        return self.first_launch_ok / self.partitions if self.outcomes else 0.0

    @property
    def request_retries(self) -> int:
        return sum(o.request_retries for o in self.outcomes)

    @property
    def step_retries(self) -> int:
        return sum(o.step_retries for o in self.outcomes)

    @property
    def retry_reasons(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for o in self.outcomes:
            total.update(o.retry_reasons)
        return dict(sorted(total.items()))

    @property
    def backoff_seconds(self) -> dict[str, float]:
        total: Counter[str] = Counter()
        for o in self.outcomes:
            total.update(o.backoff_seconds)
        return dict(sorted(total.items()))

    @property
    def relaunched(self) -> int:
        return sum(1 for o in self.outcomes if o.relaunches)

    @property
    def final_ok(self) -> int:
        return sum(o.final_ok for o in self.outcomes)

    @property
    def cpu_seconds(self) -> float:
        """CPU of this process during the phase's runs (the demo API server's threads included)."""
        return sum(o.cpu_seconds for o in self.outcomes)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _execute(job, instance, partition: str) -> PartitionOutcome:
    from dagster import DagsterEventType

    started, cpu = time.perf_counter(), _cpu_seconds()
    result = job.execute_in_process(instance=instance, partition_key=partition, run_config=QUIET, raise_on_error=False)
    outcome = PartitionOutcome(
        partition=partition,
        run_id=result.run_id,
        first_launch_ok=result.success,
        seconds=time.perf_counter() - started,
        cpu_seconds=_cpu_seconds() - cpu,
        final_ok=result.success,
    )
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() != RAW_ORDERS:
            continue
        metadata = event.materialization.metadata
        outcome.request_retries += int(metadata["request_retries"].value)
        for reason, count in (metadata["retry_reasons"].value or {}).items():
            outcome.retry_reasons[reason] = outcome.retry_reasons.get(reason, 0) + int(count)
    outcome.step_retries = sum(1 for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)
    for entry in instance.all_logs(result.run_id):
        found = _BACKOFF_LOG.search(entry.user_message or "") if entry.dagster_event is None else None
        if found:
            reason = found["reason"]
            outcome.backoff_seconds[reason] = outcome.backoff_seconds.get(reason, 0.0) + float(found["seconds"])
    outcome.failed_checks = [
        f"{e.asset_key.to_user_string()}:{e.check_name}" for e in result.get_asset_check_evaluations() if not e.passed
    ]
    if not result.success:
        outcome.error = (
            "; ".join(
                f"{e.step_key}: {e.event_specific_data.error.message.strip()[:300]}"
                for e in result.get_step_failure_events()
            )
            or "run failed"
        )
    return outcome


def load_dimensions(manifest: DemoManifest, instance, settings: StressSettings) -> float:
    """Run ``shop_full_refresh`` (customers, products, fx_rates) once: orders' relationship rules read them.

    Returns:
        Its wall seconds. Raises RuntimeError if it failed (it touches no faulted source).
    """
    from etl_assets.definitions import build_definitions

    with DemoApiServer(manifest.orders_path) as server, stress_environment(manifest.data_dir, server.url):
        defs = build_definitions(stress_specs(manifest, settings))
        started = time.perf_counter()
        result = defs.resolve_job_def(DIMENSIONS_JOB).execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False
        )
        if not result.success:
            raise RuntimeError(f"{DIMENSIONS_JOB} failed (run {result.run_id}); see its event log")
        return time.perf_counter() - started


class PhaseRunner:
    """A phase run partition by partition: its own demo API server (with or without faults), data dir and job.

    Two runners can interleave their partitions in one process (a baseline beside the faulted run, so that a
    shared machine's changing load falls on both alike): each run is launched inside its own phase's environment
    (``ETL_DATA_DIR``, ``SHOP_API_URL``; the resources read them at run time).

    Example:
        >>> with PhaseRunner(manifest, instance, settings, settings.faults(), "faulted") as runner:
        ...     for partition in manifest.partition_keys:
        ...         runner.run(partition)
        >>> runner.result().success_share
    """

    def __init__(
        self,
        manifest: DemoManifest,
        instance,
        settings: StressSettings,
        faults: FaultConfig | None,
        label: str,
        relaunch_failed: int = 2,
    ) -> None:
        """Configures the phase; the server starts on ``__enter__``.

        Args:
            manifest: The generated data (its ``data_dir`` holds the lake and the warehouse of this phase).
            instance: The DagsterInstance every run is recorded in.
            settings: The stress settings (client timeout and page size of the orders spec).
            faults: What the demo API injects; ``None`` for a fault-free baseline.
            label: Name of the phase in reports.
            relaunch_failed: Re-launches of a partition whose first launch failed (what a person would do), so
                the warehouse comparison covers every partition; it still counts as not succeeded.
        """
        self.manifest, self.instance, self.settings = manifest, instance, settings
        self.faults, self.label, self.relaunch_failed = faults, label, relaunch_failed
        self.outcomes: list[PartitionOutcome] = []
        self._server: DemoApiServer | None = None
        self._job = None
        self._requests = 0
        self._injected: dict[str, int] = {}

    def __enter__(self) -> PhaseRunner:
        from etl_assets.definitions import build_definitions

        self._server = DemoApiServer(self.manifest.orders_path, faults=self.faults).start()
        with self._environment():
            self._job = build_definitions(stress_specs(self.manifest, self.settings)).resolve_job_def(ORDERS_JOB)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._requests, self._injected = self._server.requests_total, self._server.faults_injected
            self._server.stop()
            self._server = None

    def _environment(self):
        assert self._server is not None, "use the runner as a context manager"
        return stress_environment(self.manifest.data_dir, self._server.url)

    def run(self, partition: str) -> PartitionOutcome:
        """Launch ``shop__orders_pipeline`` for ``partition``; relaunch it if the first launch failed."""
        with self._environment():
            outcome = _execute(self._job, self.instance, partition)
            while not outcome.final_ok and outcome.relaunches < self.relaunch_failed:
                again = _execute(self._job, self.instance, partition)
                outcome.relaunches += 1
                outcome.seconds += again.seconds
                outcome.cpu_seconds += again.cpu_seconds
                outcome.final_ok, outcome.run_id = again.final_ok, again.run_id
                outcome.request_retries += again.request_retries
                outcome.step_retries += again.step_retries
                for reason, slept in again.backoff_seconds.items():
                    outcome.backoff_seconds[reason] = outcome.backoff_seconds.get(reason, 0.0) + slept
                for reason, count in again.retry_reasons.items():
                    outcome.retry_reasons[reason] = outcome.retry_reasons.get(reason, 0) + count
        self.outcomes.append(outcome)
        return outcome

    def result(self) -> PhaseResult:
        """What the phase did so far (the server's counters are final once the runner has exited)."""
        if self._server is not None:
            self._requests, self._injected = self._server.requests_total, self._server.faults_injected
        return PhaseResult(
            label=self.label,
            faults=self.faults,
            outcomes=list(self.outcomes),
            wall_seconds=sum(o.seconds for o in self.outcomes),
            requests=self._requests,
            faults_injected=dict(self._injected),
        )


def run_phase(
    manifest: DemoManifest,
    instance,
    partitions: Sequence[str],
    settings: StressSettings,
    faults: FaultConfig | None,
    label: str,
    relaunch_failed: int = 2,
    progress: Callable[[int, PartitionOutcome], None] | None = None,
) -> PhaseResult:
    """Launch ``shop__orders_pipeline`` once per partition, in order, against a demo API injecting ``faults``.

    Args:
        manifest, instance, settings, faults, label, relaunch_failed: As for :class:`PhaseRunner`.
        partitions: Daily partition keys to run.
        progress: Called after each partition with its index (from 1) and outcome.
    """
    with PhaseRunner(manifest, instance, settings, faults, label, relaunch_failed) as runner:
        for index, partition in enumerate(partitions, start=1):
            outcome = runner.run(partition)
            if progress is not None:
                progress(index, outcome)
    return runner.result()


@dataclass
class WarehouseComparison:
    """``shop.orders`` in the warehouse against the generated source rows of the same partitions.

    Attributes:
        source_rows: Generated orders whose ``ordered_at`` day is one of the partitions.
        warehouse_rows: Rows of ``shop.orders``.
        distinct_order_ids: Distinct ``order_id`` in ``shop.orders``.
        missing_rows: Source rows (all nine columns, as a multiset) absent from the warehouse.
        extra_rows: Warehouse rows beyond the source multiset (duplicates, or values that changed on the way).
        duplicate_order_ids: ``order_id`` values held more than once.
        wrong_partition: Rows whose ``_etl_partition`` is not the UTC day of their ``ordered_at``.
        wrong_run: Rows whose ``_etl_run_id`` is not the run that last succeeded for their partition.
        quarantined: Rows in ``quarantine.shop__orders`` (the generated orders are all valid).
        partitions_expected: Partitions run.
        partitions_present: Distinct ``_etl_partition`` values among them in the warehouse.
    """

    source_rows: int
    warehouse_rows: int
    distinct_order_ids: int
    missing_rows: int
    extra_rows: int
    duplicate_order_ids: int
    wrong_partition: int
    wrong_run: int
    quarantined: int
    partitions_expected: int
    partitions_present: int

    @property
    def exact(self) -> bool:
        return (
            self.warehouse_rows == self.source_rows == self.distinct_order_ids
            and self.missing_rows == self.extra_rows == self.duplicate_order_ids == 0
            and self.wrong_partition == self.wrong_run == self.quarantined == 0
            and self.partitions_present == self.partitions_expected
        )

    def problems(self) -> list[str]:
        out = []
        if self.warehouse_rows != self.source_rows:
            out.append(f"warehouse holds {self.warehouse_rows} rows, the source {self.source_rows}")
        if self.distinct_order_ids != self.warehouse_rows:
            out.append(f"{self.warehouse_rows - self.distinct_order_ids} repeated order_id rows")
        for name in (
            "missing_rows",
            "extra_rows",
            "duplicate_order_ids",
            "wrong_partition",
            "wrong_run",
            "quarantined",
        ):
            if getattr(self, name):
                out.append(f"{name.replace('_', ' ')}: {getattr(self, name)}")
        if self.partitions_present != self.partitions_expected:
            out.append(f"{self.partitions_present} of {self.partitions_expected} partitions present in the warehouse")
        return out


def compare_warehouse(manifest: DemoManifest, phase: PhaseResult, warehouse: Path | None = None) -> WarehouseComparison:
    """Compare ``shop.orders`` with the generated orders of ``phase``'s partitions, exactly, on every column.

    Args:
        manifest: The generated data the phase ran on.
        phase: The phase (its partitions and, per partition, the run that last succeeded).
        warehouse: The DuckDB file; default: the phase's ``$ETL_DATA_DIR/warehouse.duckdb``.
    """
    import duckdb

    warehouse = warehouse or manifest.data_dir / "warehouse.duckdb"
    cols = ", ".join(ORDER_COLUMNS)
    runs = [(o.partition, o.run_id) for o in phase.outcomes]
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TEMP TABLE runs (part VARCHAR, run_id VARCHAR)")
        con.executemany("INSERT INTO runs VALUES (?, ?)", runs)
        # The source, typed like the warehouse columns, limited to the partitions that ran.
        con.execute(
            """
            CREATE TEMP TABLE source AS
            SELECT order_id::BIGINT AS order_id, customer_id::BIGINT AS customer_id, product_id::BIGINT AS product_id,
                   quantity::INTEGER AS quantity, unit_price::DECIMAL(12,2) AS unit_price, currency, status,
                   ordered_at::TIMESTAMPTZ AS ordered_at, updated_at::TIMESTAMPTZ AS updated_at
            FROM read_parquet(?)
            WHERE strftime(ordered_at::TIMESTAMPTZ, '%Y-%m-%d') IN (SELECT part FROM runs)
        """,
            [str(manifest.orders_path)],
        )
        (source_rows,) = con.execute("SELECT count(*) FROM source").fetchall()[0]
        warehouse_rows, distinct_ids, partitions_present = con.execute(
            "SELECT count(*), count(DISTINCT order_id), count(DISTINCT _etl_partition) FILTER "
            "(WHERE _etl_partition IN (SELECT part FROM runs)) FROM shop.orders"
        ).fetchall()[0]
        (missing,) = con.execute(
            f"SELECT count(*) FROM (SELECT {cols} FROM source EXCEPT ALL SELECT {cols} FROM shop.orders)"
        ).fetchall()[0]
        (extra,) = con.execute(
            f"SELECT count(*) FROM (SELECT {cols} FROM shop.orders EXCEPT ALL SELECT {cols} FROM source)"
        ).fetchall()[0]
        (duplicates,) = con.execute(
            "SELECT count(*) FROM (SELECT order_id FROM shop.orders GROUP BY order_id HAVING count(*) > 1)"
        ).fetchall()[0]
        (wrong_partition,) = con.execute(
            "SELECT count(*) FROM shop.orders WHERE _etl_partition IS DISTINCT FROM strftime(ordered_at, '%Y-%m-%d')"
        ).fetchall()[0]
        (wrong_run,) = con.execute(
            "SELECT count(*) FROM shop.orders o LEFT JOIN runs r ON r.part = o._etl_partition "
            "WHERE r.run_id IS DISTINCT FROM o._etl_run_id"
        ).fetchall()[0]
        from etl_assets.pipelines.steps.load import QUARANTINE_SCHEMA
        from etl_assets.sqlutil import qualified

        schema, table = QUARANTINE_SCHEMA, dagster_name(ORDERS)  # quarantine.<domain>__<name>
        has_quarantine = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
        ).fetchall()[0][0]
        quarantined = (
            con.execute(f"SELECT count(*) FROM {qualified(schema, table)}").fetchall()[0][0] if has_quarantine else 0
        )
    finally:
        con.close()
    return WarehouseComparison(
        source_rows=source_rows,
        warehouse_rows=warehouse_rows,
        distinct_order_ids=distinct_ids,
        missing_rows=missing,
        extra_rows=extra,
        duplicate_order_ids=duplicates,
        wrong_partition=wrong_partition,
        wrong_run=wrong_run,
        quarantined=quarantined,
        partitions_expected=len(runs),
        partitions_present=partitions_present,
    )
