"""The `etl-assets` command: demo upstreams and a one-command run of the reference pipelines."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path


def _data_dir(value: str | None) -> Path:
    path = Path(value or os.environ.get("ETL_DATA_DIR") or "data").expanduser().resolve()
    os.environ["ETL_DATA_DIR"] = str(path)
    return path


def _add_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=int, default=5000, help="number of orders to generate (default 5000; 10000000 works)")
    parser.add_argument("--days", type=int, default=7, help="days of orders, one partition each (default 7)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1), help="first day (default 2024-01-01)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", help="default: $ETL_DATA_DIR or ./data")


def _cmd_generate(args: argparse.Namespace) -> int:
    from etl_assets.demo import generate_shop_data

    manifest = generate_shop_data(_data_dir(args.data_dir), orders=args.orders, days=args.days, start=args.start, seed=args.seed)
    print(f"generated {manifest.orders} orders, {manifest.customers} customers, {manifest.products} products "
          f"over {manifest.days} days into {manifest.data_dir}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from etl_assets.demo import FaultConfig
    from etl_assets.demo.api_server import run_server
    from etl_assets.demo.data import load_manifest

    manifest = load_manifest(_data_dir(args.data_dir))
    faults = FaultConfig.parse(args.faults) if args.faults else None
    run_server(manifest.orders_path, args.host, args.port, os.environ.get("SHOP_API_TOKEN"), faults)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Generate, serve the API on a free loopback port, run every reference pipeline, print a summary."""
    from dagster import DagsterInstance

    from etl_assets.demo import DemoApiServer, FaultConfig, generate_shop_data

    data_dir = _data_dir(args.data_dir)
    manifest = generate_shop_data(data_dir, orders=args.orders, days=args.days, start=args.start, seed=args.seed)
    print(f"demo data: {manifest.orders} orders, {manifest.customers} customers, {manifest.products} products, "
          f"{manifest.days} days from {manifest.start}")
    faults = FaultConfig.parse(args.faults) if args.faults else None
    with DemoApiServer(manifest.orders_path, token=os.environ.get("SHOP_API_TOKEN"), faults=faults) as server:
        os.environ["SHOP_API_URL"] = server.url
        print(f"demo API serving on {server.url}")
        from etl_assets.definitions import build_definitions
        from etl_assets.runner import run_reference

        defs = build_definitions()
        instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
        with instance:
            runs = run_reference(defs, instance, manifest.partition_keys)
    failed = [r for r in runs if not r.success]
    for run in runs:
        label = f"{run.job}[{run.partition}]" if run.partition else run.job
        print(f"  run {label:<28} {'ok' if run.success else 'FAILED'}  {run.seconds:6.1f}s  {run.run_id}")
    if failed:
        print(f"demo failed: run {failed[0].run_id} of {failed[0].job}; see its logs with `make dev`", file=sys.stderr)
        return 1
    _print_summary(data_dir)
    return 0


def _print_summary(data_dir: Path) -> None:
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
    print(f"lake: {data_dir / 'lake'}\nopen the UI with `make dev` (http://127.0.0.1:3000)")


def _partitions_in_range(pdef, pipeline: str, start: str | None, end: str | None) -> list[str | None] | None:
    """The partition keys from ``start`` to ``end`` (inclusive; default: the first, and ``start``); None, with a
    message, when there are none."""
    if pdef is None:
        return [None]
    keys = pdef.get_partition_keys()
    start = start or keys[0]
    end = end or start
    partitions = [k for k in keys if start <= k <= end]
    if not partitions:
        print(f"no partitions of {pipeline} between {start} and {end}", file=sys.stderr)
    return partitions or None


def _cmd_replay(args: argparse.Namespace) -> int:
    """Re-validate a pipeline's partitions from the raw lake and reload them (quarantine replay)."""
    from dagster import DagsterInstance

    from etl_assets.definitions import build_definitions
    from etl_assets.keys import clean_key
    from etl_assets.runner import QUIET

    _data_dir(args.data_dir)
    defs = build_definitions()
    job = defs.resolve_job_def(f"{args.pipeline}_revalidate")
    partitions = _partitions_in_range(job.partitions_def, args.pipeline, args.start, args.end)
    if partitions is None:
        return 2
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    failed = 0
    for partition in partitions:
        result = job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False,
                                        run_config=QUIET)
        meta = {}
        for event in result.get_asset_materialization_events():
            if event.asset_key == clean_key(args.pipeline):
                meta = event.materialization.metadata
        valid = meta["rows_valid"].value if "rows_valid" in meta else "?"
        bad = meta["rows_quarantined"].value if "rows_quarantined" in meta else "?"
        print(f"  {args.pipeline}[{partition or 'all'}] {'ok' if result.success else 'FAILED'}: "
              f"{valid} valid, {bad} still quarantined  (run {result.run_id})")
        failed += not result.success
    return 1 if failed else 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    """Rebuild a pipeline's partitions, and the marts built from them, from the raw lake (no source call)."""
    from dagster import DagsterInstance

    from etl_assets.definitions import build_definitions
    from etl_assets.keys import clean_key
    from etl_assets.recovery.rebuild import RebuildError, plan_rebuild, rebuild

    _data_dir(args.data_dir)
    defs = build_definitions()
    try:
        plan = plan_rebuild(defs, args.pipeline, downstream=not args.no_downstream)
    except RebuildError as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        return 2
    pdef = defs.resolve_asset_graph().get(clean_key(args.pipeline)).partitions_def
    partitions = _partitions_in_range(pdef, args.pipeline, args.start, args.end)
    if partitions is None:
        return 2
    print(f"rebuilding {', '.join(k.to_user_string() for k in plan.keys)}")
    if plan.skipped:
        print(f"  not rebuilt (other partitioning; rebuild them on their own): "
              f"{', '.join(k.to_user_string() for k in plan.skipped)}")
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    failed = 0
    try:
        for partition, result in rebuild(defs, instance, args.pipeline, partitions, downstream=not args.no_downstream):
            rows = {e.asset_key.to_user_string(): e.materialization.metadata.get("dagster/row_count")
                    for e in result.get_asset_materialization_events()}
            loaded = ", ".join(f"{k} {getattr(v, 'value', v)}" for k, v in sorted(rows.items()) if v is not None)
            print(f"  {args.pipeline}[{partition or 'all'}] {'ok' if result.success else 'FAILED'}: {loaded}  (run {result.run_id})")
            failed += not result.success
    except RebuildError as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _cmd_reexecute(args: argparse.Namespace) -> int:
    """Re-execute a failed run from failure, like the UI's "Re-execute -> From failure"."""
    from dagster import DagsterInstance

    from etl_assets.recovery.reexecute import ReexecuteError, reexecute_from_failure

    _data_dir(args.data_dir)
    if not os.environ.get("DAGSTER_HOME"):
        print("reexecute: set DAGSTER_HOME to the instance that holds the run (make dev uses .dagster_home)", file=sys.stderr)
        return 2
    with DagsterInstance.get() as instance:
        try:
            run_id, success = reexecute_from_failure(instance, args.run_id)
        except ReexecuteError as exc:
            print(f"reexecute: {exc}", file=sys.stderr)
            return 2
    print(f"re-executed {args.run_id} from failure as run {run_id}: {'success' if success else 'FAILED'}")
    return 0 if success else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    """Load every spec (the packaged ones, plus DIR or $ETL_PIPELINES_DIR) and build their definitions; print each
    invalid spec's error (file, field, fix) and exit 1 if there is one."""
    from etl_assets.pipelines.spec import PACKAGED_SPEC_DIRS, load_specs_isolated
    from etl_assets.monitoring.spec_errors import spec_errors_text

    if args.dir is not None:
        folder = Path(args.dir).expanduser().resolve()
        if not folder.is_dir():
            print(f"validate: {args.dir} is not a directory", file=sys.stderr)
            return 2
        specs, broken = load_specs_isolated([*PACKAGED_SPEC_DIRS, folder])
    else:
        specs, broken = load_specs_isolated()
    if broken:
        print(spec_errors_text(broken), file=sys.stderr)
        return 1
    from etl_assets.definitions import build_definitions

    defs = build_definitions(specs)
    jobs = len(defs.get_repository_def().get_all_jobs())
    print(f"ok: {len(specs)} pipeline specs, {jobs} jobs")
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from etl_assets.monitoring import prometheus

    return prometheus.main(["--host", args.host, "--port", str(args.port)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="etl-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="demo upstreams; without a subcommand: generate, serve and run everything")
    _add_scale(demo)
    demo.add_argument("--faults", help="inject API faults, e.g. rate=0.1,kinds=500+429+truncated")
    demo.set_defaults(func=_cmd_run)
    demo_sub = demo.add_subparsers(dest="demo_command")
    gen = demo_sub.add_parser("generate", help="write the demo source data (API data, SQLite, landing files)")
    _add_scale(gen)
    gen.set_defaults(func=_cmd_generate)
    serve = demo_sub.add_parser("serve", help="serve the demo orders API until Ctrl-C")
    serve.add_argument("--data-dir")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--faults", help="e.g. rate=0.1,kinds=500+429+slow+truncated,slow_seconds=2")
    serve.set_defaults(func=_cmd_serve)
    replay = sub.add_parser("replay", help="re-validate quarantined rows of a partition range and load the valid ones")
    replay.add_argument("pipeline", help="a source pipeline, e.g. orders")
    replay.add_argument("--from", dest="start", help="first partition (default: the first)")
    replay.add_argument("--to", dest="end", help="last partition (default: --from)")
    replay.add_argument("--data-dir")
    replay.set_defaults(func=_cmd_replay)
    rebuild = sub.add_parser("rebuild", help="rebuild partitions from the raw lake, with the marts built from them")
    rebuild.add_argument("pipeline", help="a source pipeline, e.g. orders")
    rebuild.add_argument("--from", dest="start", help="first partition (default: the first)")
    rebuild.add_argument("--to", dest="end", help="last partition (default: --from)")
    rebuild.add_argument("--no-downstream", action="store_true", help="only the pipeline itself, not its marts")
    rebuild.add_argument("--data-dir")
    rebuild.set_defaults(func=_cmd_rebuild)
    reexecute = sub.add_parser("reexecute", help="re-execute a failed run from failure (steps that succeeded are kept)")
    reexecute.add_argument("run_id")
    reexecute.add_argument("--data-dir")
    reexecute.set_defaults(func=_cmd_reexecute)
    validate = sub.add_parser("validate", help="check every pipeline spec (exit 1 naming each invalid one)")
    validate.add_argument("dir", nargs="?", help="a folder of specs to check with the packaged ones "
                          "(default: $ETL_PIPELINES_DIR when set)")
    validate.set_defaults(func=_cmd_validate)
    metrics = sub.add_parser("metrics", help="Prometheus metrics of the Dagster instance")
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True)
    serve_metrics = metrics_sub.add_parser("serve", help="serve /metrics (binds 127.0.0.1:9108 by default)")
    serve_metrics.add_argument("--host", default="127.0.0.1")
    serve_metrics.add_argument("--port", type=int, default=9108)
    serve_metrics.set_defaults(func=_cmd_metrics)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
