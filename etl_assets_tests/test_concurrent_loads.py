"""Two writers of one partition at once give the result of one (ARCHITECTURE principle 2, Scale-out): for the Postgres
target, the DuckDB warehouse and the lake, with two real processes overlapping on purpose.

Each test starts the second writer first, up to the point where everything is imported and it waits for a "go" on
stdin; then the first, with a test pause hook on (``ETL_TEST_PAUSE_IN_LOAD_SECONDS``, held inside its load
transaction after the DELETE and the COPY/INSERT; ``ETL_TEST_PAUSE_IN_LAKE_WRITE_SECONDS``, held with its temporary
files written, before the switch). Once the first says it is paused the second is let go, so it starts its write
while the first is in the middle of its own; the test sees the second wait for the first, then ends the first's
pause (``ETL_TEST_PAUSE_RELEASE_FILE``). Both must succeed, and the result must be exactly the second's rows, once
(exact counts and distinct keys), with nothing left over.

* Postgres: the second load is seen waiting on an advisory lock, then deletes the first one's committed rows. Loads of
  different partitions that create the table, or add the same column, at once both succeed, and a reader is not
  blocked by the ADD COLUMN while the first load is still in its transaction.
* DuckDB warehouse: the second process waits for DuckDB's file lock, then replaces the first one's rows; two threads of
  one process (whose connections share the database and would not exclude each other) are serialized too.
* Lake: the second writer of a partition (Parquet or view, in every combination) waits for the first's lock and does
  not delete its temporary files; the partition ends as the second wrote it, with no file of the first left. A writer
  SIGKILLed mid-write leaves its lock and temporary files; the next write of that partition removes them, while a live
  writer of another partition (whose name starts the same) keeps its files and completes.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from etl_assets.lake import (
    TEST_PAUSE_IN_LAKE_WRITE_ENV,
    TEST_PAUSE_RELEASE_ENV,
    VIEW_SUFFIX,
    LakeStorage,
    LakeView,
    view_files,
)
from etl_assets.resources.targets import TEST_PAUSE_IN_LOAD_ENV, DuckDBWarehouse, LoadResult, PostgresTarget

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
# The longest the first writer stays paused; the test ends the pause once it has seen the second one wait.
PAUSE_SECONDS = 120
# How long the second one may take from its "go" to waiting on the lock (a loaded machine; about 0.1 s when idle).
WAIT_SECONDS = 60
ROWS = 20_000
PARTITION = "2024-01-01"

CHILD = r"""
import json, sys, time
mode, args = sys.argv[1], json.loads(sys.argv[2])
import duckdb, pyarrow as pa
from etl_assets.lake import LakeStorage, LakeView
from etl_assets.resources.targets import DuckDBWarehouse, PostgresTarget
from etl_assets.sqlutil import quote_literal
lake = LakeStorage(root=args["lake"])
if args["wait_for_go"]:
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
started = time.monotonic()
if mode in ("postgres", "duckdb"):
    source = lake.table(args["source"], [args["partition"]])
    target = PostgresTarget(url=args["url"]) if mode == "postgres" else DuckDBWarehouse(path=args["warehouse"])
    result = target.replace_partition(args["schema"], args["table"], source, args["partition"], args["run_id"])
    out = {"rows": result.rows, "replaced": result.rows_replaced}
elif mode == "lake_parquet":
    n = args["rows"]
    data = pa.table({"id": pa.array(range(n), pa.int64()), "writer": pa.array([args["tag"]] * n)})
    out = {"rows": lake.write(args["key"], args["partition"], data).rows}
else:
    con = duckdb.connect()
    excluded = con.sql("SELECT unnest(?::BIGINT[]) AS position", params=[args["excluded"]])
    view = LakeView(source=args["view_source"], select='"id", ' + quote_literal(args["tag"]) + ' AS "writer"',
                    excluded=excluded)
    out = {"rows": lake.write(args["key"], args["partition"], view).rows}
out["seconds"] = time.monotonic() - started
print(json.dumps(out), flush=True)
"""


class Child:
    """A real Python process running CHILD in ``mode``; its stdout and stderr are read by threads as they come."""

    def __init__(self, mode: str, args: dict, env: dict | None = None, wait_for_go: bool = False):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, json.dumps({**args, "wait_for_go": wait_for_go})],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.out: list[str] = []
        for stream, lines, seen in (
            (self.proc.stdout, self.stdout, self.out),
            (self.proc.stderr, self.stderr, self.log),
        ):
            threading.Thread(target=self._pump, args=(stream, lines, seen), daemon=True).start()

    @staticmethod
    def _pump(stream, lines: queue.Queue, seen: list[str]) -> None:
        for line in stream:
            seen.append(line)
            lines.put(line)
        lines.put(None)

    def _wait(self, lines: queue.Queue, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"the child ended before {marker!r}:\n{''.join(self.log[-40:])}")
            if marker in line:
                return line

    def wait_stderr(self, marker: str, timeout: float = 90) -> str:
        return self._wait(self.stderr, marker, timeout)

    def ready(self, timeout: float = 90) -> None:
        self._wait(self.stdout, "ready", timeout)

    def go(self) -> None:
        assert self.proc.stdin is not None  # opened with stdin=PIPE
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 120) -> dict:
        code = self.proc.wait(timeout=timeout)
        assert code == 0, f"the child failed ({code}):\n{''.join(self.log[-60:])}"
        deadline = time.monotonic() + 10
        while not self.out or not self.out[-1].startswith("{"):
            assert time.monotonic() < deadline, f"no result from the child: {self.out}"
            time.sleep(0.05)
        return json.loads(self.out[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def children():
    """Start children with ``spawn(...)``; any still running at the end is killed."""
    started: list[Child] = []

    def spawn(*args, **kwargs) -> Child:
        child = Child(*args, **kwargs)
        started.append(child)
        return child

    yield spawn
    for child in started:
        child.kill()


def _overlap(
    spawn,
    release: Path,
    modes: tuple[str, str],
    first: dict,
    second: dict,
    paused: str,
    pause_env: str,
    second_env: dict | None = None,
    while_paused=None,
) -> tuple[dict, dict]:
    """Run ``first`` until it pauses (its stderr shows ``paused``), then let ``second`` (imported already) go; call
    ``while_paused(first, second)``, end the first one's pause (create ``release``); return both results."""
    second_child = spawn(modes[1], second, env=second_env, wait_for_go=True)
    first_child = spawn(modes[0], first, env={pause_env: str(PAUSE_SECONDS), TEST_PAUSE_RELEASE_ENV: str(release)})
    second_child.ready()
    first_child.wait_stderr(paused)
    second_child.go()
    started = time.monotonic()
    try:
        if while_paused is not None:
            while_paused(first_child, second_child)
        assert first_child.proc.poll() is None, "the first one ended its pause before the checks were done"
    finally:
        release.touch()
    assert time.monotonic() - started < PAUSE_SECONDS
    return first_child.result(), second_child.result()


def _rows(n: int, writer: str, extra: bool = False) -> pa.Table:
    columns = {"id": pa.array(range(n), pa.int64()), "writer": pa.array([writer] * n)}
    if extra:
        columns["extra"] = pa.array([f"{writer}-{i}" for i in range(n)])
    return pa.table(columns)


# ---------------------------------------------------------------------------------------------- Postgres


def _pg_partition(url: str, schema: str, table: str, partition: str) -> tuple:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), count(DISTINCT id), array_agg(DISTINCT writer ORDER BY writer),"
                " array_agg(DISTINCT _etl_run_id ORDER BY _etl_run_id) FROM {} WHERE _etl_partition = %s"
            ).format(sql.Identifier(schema, table)),
            [partition],
        ).fetchone()
    assert row is not None
    return row


def _wait_for_advisory_wait(url: str, application: str, timeout: float = WAIT_SECONDS) -> None:
    """Until the backend named ``application`` waits on an advisory lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            (waiting,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
                " AND wait_event = 'advisory'",
                [application],
            ).fetchall()[0]
            if waiting:
                return
            assert time.monotonic() < deadline, f"{application} never waited on an advisory lock"
            time.sleep(0.05)


def _pg_args(tmp_path: Path, url: str, schema: str, source: str, run_id: str, partition: str = PARTITION) -> dict:
    return {
        "lake": str(tmp_path / "lake"),
        "source": ["src", source],
        "url": url,
        "schema": schema,
        "table": "events",
        "partition": partition,
        "run_id": run_id,
    }


@pytest.mark.postgres
def test_two_postgres_loads_of_one_partition_at_once_leave_one_copy(
    tmp_path, data_dir, postgres_url, pg_schema, children
):
    lake = LakeStorage(root=str(tmp_path / "lake"))
    for name, n in (("initial", 500), ("a", ROWS), ("b", ROWS)):
        lake.write(["src", name], PARTITION, _rows(n, name))
    initial = PostgresTarget(url=postgres_url).replace_partition(
        pg_schema, "events", lake.table(["src", "initial"], [PARTITION]), PARTITION, "run-initial"
    )
    assert initial.rows == 500
    app = f"etl_test_{uuid.uuid4().hex[:8]}_second"

    first, second = _overlap(
        children,
        tmp_path / "release",
        ("postgres", "postgres"),
        _pg_args(tmp_path, postgres_url, pg_schema, "a", "run-a"),
        _pg_args(tmp_path, postgres_url, pg_schema, "b", "run-b"),
        paused=f"{TEST_PAUSE_IN_LOAD_ENV}: {pg_schema}.events partition {PARTITION} written",
        pause_env=TEST_PAUSE_IN_LOAD_ENV,
        second_env={"PGAPPNAME": app},
        while_paused=lambda *_: _wait_for_advisory_wait(postgres_url, app),
    )

    assert (first["rows"], first["replaced"]) == (ROWS, 500)
    # the second waited for the first's COMMIT, then deleted the first one's rows, not the initial ones
    assert (second["rows"], second["replaced"]) == (ROWS, ROWS)
    assert _pg_partition(postgres_url, pg_schema, "events", PARTITION) == (ROWS, ROWS, ["b"], ["run-b"])
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(pg_schema, "events"))
        ).fetchone() == (ROWS,)


@pytest.mark.postgres
def test_two_first_loads_of_different_partitions_create_the_table_at_once(
    tmp_path, data_dir, postgres_url, pg_schema, children
):
    lake = LakeStorage(root=str(tmp_path / "lake"))
    p2 = "2024-01-02"
    lake.write(["src", "a"], PARTITION, _rows(ROWS, "a"))
    lake.write(["src", "b"], p2, _rows(ROWS // 2, "b"))
    app = f"etl_test_{uuid.uuid4().hex[:8]}_second"

    first, second = _overlap(
        children,
        tmp_path / "release",
        ("postgres", "postgres"),
        _pg_args(tmp_path, postgres_url, pg_schema, "a", "run-a"),
        _pg_args(tmp_path, postgres_url, pg_schema, "b", "run-b", partition=p2),
        paused=f"{TEST_PAUSE_IN_LOAD_ENV}: {pg_schema}.events partition {PARTITION} written",
        pause_env=TEST_PAUSE_IN_LOAD_ENV,
        second_env={"PGAPPNAME": app},
        # the first created the table in its transaction; the second waits on the table's lock for its COMMIT
        while_paused=lambda *_: _wait_for_advisory_wait(postgres_url, app),
    )

    assert (first["rows"], first["replaced"], second["rows"], second["replaced"]) == (ROWS, 0, ROWS // 2, 0)
    assert _pg_partition(postgres_url, pg_schema, "events", PARTITION) == (ROWS, ROWS, ["a"], ["run-a"])
    assert _pg_partition(postgres_url, pg_schema, "events", p2) == (ROWS // 2, ROWS // 2, ["b"], ["run-b"])


@pytest.mark.postgres
def test_two_loads_of_different_partitions_add_the_same_column_at_once(
    tmp_path, data_dir, postgres_url, pg_schema, children
):
    lake = LakeStorage(root=str(tmp_path / "lake"))
    p0, p2 = "2023-12-31", "2024-01-02"
    lake.write(["src", "initial"], p0, _rows(100, "initial"))
    lake.write(["src", "a"], PARTITION, _rows(ROWS, "a", extra=True))
    lake.write(["src", "b"], p2, _rows(ROWS, "b", extra=True))
    PostgresTarget(url=postgres_url).replace_partition(
        pg_schema, "events", lake.table(["src", "initial"], [p0]), p0, "run-initial"
    )

    def second_loads_while_the_first_is_in_its_transaction(first: Child, second: Child) -> None:
        # the first one's ADD COLUMN committed on its own, before its load transaction: no ACCESS EXCLUSIVE lock is
        # held through its COPY, so a reader gets the committed rows at once, and the second load (another
        # partition, the same new column) neither waits for it nor adds the column again
        with psycopg.connect(postgres_url) as conn:
            conn.execute("SET lock_timeout = '1s'")
            assert conn.execute(
                sql.SQL("SELECT count(*), count(extra) FROM {}").format(sql.Identifier(pg_schema, "events"))
            ).fetchone() == (100, 0)
        assert second.result(timeout=WAIT_SECONDS)["rows"] == ROWS

    first, second = _overlap(
        children,
        tmp_path / "release",
        ("postgres", "postgres"),
        _pg_args(tmp_path, postgres_url, pg_schema, "a", "run-a"),
        _pg_args(tmp_path, postgres_url, pg_schema, "b", "run-b", partition=p2),
        paused=f"{TEST_PAUSE_IN_LOAD_ENV}: {pg_schema}.events partition {PARTITION} written",
        pause_env=TEST_PAUSE_IN_LOAD_ENV,
        while_paused=second_loads_while_the_first_is_in_its_transaction,
    )

    assert (first["rows"], second["rows"]) == (ROWS, ROWS)
    with psycopg.connect(postgres_url) as conn:
        counts = conn.execute(
            sql.SQL(
                "SELECT _etl_partition, count(*), count(DISTINCT id), count(extra), min(extra) FROM {}"
                " GROUP BY 1 ORDER BY 1"
            ).format(sql.Identifier(pg_schema, "events"))
        ).fetchall()
    assert counts == [(p0, 100, 100, 0, None), (PARTITION, ROWS, ROWS, ROWS, "a-0"), (p2, ROWS, ROWS, ROWS, "b-0")]


# ---------------------------------------------------------------------------------------------- DuckDB warehouse


def test_two_processes_loading_one_partition_into_the_warehouse_give_one_copy(tmp_path, data_dir, children):
    """DuckDB's file lock is the serialization: the second process cannot open the file until the first closes it."""
    lake = LakeStorage(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    for name, n in (("initial", 500), ("a", ROWS), ("b", ROWS)):
        lake.write(["src", name], PARTITION, _rows(n, name))
    warehouse.replace_partition("shop", "events", lake.table(["src", "initial"], [PARTITION]), PARTITION, "run-initial")
    args = {
        "lake": str(tmp_path / "lake"),
        "warehouse": str(tmp_path / "warehouse.duckdb"),
        "schema": "shop",
        "table": "events",
        "partition": PARTITION,
    }

    first, second = _overlap(
        children,
        tmp_path / "release",
        ("duckdb", "duckdb"),
        {**args, "source": ["src", "a"], "run_id": "run-a"},
        {**args, "source": ["src", "b"], "run_id": "run-b"},
        paused=f"{TEST_PAUSE_IN_LOAD_ENV}: shop.events partition {PARTITION} written, pausing {PAUSE_SECONDS:g}s before COMMIT",
        pause_env=TEST_PAUSE_IN_LOAD_ENV,
        while_paused=lambda first, second: second.wait_stderr(
            "waiting for another process to release the warehouse", timeout=WAIT_SECONDS
        ),
    )

    assert (first["rows"], first["replaced"]) == (ROWS, 500)
    assert (second["rows"], second["replaced"]) == (ROWS, ROWS)  # it ran after the first's COMMIT
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(
            "SELECT count(*), count(DISTINCT id), list(DISTINCT writer), list(DISTINCT _etl_run_id) FROM shop.events"
        ).fetchall() == [(ROWS, ROWS, ["b"], ["run-b"])]


def test_two_threads_loading_one_partition_into_the_warehouse_give_one_copy(tmp_path, data_dir, monkeypatch):
    """Connections of one process share the database: two transactions would both delete nothing and both insert."""
    lake = LakeStorage(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    for name in ("a", "b"):
        lake.write(["src", name], PARTITION, _rows(ROWS, name))
    lake.write(["src", "other"], "2023-12-31", _rows(10, "other"))  # the table exists; the partition is empty
    warehouse.replace_partition("shop", "events", lake.table(["src", "other"], ["2023-12-31"]), "2023-12-31", "run-0")
    monkeypatch.setenv(TEST_PAUSE_IN_LOAD_ENV, "0.5")  # each load holds its transaction open for a while
    results: dict[str, LoadResult | BaseException] = {}

    def load(name: str) -> None:
        try:
            results[name] = warehouse.replace_partition(
                "shop", "events", lake.table(["src", name], [PARTITION]), PARTITION, f"run-{name}"
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=load, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    loads = [r for r in results.values() if isinstance(r, LoadResult)]
    assert len(loads) == 2 and all(r.rows == ROWS for r in loads), results
    assert sorted(r.rows_replaced for r in loads) == [0, ROWS]  # the second replaced the first's rows
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        ((count, distinct, writers),) = con.execute(
            "SELECT count(*), count(DISTINCT id), list(DISTINCT writer) FROM shop.events WHERE _etl_partition = ?",
            [PARTITION],
        ).fetchall()
    assert (count, distinct) == (ROWS, ROWS) and len(writers) == 1


# ---------------------------------------------------------------------------------------------- lake


def _lock_is_held(directory: Path, partition: str) -> bool:
    """Whether some process holds the partition's write lock (its lock file exists and cannot be locked now)."""
    try:
        fd = os.open(directory / f".{partition}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _hidden(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith(".")}


@pytest.mark.parametrize(
    "first_kind, second_kind", [("view", "view"), ("parquet", "parquet"), ("view", "parquet"), ("parquet", "view")]
)
def test_two_writers_of_one_lake_partition_give_the_second_ones_partition(
    tmp_path, data_dir, children, first_kind, second_kind
):
    lake = LakeStorage(root=str(tmp_path / "lake"))
    raw = lake.write(["default", "raw_w"], PARTITION, _rows(ROWS, "raw")).path
    directory = tmp_path / "lake" / "default" / "clean_w"
    base = {
        "lake": str(tmp_path / "lake"),
        "key": ["default", "clean_w"],
        "partition": PARTITION,
        "view_source": str(raw),
    }
    first_args = {**base, "tag": "a", "rows": ROWS, "excluded": list(range(10))}
    second_args = {**base, "tag": "b", "rows": ROWS // 2, "excluded": list(range(10, 30))}
    expected = {"view": ROWS - 20, "parquet": ROWS // 2}[second_kind]
    seen: dict[str, set[str]] = {}

    def second_waits_without_touching_the_firsts_files(first: Child, second: Child) -> None:
        assert _lock_is_held(directory, PARTITION)
        seen["first"] = _hidden(directory) - {f".{PARTITION}.lock"}
        assert len(seen["first"]) == {"view": 3, "parquet": 1}[first_kind]  # its temporary files
        second.wait_stderr("waiting for another writer of this lake partition", timeout=WAIT_SECONDS)
        assert seen["first"] <= _hidden(directory)  # still there while the second waits

    first, second = _overlap(
        children,
        tmp_path / "release",
        (f"lake_{first_kind}", f"lake_{second_kind}"),
        first_args,
        second_args,
        paused=f"{TEST_PAUSE_IN_LAKE_WRITE_ENV}: ",
        pause_env=TEST_PAUSE_IN_LAKE_WRITE_ENV,
        while_paused=second_waits_without_touching_the_firsts_files,
    )

    assert first["rows"] == {"view": ROWS - 10, "parquet": ROWS}[first_kind] and second["rows"] == expected
    table = lake.table(["default", "clean_w"], [PARTITION])
    assert table.relation().aggregate("count(*), count(DISTINCT id), list(DISTINCT writer)").fetchall() == [
        (expected, expected, ["b"])
    ]
    stored = lake.stored_path(["default", "clean_w"], PARTITION)
    assert stored is not None
    if second_kind == "view":
        assert stored.name == f"{PARTITION}{VIEW_SUFFIX}"
        named = {p.name for p in view_files(str(stored))}
        assert {p.name for p in directory.iterdir()} == {stored.name, *named}
        assert not named & seen["first"]
    else:
        assert {p.name for p in directory.iterdir()} == {f"{PARTITION}.parquet"}
        assert pq.read_table(stored).num_rows == expected
    assert {p.name for p in raw.parent.iterdir()} == {raw.name}


def test_a_write_after_a_sigkilled_writer_removes_its_files_but_not_a_live_writers(tmp_path, data_dir, children):
    """A writer SIGKILLed mid-write leaves its lock file and its temporary files; the next write of that partition
    gets the lock (the kernel released it) and removes them, but not the files of a live writer of another partition
    whose name starts the same, which then completes."""
    lake = LakeStorage(root=str(tmp_path / "lake"))
    other = f"{PARTITION}.0123456789ab"  # looks like PARTITION's files with a generation in the name
    raw = lake.write(["default", "raw_w"], PARTITION, _rows(ROWS, "raw")).path
    raw_other = lake.write(["default", "raw_w"], other, _rows(100, "raw")).path
    directory = tmp_path / "lake" / "default" / "clean_w"
    con = duckdb.connect()

    def view(source: Path, tag: str, excluded: list[int]) -> LakeView:
        return LakeView(
            source=str(source),
            select=f'"id", \'{tag}\' AS "writer"',
            excluded=con.sql("SELECT unnest(?::BIGINT[]) AS position", params=[excluded]),
        )

    lake.write(["default", "clean_w"], PARTITION, view(raw, "first", []))
    before = _hidden(directory)
    base = {"lake": str(tmp_path / "lake"), "key": ["default", "clean_w"]}
    killed = children(
        "lake_view",
        {**base, "partition": PARTITION, "view_source": str(raw), "tag": "killed", "excluded": [0]},
        env={TEST_PAUSE_IN_LAKE_WRITE_ENV: str(PAUSE_SECONDS)},
    )
    killed.wait_stderr(f"{TEST_PAUSE_IN_LAKE_WRITE_ENV}: ")
    left = _hidden(directory) - before
    assert len(left) == 4 and f".{PARTITION}.lock" in left  # the lock file and the generation's three files
    os.kill(killed.proc.pid, signal.SIGKILL)
    assert killed.proc.wait(timeout=30) == -signal.SIGKILL
    assert left <= _hidden(directory)

    release = tmp_path / "release"
    live = children(
        "lake_view",
        {**base, "partition": other, "view_source": str(raw_other), "tag": "live", "excluded": [1]},
        env={TEST_PAUSE_IN_LAKE_WRITE_ENV: str(PAUSE_SECONDS), TEST_PAUSE_RELEASE_ENV: str(release)},
    )
    try:
        live.wait_stderr(f"{TEST_PAUSE_IN_LAKE_WRITE_ENV}: ")
        live_files = {name for name in _hidden(directory) if name.startswith(f".{other}.")}
        assert len(live_files) == 4 and _lock_is_held(directory, other)

        result = lake.write(["default", "clean_w"], PARTITION, view(raw, "new", [2, 3]))
        named = {p.name for p in view_files(str(result.path))}
        assert _hidden(directory) == named | live_files  # the killed one's files are gone, the live one's are not
        assert live.proc.poll() is None
    finally:
        release.touch()
    assert live.result()["rows"] == 99
    assert lake.table(["default", "clean_w"], [PARTITION]).relation().aggregate(
        "count(*), count(DISTINCT id), list(DISTINCT writer)"
    ).fetchall() == [(ROWS - 2, ROWS - 2, ["new"])]
    assert lake.table(["default", "clean_w"], [other]).relation().aggregate(
        "count(*), list(DISTINCT writer)"
    ).fetchall() == [(99, ["live"])]
    loaded, live_manifest = (lake.stored_path(["default", "clean_w"], p) for p in (PARTITION, other))
    assert loaded is not None and live_manifest is not None
    manifests = [loaded, live_manifest]
    assert {p.name for p in directory.iterdir()} == {
        *(m.name for m in manifests),
        *(f.name for m in manifests for f in view_files(str(m))),
    }
