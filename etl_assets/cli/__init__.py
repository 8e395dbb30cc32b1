"""The `etl-assets` command: demo upstreams and a one-command run of the reference pipelines.

Also the operator commands: replay, rebuild, reexecute, validate, check-deployment and metrics. The CLI sits above
the code location: it builds the definitions and runs their jobs, and nothing in the code location imports it. Each
command module is imported when its command runs, so `etl-assets demo serve` imports neither Dagster nor the code
location, and only `etl-assets demo` imports the demo upstreams (:mod:`etl_assets_demo`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import importlib
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions

    from etl_assets.keys import Pipeline, PipelineAsset

DISTRIBUTION = "etl_assets"
# run config of the in-process runs the CLI starts: the console logger reports warnings and errors only
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# the instance of `make dev` and `make demo` (the Makefile's DAGSTER_HOME, relative to where make runs)
DEFAULT_DAGSTER_HOME = ".dagster_home"
# how alike a name must be to be offered for an unknown one (difflib's ratio; its get_close_matches uses 0.6)
CLOSE_MATCH = 0.6


class CommandError(Exception):
    """A command cannot run as asked; :func:`main` prints the message, one line after the command's name, on standard
    error and exits 2."""


def unknown_name(kind: str, name: str, known: Iterable[str], known_as: str | None = None) -> CommandError:
    """The error for a ``kind`` (pipeline, job) named ``name`` that is not one of ``known`` (``known_as``: what they
    are, default ``<kind>s``), with the close matches: ``unknown pipeline 'ordrs'; did you mean: orders?``, else the
    names there are."""
    known = sorted(known)
    known_as = known_as or f"{kind}s"
    ratios = {k: difflib.SequenceMatcher(None, name, k).ratio() for k in known}
    best = max(ratios.values(), default=0.0)
    # the best matches only: names sharing a long suffix (`_pipeline`) are all somewhat alike
    close = [
        k for k in sorted(known, key=ratios.__getitem__, reverse=True) if ratios[k] >= max(CLOSE_MATCH, best - 0.1)
    ]
    if close:
        return CommandError(f"unknown {kind} {name!r}; did you mean: {', '.join(close)}?")
    there = f"the {known_as} are: {', '.join(known)}" if known else f"this code location has no {known_as}"
    return CommandError(f"unknown {kind} {name!r}; {there}")


def data_dir(value: str | None) -> Path:
    """The data directory (``--data-dir``, else ``$ETL_DATA_DIR``, else ``./data``), exported as ``$ETL_DATA_DIR``
    for the code location the command builds."""
    path = Path(value or os.environ.get("ETL_DATA_DIR") or "data").expanduser().resolve()
    os.environ["ETL_DATA_DIR"] = str(path)
    return path


def dagster_home() -> Path:
    """The Dagster instance's directory: ``$DAGSTER_HOME``, else ``./.dagster_home``, the one `make dev` serves when run
    here (so the command's runs show in the UI); the default is created, given this directory's ``dagster.yaml`` as
    make does, exported as ``$DAGSTER_HOME`` and said on standard error."""
    from etl_assets.instance import INSTANCE_FILE

    home = os.environ.get("DAGSTER_HOME")
    if home:
        path = Path(home).expanduser()
        if not path.is_dir():  # Dagster would stop with a traceback; the instance starts empty there instead
            path.mkdir(parents=True, exist_ok=True)
            print(
                f"etl-assets: created DAGSTER_HOME {path} (a new, empty Dagster instance)", file=sys.stderr, flush=True
            )
        return path
    path = Path(DEFAULT_DAGSTER_HOME).resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = Path(INSTANCE_FILE)
    if config.is_file() and not (path / INSTANCE_FILE).exists():
        shutil.copyfile(config, path / INSTANCE_FILE)
    os.environ["DAGSTER_HOME"] = str(path)
    print(
        f"etl-assets: DAGSTER_HOME is not set; using the Dagster instance in {path} (the one `make dev` serves here)",
        file=sys.stderr,
        flush=True,
    )
    return path


def open_instance() -> DagsterInstance:
    """The Dagster instance of :func:`dagster_home`: every command that runs or reads runs opens it here.

    Raises:
        InstanceConfigError: its Postgres storage URL would fail on the first event write (the fix is in the message).
    """
    from dagster import DagsterInstance

    from etl_assets.instance import check_instance_home

    dagster_home()
    check_instance_home()
    return DagsterInstance.get()


def source_pipelines(defs: Definitions) -> list[str]:
    """The pipelines of ``defs`` that have a source (a raw asset), which replay and rebuild work on, as references
    (``<domain>.<name>``)."""
    from etl_assets.keys import RAW

    return sorted({p.ref for p in pipeline_assets(defs) if p.stage == RAW})


def pipeline_assets(defs: Definitions) -> list[PipelineAsset]:
    """Every pipeline asset of ``defs``, its key read back (domain, stage, pipeline)."""
    from etl_assets.keys import parse_key

    parsed = (parse_key(k) for k in defs.resolve_asset_graph().get_all_asset_keys())
    return [p for p in parsed if p is not None]


def find_pipeline(name: str, known: Iterable[str]) -> str | None:
    """The reference among ``known`` (``<domain>.<name>``) that ``name`` stands for: itself when it is one, else the
    one pipeline of that name in any domain; ``None`` when there is none.

    Raises:
        CommandError: ``name`` is the name of pipelines in several domains (with the references to write instead).
    """
    known = set(known)
    if name in known:
        return name
    found = sorted(ref for ref in known if ref.partition(".")[2] == name)
    if len(found) > 1:
        raise CommandError(f"pipeline {name!r} is in several domains; name one: {', '.join(found)}")
    return found[0] if found else None


def check_source_pipeline(defs: Definitions, name: str, command: str) -> Pipeline:
    """The source pipeline of ``defs`` that ``name`` (``orders``, or ``shop.orders`` when several domains have an
    ``orders``) stands for.

    Raises:
        CommandError: it is a transform (named as such, with the source pipelines), in several domains, or no
            pipeline at all (with the close matches).
    """
    from etl_assets.keys import parse_ref

    sources = source_pipelines(defs)
    ref = find_pipeline(name, sources)
    if ref is not None:
        found = parse_ref(ref)
        assert found is not None  # source_pipelines gives references
        return found
    every = {p.ref for p in pipeline_assets(defs)}
    other = find_pipeline(name, every)
    if other is not None:
        raise CommandError(f"{other} is not a source pipeline; {command} one of: {', '.join(sources)}")
    raise unknown_name("pipeline", name, sources, "source pipelines")


def check_job(defs: Definitions, name: str, why: str = "") -> None:
    """Refuse a job ``name`` that ``defs`` does not have (``why``: where the name came from).

    Raises:
        CommandError: with the close matches among the job names.
    """
    jobs = [j.name for j in defs.get_repository_def().get_all_jobs() if not j.name.startswith("__")]
    if name not in jobs:
        error = unknown_name("job", name, jobs)
        raise CommandError(f"{error} ({why})" if why else str(error))


def partitions_in_range(pdef, pipeline: str, start: str | None, end: str | None) -> list[str | None]:
    """The partition keys from ``start`` to ``end`` (inclusive; default: the first, and ``start``).

    Raises:
        CommandError: there are none.
    """
    if pdef is None:
        return [None]
    keys = pdef.get_partition_keys()
    if not keys:
        raise CommandError(f"{pipeline} has no partitions yet (none has closed)")
    start = start or keys[0]
    end = end or start
    partitions: list[str | None] = [k for k in keys if start <= k <= end]
    if not partitions:
        raise CommandError(
            f"no partitions of {pipeline} between {start} and {end}; its partitions are {keys[0]} to {keys[-1]}"
        )
    return partitions


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

    return prometheus.serve_until_stopped(open_instance(), args.host, args.port)


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


# the top-level help's text, kept within 80 columns like argparse's own
DESCRIPTION = """\
The demo upstreams with a one-command run of the reference pipelines, and the
operator commands (replay, rebuild, reexecute, validate, check-deployment and
metrics) for the pipelines of this code location."""
EXAMPLES = """\
examples:
  etl-assets demo                            generate, serve, run every pipeline
  etl-assets demo --orders 1000000 --days 7  the same at scale
  etl-assets demo --orders 100 generate      only write the demo source data
  etl-assets validate ./pipelines            also check the specs in ./pipelines
  etl-assets replay orders --from 2024-01-01 --to 2024-01-07
  etl-assets rebuild orders --from 2024-01-01 --to 2024-01-07
  etl-assets reexecute RUN_ID                resume a failed run from failure
  etl-assets metrics serve --port 9108       Prometheus metrics on 127.0.0.1

Runs go to the Dagster instance at $DAGSTER_HOME, by default ./.dagster_home
(the one `make dev` serves), so they show in the UI. demo, replay, rebuild and
reexecute report each run (or step) as it finishes: a progress bar on a
terminal, one line each otherwise.
"""


def _default(value: object, inherited: bool) -> object:
    """An option's default; none for an option a subcommand repeats from its parent (``inherited``), so that the
    parent's value (given before the subcommand, or the parent's default) stands unless the option is given again
    after it: argparse would otherwise overwrite the parent's value with the subcommand's default."""
    return argparse.SUPPRESS if inherited else value


def _data_dir_option(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    parser.add_argument(
        "--data-dir",
        default=_default(None, inherited),
        help="the data directory (default: $ETL_DATA_DIR, else ./data)",
    )


def _scale_options(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    parser.add_argument(
        "--orders",
        type=int,
        default=_default(5000, inherited),
        help="number of orders to generate (default 5000; 10000000 works)",
    )
    # the defaults are the shop's daily partitions (partitions.start, partitions.last), which the demo refuses to
    # leave; etl_assets_tests/test_cli_parser.py keeps the two equal
    parser.add_argument(
        "--days",
        type=int,
        default=_default(7, inherited),
        help="days of orders, one partition each (default 7: the shop's daily partitions, start to last)",
    )
    parser.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=_default(dt.date(2024, 1, 1), inherited),
        help="first day, YYYY-MM-DD (default 2024-01-01: the shop's partitions.start)",
    )
    parser.add_argument(
        "--seed", type=int, default=_default(42, inherited), help="seed of the generated data (default 42)"
    )


def _partition_range_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline",
        help="a source pipeline: its name (orders), or <domain>.<name> (shop.orders) when several domains have one",
    )
    parser.add_argument("--from", dest="start", help="first partition key (default: the first partition)")
    parser.add_argument("--to", dest="end", help="last partition key, inclusive (default: --from)")


def build_parser() -> argparse.ArgumentParser:
    """The `etl-assets` argument parser, every subcommand included."""
    parser = argparse.ArgumentParser(
        prog="etl-assets",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")

    def command(
        parent: Any, name: str, summary: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=summary, description=summary)
        parser.set_defaults(func=run)
        return parser

    demo = command(
        sub, "demo", "demo upstreams; without a subcommand: generate, serve and run everything", _command("demo")
    )
    _scale_options(demo)
    _data_dir_option(demo)
    demo.add_argument("--faults", help="inject API faults, e.g. rate=0.1,kinds=500+429+truncated")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="SUBCOMMAND", help="instead of the whole demo:")
    gen = command(
        demo_sub,
        "generate",
        "write the demo source data (API data, SQLite, landing files)",
        _command("demo", "generate"),
    )
    _scale_options(gen, inherited=True)
    _data_dir_option(gen, inherited=True)
    serve = command(demo_sub, "serve", "serve the demo orders API until Ctrl-C", _command("demo", "serve"))
    _data_dir_option(serve, inherited=True)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to bind (default 8765)")
    serve.add_argument(
        "--faults",
        default=_default(None, inherited=True),
        help="inject API faults, e.g. rate=0.1,kinds=500+429+slow+truncated,slow_seconds=2",
    )

    replay = command(
        sub, "replay", "re-validate quarantined rows of a partition range and load the valid ones", _command("replay")
    )
    _partition_range_options(replay)
    _data_dir_option(replay)

    rebuild = command(
        sub, "rebuild", "rebuild partitions from the raw lake, with the marts built from them", _command("rebuild")
    )
    _partition_range_options(rebuild)
    rebuild.add_argument("--no-downstream", action="store_true", help="only the pipeline itself, not its marts")
    _data_dir_option(rebuild)

    reexecute = command(
        sub,
        "reexecute",
        "re-execute a failed run from failure (steps that succeeded are kept)",
        _command("reexecute"),
    )
    reexecute.add_argument("run_id", help="the failed run's id (the UI's Runs page, or `dagster run list`)")
    _data_dir_option(reexecute)

    validate = command(sub, "validate", "check every pipeline spec (exit 1 naming each invalid one)", _cmd_validate)
    validate.add_argument(
        "dir",
        nargs="?",
        help="a folder of specs to check with the packaged ones (default: $ETL_PIPELINES_DIR when set)",
    )
    command(
        sub,
        "check-deployment",
        "check this host's deployment: Dagster instance, storage, step logs, lake, warehouse (exit 1 on a failure)",
        _command("check_deployment"),
    )
    dev = command(
        sub,
        "dev",
        "the Dagster UI, daemon and code server (what `make dev` runs); any stop signal stops all of them",
        _command("dev"),
    )
    dev.add_argument("--host", default="127.0.0.1", help="address the webserver binds (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=3000, help="port the webserver binds (default 3000)")
    metrics = sub.add_parser(
        "metrics",
        help="Prometheus metrics of the Dagster instance",
        description="Prometheus metrics of the Dagster instance",
    )
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True, metavar="SUBCOMMAND", help="one of:")
    serve_metrics = command(metrics_sub, "serve", "serve /metrics (binds 127.0.0.1:9108 by default)", _cmd_metrics)
    serve_metrics.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve_metrics.add_argument("--port", type=int, default=9108, help="port to bind (default 9108)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `etl-assets` command ``argv`` (default: the process's arguments); returns the exit status.

    A :class:`CommandError` or an unusable instance configuration is one line on standard error and exit status 2.
    """
    from etl_assets.instance import InstanceConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, InstanceConfigError) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
