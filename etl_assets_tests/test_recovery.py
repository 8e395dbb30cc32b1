"""Protects error recovery (issue #5): idempotent re-runs, crash recovery of loads, and retried extracts.

* Idempotency: three runs of the same partitions (an API source with quarantined rows into DuckDB and Postgres,
  a mart built from it, a file source) leave every lake file, every warehouse table (``quarantine.<domain>__<ds>``
  included) and the Postgres table with the same rows as one run, compared row by row without ``_etl_run_id``
  and ``_etl_loaded_at``, while the run ids show that every row was replaced.
* Crash recovery: a real ``dagster job execute`` process is SIGKILLed inside a load transaction (after the DELETE
  and the INSERT, before the COMMIT; ``ETL_TEST_PAUSE_IN_LOAD_SECONDS`` holds it there). The DuckDB warehouse
  and the Postgres table then show each partition's previous rows, never a mix; the dead run is failed and its
  pool slot freed, as run monitoring does, and ``etl-assets reexecute`` (from failure, in a new process) completes
  with exact rows. Postgres is killed in a first load too (the table, created in the transaction, is not there
  after) and shows that the dead backend's locks go, so nothing blocks the re-run; DuckDB is also killed between
  a COMMIT and the checkpoint that closing the connection does, and replays its WAL on the next open.
* Mid-extract failures: an API page that fails a few times is retried per request; a page whose request retries
  run out fails the step, whose RetryPolicy re-runs it from page 1; a Postgres backend terminated while its
  ADBC stream is read is a transient error and the step retry completes. Each ends with the source rows
  exactly once in the raw lake and the warehouse.

Everything is real: the demo API on loopback, a real Postgres, DuckDB files, Dagster instances and processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import httpx
import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from psycopg import sql

from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.lake import VIEW_SUFFIX, view_files, view_sql
from etl_assets.pipelines.steps.load import QUARANTINE_SCHEMA
from etl_assets.resources.api import RestApiSource
from etl_assets.resources.targets import TEST_PAUSE_IN_LOAD_ENV, WAREHOUSE_POOL
from etl_assets_demo import DemoApiServer, DemoManifest, FaultConfig
from etl_assets_tests.specs import column, files_source, pipeline, transform, write_spec

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_SPECIFIC = ("_etl_run_id", "_etl_loaded_at")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# Requests per page before a transient failure is given up on and the step fails.
REQUEST_ATTEMPTS = RestApiSource(connection="rec_api", default_url="http://127.0.0.1:9").max_attempts

# ---------------------------------------------------------------------------------------------- helpers


def digest(rows: Iterable[tuple]) -> tuple[int, str]:
    """Row count and an order-independent hash of the rows (duplicates count)."""
    lines = sorted(repr(tuple(r)) for r in rows)
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def lake_snapshot(lake: Path) -> dict[str, tuple[int, str]]:
    """Every partition under the lake (Parquet file or view) with the digest of its rows; no temporary file may be
    left behind, and every hidden file is one a view reads."""
    snapshot, referenced = {}, set()
    for path in sorted(lake.rglob("*")):
        relative = path.relative_to(lake).as_posix()
        if path.is_dir() or path.name.startswith("."):
            continue
        assert not any(part.startswith(".") for part in path.relative_to(lake).parts), f"leftover {relative}"
        if path.name.endswith(VIEW_SUFFIX):
            referenced.update(view_files(str(path)))
            rel = duckdb.sql(view_sql(str(path)))
        else:
            rel = duckdb.read_parquet(str(path))
        assert rel is not None, relative
        columns = [duckdb.ColumnExpression(c) for c in rel.columns if c not in RUN_SPECIFIC]
        snapshot[relative] = digest(rel.select(*columns).fetchall())
    leftovers = [p.relative_to(lake).as_posix() for p in lake.rglob(".*") if p.is_file() and p not in referenced]
    assert not leftovers, f"leftover {leftovers}"
    return snapshot


def warehouse_snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """Every table of the DuckDB warehouse with the digest of its rows."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2").fetchall()
        snapshot = {}
        for schema, table in tables:
            columns = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?"
                    " ORDER BY ordinal_position",
                    [schema, table],
                ).fetchall()
                if r[0] not in RUN_SPECIFIC
            ]
            select = ", ".join(f'"{c}"' for c in columns)
            snapshot[f"{schema}.{table}"] = digest(con.execute(f'SELECT {select} FROM "{schema}"."{table}"').fetchall())
    return snapshot


def pg_rows(url: str, schema: str, table: str, columns: list[str] | None = None) -> list[tuple]:
    with psycopg.connect(url) as conn:
        if columns is None:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                    " ORDER BY ordinal_position",
                    [schema, table],
                ).fetchall()
                if r[0] not in RUN_SPECIFIC
            ]
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(schema, table)
        )
        return conn.execute(query).fetchall()


def pg_table_exists(url: str, schema: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}"."{table}"']).fetchone()
    assert row is not None
    return row[0]


def source_orders(manifest: DemoManifest, day: str) -> list[tuple]:
    """(order_id, status) of the demo orders of one UTC day, from the file the API serves."""
    return duckdb.execute(
        "SELECT order_id, status FROM read_parquet(?) WHERE ordered_at >= CAST(? AS TIMESTAMPTZ)"
        " AND ordered_at < CAST(? AS TIMESTAMPTZ) + INTERVAL 1 DAY",
        [str(manifest.orders_path), f"{day} 00:00:00+00", f"{day} 00:00:00+00"],
    ).fetchall()


def raw_order_ids(data_dir: Path, dataset: str, day: str, domain: str = "rec") -> list[int]:
    path = data_dir / "lake" / domain / f"raw_{dataset}" / f"{day}.parquet"
    return [int(r[0]) for r in duckdb.execute("SELECT order_id FROM read_parquet(?)", [str(path)]).fetchall()]


def job_of(domain: str, name: str) -> str:
    """The job of pipeline ``name`` of ``domain``."""
    return pipeline_job_name(Pipeline(domain, name))


def landing_of(data_dir: Path, domain: str, name: str) -> Path:
    """The landing folder of pipeline ``name`` of ``domain``: ``landing/<domain>.<name>/``."""
    return data_dir / "landing" / pipeline_ref(Pipeline(domain, name))


def quarantine_of(domain: str, name: str) -> str:
    """The warehouse's quarantine table of pipeline ``name`` of ``domain``: ``quarantine.<domain>__<name>``."""
    return f"{QUARANTINE_SCHEMA}.{dagster_name(Pipeline(domain, name))}"


def step_events(result, step_key: str, kind: DagsterEventType) -> list:
    return [e for e in result.all_events if e.step_key == step_key and e.event_type == kind]


def orders_spec(
    domain: str, style: str = "cursor", page_size: int = 50, targets: tuple[str, ...] = ("duckdb",)
) -> dict:
    """The demo orders as an API pipeline whose cancelled orders break the contract (they go to quarantine)."""
    source = {
        "kind": "api",
        "connection": "rec_api",
        "default_url": "http://127.0.0.1:9",
        "endpoint": "/orders",
        "records_path": "data",
        "pagination": {"style": style, "page_size": page_size},
        "window_params": ["ordered_from", "ordered_to"],
        "timeout_seconds": 10,
    }
    columns = [
        column("order_id", "BIGINT", nullable=False),
        column("customer_id", "BIGINT", nullable=False),
        column("product_id", "BIGINT", nullable=False),
        column("quantity", "INTEGER", nullable=False, min=1),
        column("unit_price", "DECIMAL(12,2)", nullable=False),
        column("currency", nullable=False),
        column("status", nullable=False, accepted_values=["placed", "shipped"]),
        column("ordered_at", "TIMESTAMPTZ", nullable=False),
        column("updated_at", "TIMESTAMPTZ", nullable=False),
    ]
    return pipeline(
        "rec_orders",
        columns,
        domain=domain,
        source=source,
        partitions={"type": "daily", "start": "2024-01-01", "column": "ordered_at"},
        primary_key=["order_id"],
        quality={"threshold": 0.5},
        targets=list(targets),
        retry={"max_retries": 2, "delay_seconds": 0},
    )


@pytest.fixture
def specs_dir(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "specs"
    path.mkdir()
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(path))
    return path


@pytest.fixture
def rec_api(shop_data: DemoManifest, monkeypatch: pytest.MonkeyPatch):
    """Start the demo API with given faults; REC_API_URL points at it."""
    servers: list[DemoApiServer] = []

    def start(faults: FaultConfig | None = None) -> DemoApiServer:
        server = DemoApiServer(shop_data.orders_path, faults=faults).start()
        servers.append(server)
        monkeypatch.setenv("REC_API_URL", server.url)
        return server

    yield start
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------------------------- 3. idempotency


@pytest.mark.postgres
def test_three_runs_of_the_same_partitions_leave_lake_warehouse_and_postgres_as_one_run(
    specs_dir, shop_data, rec_api, instance, data_dir, postgres_url, pg_schema, monkeypatch
):
    write_spec(specs_dir, orders_spec(pg_schema, targets=("duckdb", "postgres")))
    (specs_dir / "rec_daily.sql").write_text(
        "SELECT CAST(ordered_at AS DATE) AS order_date, currency, count(*) AS orders,"
        " CAST(sum(quantity) AS BIGINT) AS units, sum(quantity * unit_price) AS amount FROM rec_orders GROUP BY ALL"
    )
    write_spec(
        specs_dir,
        transform(
            "rec_daily",
            "rec_daily.sql",
            ["rec_orders"],
            domain=pg_schema,
            partitions={"type": "daily", "start": "2024-01-01"},
            targets=["duckdb"],
        ),
    )
    write_spec(
        specs_dir,
        pipeline(
            "rec_catalog",
            [
                column("product_id", "BIGINT", nullable=False),
                column("sku", nullable=False),
                column("list_price", "DECIMAL(12,2)", nullable=False, min=0),
            ],
            domain=pg_schema,
            source=files_source(glob="products*.csv"),
            primary_key=["product_id"],
        ),
    )
    landing = landing_of(data_dir, pg_schema, "rec_catalog")
    landing.mkdir(parents=True)
    shop_products = shop_data.landing_dir / pipeline_ref(Pipeline("shop", "products")) / "products.csv"
    shutil.copy(shop_products, landing / "products.csv")
    monkeypatch.setenv("ETL_POSTGRES_URL", postgres_url)
    rec_api()
    defs = build_definitions()
    days = shop_data.partition_keys[:2]
    plan = [(f"{pg_schema}_daily", day) for day in days] + [(f"{pg_schema}_full_refresh", None)]

    snapshots, run_ids = [], []
    for _ in range(3):
        ids = {}
        for job, partition in plan:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, partition_key=partition, run_config=QUIET
            )
            assert result.success
            ids[partition] = result.run_id
        run_ids.append(ids)
        snapshots.append(
            {
                "lake": lake_snapshot(data_dir / "lake"),
                "warehouse": warehouse_snapshot(data_dir / "warehouse.duckdb"),
                "postgres": digest(pg_rows(postgres_url, pg_schema, "rec_orders")),
            }
        )

    assert snapshots[1] == snapshots[0] and snapshots[2] == snapshots[0]
    # What one run gives: every order of the two days once, cancelled ones in the quarantine, the mart, the catalogue.
    orders = [o for day in days for o in source_orders(shop_data, day)]
    cancelled = sum(1 for _, status in orders if status == "cancelled")
    assert cancelled > 0
    first = snapshots[0]
    assert first["warehouse"][f"{pg_schema}.rec_orders"][0] == len(orders) - cancelled
    assert first["warehouse"][quarantine_of(pg_schema, "rec_orders")][0] == cancelled
    assert first["warehouse"][quarantine_of(pg_schema, "rec_catalog")][0] == 0
    assert first["warehouse"][f"{pg_schema}.rec_catalog"][0] == shop_data.products
    assert first["warehouse"][f"{pg_schema}.rec_daily"][0] >= 2
    assert first["postgres"][0] == len(orders) - cancelled
    assert set(first["lake"]) == {
        f"{pg_schema}/{stage}_rec_orders/{day}.parquet" for stage in ("raw", "quarantine") for day in days
    } | {f"{pg_schema}/clean_rec_orders/{day}.view.json" for day in days} | {
        f"{pg_schema}/marts_rec_daily/{day}.parquet" for day in days
    } | {f"{pg_schema}/{stage}_rec_catalog/_all.parquet" for stage in ("raw", "quarantine")} | {
        f"{pg_schema}/clean_rec_catalog/_all.view.json"
    }
    # The rows were replaced by each run, not kept from the first: they carry the last run's id.
    last = run_ids[2]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute(
            f'SELECT DISTINCT _etl_partition, _etl_run_id FROM "{pg_schema}".rec_orders'
            f" UNION SELECT DISTINCT _etl_partition, _etl_run_id FROM {quarantine_of(pg_schema, 'rec_orders')}"
        ).fetchall()
    assert sorted(loaded) == sorted((day, last[day]) for day in days)
    assert sorted(set(pg_rows(postgres_url, pg_schema, "rec_orders", ["_etl_partition", "_etl_run_id"]))) == sorted(
        (day, last[day]) for day in days
    )


# ---------------------------------------------------------------------------------------------- 4. crash recovery

# How long the killed process waits at each pause point of a load (ample to notice the pause and kill it).
PAUSE_SECONDS = 1.5
BIG_DAYS = ("2024-01-01", "2024-01-02")


@pytest.fixture
def crash_env(tmp_path: Path, specs_dir: Path, data_dir: Path) -> dict:
    """Environment of the child processes: a DAGSTER_HOME with the project's dagster.yaml (the warehouse pool)."""
    home = tmp_path / "dagster_home_crash"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "ETL_DATA_DIR": str(data_dir), "ETL_PIPELINES_DIR": str(specs_dir)}


@pytest.fixture
def crash_instance(crash_env: dict):
    """The instance the child processes share, opened by the test to run, inspect and fail runs."""
    with DagsterInstance.from_config(crash_env["DAGSTER_HOME"]) as instance:
        yield instance


def big_spec(name: str, domain: str, targets: list[str], partitioned: bool) -> dict:
    """A CSV pipeline of ``<name>_*.csv`` files, daily by the date in the file name when ``partitioned``."""
    regex = {"partition_regex": rf"{name}_(?P<partition>\d{{4}}-\d{{2}}-\d{{2}})\.csv$"} if partitioned else {}
    partitions = {"partitions": {"type": "daily", "start": "2024-01-01"}} if partitioned else {}
    columns = [
        column("id", "BIGINT", nullable=False),
        column("amount", "DECIMAL(12,2)", nullable=False),
        column("label"),
    ]
    return pipeline(
        name,
        columns,
        domain=domain,
        source=files_source(glob=f"{name}_*.csv", **regex),
        **partitions,
        primary_key=["id"],
        quality={"threshold": 0.5},
        targets=targets,
        retry={"max_retries": 0},
    )


def write_csv(path: Path, version: int, rows: int, first_id: int = 0) -> None:
    """``rows`` rows tagged with ``version``; every 997th has an amount that is not a number (quarantined)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.execute(
        f"COPY (SELECT {first_id} + i AS id, CASE WHEN i % 997 = 0 THEN 'n/a'"
        f" ELSE CAST(round(i * 0.01 + {version}, 2) AS VARCHAR) END AS amount, 'v{version}-' || i AS label"
        f" FROM range({rows}) t(i)) TO '{path}' (HEADER)"
    )


def csv_rows(path: Path) -> tuple[tuple[int, str], tuple[int, str]]:
    """Digests of the valid rows (id, amount, label) and of the quarantined ids of a CSV written by `write_csv`."""
    rel = duckdb.read_csv(str(path), all_varchar=True)
    valid = rel.query(
        "rel", "SELECT CAST(id AS BIGINT), CAST(amount AS DECIMAL(12,2)), label FROM rel WHERE amount <> 'n/a'"
    )
    bad = rel.query("rel", "SELECT id FROM rel WHERE amount = 'n/a'")
    assert valid is not None and bad is not None
    return digest(valid.fetchall()), digest(bad.fetchall())


def warehouse_partition(con, schema: str, table: str, partition: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """Digests of one partition of a table (id, amount, label) and of its quarantine (ids)."""
    valid = con.execute(
        f'SELECT id, amount, label FROM "{schema}"."{table}" WHERE _etl_partition = ?', [partition]
    ).fetchall()
    bad = con.execute(f"SELECT id FROM {quarantine_of(schema, table)} WHERE _etl_partition = ?", [partition]).fetchall()
    return digest(valid), digest(bad)


def run_until_paused(cmd: list[str], env: dict, until: tuple[str, ...], timeout: float = 120):
    """Start ``cmd`` with the load pause hook on; return it and the pauses it logged once a pause mentions all of
    ``until`` (it is then asleep at that point of the load)."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**env, TEST_PAUSE_IN_LOAD_ENV: str(PAUSE_SECONDS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    stderr = proc.stderr
    assert stderr is not None  # opened with stderr=PIPE

    def pump() -> None:
        for line in stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    pauses: list[str] = []
    log: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while not pauses or not all(part in pauses[-1] for part in until):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"the run ended before pausing at {until}:\n{''.join(log[-40:])}")
            log.append(line)
            if TEST_PAUSE_IN_LOAD_ENV in line:
                pauses.append(line.split(TEST_PAUSE_IN_LOAD_ENV + ": ", 1)[1].strip())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, pauses


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def fail_dead_run(instance: DagsterInstance) -> str:
    """Mark the SIGKILLed run failed and free its pool slots, as run monitoring does; return its id."""
    (run,) = instance.get_runs()[:1]
    assert run.status == DagsterRunStatus.STARTED  # a killed run never reports its own end
    instance.report_run_failed(run)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return run.run_id


def reexecute_from_failure(env: dict, run_id: str, instance: DagsterInstance):
    """``etl-assets reexecute``, as an operator runs it (bounded: a re-run blocked by a lock fails, not hangs)."""
    proc = subprocess.run(
        [str(BIN / "etl-assets"), "reexecute", run_id], cwd=REPO, env=env, capture_output=True, text=True, timeout=150
    )
    assert proc.returncode == 0, f"re-execution failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    (child,) = [r for r in instance.get_runs() if r.parent_run_id == run_id]
    assert child.status == DagsterRunStatus.SUCCESS
    return child


@pytest.mark.slow
def test_sigkill_inside_a_duckdb_load_leaves_whole_partitions_and_reexecution_completes(
    crash_env, crash_instance, specs_dir, data_dir
):
    """A range run replaces two partitions (main table and quarantine together, one transaction each); killed in
    the second transaction."""
    write_spec(specs_dir, big_spec("rec_big", "rec", ["duckdb"], partitioned=True))
    landing = landing_of(data_dir, "rec", "rec_big")
    files = {day: landing / f"rec_big_{day}.csv" for day in BIG_DAYS}
    for index, day in enumerate(BIG_DAYS):
        write_csv(files[day], 1, 20_000, first_id=index * 10_000_000)
    job = job_of("rec", "rec_big")
    tags = {"dagster/asset_partition_range_start": BIG_DAYS[0], "dagster/asset_partition_range_end": BIG_DAYS[1]}
    instance = crash_instance
    result = build_definitions().resolve_job_def(job).execute_in_process(instance=instance, tags=tags, run_config=QUIET)
    assert result.success
    old = {day: csv_rows(files[day]) for day in BIG_DAYS}

    # Version 2: the second partition gets more rows than a DuckDB row group, which an INSERT writes to the file
    # before its COMMIT.
    for index, (day, rows) in enumerate(zip(BIG_DAYS, (30_000, 130_000))):
        write_csv(files[day], 2, rows, first_id=index * 10_000_000)
    new = {day: csv_rows(files[day]) for day in BIG_DAYS}
    cmd = [
        str(BIN / "dagster"),
        "job",
        "execute",
        "-m",
        "etl_assets",
        "-j",
        job,
        "--tags",
        json.dumps(tags),
    ]
    both = f"rec.rec_big, {quarantine_of('rec', 'rec_big')}"
    proc, pauses = run_until_paused(cmd, crash_env, until=(f"{both} partition {BIG_DAYS[1]}", "before COMMIT"))
    sigkill(proc)
    assert [p.split(" written")[0] + (" commit" if "after" in p else "") for p in pauses] == [
        f"{both} partition {BIG_DAYS[0]}",
        f"{both} partition {BIG_DAYS[0]} commit",
        f"{both} partition {BIG_DAYS[1]}",
    ]  # killed inside this transaction
    warehouse = data_dir / "warehouse.duckdb"
    wal = warehouse.with_name(warehouse.name + ".wal")
    wal_after_kill = wal.exists()

    claimed = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
    (run,) = instance.get_runs()[:1]
    run_id = run.run_id
    assert run.status == DagsterRunStatus.STARTED  # a killed run never reports its own end
    assert [(s.run_id, s.step_key) for s in claimed] == [(run_id, "rec__warehouse_rec_big")], (
        "the killed load holds the warehouse pool slot; `etl-assets reexecute` must free it or it waits forever"
    )

    # Opened read-write, as the next load does: what was committed is there, the open transaction is gone.
    with duckdb.connect(str(warehouse)) as con:
        assert warehouse_partition(con, "rec", "rec_big", BIG_DAYS[0]) == new[BIG_DAYS[0]]  # committed before the kill
        assert warehouse_partition(con, "rec", "rec_big", BIG_DAYS[1]) == old[BIG_DAYS[1]]  # all old (both tables)
        assert con.execute("SELECT DISTINCT _etl_partition FROM rec.rec_big ORDER BY 1").fetchall() == [
            (d,) for d in BIG_DAYS
        ]
    assert not wal.exists(), f"the WAL (present after the kill: {wal_after_kill}) was not checkpointed"

    child = reexecute_from_failure(crash_env, run_id, instance)  # marks the dead run failed and frees its slot
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots == []
    steps = {e.step_key for e in instance.all_logs(child.run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert steps == {"rec__warehouse_rec_big"}, "only the interrupted load runs again"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for day in BIG_DAYS:
            assert warehouse_partition(con, "rec", "rec_big", day) == new[day]
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM rec.rec_big").fetchall() == [
            (sum(new[d][0][0] for d in BIG_DAYS),) * 2
        ]


@pytest.mark.slow
def test_sigkill_after_a_duckdb_commit_before_its_checkpoint_replays_the_wal(
    crash_env, crash_instance, specs_dir, data_dir
):
    """Killed between a load's COMMIT and the checkpoint that closing the connection does: the WAL holds the commit."""
    write_spec(specs_dir, big_spec("rec_wal", "rec", ["duckdb"], partitioned=False))
    source = landing_of(data_dir, "rec", "rec_wal") / "rec_wal_all.csv"
    write_csv(source, 1, 5_000)
    job = job_of("rec", "rec_wal")
    instance = crash_instance
    assert build_definitions().resolve_job_def(job).execute_in_process(instance=instance, run_config=QUIET).success
    old = csv_rows(source)
    warehouse = data_dir / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert warehouse_partition(con, "rec", "rec_wal", "_all") == old
    write_csv(source, 2, 8_000)
    new = csv_rows(source)
    assert new != old

    proc, _ = run_until_paused(
        [str(BIN / "dagster"), "job", "execute", "-m", "etl_assets", "-j", job],
        crash_env,
        until=(f"rec.rec_wal, {quarantine_of('rec', 'rec_wal')} partition _all", "after COMMIT"),
    )
    sigkill(proc)
    wal = warehouse.with_name(warehouse.name + ".wal")
    assert wal.exists() and wal.stat().st_size > 0, "the commit should be in the WAL only"
    with duckdb.connect(str(warehouse)) as con:  # replays the WAL
        valid, quarantined = warehouse_partition(con, "rec", "rec_wal", "_all")
    assert (valid, quarantined) == new  # the dataset and its quarantine were committed together
    assert not wal.exists()

    run_id = fail_dead_run(instance)
    reexecute_from_failure(crash_env, run_id, instance)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert warehouse_partition(con, "rec", "rec_wal", "_all") == new


def backends_on(url: str, schema: str, table: str) -> list[tuple]:
    """(pid, state, lock mode) of other backends holding a lock on the table."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT a.pid, a.state, l.mode FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.relation = to_regclass(%s) AND a.pid <> pg_backend_pid()",
            [f'"{schema}"."{table}"'],
        ).fetchall()


def pg_content(url: str, schema: str, table: str) -> tuple[int, str]:
    return digest(pg_rows(url, schema, table, ["id", "amount", "label"]))


def schema_backends(url: str, schema: str) -> list[tuple]:
    """(pid, state) of other backends holding a lock on the schema or on a relation in it."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT DISTINCT a.pid, a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE a.pid <> pg_backend_pid() AND ((l.locktype = 'object' AND l.classid = 'pg_namespace'::regclass"
            " AND l.objid = to_regnamespace(%s)::oid)"
            " OR l.relation IN (SELECT oid FROM pg_class WHERE relnamespace = to_regnamespace(%s)::oid))",
            [schema, schema],
        ).fetchall()


def wait_until_released(url: str, schema: str, pid: int) -> None:
    """Postgres aborts a dead client's transaction once it sees the socket closed, and releases its locks."""
    deadline = time.monotonic() + 20
    while schema_backends(url, schema) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert schema_backends(url, schema) == []
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() == (0,)


@pytest.mark.postgres
def test_sigkill_inside_a_postgres_load_leaves_the_previous_rows_and_nothing_blocks_the_rerun(
    crash_env, crash_instance, specs_dir, data_dir, postgres_url, pg_schema
):
    """Killed twice: in the first load (the table is created in the transaction) and in a reload."""
    write_spec(specs_dir, big_spec("rec_pgload", pg_schema, ["postgres"], partitioned=False))
    env = {**crash_env, "ETL_POSTGRES_URL": postgres_url}
    source = landing_of(data_dir, pg_schema, "rec_pgload") / "rec_pgload_all.csv"
    job = job_of(pg_schema, "rec_pgload")
    cmd = [str(BIN / "dagster"), "job", "execute", "-m", "etl_assets", "-j", job]
    paused_load = ("rec_pgload partition _all", "before COMMIT")
    instance = crash_instance

    write_csv(source, 1, 40_000)
    old, _ = csv_rows(source)
    proc, _ = run_until_paused(cmd, env, until=paused_load)
    try:
        (loader,) = schema_backends(postgres_url, pg_schema)
        created = pg_table_exists(postgres_url, pg_schema, "rec_pgload")
    finally:
        sigkill(proc)
    assert loader[1] == "idle in transaction" and not created
    wait_until_released(postgres_url, pg_schema, loader[0])
    assert not pg_table_exists(postgres_url, pg_schema, "rec_pgload"), "a first load killed mid-way leaves nothing"
    reexecute_from_failure(env, fail_dead_run(instance), instance)
    assert pg_content(postgres_url, pg_schema, "rec_pgload") == old

    write_csv(source, 2, 70_000)
    new, _ = csv_rows(source)
    proc, _ = run_until_paused(cmd, env, until=paused_load)
    try:
        # Inside the transaction: DELETE and COPY done, not committed. Readers still see the previous rows.
        holders = backends_on(postgres_url, pg_schema, "rec_pgload")
        during = pg_content(postgres_url, pg_schema, "rec_pgload")
    finally:
        sigkill(proc)
    assert [(state, mode) for _, state, mode in holders] == [("idle in transaction", "RowExclusiveLock")]
    assert during == old
    wait_until_released(postgres_url, pg_schema, holders[0][0])
    assert pg_content(postgres_url, pg_schema, "rec_pgload") == old

    reexecute_from_failure(env, fail_dead_run(instance), instance)
    assert pg_content(postgres_url, pg_schema, "rec_pgload") == new
    with psycopg.connect(postgres_url) as conn:
        partitions = conn.execute(
            sql.SQL("SELECT DISTINCT _etl_partition FROM {}").format(sql.Identifier(pg_schema, "rec_pgload"))
        ).fetchall()
    assert partitions == [("_all",)]


# ---------------------------------------------------------------------------------------------- 5. mid-extract failures


def retry_errors(result, step_key: str) -> list[str]:
    """The errors that sent ``step_key`` up for a step retry, as text with their causes."""
    events = step_events(result, step_key, DagsterEventType.STEP_UP_FOR_RETRY)
    return [e.event_specific_data.error.to_string() for e in events]


def test_demo_api_fails_page_k_n_times_in_both_pagination_styles(shop_data):
    """The fault mode the tests below rely on: page 3's first two requests fail, then it answers; other pages never."""
    day = {"ordered_from": "2024-01-01T00:00:00+00:00", "ordered_to": "2024-01-02T00:00:00+00:00"}
    faults = FaultConfig(fail_page=3, fail_page_times=2, fail_page_kind="503", retry_after_seconds=0)
    with DemoApiServer(shop_data.orders_path, faults=faults) as api, httpx.Client(base_url=api.url) as client:
        statuses, params, page = [], {**day, "limit": 50}, 1
        while True:
            response = client.get("/orders", params=params)
            statuses.append((page, response.status_code))
            if response.status_code != 200:
                continue
            if not response.json()["next_cursor"]:
                break
            params["cursor"], page = response.json()["next_cursor"], page + 1
        by_number = [
            (n, client.get("/orders", params={**day, "page": n, "page_size": 50}).status_code)
            for n in (1, 2, 3, 3, 3, 4)
        ]
        assert api.faults_injected == {"503": 4}
    assert statuses[:5] == [(1, 200), (2, 200), (3, 503), (3, 503), (3, 200)]
    assert {s for _, s in statuses[5:]} == {200} and page > 3
    assert by_number == [(1, 200), (2, 200), (3, 503), (3, 503), (3, 200), (4, 200)]
    with pytest.raises(ValueError, match="fail_page_kind"):
        FaultConfig(fail_page=1, fail_page_kind="418")
    assert FaultConfig.parse("fail_page=3,fail_page_times=6,fail_page_kind=truncated") == FaultConfig(
        fail_page=3, fail_page_times=6, fail_page_kind="truncated"
    )


@pytest.mark.slow
def test_api_page_failing_fewer_times_than_the_request_attempts_is_retried_in_place(
    specs_dir, shop_data, rec_api, instance, data_dir
):
    write_spec(specs_dir, orders_spec("rec", style="page"))
    api = rec_api(FaultConfig(fail_page=3, fail_page_times=REQUEST_ATTEMPTS - 1, fail_page_kind="truncated"))
    day = shop_data.partition_keys[0]
    result = (
        build_definitions()
        .resolve_job_def(job_of("rec", "rec_orders"))
        .execute_in_process(instance=instance, partition_key=day, run_config=QUIET)
    )
    assert result.success
    assert retry_errors(result, "rec__raw_rec_orders") == []  # no step retry was needed
    orders = source_orders(shop_data, day)
    pages = -(-len(orders) // 50)
    assert pages > 3 and api.faults_injected == {"truncated": REQUEST_ATTEMPTS - 1}
    assert api.requests_total == pages + REQUEST_ATTEMPTS - 1
    raw = result.asset_materializations_for_node("rec__raw_rec_orders")[0].metadata
    assert raw["request_retries"].value == REQUEST_ATTEMPTS - 1 and raw["pages"].value == pages
    assert sorted(raw_order_ids(data_dir, "rec_orders", day)) == sorted(o for o, _ in orders)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT order_id) FROM rec.rec_orders").fetchall() == [
            (sum(1 for _, s in orders if s != "cancelled"),) * 2
        ]


@pytest.mark.slow
def test_api_request_retries_exhausted_at_page_k_step_retry_writes_the_partition_once(
    specs_dir, shop_data, rec_api, instance, data_dir
):
    write_spec(specs_dir, orders_spec("rec", style="cursor"))
    api = rec_api(
        FaultConfig(fail_page=3, fail_page_times=REQUEST_ATTEMPTS, fail_page_kind="503", retry_after_seconds=0)
    )
    day = shop_data.partition_keys[1]
    result = (
        build_definitions()
        .resolve_job_def(job_of("rec", "rec_orders"))
        .execute_in_process(instance=instance, partition_key=day, run_config=QUIET)
    )
    assert result.success
    (error,) = retry_errors(result, "rec__raw_rec_orders")
    assert "TransientSourceError" in error and f"failed {REQUEST_ATTEMPTS} times, last with http_503" in error
    orders = source_orders(shop_data, day)
    pages = -(-len(orders) // 50)
    # Attempt 1 read pages 1 and 2, then page 3 failed every time; attempt 2 read every page from the first.
    assert api.requests_total == 2 + REQUEST_ATTEMPTS + pages
    ids = raw_order_ids(data_dir, "rec_orders", day)
    assert sorted(ids) == sorted(o for o, _ in orders) and len(set(ids)) == len(ids)
    assert sorted(p.name for p in (data_dir / "lake" / "rec" / "raw_rec_orders").iterdir()) == [f"{day}.parquet"]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT count(*), count(DISTINCT order_id) FROM rec.rec_orders").fetchall()
        quarantined = con.execute(f"SELECT count(*) FROM {quarantine_of('rec', 'rec_orders')}").fetchall()
    cancelled = sum(1 for _, s in orders if s == "cancelled")
    assert loaded == [(len(orders) - cancelled,) * 2] and quarantined == [(cancelled,)]


PG_SOURCE_ROWS = 300_000


@pytest.mark.postgres
def test_postgres_source_terminated_mid_extract_is_retried_and_completes_exactly(
    specs_dir, data_dir, instance, postgres_url, pg_schema, monkeypatch
):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # ~90 MB, so the ADBC stream spans several record batches (its batch size hint is 16 MB).
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} AS SELECT g::bigint AS id, 'event ' || g AS label, repeat(md5(g::text), 8) AS pad"
                " FROM generate_series(1, %s) AS g"
            ).format(sql.Identifier(pg_schema, "events")),
            [PG_SOURCE_ROWS],
        )
    write_spec(
        specs_dir,
        pipeline(
            "rec_pgsrc",
            [column("id", "BIGINT", nullable=False), column("label", nullable=False), column("pad", nullable=False)],
            domain="rec",
            source={
                "kind": "sql",
                "connection": "rec_pg",
                "default_url": "postgresql://127.0.0.1:9/none",
                "table": f"{pg_schema}.events",
            },
            primary_key=["id"],
            retry={"max_retries": 2, "delay_seconds": 0},
        ),
    )
    app = "etl_rec_" + uuid.uuid4().hex[:10]
    monkeypatch.setenv("REC_PG_URL", f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={app}")
    raw_dir = data_dir / "lake" / "rec" / "raw_rec_pgsrc"
    terminated: list[bool] = []
    stop = threading.Event()

    def terminate_once_batches_arrive() -> None:
        """Wait until the raw file being written holds a row group, then terminate the extract's backend."""
        while not stop.is_set():
            partial = [p for p in raw_dir.glob(".*.tmp") if p.stat().st_size > 4] if raw_dir.is_dir() else []
            if partial:
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    terminated.extend(
                        r[0]
                        for r in admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [app]
                        ).fetchall()
                    )
                return
            time.sleep(0.005)

    killer = threading.Thread(target=terminate_once_batches_arrive, daemon=True)
    killer.start()
    try:
        result = (
            build_definitions()
            .resolve_job_def(job_of("rec", "rec_pgsrc"))
            .execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
        )
    finally:
        stop.set()
        killer.join(timeout=10)
    assert terminated == [True], "the extract's backend should have been terminated while its stream was read"
    assert result.success
    (error,) = retry_errors(result, "rec__raw_rec_pgsrc")
    assert "TransientSourceError" in error and "mid-extract" in error
    expected = [(PG_SOURCE_ROWS, PG_SOURCE_ROWS, PG_SOURCE_ROWS * (PG_SOURCE_ROWS + 1) // 2)]
    assert (
        duckdb.execute(
            "SELECT count(*), count(DISTINCT id), sum(id) FROM read_parquet(?)", [str(raw_dir / "_all.parquet")]
        ).fetchall()
        == expected
    )
    assert [p.name for p in raw_dir.iterdir()] == ["_all.parquet"]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id), sum(id) FROM rec.rec_pgsrc").fetchall() == expected
