"""The `etl-assets` command: demo upstreams and a one-command run of the reference pipelines.

Also the operator commands: replay, rebuild, reexecute, validate, check-deployment and metrics. The CLI sits above
the code location: it builds the definitions and runs their jobs, and nothing in the code location imports it. Each
command module is imported when its command runs, so `etl-assets demo serve` imports neither Dagster nor the code
location, and only `etl-assets demo` imports the demo upstreams (:mod:`etl_assets_demo`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance

# run config of the in-process runs the CLI starts: the console logger reports warnings and errors only
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def data_dir(value: str | None) -> Path:
    """The data directory (``--data-dir``, else ``$ETL_DATA_DIR``, else ``./data``), exported as ``$ETL_DATA_DIR``
    for the code location the command builds."""
    path = Path(value or os.environ.get("ETL_DATA_DIR") or "data").expanduser().resolve()
    os.environ["ETL_DATA_DIR"] = str(path)
    return path


def open_instance() -> DagsterInstance:
    """The Dagster instance at ``$DAGSTER_HOME``, or an ephemeral one when it is not set.

    Raises:
        InstanceConfigError: its Postgres storage URL would fail on the first event write (the fix is in the message).
    """
    from dagster import DagsterInstance

    from etl_assets.instance import check_instance_home

    check_instance_home()
    return DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()


def partitions_in_range(pdef, pipeline: str, start: str | None, end: str | None) -> list[str | None] | None:
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


def _command(module: str, name: str = "command") -> Callable[[argparse.Namespace], int]:
    """The command ``name`` of :mod:`etl_assets.cli.<module>`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(args)

    return run


def _cmd_validate(args: argparse.Namespace) -> int:
    """Load every spec (the defs folder's, plus DIR or $ETL_PIPELINES_DIR) and the defs folder's other components,
    and build their definitions; print each invalid one's error (file, line, field, fix) and exit 1 if there is one."""
    from etl_assets.monitoring.spec_errors import spec_errors_text
    from etl_assets.pipelines.spec import SpecError, load_specs_isolated, packaged_spec_dirs

    if args.dir is not None:
        folder = Path(args.dir).expanduser().resolve()
        if not folder.is_dir():
            print(f"validate: {args.dir} is not a directory", file=sys.stderr)
            return 2
        try:
            packaged = packaged_spec_dirs()
        except SpecError as exc:
            print(f"validate: {exc}", file=sys.stderr)
            return 2
        specs, broken = load_specs_isolated([*packaged, folder])
    else:
        specs, broken = load_specs_isolated()
    from etl_assets.definitions import build_definitions, other_components

    broken += other_components()[1]  # the defs folder's other components, each built on its own
    if broken:
        print(spec_errors_text(broken), file=sys.stderr)
        return 1

    defs = build_definitions(specs)
    jobs = len(defs.get_repository_def().get_all_jobs())
    print(f"ok: {len(specs)} pipeline specs, {jobs} jobs")
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from etl_assets.monitoring import prometheus

    return prometheus.main(["--host", args.host, "--port", str(args.port)])


def _add_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--orders", type=int, default=5000, help="number of orders to generate (default 5000; 10000000 works)"
    )
    parser.add_argument("--days", type=int, default=7, help="days of orders, one partition each (default 7)")
    parser.add_argument(
        "--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1), help="first day (default 2024-01-01)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", help="default: $ETL_DATA_DIR or ./data")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="etl-assets", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="demo upstreams; without a subcommand: generate, serve and run everything")
    _add_scale(demo)
    demo.add_argument("--faults", help="inject API faults, e.g. rate=0.1,kinds=500+429+truncated")
    demo.set_defaults(func=_command("demo"))
    demo_sub = demo.add_subparsers(dest="demo_command")
    gen = demo_sub.add_parser("generate", help="write the demo source data (API data, SQLite, landing files)")
    _add_scale(gen)
    gen.set_defaults(func=_command("demo", "generate"))
    serve = demo_sub.add_parser("serve", help="serve the demo orders API until Ctrl-C")
    serve.add_argument("--data-dir")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--faults", help="e.g. rate=0.1,kinds=500+429+slow+truncated,slow_seconds=2")
    serve.set_defaults(func=_command("demo", "serve"))
    replay = sub.add_parser("replay", help="re-validate quarantined rows of a partition range and load the valid ones")
    replay.add_argument("pipeline", help="a source pipeline, e.g. orders")
    replay.add_argument("--from", dest="start", help="first partition (default: the first)")
    replay.add_argument("--to", dest="end", help="last partition (default: --from)")
    replay.add_argument("--data-dir")
    replay.set_defaults(func=_command("replay"))
    rebuild = sub.add_parser("rebuild", help="rebuild partitions from the raw lake, with the marts built from them")
    rebuild.add_argument("pipeline", help="a source pipeline, e.g. orders")
    rebuild.add_argument("--from", dest="start", help="first partition (default: the first)")
    rebuild.add_argument("--to", dest="end", help="last partition (default: --from)")
    rebuild.add_argument("--no-downstream", action="store_true", help="only the pipeline itself, not its marts")
    rebuild.add_argument("--data-dir")
    rebuild.set_defaults(func=_command("rebuild"))
    reexecute = sub.add_parser("reexecute", help="re-execute a failed run from failure (steps that succeeded are kept)")
    reexecute.add_argument("run_id")
    reexecute.add_argument("--data-dir")
    reexecute.set_defaults(func=_command("reexecute"))
    validate = sub.add_parser("validate", help="check every pipeline spec (exit 1 naming each invalid one)")
    validate.add_argument(
        "dir",
        nargs="?",
        help="a folder of specs to check with the packaged ones (default: $ETL_PIPELINES_DIR when set)",
    )
    validate.set_defaults(func=_cmd_validate)
    check = sub.add_parser(
        "check-deployment",
        help="check this host's deployment: Dagster instance, storage, step logs, lake, warehouse (exit 1 on a failure)",
    )
    check.set_defaults(func=_command("check_deployment"))
    metrics = sub.add_parser("metrics", help="Prometheus metrics of the Dagster instance")
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True)
    serve_metrics = metrics_sub.add_parser("serve", help="serve /metrics (binds 127.0.0.1:9108 by default)")
    serve_metrics.add_argument("--host", default="127.0.0.1")
    serve_metrics.add_argument("--port", type=int, default=9108)
    serve_metrics.set_defaults(func=_cmd_metrics)
    args = parser.parse_args(argv)
    return args.func(args)
