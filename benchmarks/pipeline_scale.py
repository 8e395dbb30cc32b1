"""Scale benchmark of the reference "shop" pipeline: time, throughput and peak memory per stage.

For each ``--orders`` scale this generates the demo data and runs the orders path through the real Dagster
assets, one stage at a time, each stage in its own fresh Python process so that its peak RSS is its own:

  generate    etl_assets_demo.generate_shop_data (upstream parquet, SQLite customers, landing files)
  dimensions  job shop_full_refresh: customers, products, fx_rates (raw -> clean/quarantine -> warehouse)
  extract     shop/raw_orders                          (demo REST API -> lake), every daily partition
  validate    shop/clean_orders + shop/quarantine_orders    (lake -> lake), every daily partition
  transform   shop/marts_orders_enriched, shop/marts_daily_revenue, every daily partition
  load        shop/warehouse_orders, shop/warehouse_orders_enriched, shop/warehouse_daily_revenue, every daily partition

Each stage child runs ``defs.resolve_job_def("shop_daily").execute_in_process(asset_selection=..., partition_key=p)``
for every partition against one shared DagsterInstance (SQLite storage in a temporary DAGSTER_HOME), exactly like
``etl-assets demo`` does (with the shop's daily partitions moved to the generated days, ``etl_assets_demo.spans``),
and reports its own wall time, CPU time and ``ru_maxrss``. The demo API server runs in a separate process for the
whole scale (its CPU and peak RSS are reported too) and SHOP_API_URL points at it.

Baselines (the "floor", run twice per scale in fresh processes, the faster run counts): DuckDB reading the
generated orders parquet straight into a warehouse table (``CREATE TABLE AS SELECT * FROM read_parquet``), and
DuckDB rewriting it as a zstd parquet file (``COPY ... TO``). Every stage's time is printed as a multiple of
both, and its CPU time as a multiple of the CTAS floor's CPU time (steadier than wall time when other work
shares the machine). ``floor_api`` fetches the same API pages with plain httpx + JSON decode, the floor for
extract: the demo API server's own cost is part of both.

Child processes get a bytecode cache of their own (PYTHONPYCACHEPREFIX in the work dir) that a warm-up process
fills first: with PYTHONDONTWRITEBYTECODE set and no .pyc files in the venv, every process would otherwise
compile every module it imports, seconds per stage that are not the pipeline's (``--no-pycache`` to measure
that as is). A digest of the etl_assets sources is printed per scale, with a warning if it changed mid-run.

Checks at the end (PASS/FAIL lines, exit status 1 on any FAIL): every run and asset check succeeded; at the
largest scale every stage's peak RSS is under 2 GiB; the warehouse holds exactly the generated orders (count,
distinct order_id, id range) in shop.orders and shop.orders_enriched, and shop.daily_revenue adds up to them.

Usage (from the repository root)::

    .venv/bin/python benchmarks/pipeline_scale.py                      # 1M and 10M orders over 7 days
    .venv/bin/python benchmarks/pipeline_scale.py --orders 20000       # smoke run, ~3 minutes
    .venv/bin/python benchmarks/pipeline_scale.py --orders 1000000 --days 7 --keep --workdir /var/tmp
    nohup .venv/bin/python benchmarks/pipeline_scale.py --orders 10000000 > bench.log 2>&1 &

Internal (what the parent runs; usable by hand against a kept work dir)::

    ETL_DATA_DIR=... DAGSTER_HOME=... SHOP_API_URL=... \\
        .venv/bin/python benchmarks/pipeline_scale.py --stage extract --partition 2024-01-01

Honours ETL_DUCKDB_MEMORY_LIMIT / ETL_DUCKDB_THREADS like the platform does (defaults: 1GB, all cores);
ETL_PIPELINES_DIR and ETL_ENV are removed from the children's environment so only the reference specs run
on the local (in-process) executor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import (
    code_digest,
    progress,
    step_failure_message,
    write_dagster_yaml,
)  # this directory is on sys.path (run as a script)

if TYPE_CHECKING:
    from etl_assets.cli.progress import Progress

RESULT_MARKER = "@@pipeline_scale@@ "
GIB = 1024**3
MEMORY_LIMIT_BYTES = 2 * GIB

DAILY_JOB = "shop_daily"
FULL_REFRESH_JOB = "shop_full_refresh"
# The orders path, stage by stage: the asset keys each stage materializes, per daily partition.
ORDER_STAGES: dict[str, list[list[str]]] = {
    "extract": [["shop", "raw_orders"]],
    "validate": [["shop", "clean_orders"], ["shop", "quarantine_orders"]],
    "transform": [["shop", "marts_orders_enriched"], ["shop", "marts_daily_revenue"]],
    "load": [["shop", "warehouse_orders"], ["shop", "warehouse_orders_enriched"], ["shop", "warehouse_daily_revenue"]],
}
PIPELINE_STAGES = ["generate", "dimensions", *ORDER_STAGES]
FLOOR_STAGES = ["floor_ctas", "floor_parquet"]
# processes per scale, as the progress counts them: warmup, the pipeline stages, floor_api, each floor twice
PROCESSES_PER_SCALE = 1 + len(PIPELINE_STAGES) + 1 + 2 * len(FLOOR_STAGES)
# Numeric materialization metadata summed over partitions and shown in the per-stage details.
DETAIL_METADATA = (
    "dagster/row_count",
    "rows_in",
    "rows_quarantined",
    "pages",
    "request_retries",
    "bytes_written",
    "extract_seconds",
    "validate_seconds",
    "write_seconds",
    "load_seconds",
)


# ----------------------------------------------------------------------------------------------------------------
# Child side: one stage in this (fresh) process, one JSON result line on stdout.


def _self_usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_bytes": ru.ru_maxrss * 1024, "cpu_seconds": ru.ru_utime + ru.ru_stime}


def _emit(payload: dict) -> None:
    sys.stdout.write(RESULT_MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _child_generate(args: argparse.Namespace) -> dict:
    from etl_assets_demo import generate_shop_data

    ready = _self_usage()
    started = time.perf_counter()
    manifest = generate_shop_data(
        os.environ["ETL_DATA_DIR"], orders=args.orders[0], days=args.days, start=args.start, seed=args.seed
    )
    seconds = time.perf_counter() - started
    return {
        "ready": ready,
        "work_seconds": seconds,
        "rows_out": manifest.orders,
        "orders": manifest.orders,
        "runs": 0,
        "run_failures": [],
        "check_failures": [],
        "steps": {},
        "metadata": {},
        "detail": {
            "customers": manifest.customers,
            "products": manifest.products,
            "partitions": manifest.partition_keys,
        },
    }


def _child_floor(stage: str) -> dict:
    """DuckDB alone on the generated orders, with the platform's connection settings (memory limit, spill dir)."""
    from etl_assets.settings import duckdb_connection
    from etl_assets_demo import load_manifest

    data_dir = Path(os.environ["ETL_DATA_DIR"])
    manifest = load_manifest(data_dir)
    scratch = data_dir / "floor"
    scratch.mkdir(exist_ok=True)
    source = str(manifest.orders_path)
    ready = _self_usage()
    started = time.perf_counter()
    if stage == "floor_ctas":
        db = scratch / "floor.duckdb"
        for leftover in scratch.glob("floor.duckdb*"):
            leftover.unlink()
        con = duckdb_connection(str(db))
        con.execute("CREATE TABLE orders AS SELECT * FROM read_parquet(?)", [source])
        rows = con.execute("SELECT count(*) FROM orders").fetchall()[0][0]
        con.close()
    else:
        out = scratch / "orders_copy.parquet"
        con = duckdb_connection()
        con.execute(f"COPY (SELECT * FROM read_parquet(?)) TO '{out}' (FORMAT parquet, COMPRESSION zstd)", [source])
        rows = con.execute("SELECT count(*) FROM read_parquet(?)", [str(out)]).fetchall()[0][0]
        con.close()
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "ready": ready,
        "work_seconds": seconds,
        "rows_out": rows,
        "orders": manifest.orders,
        "runs": 0,
        "run_failures": [],
        "check_failures": [],
        "steps": {},
        "metadata": {},
        "detail": {},
    }


def _child_floor_api(partitions: list[str] | None) -> dict:
    """Every page of every partition from the demo API with plain httpx + JSON decode, as the extract asset asks."""
    import httpx

    from etl_assets.pipelines.spec import load_specs
    from etl_assets.resources.api import ApiSource
    from etl_assets_demo import load_manifest

    manifest = load_manifest(os.environ["ETL_DATA_DIR"])
    spec = next(s.spec for s in load_specs() if s.spec.ref == "shop.orders")
    src = spec.source
    assert isinstance(src, ApiSource) and src.window_params is not None, "orders reads the shop API by time window"
    pag = src.pagination
    ready = _self_usage()
    rows = pages = 0
    started = time.perf_counter()
    with httpx.Client(base_url=os.environ["SHOP_API_URL"], timeout=src.timeout_seconds) as client:
        for key in partitions or manifest.partition_keys:
            day = dt.datetime.combine(dt.date.fromisoformat(key), dt.time(), tzinfo=dt.UTC)
            base = {
                src.window_params[0]: day.isoformat(),
                src.window_params[1]: (day + dt.timedelta(days=1)).isoformat(),
            }
            page, cursor = 1, None
            while True:
                if pag.style == "page":
                    params = {**base, pag.page_param: page, pag.page_size_param: pag.page_size}
                else:
                    params = {**base, pag.limit_param: pag.page_size, **({pag.cursor_param: cursor} if cursor else {})}
                response = client.get(src.endpoint, params=params)
                response.raise_for_status()
                body = response.json()
                records = body[src.records_path]
                rows += len(records)
                pages += 1
                if pag.style == "page":
                    total = body.get(pag.total_pages_field)
                    if not records or (isinstance(total, int) and page >= total):
                        break
                    page += 1
                else:
                    cursor = body.get(pag.next_cursor_field)
                    if not cursor or not records:
                        break
    seconds = time.perf_counter() - started
    return {
        "ready": ready,
        "work_seconds": seconds,
        "rows_out": rows,
        "orders": manifest.orders,
        "runs": 0,
        "run_failures": [],
        "check_failures": [],
        "steps": {},
        "metadata": {},
        "detail": {"pages": pages},
    }


def _child_pipeline(stage: str, partitions: list[str] | None) -> dict:
    """Materialize the stage's assets for every partition through the code location's job definitions."""
    from dagster import AssetKey, DagsterEventType, DagsterInstance

    from etl_assets.cli import QUIET
    from etl_assets.definitions import build_definitions
    from etl_assets_demo import load_manifest
    from etl_assets_demo.spans import shop_specs_over

    manifest = load_manifest(os.environ["ETL_DATA_DIR"])
    # the packaged specs, their partitions over the generated days (--start, --days) rather than the demo's week
    defs = build_definitions(shop_specs_over(manifest.start, manifest.days))
    if stage == "dimensions":
        job, selection, plan = defs.resolve_job_def(FULL_REFRESH_JOB), None, [None]
    else:
        job = defs.resolve_job_def(DAILY_JOB)
        selection = [AssetKey(path) for path in ORDER_STAGES[stage]]
        plan = partitions or manifest.partition_keys
    instance = DagsterInstance.get()
    ready = _self_usage()

    steps: dict[str, float] = {}
    metadata: dict[str, dict[str, float]] = {}
    run_failures: list[str] = []
    check_failures: list[str] = []
    checks = 0
    seconds = 0.0  # inside execute_in_process only; the bookkeeping below is not the pipeline's time
    with instance:
        for partition in plan:
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                partition_key=partition,
                asset_selection=selection,
                run_config=QUIET,
                raise_on_error=False,
            )
            seconds += time.perf_counter() - started
            label = f"{stage}[{partition}]" if partition else stage
            if not result.success:
                failure = result.get_run_failure_event()
                step_failures = [
                    f"{e.step_key}: {step_failure_message(e)[:300]}" for e in result.get_step_failure_events()
                ]
                run_failures.append(
                    f"{label} run {result.run_id}: "
                    + ("; ".join(step_failures) or (failure.message if failure else None) or "failed")
                )
            for evaluation in result.get_asset_check_evaluations():
                checks += 1
                if not evaluation.passed:
                    check_failures.append(
                        f"{label} {evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                        f" {dict((k, v.value) for k, v in evaluation.metadata.items())}"
                    )
            for event in result.get_asset_materialization_events():
                key = event.materialization.asset_key.to_user_string()
                sums = metadata.setdefault(key, {})
                for name, value in event.materialization.metadata.items():
                    if name in DETAIL_METADATA and isinstance(value.value, (int, float)):
                        sums[name] = sums.get(name, 0) + value.value
            started_at: dict[str, float] = {}
            for entry in instance.all_logs(
                result.run_id,
                of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE},
            ):
                step = entry.step_key
                assert step is not None  # a step's events name it
                if entry.dagster_event_type == DagsterEventType.STEP_START:
                    started_at[step] = entry.timestamp
                elif step in started_at:
                    steps[step] = steps.get(step, 0.0) + entry.timestamp - started_at[step]
    if stage == "dimensions":
        rows_out = sum(m.get("dagster/row_count", 0) for k, m in metadata.items() if k.startswith("shop/warehouse_"))
    else:
        rows_out = sum(metadata.get("/".join(path), {}).get("dagster/row_count", 0) for path in ORDER_STAGES[stage])
    return {
        "ready": ready,
        "work_seconds": seconds,
        "rows_out": rows_out,
        "orders": manifest.orders,
        "runs": len(plan),
        "checks": checks,
        "run_failures": run_failures,
        "check_failures": check_failures,
        "steps": steps,
        "metadata": metadata,
        "detail": {},
    }


WARMUP_MODULES = (
    "etl_assets",
    "etl_assets_demo",
    "pandas",
    "sqlalchemy",
    "sqlalchemy.dialects.sqlite",
    "httpx",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "psycopg",
)


def _child_warmup() -> dict:
    """Import what the stages import and execute one trivial asset, so their bytecode is cached before timing."""
    import importlib

    ready = _self_usage()
    started = time.perf_counter()
    for name in WARMUP_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from dagster import DagsterInstance, MaterializeResult, asset, materialize

    @asset
    def warmup():  # no return annotation: this module uses postponed annotations and Dagster evaluates them
        return MaterializeResult()

    with DagsterInstance.ephemeral() as instance:
        materialize(
            [warmup],
            instance=instance,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    return {
        "ready": ready,
        "work_seconds": time.perf_counter() - started,
        "rows_out": 0,
        "orders": 0,
        "runs": 1,
        "run_failures": [],
        "check_failures": [],
        "steps": {},
        "metadata": {},
        "detail": {},
    }


def _child_serve() -> None:
    """The demo API for the parent: print the URL, serve until stdin closes, print request count and peak RSS."""
    from etl_assets_demo import DemoApiServer, load_manifest

    manifest = load_manifest(os.environ["ETL_DATA_DIR"])
    with DemoApiServer(manifest.orders_path) as server:
        _emit({"url": server.url, "pid": os.getpid()})
        sys.stdin.read()
        requests = server.requests_total
    _emit({"requests": requests, **_self_usage()})


def run_child(args: argparse.Namespace) -> int:
    if args.stage == "serve":
        _child_serve()
        return 0
    if args.stage == "warmup":
        payload = _child_warmup()
    elif args.stage == "generate":
        payload = _child_generate(args)
    elif args.stage == "floor_api":
        payload = _child_floor_api(args.partition)
    elif args.stage in FLOOR_STAGES:
        payload = _child_floor(args.stage)
    else:
        payload = _child_pipeline(args.stage, args.partition)
    payload.update(_self_usage())
    _emit(payload)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Parent side: orchestration, measurement, tables, checks.


@dataclass
class StageResult:
    stage: str
    ok: bool
    proc_seconds: float
    work_seconds: float = 0.0
    rows_out: int = 0
    maxrss_bytes: int = 0
    ready_rss_bytes: int = 0
    cpu_seconds: float = 0.0
    runs: int = 0
    checks: int = 0
    run_failures: list[str] = field(default_factory=list)
    check_failures: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, dict[str, float]] = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    server_cpu_seconds: float | None = None
    error: str = ""


@dataclass
class ScaleResult:
    orders: int
    days: int
    stages: dict[str, StageResult] = field(default_factory=dict)
    floors: dict[str, list[StageResult]] = field(default_factory=dict)
    server: dict = field(default_factory=dict)
    verification: list[tuple[str, bool, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    api_floor: StageResult | None = None
    code_before: str = ""
    code_after: str = ""

    def floor(self, name: str) -> float | None:
        runs = [r.work_seconds for r in self.floors.get(name, []) if r.ok and r.work_seconds > 0]
        return min(runs) if runs else None


def _child_env(data_dir: Path, dagster_home: Path, api_url: str | None, pycache: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("ETL_PIPELINES_DIR", "ETL_ENV", "SHOP_API_TOKEN"):
        env.pop(name, None)
    env.update({"ETL_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(dagster_home), "PYTHONUNBUFFERED": "1"})
    if pycache is not None:
        # Cache bytecode outside the repository and the venv, so each stage does not recompile its imports.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if api_url:
        env["SHOP_API_URL"] = api_url
    else:
        env.pop("SHOP_API_URL", None)
    return env


def _venv_has_bytecode() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("dagster")
    return bool(spec and spec.origin and any((Path(spec.origin).parent / "__pycache__").glob("*.pyc")))


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_stage(stage: str, args: argparse.Namespace, env: dict[str, str], server_pid: int | None = None) -> StageResult:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--stage",
        stage,
        "--orders",
        str(args.orders_for_child),
        "--days",
        str(args.days),
        "--start",
        args.start.isoformat(),
        "--seed",
        str(args.seed),
    ]
    server_cpu_before = _proc_cpu_seconds(server_pid) if server_pid else None
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=env["ETL_DATA_DIR"])
    payload = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_MARKER):
            payload = json.loads(line[len(RESULT_MARKER) :])
        else:
            sys.stderr.write(f"  [{stage}] {line}")
    code = proc.wait()
    proc_seconds = time.perf_counter() - started
    if code != 0 or payload is None:
        return StageResult(stage, False, proc_seconds, error=f"child exited with status {code}")
    result = StageResult(
        stage=stage,
        ok=not payload["run_failures"] and not payload["check_failures"],
        proc_seconds=proc_seconds,
        work_seconds=payload["work_seconds"],
        rows_out=int(payload["rows_out"]),
        maxrss_bytes=payload["maxrss_bytes"],
        ready_rss_bytes=payload["ready"]["maxrss_bytes"],
        cpu_seconds=payload["cpu_seconds"] - payload["ready"]["cpu_seconds"],
        runs=payload["runs"],
        checks=payload.get("checks", 0),
        run_failures=payload["run_failures"],
        check_failures=payload["check_failures"],
        steps=payload["steps"],
        metadata=payload["metadata"],
        detail=payload["detail"],
    )
    if server_pid and server_cpu_before is not None:
        result.server_cpu_seconds = _proc_cpu_seconds(server_pid) - server_cpu_before
    return result


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", "serve"]
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=env["ETL_DATA_DIR"]
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_MARKER):
            return proc, json.loads(line[len(RESULT_MARKER) :])
        sys.stderr.write(f"  [serve] {line}")
    raise RuntimeError(f"the demo API server exited with status {proc.wait()} before announcing its URL")


def _stop_server(proc: subprocess.Popen) -> dict:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    stats: dict = {}
    for line in proc.stdout:
        if line.startswith(RESULT_MARKER):
            stats = json.loads(line[len(RESULT_MARKER) :])
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return stats


def _verify(data_dir: Path, orders: int) -> list[tuple[str, bool, str]]:
    """No loss, no duplication: the warehouse against the generated orders."""
    import duckdb

    checks: list[tuple[str, bool, str]] = []
    db = data_dir / "warehouse.duckdb"
    if not db.is_file():
        return [("warehouse exists", False, f"{db} missing")]
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = {
            f"{s}.{t}"
            for s, t in con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
        }
        for table in ("shop.orders", "shop.orders_enriched"):
            if table not in tables:
                checks.append((f"{table} rows == generated", False, "table missing"))
                continue
            n, distinct, lo, hi, parts = con.execute(
                f"SELECT count(*), count(DISTINCT order_id), min(order_id), max(order_id),"
                f" count(DISTINCT _etl_partition) FROM {table}"
            ).fetchall()[0]
            checks.append(
                (
                    f"{table} rows == generated",
                    n == orders and distinct == orders and lo == 1 and hi == orders,
                    f"rows {n:,}, distinct order_id {distinct:,}, ids {lo}..{hi}, {parts} partitions;"
                    f" generated {orders:,}",
                )
            )
        if "shop.daily_revenue" in tables and "shop.orders" in tables:
            revenue_orders = con.execute("SELECT coalesce(sum(orders), 0) FROM shop.daily_revenue").fetchall()[0][0]
            live = con.execute("SELECT count(*) FROM shop.orders WHERE status <> 'cancelled'").fetchall()[0][0]
            checks.append(
                (
                    "shop.daily_revenue adds up to shop.orders",
                    revenue_orders == live,
                    f"sum(orders) {revenue_orders:,}, non-cancelled orders {live:,}",
                )
            )
        else:
            checks.append(("shop.daily_revenue adds up to shop.orders", False, "table missing"))
    finally:
        con.close()
    quarantine = sorted((data_dir / "lake" / "shop" / "quarantine_orders").glob("*.parquet"))
    if quarantine:
        import pyarrow.parquet as pq

        bad = sum(pq.ParquetFile(p).metadata.num_rows for p in quarantine)
        checks.append(
            ("no orders quarantined (demo data is clean)", bad == 0, f"{bad:,} rows in shop/quarantine_orders")
        )
    return checks


def run_scale(orders: int, args: argparse.Namespace, root: Path, bar: Progress) -> ScaleResult:
    scale = ScaleResult(orders, args.days)
    scale.code_before = code_digest()
    base = root / f"orders_{orders}"
    data_dir, home = base / "data", base / "dagster_home"
    data_dir.mkdir(parents=True)
    home.mkdir()
    write_dagster_yaml(home, "pipeline_scale.py")
    env = _child_env(data_dir, home, None, args.pycache_dir)
    args.orders_for_child = orders
    began = time.perf_counter()
    print(f"\n== {orders:,} orders over {args.days} days: data in {base} ==", flush=True)

    def report(result: StageResult, label: str, timed: bool = True) -> None:
        """One progress line: the stage's own work seconds and rows out, or the process's seconds where the stage
        is not timed or its child reported nothing."""
        if result.stage in FLOOR_STAGES:
            label += f" {len(scale.floors[result.stage])}/2"
        measured = timed and result.work_seconds > 0
        bar.finished(
            f"{orders:,} orders: {label}",
            result.ok,
            result.rows_out if measured else None,
            result.work_seconds if measured else result.proc_seconds,
            note=f"process {result.proc_seconds:.1f} s, peak RSS {_mib(result.maxrss_bytes).strip()}",
        )

    def record(result: StageResult) -> bool:
        if result.stage in FLOOR_STAGES:
            scale.floors.setdefault(result.stage, []).append(result)
        else:
            scale.stages[result.stage] = result
        report(result, result.stage)
        status = "ok" if result.ok else "FAILED"
        print(
            f"  {result.stage:<13} {status:<6} work {result.work_seconds:8.2f}s  process {result.proc_seconds:8.2f}s"
            f"  peak RSS {_mib(result.maxrss_bytes)}  rows out {result.rows_out:,}",
            flush=True,
        )
        for message in [result.error, *result.run_failures, *result.check_failures]:
            if message:
                print(f"    ! {message}", flush=True)
        return result.ok

    warm = _run_stage("warmup", args, env)
    report(warm, "warmup (not timed as a stage)", timed=False)
    print(
        f"  warmup        {'ok' if warm.ok else 'FAILED':<6} process {warm.proc_seconds:8.2f}s"
        f"  (imports + one trivial Dagster run, not timed as a stage){' ' + warm.error if warm.error else ''}",
        flush=True,
    )
    if not record(_run_stage("generate", args, env)):
        return scale
    for floor in FLOOR_STAGES:
        record(_run_stage(floor, args, env))
    server, info = _start_server(env)
    try:
        env = _child_env(data_dir, home, info["url"], args.pycache_dir)
        for stage in ["dimensions", *ORDER_STAGES]:
            if not record(_run_stage(stage, args, env, server_pid=info["pid"])):
                break
            if stage == "extract":
                scale.api_floor = _run_stage("floor_api", args, env, server_pid=info["pid"])
                report(scale.api_floor, "floor_api")
                print(
                    f"  floor_api     {'ok' if scale.api_floor.ok else 'FAILED':<6} work {scale.api_floor.work_seconds:8.2f}s"
                    f"  process {scale.api_floor.proc_seconds:8.2f}s  rows {scale.api_floor.rows_out:,}"
                    f"{' ' + scale.api_floor.error if scale.api_floor.error else ''}",
                    flush=True,
                )
    finally:
        scale.server = _stop_server(server)
    for floor in FLOOR_STAGES:
        record(_run_stage(floor, args, env))
    scale.wall_seconds = time.perf_counter() - began
    scale.code_after = code_digest()
    if scale.code_after != scale.code_before:
        print(
            f"  WARNING: etl_assets changed while this scale ran ({scale.code_before} -> {scale.code_after});"
            " its stages may have run different code",
            flush=True,
        )
    scale.verification = _verify(data_dir, orders)
    return scale


# ----------------------------------------------------------------------------------------------------------------
# Reporting.


def _mib(n: float) -> str:
    return f"{n / 1024**2:7,.0f} MiB"


def _rate(rows: float, seconds: float) -> str:
    return f"{rows / seconds:12,.0f}" if seconds > 0 else f"{'-':>12}"


def _ratio(seconds: float, floor: float | None) -> str:
    return f"{seconds / floor:8.1f}x" if floor else f"{'-':>9}"


def print_scale(scale: ScaleResult) -> None:
    ctas, parquet = scale.floor("floor_ctas"), scale.floor("floor_parquet")
    partitions = scale.days
    print(
        f"\n=== {scale.orders:,} orders, {partitions} daily partitions (~{scale.orders // partitions:,} orders each),"
        f" {scale.wall_seconds:,.0f}s wall for the whole scale ==="
    )
    changed = f", CHANGED to {scale.code_after} during the scale" if scale.code_after != scale.code_before else ""
    print(f"etl_assets code digest {scale.code_before}{changed}")
    ctas_cpu = min((r.cpu_seconds for r in scale.floors.get("floor_ctas", []) if r.ok), default=None)
    header = (
        f"{'stage':<12} {'rows out':>12} {'work s':>9} {'process s':>9} {'orders/s':>12} {'peak RSS':>12}"
        f" {'RSS @start':>12} {'cpu s':>8} {'cpu/work':>8} {'x CTAS':>9} {'x parquet':>9} {'cpu x CTAS':>10}"
    )
    print(header)
    print("-" * len(header))
    total_work = total_proc = total_cpu = 0.0
    peak = 0
    for name in PIPELINE_STAGES:
        r = scale.stages.get(name)
        if r is None:
            print(f"{name:<12} {'(not run)':>12}")
            continue
        flag = "" if r.ok else "  FAILED"
        # orders/s: the generated orders over the stage's own time (dimensions: the rows it loaded).
        rows = r.rows_out if name == "dimensions" else scale.orders
        print(
            f"{name:<12} {r.rows_out:>12,} {r.work_seconds:>9.2f} {r.proc_seconds:>9.2f} {_rate(rows, r.work_seconds)}"
            f" {_mib(r.maxrss_bytes):>12} {_mib(r.ready_rss_bytes):>12} {r.cpu_seconds:>8.1f}"
            f" {r.cpu_seconds / r.work_seconds if r.work_seconds else 0:>8.2f}"
            f" {_ratio(r.work_seconds, ctas)} {_ratio(r.work_seconds, parquet)} {_ratio(r.cpu_seconds, ctas_cpu):>10}{flag}"
        )
        total_work += r.work_seconds
        total_proc += r.proc_seconds
        total_cpu += r.cpu_seconds
        peak = max(peak, r.maxrss_bytes)
    print("-" * len(header))
    print(
        f"{'total':<12} {'':>12} {total_work:>9.2f} {total_proc:>9.2f} {_rate(scale.orders, total_work)}"
        f" {_mib(peak):>12} {'':>12} {total_cpu:>8.1f} {'':>8} {_ratio(total_work, ctas)} {_ratio(total_work, parquet)}"
        f" {_ratio(total_cpu, ctas_cpu):>10}"
    )
    for name in FLOOR_STAGES:
        runs = scale.floors.get(name, [])
        if runs:
            best = min(runs, key=lambda r: r.work_seconds if r.ok else float("inf"))
            what = (
                "DuckDB CREATE TABLE AS SELECT * FROM read_parquet"
                if name == "floor_ctas"
                else "DuckDB COPY read_parquet TO zstd parquet"
            )
            print(
                f"{name:<12} {best.rows_out:>12,} {best.work_seconds:>9.2f} {best.proc_seconds:>9.2f}"
                f" {_rate(scale.orders, best.work_seconds)} {_mib(best.maxrss_bytes):>12} {_mib(best.ready_rss_bytes):>12}"
                f" {best.cpu_seconds:>8.1f}   runs: {', '.join(f'{r.work_seconds:.2f}s' for r in runs)}  ({what})"
            )
    extract, api = scale.stages.get("extract"), scale.api_floor
    if extract and api and api.ok and api.work_seconds > 0:
        print(
            f"{'floor_api':<12} {api.rows_out:>12,} {api.work_seconds:>9.2f} {api.proc_seconds:>9.2f}"
            f" {_rate(scale.orders, api.work_seconds)} {_mib(api.maxrss_bytes):>12} {_mib(api.ready_rss_bytes):>12}"
            f" {api.cpu_seconds:>8.1f}   httpx GET + JSON decode of the same {api.detail.get('pages', 0):,} pages,"
            f" nothing kept; extract = {extract.work_seconds / api.work_seconds:.2f}x this"
            f" (api server cpu: {extract.server_cpu_seconds or 0:.1f}s during extract,"
            f" {api.server_cpu_seconds or 0:.1f}s during floor_api)"
        )
    if scale.server:
        extract = scale.stages.get("extract")
        cpu = (
            f", {extract.server_cpu_seconds:.1f} cpu s during extract" if extract and extract.server_cpu_seconds else ""
        )
        print(
            f"{'api server':<12} {scale.server.get('requests', 0):>12,} requests{cpu}, peak RSS"
            f" {_mib(scale.server.get('maxrss_bytes', 0)).strip()}"
        )
    print(
        "  work s: the stage's own wall time inside its process (all partitions; for pipeline stages only the"
        " execute_in_process calls); process s: the whole child process, with interpreter start, imports and"
        " build_definitions(); cpu s: the child's user+system CPU during the work (all threads); x CTAS / x parquet:"
        " work s over the faster floor run; cpu x CTAS: cpu s over the CTAS floor's cpu s (less sensitive to other"
        " load on the machine); peak RSS: the child's ru_maxrss; RSS @start: ru_maxrss once imports were done"
    )
    print("  details (step seconds from the Dagster event log, summed over partitions; asset metadata sums):")
    for name in PIPELINE_STAGES:
        r = scale.stages.get(name)
        if r is None or not (r.steps or r.metadata or r.detail):
            continue
        parts = []
        if r.steps:
            step_total = sum(r.steps.values())
            parts.append(", ".join(f"{k} {v:.2f}s" for k, v in sorted(r.steps.items())))
            parts.append(
                f"dagster outside steps {r.work_seconds - step_total:.2f}s over {r.runs} runs"
                f" ({(r.work_seconds - step_total) / max(r.runs, 1):.2f}s/run)"
            )
        for key, sums in sorted(r.metadata.items()):
            shown = {k.replace("dagster/", ""): (round(v, 2) if isinstance(v, float) else v) for k, v in sums.items()}
            parts.append(f"{key} {shown}")
        if r.detail and name == "generate":
            parts.append(f"customers {r.detail['customers']:,}, products {r.detail['products']:,}")
        print(f"    {name}: " + "; ".join(parts))


def print_scaling(scales: list[ScaleResult]) -> None:
    done = [s for s in scales if s.stages]
    if len(done) < 2:
        return
    small, large = done[0], done[-1]
    factor = large.orders / small.orders
    print(
        f"\n=== scaling {small.orders:,} -> {large.orders:,} orders (x{factor:g}); 'per-row' = time ratio / row ratio,"
        " 1.0 is linear ==="
    )
    print(
        f"{'stage':<12} {'small s':>9} {'large s':>9} {'per-row':>8} {'small x CTAS':>13} {'large x CTAS':>13}"
        f" {'small RSS':>12} {'large RSS':>12}"
    )
    for name in [*PIPELINE_STAGES, *FLOOR_STAGES]:
        if name in FLOOR_STAGES:
            a, b = small.floor(name), large.floor(name)
            ra = rb = None
        else:
            ra, rb = small.stages.get(name), large.stages.get(name)
            a = ra.work_seconds if ra else None
            b = rb.work_seconds if rb else None
        if not a or not b:
            continue
        cs, cl = small.floor("floor_ctas"), large.floor("floor_ctas")
        print(
            f"{name:<12} {a:>9.2f} {b:>9.2f} {b / a / factor:>8.2f} {_ratio(a, cs):>13} {_ratio(b, cl):>13}"
            f" {_mib(ra.maxrss_bytes) if ra else '':>12} {_mib(rb.maxrss_bytes) if rb else '':>12}"
        )


def checks_for(scales: list[ScaleResult]) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    largest = max(scales, key=lambda s: s.orders)
    for scale in scales:
        tag = f"[{scale.orders:,}]"
        missing = [s for s in PIPELINE_STAGES if s not in scale.stages]
        failed = [s for s, r in scale.stages.items() if not r.ok]
        checks.append(
            (
                f"{tag} every stage ran and succeeded (runs + asset checks)",
                not missing and not failed,
                f"failed: {failed or '-'}, not run: {missing or '-'}, asset checks evaluated:"
                f" {sum(r.checks for r in scale.stages.values())}",
            )
        )
        for name, ok, detail in scale.verification:
            checks.append((f"{tag} {name}", ok, detail))
    for name in PIPELINE_STAGES:
        r = largest.stages.get(name)
        ok = r is not None and r.ok and 0 < r.maxrss_bytes < MEMORY_LIMIT_BYTES
        detail = f"peak RSS {_mib(r.maxrss_bytes).strip()}" if r else "not run"
        checks.append((f"[{largest.orders:,}] {name} peak RSS < 2 GiB", ok, detail))
    return checks


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--orders",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="scales to run, in orders (default: 1000000 10000000)",
    )
    parser.add_argument("--days", type=int, default=7, help="days of orders = daily partitions (default 7)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", help="where the temporary data directory is created (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data, lake, warehouse and instance")
    parser.add_argument(
        "--pycache",
        help="bytecode cache for the stage processes (PYTHONPYCACHEPREFIX);"
        " default: a folder in the work dir. Reuse one to skip compiling on later invocations",
    )
    parser.add_argument(
        "--no-pycache",
        action="store_true",
        help="run the stage processes with the environment's bytecode settings unchanged",
    )
    parser.add_argument(
        "--stage", choices=[*PIPELINE_STAGES, *FLOOR_STAGES, "floor_api", "serve", "warmup"], help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--partition",
        action="append",
        help="with --stage: only this partition (repeatable; default every partition of the data)",
    )
    args = parser.parse_args(argv)
    if args.stage:
        return run_child(args)
    if min(args.orders) < 1 or args.days < 1:
        parser.error("--orders and --days must be positive")

    scales_to_run = sorted(set(args.orders))
    root = Path(tempfile.mkdtemp(prefix="pipeline_scale-", dir=args.workdir))
    args.pycache_dir = None if args.no_pycache else Path(args.pycache or root / "pycache").resolve()
    print(
        f"pipeline_scale: orders {', '.join(f'{n:,}' for n in scales_to_run)}; {args.days} days from {args.start};"
        f" seed {args.seed}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}; work dir {root}"
        f"{' (kept)' if args.keep else ''}"
    )
    print(
        f"  ETL_DUCKDB_MEMORY_LIMIT={os.environ.get('ETL_DUCKDB_MEMORY_LIMIT', '(default 1GB)')}"
        f" ETL_DUCKDB_THREADS={os.environ.get('ETL_DUCKDB_THREADS', '(default: all cores)')}"
    )
    print(
        f"  bytecode: {'as the environment has it' if args.pycache_dir is None else f'cached in {args.pycache_dir}'}"
        f" (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r},"
        f" .pyc files in the venv: {_venv_has_bytecode()})",
        flush=True,
    )
    scales: list[ScaleResult] = []
    try:
        with progress(PROCESSES_PER_SCALE * len(scales_to_run), "pipeline_scale", unit="processes") as bar:
            for orders in scales_to_run:
                scale = run_scale(orders, args, root, bar)
                scales.append(scale)
                print_scale(scale)
                sys.stdout.flush()
                if not args.keep:
                    shutil.rmtree(root / f"orders_{orders}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if len(scales) > 1:
        for scale in scales:
            print_scale(scale)
    print_scaling(scales)
    checks = checks_for(scales)
    print()
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    failed = sum(not ok for _, ok, _ in checks)
    print(f"\n{len(checks) - failed} passed, {failed} failed" + (f"; data kept in {root}" if args.keep else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
