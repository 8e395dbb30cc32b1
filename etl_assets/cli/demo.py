"""`etl-assets demo`: generate the demo upstreams, serve the demo API and run the reference pipelines in this
process against a Dagster instance (:func:`run_reference`, also used by tests). Its days must be partitions of the
shop's daily pipelines (:func:`outside_partitions`; by default they are all of them), or it refuses before
generating anything.

`demo generate` and `demo serve` need neither Dagster nor the code location; only the full run imports them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from etl_assets.cli import QUIET, CommandError, check_job, data_dir, open_instance
from etl_assets.cli.progress import Progress, target_rows
from etl_assets_demo import DemoApiServer, FaultConfig, generate_shop_data, load_manifest
from etl_assets_demo.api_server import run_server

if TYPE_CHECKING:
    from dagster import AssetMaterialization, DagsterInstance, Definitions

    from etl_assets.pipelines.spec import LoadedSpec

FULL_REFRESH_JOB = "shop_full_refresh"
DAILY_JOB = "shop_daily"


@dataclass(frozen=True)
class RunSummary:
    """One finished run of the demo; ``rows``: what it wrote to the targets (None when no count is known)."""

    job: str
    partition: str | None
    run_id: str
    success: bool
    seconds: float
    rows: int | None = None

    @property
    def label(self) -> str:
        return f"{self.job} {self.partition}" if self.partition else self.job


def run_reference(
    defs: Definitions,
    instance: DagsterInstance,
    partitions: Sequence[str],
    quiet: bool = True,
    on_run: Callable[[RunSummary], object] | None = None,
) -> list[RunSummary]:
    """Materialize the shop domain: the unpartitioned datasets once, then each daily partition in turn.

    Args:
        on_run: Called with each run's summary as soon as the run ends.

    Returns:
        One summary per run; the first failure stops the sequence.
    """
    from etl_assets.cli.runs import LocationRunner

    runner = LocationRunner(defs)  # the runs are the code location's, so the timeline and the Jobs page show them
    summaries = []
    for job_name, partition in reference_plan(partitions):
        started = time.perf_counter()
        result = runner.execute(instance, job_name, partition, run_config=QUIET if quiet else None)
        materializations = [e.materialization for e in result.get_asset_materialization_events()]
        rows = target_rows(materializations)
        if result.success:
            archive_loaded_files(defs, materializations)
        summary = RunSummary(job_name, partition, result.run_id, result.success, time.perf_counter() - started, rows)
        summaries.append(summary)
        if on_run is not None:
            on_run(summary)
        if not result.success:
            break
    return summaries


def archive_loaded_files(defs: Definitions, materializations: Iterable[AssetMaterialization]) -> list[str]:
    """Move the landing files a successful run loaded to the archive, as ``landing_archive_sensor`` does for the
    runs the file sensors launch: the demo's runs are launched here, so without this the file sensors of a later
    ``make dev`` would find the same files waiting and load them again.

    Returns:
        The files archived, as ``<dataset>/<name>``.
    """
    from etl_assets.keys import RAW, parse_key
    from etl_assets.resources.files import LandingFilesSource

    landing = (defs.resources or {}).get("landing")
    if not isinstance(landing, LandingFilesSource):
        return []
    moved = []
    for m in materializations:
        position = m.metadata.get("source_position")
        # a files source's raw partition names the landing files it read (an API or SQL source has no "files")
        parsed = parse_key(m.asset_key)
        if parsed is None or parsed.stage != RAW or "files" not in m.metadata or position is None:
            continue
        dataset = parsed.ref  # its landing folder
        for name in cast(list, position.value):
            if landing.archive(dataset, name) is not None:
                moved.append(f"{dataset}/{name}")
    return moved


def outside_partitions(specs: Iterable[LoadedSpec], start: dt.date, days: int) -> str | None:
    """Why data for ``days`` days from ``start`` would not all lie in partitions of the shop's daily pipelines (the
    first one found to miss a day, with its spec file), or None when it would: the demo loads one partition per day,
    and a day past the partitions can neither run nor show as loaded in the UI."""
    from etl_assets.pipelines.policy import partitions_def_for
    from etl_assets_demo.spans import SHOP_DOMAIN

    first, last = start.isoformat(), (start + dt.timedelta(days=days - 1)).isoformat()
    for loaded in specs:
        pdef = partitions_def_for(loaded.spec)
        if loaded.spec.domain != SHOP_DOMAIN or loaded.spec.partitions.type != "daily" or pdef is None:
            continue
        keys = pdef.get_partition_keys()
        if keys and keys[0] <= first and last <= keys[-1]:
            continue
        have = f"are {keys[0]} to {keys[-1]}" if keys else "have not begun"
        return (
            f"--start {start} --days {days} is data for {first} to {last}, but the daily partitions of "
            f"{loaded.spec.name} {have}: give a --start and --days within them, or change partitions.start and "
            f"partitions.last of each daily shop pipeline in {loaded.path}"
        )
    return None


def reference_plan(partitions: Sequence[str]) -> list[tuple[str, str | None]]:
    """The demo's runs in order: ``(job, partition)``, the full refresh first."""
    return [(FULL_REFRESH_JOB, None), *((DAILY_JOB, p) for p in partitions)]


def generate(args: argparse.Namespace) -> int:
    """`etl-assets demo generate`: write the demo source data."""
    manifest = generate_shop_data(
        data_dir(args.data_dir), orders=args.orders, days=args.days, start=args.start, seed=args.seed
    )
    print(
        f"generated {manifest.orders} orders, {manifest.customers} customers, {manifest.products} products "
        f"over {manifest.days} days into {manifest.data_dir}"
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    """`etl-assets demo serve`: serve the demo orders API until Ctrl-C."""
    manifest = load_manifest(data_dir(args.data_dir))
    faults = FaultConfig.parse(args.faults) if args.faults else None
    run_server(manifest.orders_path, args.host, args.port, os.environ.get("SHOP_API_TOKEN"), faults)
    return 0


def command(args: argparse.Namespace) -> int:
    """`etl-assets demo`: generate, serve the API on a free loopback port, run every reference pipeline, print a
    summary."""
    from etl_assets.definitions import build_definitions
    from etl_assets.pipelines.spec import PACKAGED_PIPELINES_ENV, load_specs_isolated

    folder = data_dir(args.data_dir)
    outside = outside_partitions(load_specs_isolated()[0], args.start, args.days)
    if outside is not None:
        raise CommandError(outside)
    manifest = generate_shop_data(folder, orders=args.orders, days=args.days, start=args.start, seed=args.seed)
    print(
        f"demo data: {manifest.orders} orders, {manifest.customers} customers, {manifest.products} products, "
        f"{manifest.days} days from {manifest.start}"
    )
    faults = FaultConfig.parse(args.faults) if args.faults else None
    with DemoApiServer(manifest.orders_path, token=os.environ.get("SHOP_API_TOKEN"), faults=faults) as server:
        os.environ["SHOP_API_URL"] = server.url
        print(f"demo API serving on {server.url}")
        defs = build_definitions()
        for job in (FULL_REFRESH_JOB, DAILY_JOB):
            check_job(
                defs, job, f"the demo runs the packaged shop domain, which {PACKAGED_PIPELINES_ENV}=off leaves out"
            )
        plan = reference_plan(manifest.partition_keys)
        with open_instance() as instance, Progress(len(plan), "demo") as progress:

            def report(run: RunSummary) -> None:
                progress.finished(run.label, run.success, run.rows, run.seconds, run_id=run.run_id)

            runs = run_reference(defs, instance, manifest.partition_keys, on_run=report)
    failed = [r for r in runs if not r.success]
    if failed:
        print(f"demo failed: run {failed[0].run_id} of {failed[0].job}; see its logs with `make dev`", file=sys.stderr)
        return 1
    _print_summary(folder)
    return 0


def _print_summary(folder: Path) -> None:
    """Print the row count of every warehouse table, and where the lake is."""
    from etl_assets.resources.targets import DuckDBWarehouse

    warehouse = DuckDBWarehouse()
    with warehouse.connect(read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables ORDER BY table_schema, table_name"
        ).fetchall()
        print(f"\nwarehouse: {warehouse.db_path()}")
        print(f"  {'table':<28} {'rows':>10}")
        for schema, table in tables:
            count = con.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchall()[0][0]
            print(f"  {schema + '.' + table:<28} {count:>10}")
    print(f"lake: {folder / 'lake'}\nopen the UI with `make dev` (http://127.0.0.1:3000)")
