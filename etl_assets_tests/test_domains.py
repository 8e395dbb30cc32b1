"""Protects the domain as part of a pipeline's identity (etl_assets/keys.py, the spec set's checks): two domains may
each have a pipeline of the same name, and everything derived from a pipeline keeps them apart.

Two ``orders`` pipelines (domains ``east`` and ``west``) in one code location get their own assets, jobs, sensors,
landing folders (``landing/east.orders/``), warehouse tables and quarantine tables, and a run of one never touches the
other's rows. A bare name in ``after``, ``references`` or ``transform.inputs`` is one of the spec's own domain, and
``<domain>.<name>`` reaches another; a bare name only another domain has is refused with that reference offered. The
CLI takes a bare name when one domain has it and asks for the reference when several do. Real specs, a real Dagster
instance and DuckDB warehouse, and the real CLI in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance

from etl_assets.cli import QUIET
from etl_assets.definitions import build_definitions
from etl_assets.pipelines.spec import SpecError, load_specs, load_specs_isolated
from etl_assets.settings import current_settings
from etl_assets_tests.specs import column, pipeline, transform, write_spec

COLUMNS = [column("id", "INTEGER", nullable=False), column("amount", "INTEGER", nullable=False)]


def _orders(domain: str, columns: list[dict] = COLUMNS, **fields) -> dict:
    return pipeline("orders", columns, domain=domain, primary_key=["id"], quality={"threshold": 0}, **fields)


def _write(root: Path, *specs: dict) -> Path:
    """Each spec in a folder of its domain (both domains' files are called orders.yaml), the folders under root."""
    for spec in specs:
        write_spec(root / spec.get("domain", "default"), spec)
    return root


def _load(root: Path):
    return load_specs(sorted(p for p in root.iterdir() if p.is_dir()))


def _land(data_dir: Path, folder: str, name: str, text: str) -> None:
    path = data_dir / "landing" / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)


def _rows(sql: str) -> list[tuple]:
    with duckdb.connect(str(current_settings().warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_two_domains_each_load_their_own_orders(tmp_path: Path, data_dir: Path, instance: DagsterInstance) -> None:
    specs = _load(_write(tmp_path / "specs", _orders("east"), _orders("west")))
    defs = build_definitions(specs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for domain in ("east", "west"):
        assert {f"{domain}/{stage}_orders" for stage in ("raw", "clean", "quarantine", "warehouse")} <= keys
    jobs = {j.name for j in defs.get_repository_def().get_all_jobs()}
    assert {"east__orders_pipeline", "west__orders_pipeline", "east__orders_revalidate"} <= jobs
    sensors = {s.name for s in defs.get_repository_def().sensor_defs}
    assert {"east__orders_file_sensor", "west__orders_file_sensor"} <= sensors

    # east's file holds a bad row; west's does not. Each pipeline reads its own landing folder only.
    _land(data_dir, "east.orders", "a.csv", "id,amount\n1,10\n2,oops\n")
    _land(data_dir, "west.orders", "a.csv", "id,amount\n1,700\n2,800\n3,900\n")
    for domain in ("east", "west"):
        result = defs.resolve_job_def(f"{domain}__orders_pipeline").execute_in_process(
            instance=instance, run_config=QUIET
        )
        assert result.success, domain
    assert _rows("SELECT id, amount FROM east.orders ORDER BY id") == [(1, 10)]
    assert _rows("SELECT id, amount FROM west.orders ORDER BY id") == [(1, 700), (2, 800), (3, 900)]
    assert _rows("SELECT count(*) FROM quarantine.east__orders") == [(1,)]
    assert _rows("SELECT count(*) FROM quarantine.west__orders") == [(0,)]

    # a second run of east replaces east's rows and leaves west's as they were
    (data_dir / "landing" / "east.orders" / "a.csv").write_text("id,amount\n5,50\n")
    assert defs.resolve_job_def("east__orders_pipeline").execute_in_process(instance=instance, run_config=QUIET).success
    assert _rows("SELECT id FROM east.orders") == [(5,)]
    assert _rows("SELECT count(*) FROM west.orders") == [(3,)]
    materialized = instance.get_latest_materialization_event(AssetKey(["west", "warehouse_orders"]))
    assert materialized is not None and materialized.asset_materialization is not None
    assert materialized.asset_materialization.metadata["quarantine_table"].value == "quarantine.west__orders"


def test_a_bare_name_is_the_own_domains_and_a_reference_reaches_another(
    tmp_path: Path, data_dir: Path, instance: DagsterInstance
) -> None:
    (tmp_path / "specs" / "west").mkdir(parents=True)
    (tmp_path / "specs" / "west" / "totals.sql").write_text("SELECT sum(amount) AS total FROM orders")
    specs = _load(
        _write(
            tmp_path / "specs",
            _orders("east"),
            _orders("west"),
            transform("totals", "totals.sql", ["orders"], domain="west"),  # west's orders
            transform("east_totals", "totals.sql", ["east.orders"], domain="west"),  # east's, seen as `orders`
        )
    )
    defs = build_definitions(specs)
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey(["west", "marts_totals"])).parent_keys == {AssetKey(["west", "clean_orders"])}
    assert graph.get(AssetKey(["west", "marts_east_totals"])).parent_keys == {AssetKey(["east", "clean_orders"])}
    _land(data_dir, "east.orders", "a.csv", "id,amount\n1,1\n2,2\n")
    _land(data_dir, "west.orders", "a.csv", "id,amount\n1,100\n")
    for job in (
        "east__orders_pipeline",
        "west__orders_pipeline",
        "west__totals_pipeline",
        "west__east_totals_pipeline",
    ):
        assert defs.resolve_job_def(job).execute_in_process(instance=instance, run_config=QUIET).success, job
    assert _rows("SELECT total FROM west.totals") == [(100,)]
    assert _rows("SELECT total FROM west.east_totals") == [(3,)]


def test_references_across_domains_are_checked(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    # a relationship to another domain's dataset, by reference
    good = _orders(
        "west", columns=[*COLUMNS, column("customer", "INTEGER", references={"dataset": "east.orders", "column": "id"})]
    )
    _write(specs, _orders("east"), good)
    assert {s.spec.ref for s in _load(specs)} == {"east.orders", "west.orders"}

    # a bare name only another domain has: refused, with the reference to write
    other = tmp_path / "other"
    _write(other, _orders("east"), transform("totals", "t.sql", ["orders"], domain="west"))
    (other / "west" / "t.sql").write_text("SELECT 1")
    with pytest.raises(SpecError) as caught:
        _load(other)
    message = str(caught.value)
    assert "transform.inputs" in message and "did you mean east.orders?" in message, message

    # two inputs the SQL would see under one name
    clash = tmp_path / "clash"
    _write(
        clash, _orders("east"), _orders("west"), transform("both", "t.sql", ["orders", "east.orders"], domain="west")
    )
    (clash / "west" / "t.sql").write_text("SELECT 1")
    loaded, broken = load_specs_isolated(sorted(p for p in clash.iterdir() if p.is_dir()))
    assert {s.spec.ref for s in loaded} == {"east.orders", "west.orders"}
    assert len(broken) == 1 and broken[0].name == "west.both"
    assert "west.orders and east.orders are both inputs" in broken[0].message, broken[0].message

    # the same name twice in one domain is still refused; the second file names the first
    twice = tmp_path / "twice"
    write_spec(twice / "a", _orders("east"))
    write_spec(twice / "b", _orders("east"))
    with pytest.raises(SpecError, match=r"'orders' is already declared in domain 'east' by .*a/orders.yaml"):
        load_specs([twice / "a", twice / "b"])


def test_a_domain_holding_a_double_underscore_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        _load(_write(tmp_path / "specs", _orders("east__coast")))
    message = str(caught.value)
    assert "field 'domain'" in message and "east_coast" in message, message


def _cli(args: list[str], specs: Path, data_dir: Path, home: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ETL_PIPELINES_DIR": str(specs),
        "ETL_PACKAGED_PIPELINES": "off",
        "ETL_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(home),
    }
    return subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_the_cli_asks_which_domain_when_several_have_the_name(tmp_path: Path, data_dir: Path) -> None:
    # one folder of specs ($ETL_PIPELINES_DIR): the files need their own names
    specs = tmp_path / "specs"
    write_spec(specs, _orders("east"))
    (specs / "orders.yaml").rename(specs / "east_orders.yaml")
    write_spec(specs, _orders("west"))
    _land(data_dir, "east.orders", "a.csv", "id,amount\n1,10\n")
    home = tmp_path / "home"

    ambiguous = _cli(["rebuild", "orders"], specs, data_dir, home)
    assert ambiguous.returncode == 2, ambiguous.stderr
    assert "pipeline 'orders' is in several domains; name one: east.orders, west.orders" in ambiguous.stderr
    assert "Traceback" not in ambiguous.stderr

    # the reference picks one; rebuild then says east's raw data is missing (nothing extracted yet), naming east's key
    named = _cli(["rebuild", "east.orders"], specs, data_dir, home)
    assert named.returncode == 2 and "east/raw_orders has no lake data" in named.stderr, named.stderr
