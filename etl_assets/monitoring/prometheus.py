"""Prometheus metrics of the platform, read from the Dagster instance (``$DAGSTER_HOME``) at scrape time.

Run it with ``main(["--port", "9108"])`` (the ``etl-assets metrics serve`` command) and scrape
``http://127.0.0.1:9108/metrics``. Metrics:

* ``etl_runs_total{job,status}``: finished runs (``SUCCESS``, ``FAILURE``, ``CANCELED``) per job, a counter.
* ``etl_runs_in_progress{job,status}``: queued, starting, started and canceling runs per job, a gauge.
* ``etl_run_duration_seconds{job}``: histogram of finished runs' wall time (start to end).
* ``etl_rows_loaded_total{pipeline,target}``: sum of ``dagster/row_count`` over every materialization of
  ``<domain>/warehouse_<pipeline>`` (target ``warehouse``) and ``<domain>/postgres_<pipeline>`` (target ``postgres``).
* ``etl_rows_quarantined_total{pipeline}``: sum of ``rows_quarantined`` over materializations of
  ``<domain>/clean_<pipeline>``.
* ``etl_last_success_timestamp_seconds{pipeline}``: when a target asset of the pipeline last materialized.
* ``etl_metrics_scrape_seconds``: how long reading the instance took.

The collector remembers what it has read (runs by id, the last storage id per asset), so a scrape only reads
what changed since the previous one; the first scrape reads the whole history once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dagster import AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from etl_assets.keys import CLEAN, TARGET_PREFIXES, parse_key

FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
LOADED_PREFIXES = {prefix: "dagster/row_count" for prefix in TARGET_PREFIXES}
QUARANTINE_PREFIX, QUARANTINE_FIELD = CLEAN, "rows_quarantined"
# The figure each counted stage's materializations carry.
COUNTED_STAGES = {**LOADED_PREFIXES, QUARANTINE_PREFIX: QUARANTINE_FIELD}
PAGE = 500


@dataclass
class _AssetTally:
    after_storage_id: int | None = None
    total: float = 0.0
    last_timestamp: float | None = None


@dataclass
class _State:
    runs: dict[str, tuple[str, DagsterRunStatus, float | None]] = field(default_factory=dict)
    runs_updated_after: datetime | None = None
    assets: dict[tuple[str, ...], _AssetTally] = field(default_factory=dict)


def _metadata_number(metadata, name: str) -> float:
    value = metadata.get(name)
    value = getattr(value, "value", value)
    return float(value) if isinstance(value, (int, float)) else 0.0


class EtlMetricsCollector:
    """A ``prometheus_client`` custom collector reading the Dagster instance at each scrape.

    Args:
        instance: The Dagster instance (``DagsterInstance.get()`` in ``main``).
    """

    def __init__(self, instance: DagsterInstance):
        self.instance = instance
        self._state = _State()
        self._lock = threading.Lock()

    def _refresh_runs(self) -> None:
        state = self._state
        while True:
            since = state.runs_updated_after
            records = self.instance.get_run_records(
                RunsFilter(updated_after=since - timedelta(seconds=1)) if since else None,
                limit=PAGE,
                order_by="update_timestamp",
                ascending=True,
            )
            for record in records:
                run = record.dagster_run
                duration = (record.end_time - record.start_time) if record.start_time and record.end_time else None
                state.runs[run.run_id] = (run.job_name, run.status, duration)
            if records:
                newest = max(r.update_timestamp for r in records)
                moved = since is None or newest > since
                state.runs_updated_after = newest
                if len(records) == PAGE and moved:
                    continue
            return

    def _refresh_assets(self) -> None:
        for key in self.instance.get_asset_keys():
            parsed = parse_key(key)
            if parsed is None or parsed.stage not in COUNTED_STAGES:
                continue
            field_name = COUNTED_STAGES[parsed.stage]
            tally = self._state.assets.setdefault((parsed.stage, parsed.ref), _AssetTally())
            while True:
                result = self.instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=key, after_storage_id=tally.after_storage_id),
                    limit=PAGE,
                    ascending=True,
                )
                for record in result.records:
                    tally.after_storage_id = record.storage_id
                    materialization = record.asset_materialization
                    if materialization is not None:
                        tally.total += _metadata_number(materialization.metadata, field_name)
                    tally.last_timestamp = max(tally.last_timestamp or 0.0, record.timestamp)
                if not result.has_more or not result.records:
                    break

    def describe(self) -> list:
        """No metrics at registration time: the first scrape is the first read of the instance."""
        return []

    def collect(self) -> Iterator:
        """Read what changed in the instance and yield every metric family."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        started = time.perf_counter()
        with self._lock:
            self._refresh_runs()
            self._refresh_assets()
            runs = dict(self._state.runs)
            assets = {k: (v.total, v.last_timestamp) for k, v in self._state.assets.items()}

        finished = CounterMetricFamily("etl_runs", "Finished Dagster runs by job and status.", labels=["job", "status"])
        in_progress = GaugeMetricFamily(
            "etl_runs_in_progress", "Runs not yet finished, by job and status.", labels=["job", "status"]
        )
        counts: dict[tuple[str, str], int] = defaultdict(int)
        active: dict[tuple[str, str], int] = defaultdict(int)
        durations: dict[str, list[float]] = defaultdict(list)
        for job, status, duration in runs.values():
            if status in FINISHED:
                counts[(job, status.value)] += 1
                if duration is not None:
                    durations[job].append(duration)
            else:
                active[(job, status.value)] += 1
        for (job, status), n in sorted(counts.items()):
            finished.add_metric([job, status], n)
        for (job, status), n in sorted(active.items()):
            in_progress.add_metric([job, status], n)
        yield finished
        yield in_progress

        histogram = HistogramMetricFamily(
            "etl_run_duration_seconds", "Wall time of finished runs, by job.", labels=["job"]
        )
        for job, values in sorted(durations.items()):
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            histogram.add_metric([job], buckets, sum_value=sum(values))
        yield histogram

        loaded = CounterMetricFamily(
            "etl_rows_loaded",
            "Rows loaded into the targets (dagster/row_count of warehouse_* and postgres_* materializations).",
            labels=["pipeline", "target"],
        )
        quarantined = CounterMetricFamily(
            "etl_rows_quarantined",
            "Rows sent to quarantine (rows_quarantined of clean_* materializations).",
            labels=["pipeline"],
        )
        last_success = GaugeMetricFamily(
            "etl_last_success_timestamp_seconds",
            "Unix time of the latest materialization of the pipeline's target assets.",
            labels=["pipeline"],
        )
        latest: dict[str, float] = {}
        for (prefix, pipeline), (total, stamp) in sorted(assets.items()):
            if prefix in LOADED_PREFIXES:
                loaded.add_metric([pipeline, prefix], total)
                if stamp is not None:
                    latest[pipeline] = max(latest.get(pipeline, 0.0), stamp)
            elif prefix == QUARANTINE_PREFIX:
                quarantined.add_metric([pipeline], total)
        for pipeline, stamp in sorted(latest.items()):
            last_success.add_metric([pipeline], stamp)
        yield loaded
        yield quarantined
        yield last_success

        scrape = GaugeMetricFamily("etl_metrics_scrape_seconds", "Time spent reading the Dagster instance.")
        scrape.add_metric([], round(time.perf_counter() - started, 6))
        yield scrape


def serve(instance: DagsterInstance, host: str = "127.0.0.1", port: int = 9108):
    """Serve ``/metrics`` for ``instance`` in a background thread.

    Returns:
        ``(server, thread)``; call ``server.shutdown()`` to stop.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EtlMetricsCollector(instance))
    return start_http_server(port, addr=host, registry=registry)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the platform's Prometheus metrics of the instance at ``$DAGSTER_HOME`` until interrupted (``python -m
    etl_assets.monitoring.prometheus``; ``etl-assets metrics serve`` opens the CLI's instance and calls
    :func:`serve_until_stopped`).

    Args:
        argv: Command-line arguments after the subcommand: ``[--host 127.0.0.1] [--port 9108]``.

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="etl-assets metrics serve",
        description="Serve Prometheus metrics read from the Dagster instance in $DAGSTER_HOME at /metrics.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9108, help="port to bind (default 9108)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        instance = DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - report a missing or broken DAGSTER_HOME in one line
        print(f"etl-assets metrics: cannot open the Dagster instance ({exc}); set DAGSTER_HOME", file=sys.stderr)
        return 2
    return serve_until_stopped(instance, args.host, args.port)


def serve_until_stopped(instance: DagsterInstance, host: str = "127.0.0.1", port: int = 9108) -> int:
    """Serve ``/metrics`` for ``instance`` until SIGINT or SIGTERM, then dispose of the instance; returns 0."""
    server, thread = serve(instance, host, port)
    print(f"serving Prometheus metrics on http://{host}:{server.server_port}/metrics", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.shutdown()
        instance.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
