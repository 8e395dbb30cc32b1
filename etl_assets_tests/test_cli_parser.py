"""Protects the `etl-assets` command line itself, without running a pipeline: every option and command has help, an
option given to a parent command survives its subcommand, ``--version`` prints the installed version, an unknown
name is one line with the close matches, a command without ``$DAGSTER_HOME`` uses (and says) the instance `make dev`
serves, the progress lines the long commands print as each run ends, and the demo's default data is exactly the
shop's daily partitions (other data is refused before it is generated)."""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from etl_assets.cli import DEFAULT_DAGSTER_HOME, build_parser, dagster_home, main, open_instance, unknown_name
from etl_assets.cli.progress import Progress

REPO = Path(__file__).resolve().parent.parent
# a value to give each option that a parent command declares, and what the parser makes of it
PARENT_OPTION_SAMPLES = {
    "orders": ("100", 100),
    "days": ("3", 3),
    "start": ("2024-02-03", dt.date(2024, 2, 3)),
    "seed": ("7", 7),
    "data_dir": ("/tmp/elsewhere", "/tmp/elsewhere"),
    "faults": ("rate=0.5,kinds=500", "rate=0.5,kinds=500"),
}


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command path, parser)`` of ``parser`` and of every subcommand's parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_every_option_and_command_has_help():
    tree = list(parsers(build_parser()))
    assert {" ".join(path) for path, _ in tree} >= {
        "",
        "demo",
        "demo generate",
        "demo serve",
        "rebuild",
        "metrics serve",
    }
    missing = []
    for path, parser in tree:
        where = " ".join(("etl-assets", *path))
        for action in parser._actions:
            name = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{where} {name}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{where} {c.dest}" for c in action._choices_actions if not (c.help or "").strip()]
    assert missing == []


def test_top_level_help_has_examples():
    text = build_parser().format_help()
    assert "examples:\n  etl-assets demo " in text  # the epilog's lines are kept as written
    assert "etl-assets demo --orders 100 generate" in text and "etl-assets rebuild orders --from" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_an_option_given_to_a_parent_command_survives_each_subcommand():
    checked = []
    for path, parser in parsers(build_parser()):
        children = subcommands(parser)
        if not path or not children:
            continue
        options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        for action in options:
            assert action.dest in PARENT_OPTION_SAMPLES, f"give {action.dest} a sample value"
            given, expected = PARENT_OPTION_SAMPLES[action.dest]
            for child in children:
                args = build_parser().parse_args([*path, action.option_strings[0], given, child])
                assert getattr(args, action.dest) == expected, (path, action.dest, child)
                checked.append((*path, action.dest, child))
    assert ("demo", "orders", "generate") in checked and ("demo", "faults", "serve") in checked
    assert ("demo", "data_dir", "serve") in checked


def test_subcommand_defaults_and_its_own_options():
    parse = build_parser().parse_args
    assert parse(["demo", "generate"]).orders == 5000  # the parent's default when neither gives it
    assert parse(["demo", "--orders", "100", "generate", "--orders", "200"]).orders == 200  # the later one wins
    assert parse(["demo", "generate", "--days", "2"]).days == 2
    assert parse(["demo", "--faults", "rate=0.1", "serve", "--port", "1"]).faults == "rate=0.1"


def test_demo_generate_writes_the_orders_given_before_the_subcommand(tmp_path):
    # as a user types it: the parent's option, the subcommand after; demo generate imports no Dagster
    code = "import sys; from etl_assets.cli import main; code = main(sys.argv[1:]); print('dagster' in sys.modules)"
    args = ["demo", "--orders", "100", "--days", "2", "--data-dir", str(tmp_path), "generate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"generated 100 orders, 50 customers, 20 products over 2 days into {tmp_path}",
        "False",
    ]


def test_the_demos_default_data_is_the_shops_daily_partitions():
    # one week, said in three places: the demo's options, the generator's defaults and the shop's specs
    from etl_assets.cli.demo import outside_partitions
    from etl_assets.pipelines.spec import load_specs
    from etl_assets_demo import generate_shop_data

    args = build_parser().parse_args(["demo"])
    defaults = inspect.signature(generate_shop_data).parameters
    assert (args.start, args.days) == (defaults["start"].default, defaults["days"].default)
    specs = load_specs()
    daily = {s.spec.name: s.spec.partitions for s in specs if s.spec.partitions.type == "daily"}
    assert set(daily) == {"orders", "inventory", "orders_enriched", "daily_revenue"}
    for name, partitions in daily.items():
        assert (partitions.start, partitions.last) == (args.start, args.start + dt.timedelta(days=args.days - 1)), name
    assert outside_partitions(specs, args.start, args.days) is None


@pytest.mark.parametrize(
    ("start", "days", "data"),
    [
        (dt.date(2024, 1, 1), 8, "2024-01-01 to 2024-01-08"),
        (dt.date(2023, 12, 31), 2, "2023-12-31 to 2024-01-01"),
        (dt.date(2024, 3, 1), 7, "2024-03-01 to 2024-03-07"),
    ],
)
def test_demo_data_outside_the_shops_partitions_is_refused_naming_the_fields(start, days, data):
    from etl_assets.cli.demo import outside_partitions
    from etl_assets.pipelines.spec import PACKAGED_DEFS_DIR, load_specs

    assert outside_partitions(load_specs(), start, days) == (
        f"--start {start} --days {days} is data for {data}, but the daily partitions of orders are 2024-01-01 to "
        "2024-01-07: give a --start and --days within them, or change partitions.start and partitions.last of each "
        f"daily shop pipeline in {PACKAGED_DEFS_DIR / 'shop' / 'defs.yaml'}"
    )
    assert outside_partitions(load_specs(), dt.date(2024, 1, 2), 6) is None  # within them


def test_a_partition_range_outside_the_partitions_names_them():
    from dagster import DailyPartitionsDefinition

    from etl_assets.cli import CommandError, partitions_in_range

    week = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-08")
    assert partitions_in_range(week, "orders", "2024-01-06", "2024-01-09") == ["2024-01-06", "2024-01-07"]
    with pytest.raises(CommandError) as refused:
        partitions_in_range(week, "orders", "2024-01-08", "2024-01-09")
    assert str(refused.value) == (
        "no partitions of orders between 2024-01-08 and 2024-01-09; its partitions are 2024-01-01 to 2024-01-07"
    )
    future = DailyPartitionsDefinition(start_date=(dt.date.today() + dt.timedelta(days=2)).isoformat())
    with pytest.raises(CommandError, match=r"^orders has no partitions yet \(none has closed\)$"):
        partitions_in_range(future, "orders", None, None)


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"etl-assets {version('etl_assets')}\n"


@pytest.mark.parametrize(
    ("name", "known", "message"),
    [
        # the CLI knows pipelines by reference, <domain>.<name>
        (
            "ordrs",
            ["shop.customers", "shop.orders", "shop.products"],
            "unknown pipeline 'ordrs'; did you mean: shop.orders?",
        ),
        ("prodcts", ["orders", "products"], "unknown pipeline 'prodcts'; did you mean: products?"),
        ("ab", ["abc", "abd", "xyz"], "unknown pipeline 'ab'; did you mean: abc, abd?"),
        # only the best: every job name is <domain>__<name>_pipeline, which makes them all alike
        (
            "shop__ordrs_pipeline",
            ["shop__customers_pipeline", "shop__orders_pipeline", "shop__products_pipeline"],
            "unknown pipeline 'shop__ordrs_pipeline'; did you mean: shop__orders_pipeline?",
        ),
        ("zzz", ["orders", "customers"], "unknown pipeline 'zzz'; the pipelines are: customers, orders"),
        ("zzz", [], "unknown pipeline 'zzz'; this code location has no pipelines"),
    ],
)
def test_unknown_name_offers_the_close_matches(name, known, message):
    assert str(unknown_name("pipeline", name, known)) == message


def test_without_dagster_home_the_instance_is_make_devs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")  # run in the project, as `make dev` is
    home = tmp_path / DEFAULT_DAGSTER_HOME
    with open_instance() as instance:
        assert Path(instance.root_directory) == home
        assert instance.run_retries_enabled  # the project's dagster.yaml, copied in as make does
    assert (home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    assert os.environ["DAGSTER_HOME"] == str(home)  # what the command starts uses it too
    err = capsys.readouterr().err
    assert (
        err
        == f"etl-assets: DAGSTER_HOME is not set; using the Dagster instance in {home} (the one `make dev` serves here)\n"
    )
    assert dagster_home() == home  # said once: from now on it is set
    assert capsys.readouterr().err == ""


def test_dagster_home_when_set_is_used_as_it_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert dagster_home() == tmp_path
    assert capsys.readouterr().err == ""
    assert not (tmp_path / DEFAULT_DAGSTER_HOME).exists()


LINE = re.compile(
    r"^\[(\d+)/(\d+)\] (.+?) (ok|FAILED)(?:, ([\d,]+) rows)?, (\d+\.\d) s, (\d+\.\d) s elapsed(?:: (.*?))?(?: \(run (\w+)\))?$"
)


def test_progress_prints_a_plain_line_per_finished_run_when_not_on_a_terminal():
    out = io.StringIO()
    with Progress(3, "replay visits", file=out) as progress:
        progress.finished("visits 2024-01-01", True, 1200, 4.25, run_id="1a2b3c4d5e6f", note="2 valid")
        first = out.getvalue()
        progress.finished("visits 2024-01-02", False, None, 0.5)
        progress.finished("visits 2024-01-03", True, 0, 0.1)
    lines = out.getvalue().splitlines()
    assert first == lines[0] + "\n"  # written when the run finished, not at the end
    assert [LINE.match(line).groups()[:5] for line in lines[:3]] == [  # type: ignore[union-attr]
        ("1", "3", "visits 2024-01-01", "ok", "1,200"),
        ("2", "3", "visits 2024-01-02", "FAILED", None),
        ("3", "3", "visits 2024-01-03", "ok", "0"),
    ]
    assert lines[0].startswith("[1/3] visits 2024-01-01 ok, 1,200 rows, 4.2 s, ")
    assert lines[0].endswith(" s elapsed: 2 valid (run 1a2b3c4d)")
    assert re.fullmatch(r"replay visits: 2 of 3 runs ok, 1,200 rows, \d+\.\d s", lines[3])
    assert len(lines) == 4


def test_progress_draws_a_bar_on_a_terminal():
    out = io.StringIO()
    with Progress(2, "rebuild orders", file=out, terminal=True) as progress:
        progress.finished("orders 2024-01-01", True, 120, 1.0)
        progress.set_total(3)
    text = out.getvalue()
    assert "━" in text and "\x1b[" in text  # rich's bar, in colour
    assert "[1/3]" not in text and "[1/2] orders 2024-01-01 ok, 120 rows, 1.0 s" in text
    assert "1/3" in text and "120 rows" in text  # the bar's count, with the total set later
    assert "rebuild orders: 1 of 3 runs ok, 120 rows" in text
