"""The platform against a hand-written floor and against dlt, on four workloads (item 1 of the "Performance" issue).

Measuring only: nothing here changes the platform. Every run is a fresh process; the rounds are interleaved (floor,
dlt, platform, floor, dlt, platform, ...) so that a machine loaded by other work slows every tool alike; each
workload's table shows the best of ``--rounds``.

Workloads (``--workloads``, default all four):

``files``       a generated ``--rows`` CSV (6 columns) in the landing zone -> a typed DuckDB table.
                floor:    DuckDB ``CREATE TABLE AS SELECT * FROM read_csv(..., columns = {typed})``.
                dlt:      ``pyarrow.csv.open_csv`` (typed columns) -> Arrow batches -> a dlt pipeline, duckdb
                          destination, ``write_disposition="replace"``.
                platform: the files pipeline ``peers/peers_orders`` (raw -> clean/quarantine -> warehouse), its job
                          ``execute_in_process`` on a real (SQLite) instance.
``postgres``    a ``--pg-rows`` table in Postgres (``--pg-url``; a schema of its own, dropped at the end) -> DuckDB.
                floor:    ADBC (``adbc_driver_postgresql``) record batches -> DuckDB ``CREATE TABLE AS``.
                dlt:      ``dlt.sources.sql_database.sql_table`` with ``backend="connectorx"`` (``--dlt-sql-backend``)
                          -> duckdb.
                platform: the sql source pipeline ``peers/peers_pg`` (the Postgres ADBC fast path) into the warehouse.
``api``         the demo orders REST API (``generate_shop_data`` with ``--orders`` orders over 7 days, served by
                ``DemoApiServer`` in this process) -> DuckDB, one request window per day, 2,000 records a page.
                floor:    httpx cursor paging -> ``pa.RecordBatch.from_pylist`` -> DuckDB ``CREATE TABLE AS`` with casts.
                dlt:      ``RESTClient.paginate`` (``JSONResponseCursorPaginator``) -> a dlt resource with the
                          contract's types as column hints -> duckdb.
                platform: the packaged ``shop/orders`` pipeline's 7 daily partitions, one run per partition (an API
                          source's backfill policy is ``multi_run(max_partitions_per_run=1)``, so no range run), all
                          in one process; ``shop_full_refresh`` (customers, products, fx_rates, which the orders
                          contract references) is run once beforehand and not measured.
``partitions``  50 daily partitions of 100 rows (one landing CSV each):
                floor:    50 DuckDB partition replaces (``DELETE`` + ``INSERT ... FROM read_csv`` in a transaction).
                dlt:      50 ``pipeline.run`` calls, ``write_disposition={"disposition": "merge", "strategy":
                          "delete-insert"}`` with the day as ``merge_key`` (dlt's replace of one partition).
                platform: the daily files pipeline ``peers/peers_daily`` backfilled as one range run of 50 partitions
                          (``dagster/asset_partition_range_start``/``_end``, single-run backfill policy).
                Then one partition alone (floor: one replace; dlt: one load; platform: one in-process run), and
                start-up (floor: ``python -c pass``; dlt: ``dlt --version``; platform: ``etl-assets --version`` and
                ``dagster asset materialize`` of one asset from the command's start to its run's first event,
                as ``startup.py`` measures it).

Every tool gets the same rows and must produce the same table: after each run this process opens its DuckDB output
and counts rows and distinct keys and sums a decimal, an integer and the timestamps (microseconds since the epoch,
exact integers: a sum of floating-point epochs depends on the order the rows are added in); a difference from the
round's floor fails the benchmark (exit status 1). The platform's contract is the same in every workload: the types,
not null, the primary key, accepted values and ranges (every generated row passes it); the floor and dlt type the
columns but check no rule.

Columns: ``work s`` the tool's own work (imports done; for the platform ``execute_in_process`` only, the code
location's ``build_definitions()`` is in ``process s``); ``process s`` the whole child process; ``cpu s`` the child's
CPU over its work; ``peak RSS`` the child's maximum resident set (``os.wait4``); ``x floor`` the work seconds over
the floor's of the same round (the best round's ratio), and the same for CPU.

dlt (``--dlt-version``, pinned) is installed by this script into a virtualenv of its own under ``--cache`` (``uv
venv`` + ``uv pip install``, ``bench_common.dlt_python``); it is never a dependency of the platform. ``--no-dlt``
leaves it out (nothing is installed).

Usage (from the repository root)::

    .venv/bin/python benchmarks/peers.py --quick --rounds 1                     # tiny sizes, ~2 minutes
    .venv/bin/python benchmarks/peers.py --rows 1000000 --pg-rows 500000 --orders 200000 --rounds 2
    .venv/bin/python benchmarks/peers.py                                        # 10 M / 3 M / 1 M, 3 rounds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import DLT_VERSION, REPO, dlt_python, progress, write_dagster_yaml

MARKER = "@@peers@@ "
WORKLOADS = ("files", "postgres", "api", "partitions")
DLT_EXTRAS = (
    f"dlt[duckdb,sql_database]=={DLT_VERSION}",
    "duckdb==2.0.1",  # the platform's DuckDB, so that every tool writes with the same engine
    "connectorx==0.4.5",
    "adbc-driver-postgresql==1.10.0",
    "psycopg[binary]==3.3.9",  # SQLAlchemy 2.1 reads postgresql:// with psycopg 3
)
DOMAIN = "peers"
FILES_NAME, PG_NAME, DAILY_NAME = "peers_orders", "peers_pg", "peers_daily"
PARTITIONS, PARTITION_ROWS, FIRST_DAY = 50, 100, dt.date(2024, 1, 1)

PAGE_SIZE = 2000

# The contract of the generated rows (files, postgres, partitions): name, type, the platform's rules.
COLUMNS = [
    ("id", "BIGINT", {"nullable": False}),
    ("customer_id", "BIGINT", {"nullable": False}),
    ("status", "VARCHAR", {"nullable": False, "accepted_values": ["new", "paid", "shipped", "cancelled"]}),
    ("quantity", "INTEGER", {"nullable": False, "min": 1, "max": 1000}),
    ("amount", "DECIMAL(12,2)", {"nullable": False, "min": 0}),
    ("ordered_at", "TIMESTAMPTZ", {"nullable": False}),
]
# What is compared: key, decimal, integer, timestamp column of each workload's table.
CHECKED = {
    "files": ("id", "amount", "quantity", "ordered_at"),
    "postgres": ("id", "amount", "quantity", "ordered_at"),
    "partitions": ("id", "amount", "quantity", "ordered_at"),
    "api": ("order_id", "unit_price", "quantity", "ordered_at"),
}
# The demo API's orders, typed as the packaged shop/orders contract types them.
ORDER_TYPES = {
    "order_id": "BIGINT",
    "customer_id": "BIGINT",
    "product_id": "BIGINT",
    "quantity": "INTEGER",
    "unit_price": "DECIMAL(12,2)",
    "currency": "VARCHAR",
    "status": "VARCHAR",
    "ordered_at": "TIMESTAMPTZ",
    "updated_at": "TIMESTAMPTZ",
}

GENERATE_SQL = """
SELECT
  i + {offset} AS id,
  ((i + {offset}) * 7919) % 250000 AS customer_id,
  ['new', 'paid', 'shipped', 'cancelled'][1 + (i + {offset}) % 4] AS status,
  1 + (i + {offset}) % 40 AS quantity,
  strftime(TIMESTAMP '{day}' + to_seconds(i % 86400), '%Y-%m-%dT%H:%M:%SZ') AS ordered_at,
  printf('%.2f', ((i + {offset}) % 99991) / 100.0) AS amount
FROM range({rows}) AS t(i)
"""

PG_SQL = """
CREATE TABLE {table} AS
SELECT i::bigint AS id,
       ((i * 7919) % 250000)::bigint AS customer_id,
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + i % 4] AS status,
       (1 + i % 40)::integer AS quantity,
       ((i % 99991) / 100.0)::numeric(12, 2) AS amount,
       timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => i % 86400) AS ordered_at
FROM generate_series(0::bigint, {rows} - 1) AS g(i)
"""


def _named(name: str, domain: str = DOMAIN) -> tuple[str, str]:
    """Pipeline ``name`` of ``domain``'s job (``<domain>__<name>_pipeline``) and reference (``<domain>.<name>``, its
    landing folder). Imported here, not at the top: a floor child imports nothing of the platform (or Dagster)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # this checkout's etl_assets, as bench_common.progress does
    from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref

    return pipeline_job_name(Pipeline(domain, name)), pipeline_ref(Pipeline(domain, name))


def _spec(name: str, source: dict, **fields) -> dict:
    columns = [{"name": n, "type": t, **rules} for n, t, rules in COLUMNS]
    return {
        "name": name,
        "domain": DOMAIN,
        "source": source,
        "columns": columns,
        "primary_key": ["id"],
        "targets": ["duckdb"],
        "retry": {"max_retries": 0},
        **fields,
    }


def _specs(pg_url: str, pg_table: str) -> list[dict]:
    return [
        _spec(FILES_NAME, {"kind": "files", "format": "csv", "glob": f"{FILES_NAME}*.csv"}),
        _spec(PG_NAME, {"kind": "sql", "connection": "peers_pg", "default_url": pg_url, "table": pg_table}),
        _spec(
            DAILY_NAME,
            {
                "kind": "files",
                "format": "csv",
                "glob": f"{DAILY_NAME}_*.csv",
                "partition_regex": DAILY_NAME + r"_(?P<partition>\d{4}-\d{2}-\d{2})\.csv$",
            },
            partitions={"type": "daily", "start": FIRST_DAY.isoformat()},
        ),
    ]


def _csv_columns_sql() -> str:
    """DuckDB's ``read_csv(columns = {...})`` of the generated CSV, typed."""
    return "{" + ", ".join(f"'{n}': '{t}'" for n, t in _csv_types()) + "}"


def _csv_types() -> list[tuple[str, str]]:
    types = dict((n, t) for n, t, _ in COLUMNS)
    return [(n, types[n]) for n in CSV_HEADER]


CSV_HEADER = ["id", "customer_id", "status", "quantity", "ordered_at", "amount"]


def _days(partitions: int = PARTITIONS) -> list[str]:
    return [(FIRST_DAY + dt.timedelta(days=d)).isoformat() for d in range(partitions)]


# ----------------------------------------------------------------------------------------------------------------
# Children in the platform's virtualenv: the floors and the platform. Each prints one MARKER line.


def _cpu() -> float:
    return time.process_time()


def _emit(payload: dict) -> None:
    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _duckdb(path: str):
    import duckdb

    con = duckdb.connect(path)
    con.execute("SET TimeZone = 'UTC'")
    return con


def floor_files(cfg: dict) -> dict:
    started, cpu = time.perf_counter(), _cpu()
    con = _duckdb(cfg["db"])
    con.execute(
        f"CREATE TABLE t AS SELECT * FROM read_csv(?, header = true, columns = {_csv_columns_sql()},"
        " timestampformat = '%Y-%m-%dT%H:%M:%SZ')",
        [cfg["csv"]],
    )
    con.close()
    return {"work": time.perf_counter() - started, "cpu": _cpu() - cpu, "table": "t"}


def floor_postgres(cfg: dict) -> dict:
    import adbc_driver_postgresql.dbapi as adbc

    started, cpu = time.perf_counter(), _cpu()
    con = _duckdb(cfg["db"])
    with adbc.connect(cfg["pg_url"]) as pg, pg.cursor() as cur:
        cur.execute(f"SELECT * FROM {cfg['pg_table']}")
        reader = cur.fetch_record_batch()  # noqa: F841 (DuckDB's replacement scan reads it by name)
        casts = ", ".join(f"CAST({n} AS {t}) AS {n}" for n, t, _ in COLUMNS)
        con.execute(f"CREATE TABLE t AS SELECT {casts} FROM reader")
    con.close()
    return {"work": time.perf_counter() - started, "cpu": _cpu() - cpu, "table": "t"}


def _api_windows(days: list[str]) -> list[dict]:
    out = []
    for key in days:
        day = dt.datetime.combine(dt.date.fromisoformat(key), dt.time(), tzinfo=dt.UTC)
        out.append({"ordered_from": day.isoformat(), "ordered_to": (day + dt.timedelta(days=1)).isoformat()})
    return out


def floor_api(cfg: dict) -> dict:
    import httpx
    import pyarrow as pa

    started, cpu = time.perf_counter(), _cpu()
    batches = []
    with httpx.Client(base_url=cfg["url"], timeout=60) as client:
        for window in _api_windows(cfg["days"]):
            cursor = None
            while True:
                params = {**window, "limit": PAGE_SIZE, **({"cursor": cursor} if cursor else {})}
                response = client.get("/orders", params=params)
                response.raise_for_status()
                body = response.json()
                if body["data"]:
                    batches.append(pa.RecordBatch.from_pylist(body["data"]))
                cursor = body.get("next_cursor")
                if not cursor or not body["data"]:
                    break
    orders = pa.Table.from_batches(batches)  # noqa: F841 (read by name below)
    con = _duckdb(cfg["db"])
    casts = ", ".join(f"CAST({n} AS {t}) AS {n}" for n, t in ORDER_TYPES.items())
    con.execute(f"CREATE TABLE t AS SELECT {casts} FROM orders")
    con.close()
    return {"work": time.perf_counter() - started, "cpu": _cpu() - cpu, "table": "t", "pages": len(batches)}


def _replace_partition(con, csv: str, day: str) -> None:
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM t WHERE day = ?", [day])
    con.execute(
        f"INSERT INTO t SELECT *, ?::DATE AS day FROM read_csv(?, header = true, columns = {_csv_columns_sql()},"
        " timestampformat = '%Y-%m-%dT%H:%M:%SZ')",
        [day, csv],
    )
    con.execute("COMMIT")


def floor_partitions(cfg: dict) -> dict:
    started, cpu = time.perf_counter(), _cpu()
    con = _duckdb(cfg["db"])
    cols = ", ".join(f"{n} {t}" for n, t in _csv_types())
    con.execute(f"CREATE TABLE t ({cols}, day DATE)")
    for day, csv in zip(cfg["days"], cfg["csvs"], strict=True):
        _replace_partition(con, csv, day)
    con.close()
    return {"work": time.perf_counter() - started, "cpu": _cpu() - cpu, "table": "t"}


def platform(cfg: dict) -> dict:
    """Runs of one job in this process, each ``execute_in_process`` on the instance of ``DAGSTER_HOME``."""
    from dagster import DagsterInstance

    from etl_assets.cli import QUIET
    from etl_assets.definitions import build_definitions

    job = build_definitions().resolve_job_def(cfg["job"])
    work = cpu_total = 0.0
    failures: list[str] = []
    runs = 0
    with DagsterInstance.get() as instance:
        for run in cfg["runs"]:
            started, cpu = time.perf_counter(), _cpu()
            result = job.execute_in_process(
                instance=instance,
                run_config=QUIET,
                partition_key=run.get("partition"),
                tags=run.get("tags"),
                raise_on_error=False,
            )
            work += time.perf_counter() - started
            cpu_total += _cpu() - cpu
            runs += 1
            if not result.success:
                failures += [
                    f"{e.step_key}: {e.step_failure_data.error.message.strip()[:300] if e.step_failure_data.error else ''}"
                    for e in result.get_step_failure_events()
                ] or ["the run failed"]
            failures += [
                f"check {c.check_name} failed"
                for c in result.get_asset_check_evaluations()
                if not c.passed and c.severity.value == "ERROR"
            ]
    return {"work": work, "cpu": cpu_total, "table": cfg["table"], "runs": runs, "failures": failures}


def platform_setup(cfg: dict) -> dict:
    """Not measured: the shop's full refresh, which the orders contract references."""
    out = platform(cfg)
    if out["failures"]:
        raise SystemExit(f"setup {cfg['job']} failed: {out['failures']}")
    return out


CHILDREN = {
    "floor_files": floor_files,
    "floor_postgres": floor_postgres,
    "floor_api": floor_api,
    "floor_partitions": floor_partitions,
    "platform": platform,
    "platform_setup": platform_setup,
}


def run_child(name: str, cfg_json: str) -> int:
    payload = CHILDREN[name](json.loads(cfg_json))
    _emit(payload)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The dlt child, run by dlt's own virtualenv's python (the platform is not importable there).

DLT_CHILD = r"""
import datetime as dt, json, sys, time
cfg = json.loads(sys.argv[2])
name = sys.argv[1]
import dlt
started, cpu0 = time.perf_counter(), time.process_time()
dest = dlt.destinations.duckdb(cfg["db"])
pipe = dlt.pipeline(pipeline_name="peers_" + name, destination=dest, dataset_name="peers",
                    pipelines_dir=cfg["pipelines_dir"], progress=None)
if name in ("dlt_files", "dlt_partitions"):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    types = {"id": pa.int64(), "customer_id": pa.int64(), "status": pa.string(), "quantity": pa.int32(),
             "ordered_at": pa.timestamp("us", tz="UTC"), "amount": pa.decimal128(12, 2)}
    convert = pcsv.ConvertOptions(column_types=types)
    if name == "dlt_files":
        def batches():
            reader = pcsv.open_csv(cfg["csv"], read_options=pcsv.ReadOptions(block_size=16 << 20),
                                   convert_options=convert)
            for batch in reader:
                yield batch
        pipe.run(dlt.resource(batches(), name="t", write_disposition="replace", primary_key="id"))
    else:
        for day, csv in zip(cfg["days"], cfg["csvs"]):
            table = pcsv.read_csv(csv, convert_options=convert)
            table = table.append_column("day", pa.array([dt.date.fromisoformat(day)] * table.num_rows, pa.date32()))
            pipe.run(dlt.resource([table], name="t", primary_key="id", merge_key="day",
                                  write_disposition={"disposition": "merge", "strategy": "delete-insert"}))
elif name == "dlt_postgres":
    from dlt.sources.sql_database import sql_table
    schema, table = cfg["pg_table"].split(".")
    resource = sql_table(credentials=cfg["pg_url"], schema=schema, table=table, backend=cfg["backend"],
                         chunk_size=100_000, reflection_level="full_with_precision")
    pipe.run(resource, table_name="t", write_disposition="replace")
elif name == "dlt_api":
    from dlt.sources.helpers.rest_client import RESTClient
    from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
    def pages():
        client = RESTClient(base_url=cfg["url"])
        for day in cfg["days"]:
            start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.timezone.utc)
            params = {"limit": cfg["page_size"], "ordered_from": start.isoformat(),
                      "ordered_to": (start + dt.timedelta(days=1)).isoformat()}
            paginator = JSONResponseCursorPaginator(cursor_path="next_cursor", cursor_param="cursor")
            yield from client.paginate("/orders", params=params, paginator=paginator, data_selector="data")
    hints = {"order_id": {"data_type": "bigint", "nullable": False},
             "quantity": {"data_type": "bigint", "precision": 32},
             "unit_price": {"data_type": "decimal", "precision": 12, "scale": 2},
             "ordered_at": {"data_type": "timestamp"}, "updated_at": {"data_type": "timestamp"}}
    pipe.run(dlt.resource(pages(), name="t", write_disposition="replace", primary_key="order_id", columns=hints))
else:
    raise SystemExit("unknown " + name)
print("@@peers@@ " + json.dumps({"work": time.perf_counter() - started, "cpu": time.process_time() - cpu0,
                                  "table": "peers.t"}))
"""


# ----------------------------------------------------------------------------------------------------------------
# Parent side.


@dataclass
class Result:
    workload: str
    tool: str
    round: int
    ok: bool
    work: float = 0.0
    process: float = 0.0
    cpu: float = 0.0
    rss_mib: float = 0.0
    stats: tuple | None = None
    types: dict[str, str] = field(default_factory=dict)
    error: str = ""
    note: str = ""


# Each measured process is started by this small launcher, which reports the process's own CPU and peak RSS from
# os.wait4: a child forked straight from this (larger) process would count this process's resident set in its own
# ru_maxrss until it execs.
LAUNCHER = """import json, os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - started,
               "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}, out)
"""


def run_tool(
    command: list[str], env: dict[str, str], cwd: Path, raw: bool = False
) -> tuple[dict | None, float, float, str]:
    """One fresh process: its MARKER payload (``raw``: its wall time and CPU as the payload), its wall seconds,
    peak RSS (MiB) and, on failure, its standard error's tail."""
    with tempfile.TemporaryDirectory(prefix="peers_run_") as tmp:
        usage_path = Path(tmp) / "usage.json"
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with out_path.open("w") as out, err_path.open("w") as err:
            subprocess.run(
                [sys.executable, "-c", LAUNCHER, str(usage_path), *command], stdout=out, stderr=err, env=env, cwd=cwd
            )
        usage = json.loads(usage_path.read_text()) if usage_path.exists() else {"code": -1, "wall": 0, "rss": 0}
        stdout, stderr = out_path.read_text(), err_path.read_text()
    payload = {"work": usage["wall"], "cpu": usage["cpu"]} if raw and usage["code"] == 0 else None
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            payload = json.loads(line[len(MARKER) :])
    if usage["code"] != 0 or payload is None:
        return (
            None,
            usage["wall"],
            usage["rss"],
            f"exit status {usage['code']}: " + " | ".join(stderr.strip().splitlines()[-6:]),
        )
    return payload, usage["wall"], usage["rss"], ""


def table_stats(db: Path, table: str, checked: tuple[str, str, str, str]) -> tuple[tuple, dict[str, str]]:
    """Rows, distinct keys, sum of the decimal, of the integer and of the timestamps in microseconds since the epoch
    (integers: exact, whatever order the rows are added in); the columns' types."""
    import duckdb

    key, decimal, integer, ts = checked
    with duckdb.connect(str(db), read_only=True) as con:
        stats = con.execute(
            f"SELECT count(*), count(DISTINCT {key}), sum({decimal})::VARCHAR, sum({integer}),"
            f" sum(epoch_us({ts}))::VARCHAR FROM {table}"
        ).fetchone()
        schema, _, name = table.rpartition(".")
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?"
                + (" AND table_schema = ?" if schema else "")
                + " AND column_name IN (?, ?, ?, ?)",
                [name, *([schema] if schema else []), *checked],
            ).fetchall()
        )
    assert stats is not None
    return tuple(stats), types


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args = args
        self.root = root
        self.results: list[Result] = []
        self.base_env = {k: v for k, v in os.environ.items() if k not in ("ETL_ENV", "ETL_PIPELINES_DIR")}
        self.base_env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        self.specs = root / "specs"
        self.dlt_python: Path | None = None
        self.dlt_child = root / "dlt_child.py"
        self.dlt_child.write_text(DLT_CHILD)
        self.bar: Any = None

    # one run ----------------------------------------------------------------------------------------------------
    def _platform_env(self, run_dir: Path, data: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        home = run_dir / "dagster_home"
        write_dagster_yaml(home, "peers.py")
        env = {**self.base_env, "ETL_DATA_DIR": str(data), "DAGSTER_HOME": str(home), **(extra or {})}
        return env

    def measure(
        self,
        workload: str,
        tool: str,
        round_: int,
        command: list[str],
        env: dict[str, str],
        db: Path | None,
        checked: tuple | None,
        note: str = "",
        raw: bool = False,
    ) -> Result:
        payload, wall, rss, error = run_tool(command, env, self.root, raw=raw)
        result = Result(workload, tool, round_, payload is not None, process=wall, rss_mib=rss, error=error, note=note)
        if payload is not None:
            result.work, result.cpu = payload["work"], payload["cpu"]
            if payload.get("failures"):
                result.ok, result.error = False, "; ".join(payload["failures"])[:600]
            if "rss" in payload:  # a command run by the child: its own figure, not the stopwatch's
                result.rss_mib = payload["rss"]
            if "whole" in payload:
                result.note = f"the whole command {payload['whole']:.2f} s"
            if result.ok and db is not None and checked is not None:
                try:
                    result.stats, result.types = table_stats(db, payload["table"], checked)
                except Exception as exc:  # a missing table is a failed run, reported with the others
                    result.ok, result.error = False, f"no table to check: {exc}"
        self.results.append(result)
        assert self.bar is not None
        rows = result.stats[0] if result.stats else None
        self.bar.finished(
            f"{workload} round {round_} {tool}",
            result.ok,
            rows,
            result.work,
            note=f"cpu {result.cpu:.1f} s, process {result.process:.1f} s, {result.rss_mib:.0f} MiB"
            + (f"; {result.error}" if result.error else ""),
        )
        return result

    def ours(self, child: str, cfg: dict | list) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", child, json.dumps(cfg)]

    def fresh(self, workload: str, tool: str, round_: int) -> Path:
        slug = "".join(c if c.isalnum() else "_" for c in f"{workload}-{tool}")
        run_dir = self.root / "runs" / f"{slug}-{round_}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        return run_dir

    def done(self, run_dir: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _dlt_run(self, workload: str, tool: str, round_: int, child: str, cfg: dict, checked) -> None:
        if self.dlt_python is None:
            return
        run_dir = self.fresh(workload, tool, round_)
        db = run_dir / "dlt.duckdb"
        cfg = {**cfg, "db": str(db), "pipelines_dir": str(run_dir / "dlt_pipelines")}
        command = [str(self.dlt_python), str(self.dlt_child), child, json.dumps(cfg)]
        env = {k: v for k, v in self.base_env.items() if k != "PYTHONPATH"}
        env["RUNTIME__LOG_LEVEL"] = "WARNING"
        self.measure(workload, tool, round_, command, env, db, checked)
        self.done(run_dir)

    def _floor_run(self, workload: str, tool: str, round_: int, child: str, cfg: dict, checked) -> None:
        run_dir = self.fresh(workload, tool, round_)
        db = run_dir / "floor.duckdb"
        self.measure(workload, tool, round_, self.ours(child, {**cfg, "db": str(db)}), self.base_env, db, checked)
        self.done(run_dir)

    def _platform_run(
        self,
        workload: str,
        tool: str,
        round_: int,
        cfg: dict,
        checked,
        landing: list[tuple[Path, str]] = (),  # type: ignore[assignment]
        base: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        run_dir = self.fresh(workload, tool, round_)
        data = run_dir / "data"
        if base is not None:
            shutil.copytree(base, data)
        data.mkdir(exist_ok=True)
        for source, ref in landing:  # the pipeline's landing folder is its reference, <domain>.<name>
            target = data / "landing" / ref / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)  # the landing file as it arrived, without a copy
        env = self._platform_env(run_dir, data, extra_env)
        self.measure(workload, tool, round_, self.ours("platform", cfg), env, data / "warehouse.duckdb", checked)
        self.done(run_dir)

    # the workloads ----------------------------------------------------------------------------------------------
    def prepare_files(self) -> dict:
        import duckdb

        csv = self.root / "data" / f"{FILES_NAME}.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        with duckdb.connect() as con:
            con.execute(
                f"COPY ({GENERATE_SQL.format(offset=0, rows=self.args.rows, day='2024-01-01 00:00:00')}) TO"
                f" '{csv}' (FORMAT csv, HEADER)"
            )
        print(f"files: {self.args.rows:,} rows, {csv.stat().st_size / 1024**2:,.0f} MiB CSV", flush=True)
        return {"csv": csv}

    def round_files(self, round_: int, prep: dict) -> None:
        checked = CHECKED["files"]
        self._floor_run("files", "floor", round_, "floor_files", {"csv": str(prep["csv"])}, checked)
        self._dlt_run("files", "dlt", round_, "dlt_files", {"csv": str(prep["csv"])}, checked)
        job, ref = _named(FILES_NAME)
        cfg = {"job": job, "runs": [{}], "table": f"{DOMAIN}.{FILES_NAME}"}
        self._platform_run("files", "platform", round_, cfg, checked, landing=[(prep["csv"], ref)])

    def prepare_postgres(self) -> dict:
        import psycopg

        schema = f"peers_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        table = f"{schema}.orders"
        started = time.perf_counter()
        with psycopg.connect(self.args.pg_url, autocommit=True) as con:
            con.execute(f"CREATE SCHEMA {schema}".encode())
            self._pg_schema = schema
            con.execute(PG_SQL.format(table=table, rows=int(self.args.pg_rows)).encode())
            con.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)".encode())
            for name, _, _ in COLUMNS:
                con.execute(f"ALTER TABLE {table} ALTER COLUMN {name} SET NOT NULL".encode())
            con.execute(f"VACUUM ANALYZE {table}".encode())
        print(
            f"postgres: {self.args.pg_rows:,} rows in {table} ({time.perf_counter() - started:.1f} s to create)",
            flush=True,
        )
        return {"table": table}

    def drop_postgres(self) -> None:
        schema = getattr(self, "_pg_schema", None)
        if schema is None:
            return
        import psycopg

        with psycopg.connect(self.args.pg_url, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
        self._pg_schema = None

    def round_postgres(self, round_: int, prep: dict) -> None:
        checked = CHECKED["postgres"]
        cfg = {"pg_url": self.args.pg_url, "pg_table": prep["table"]}
        self._floor_run("postgres", "floor", round_, "floor_postgres", cfg, checked)
        self._dlt_run(
            "postgres", f"dlt ({self.args.dlt_sql_backend})", round_, "dlt_postgres",
            {**cfg, "backend": self.args.dlt_sql_backend}, checked,
        )  # fmt: skip
        job = {"job": _named(PG_NAME)[0], "runs": [{}], "table": f"{DOMAIN}.{PG_NAME}"}
        self._platform_run("postgres", "platform", round_, job, checked)

    def prepare_api(self) -> dict:
        from etl_assets_demo import DemoApiServer, generate_shop_data

        base = self.root / "shop"
        shop = generate_shop_data(base, orders=self.args.orders, days=7)
        server = DemoApiServer(shop.orders_path)
        server.__enter__()
        self._server = server
        days = list(shop.partition_keys)
        # not measured: customers, products and fx_rates, which the orders contract references
        home = self.root / "shop_home"
        write_dagster_yaml(home, "peers.py")
        env = {
            **self.base_env, "ETL_DATA_DIR": str(base), "DAGSTER_HOME": str(home), "SHOP_API_URL": server.url,
        }  # fmt: skip
        payload, wall, _, error = run_tool(
            self.ours("platform_setup", {"job": "shop_full_refresh", "runs": [{}], "table": ""}), env, self.root
        )
        if payload is None:
            raise SystemExit(f"api: shop_full_refresh failed: {error}")
        print(
            f"api: {shop.orders:,} orders over {len(days)} days served at {server.url}; shop_full_refresh (not"
            f" measured) {wall:.1f} s",
            flush=True,
        )
        return {"url": server.url, "days": days, "base": base, "orders": shop.orders}

    def stop_api(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.__exit__(None, None, None)
            self._server = None

    def round_api(self, round_: int, prep: dict) -> None:
        checked = CHECKED["api"]
        cfg = {"url": prep["url"], "days": prep["days"], "page_size": PAGE_SIZE}
        self._floor_run("api", "floor", round_, "floor_api", cfg, checked)
        self._dlt_run("api", "dlt", round_, "dlt_api", cfg, checked)
        runs = [{"partition": d} for d in prep["days"]]
        job = {"job": _named("orders", domain="shop")[0], "runs": runs, "table": "shop.orders"}
        self._platform_run(
            "api", f"platform ({len(prep['days'])} runs)", round_, job, checked, base=prep["base"],
            extra_env={"SHOP_API_URL": prep["url"]},
        )  # fmt: skip
        # the same days as one range run (what a backfill does with partitions.max_per_run: 7): each day is still
        # extracted, validated and replaced on its own, with one run's start-up and bookkeeping for all of them
        days = prep["days"]
        tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
        ranged = {**job, "runs": [{"tags": tags}]}
        self._platform_run(
            "api", "platform (1 range run)", round_, ranged, checked, base=prep["base"],
            extra_env={"SHOP_API_URL": prep["url"]},
        )  # fmt: skip

    def prepare_partitions(self) -> dict:
        import duckdb

        folder = self.root / "data" / DAILY_NAME
        folder.mkdir(parents=True, exist_ok=True)
        csvs = []
        with duckdb.connect() as con:
            for n, day in enumerate(_days(self.args.partitions)):
                csv = folder / f"{DAILY_NAME}_{day}.csv"
                sql = GENERATE_SQL.format(offset=n * PARTITION_ROWS, rows=PARTITION_ROWS, day=f"{day} 00:00:00")
                con.execute(f"COPY ({sql}) TO '{csv}' (FORMAT csv, HEADER)")
                csvs.append(csv)
        print(f"partitions: {self.args.partitions} daily files of {PARTITION_ROWS} rows", flush=True)
        return {"csvs": csvs, "days": _days(self.args.partitions)}

    def round_partitions(self, round_: int, prep: dict) -> None:
        checked = CHECKED["partitions"]
        days, csvs = prep["days"], [str(c) for c in prep["csvs"]]
        many = {"days": days, "csvs": csvs}
        one = {"days": days[:1], "csvs": csvs[:1]}
        for label, cfg in ((f"{len(days)} partitions", many), ("1 partition", one)):
            workload = f"partitions: {label}"
            self._floor_run(workload, "floor", round_, "floor_partitions", cfg, checked)
            self._dlt_run(workload, "dlt", round_, "dlt_partitions", cfg, checked)
            if cfg is many:
                tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
                job: dict[str, Any] = {"runs": [{"tags": tags}]}
                tool = "platform (1 range run)"
            else:
                job = {"runs": [{"partition": days[0]}]}
                tool = "platform (1 run)"
            daily_job, daily_ref = _named(DAILY_NAME)
            landing = [(Path(c), daily_ref) for c in cfg["csvs"]]
            job.update({"job": daily_job, "table": f"{DOMAIN}.{DAILY_NAME}"})
            self._platform_run(workload, tool, round_, job, checked, landing=landing)
        self.round_startup(round_)

    def round_startup(self, round_: int) -> None:
        workload = "partitions: start-up"
        self.measure(
            workload,
            "floor (python -c pass)",
            round_,
            [sys.executable, "-c", "pass"],
            self.base_env,
            None,
            None,
            raw=True,
        )
        if self.dlt_python is not None:
            env = {k: v for k, v in self.base_env.items() if k != "PYTHONPATH"}
            command = [str(self.dlt_python.parent / "dlt"), "--version"]
            self.measure(workload, "dlt --version", round_, command, env, None, None, raw=True)
        bin_dir = Path(sys.executable).parent
        run_dir = self.fresh("startup", "cli", round_)
        env = self._platform_env(run_dir, run_dir / "data")
        (run_dir / "data").mkdir()
        self.measure(
            workload, "etl-assets --version", round_, [str(bin_dir / "etl-assets"), "--version"],
            env, None, None, raw=True,
        )  # fmt: skip
        command = [str(bin_dir / "dagster"), "asset", "materialize", "-m", "etl_assets", "--select", STARTUP_ASSET]
        self.measure(
            workload, "dagster asset materialize (to 1st event)", round_,
            self.ours("first_event", command), env, None, None,
        )  # fmt: skip
        self.done(run_dir)


STARTUP_ASSET = "shop/raw_products"


def _wait4(command: list[str]) -> tuple[int, float, float, float]:
    """Run ``command`` to its end: exit status, wall seconds, its CPU seconds and peak RSS (MiB), from ``os.wait4``."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    return os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def first_event(cfg: list[str]) -> dict:
    """``dagster asset materialize``: seconds from the command's start to its run's first event (as ``startup.py``
    measures it); CPU and peak RSS are the whole command's."""
    from dagster import DagsterInstance

    started_wall = time.time()
    _, wall, cpu, rss = _wait4(cfg)  # the asset may fail (no landing file): the start-up is what is measured
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            raise SystemExit("dagster asset materialize made no run")
        first = min(e.timestamp for e in instance.all_logs(runs[0].run_id))
    return {"work": first - started_wall, "whole": wall, "cpu": cpu, "rss": rss}


CHILDREN["first_event"] = first_event  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------------------------
# Report.


def report(results: list[Result], args: argparse.Namespace) -> int:
    failed = False
    by_workload: dict[str, list[Result]] = {}
    for r in results:
        by_workload.setdefault(r.workload, []).append(r)
    for workload, rs in by_workload.items():
        floors = {r.round: r for r in rs if r.tool.startswith("floor") and r.ok}
        tools = list(dict.fromkeys(r.tool for r in rs))
        print(f"\n=== {workload} (best of {args.rounds} rounds, each run a fresh process) ===")
        print("| tool | work s | process s | CPU s | peak RSS MiB | x floor | CPU x floor | same table |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for tool in tools:
            runs = [r for r in rs if r.tool == tool]
            ok = [r for r in runs if r.ok]
            if not ok:
                failed = True
                print(f"| {tool} | FAILED: {runs[-1].error[:200]} | | | | | | |")
                continue
            checks = []
            for r in ok:
                floor = floors.get(r.round)
                if floor is None or r.stats is None:
                    checks.append("-")
                elif r.stats != floor.stats:
                    checks.append("DIFFERENT")
                    failed = True
                    print(f"  ! {tool} round {r.round}: {r.stats} != floor's {floor.stats}")
                else:
                    checks.append("yes")
            ratios = [r.work / floors[r.round].work for r in ok if r.round in floors and floors[r.round].work > 0]
            cpu_ratios = [r.cpu / floors[r.round].cpu for r in ok if r.round in floors and floors[r.round].cpu > 0]
            same = "yes" if all(c == "yes" for c in checks) else "-" if all(c == "-" for c in checks) else "NO"
            print(
                f"| {tool} | {min(r.work for r in ok):.2f} | {min(r.process for r in ok):.2f} |"
                f" {min(r.cpu for r in ok):.2f} | {min(r.rss_mib for r in ok):.0f} |"
                f" {f'{min(ratios):.2f}' if ratios else '-'} | {f'{min(cpu_ratios):.2f}' if cpu_ratios else '-'} |"
                f" {same} |"
            )
            if len(ok) < len(runs):
                failed = True
                print(f"  ! {tool}: {len(runs) - len(ok)} failed run(s): {[r.error[:200] for r in runs if not r.ok]}")
        checked = [r for r in rs if r.stats is not None]
        if checked:
            stats = checked[0].stats
            assert stats is not None
            print(
                f"checked: {len(checked)} tables, each {stats[0]:,} rows, {stats[1]:,} distinct keys, sums"
                f" {stats[2]} / {stats[3]:,} / {stats[4]} (decimal / integer / microseconds since the epoch, exact)"
            )
            kinds = {r.tool: r.types for r in checked if r.round == checked[0].round}
            for tool, types in kinds.items():
                print(f"  types, {tool}: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items())))
    print("\nFAIL: a run failed or a table differed" if failed else "\nPASS: every run succeeded, every table the same")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )  # fmt: skip
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--rows", type=int, default=10_000_000, help="files: CSV rows")
    parser.add_argument("--pg-rows", type=int, default=3_000_000, help="postgres: table rows")
    parser.add_argument("--orders", type=int, default=1_000_000, help="api: demo orders over 7 days")
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help="partitions: daily partitions (100 rows)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (20,000 / 10,000 / 5,000)")
    parser.add_argument("--no-dlt", action="store_true", help="leave dlt out (nothing is installed)")
    parser.add_argument("--dlt-version", default=DLT_VERSION)
    parser.add_argument("--dlt-sql-backend", default="connectorx", choices=["connectorx", "pyarrow"])
    parser.add_argument("--pg-url", default=os.environ.get("PEERS_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "etl_assets_bench_peers")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary directory goes")
    parser.add_argument("--keep", action="store_true", help="keep every run's output")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("child_cfg", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, args.child_cfg or "{}")
    if args.quick:
        args.rows, args.pg_rows, args.orders = 20_000, 10_000, 5_000
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")

    root = Path(tempfile.mkdtemp(prefix="peers_", dir=args.workdir))
    bench = Bench(args, root)
    if not args.no_dlt:
        extras = tuple(e.replace(DLT_VERSION, args.dlt_version) for e in DLT_EXTRAS)
        bench.dlt_python = dlt_python(args.cache, args.dlt_version, extras)
    pg_table = "unused.orders"
    print(
        f"peers: workloads {', '.join(workloads)}; {args.rounds} round(s); dlt"
        f" {'left out' if args.no_dlt else args.dlt_version}; {os.cpu_count()} CPUs; work dir {root}",
        flush=True,
    )
    preps: dict[str, dict] = {}
    try:
        if "postgres" in workloads:
            preps["postgres"] = bench.prepare_postgres()
            pg_table = preps["postgres"]["table"]
        bench.specs.mkdir()
        import yaml

        for spec in _specs(args.pg_url, pg_table):
            (bench.specs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        bench.base_env["ETL_PIPELINES_DIR"] = str(bench.specs)
        for w in workloads:
            if w != "postgres":
                preps[w] = getattr(bench, f"prepare_{w}")()
        per_round = {
            "files": 3, "postgres": 3, "api": 3, "partitions": 6 + 4,
        }  # fmt: skip
        dlt_runs = {"files": 1, "postgres": 1, "api": 1, "partitions": 3}
        total = sum(per_round[w] - (dlt_runs[w] if args.no_dlt else 0) for w in workloads) * args.rounds
        with progress(total, "peers") as bar:
            bench.bar = bar
            for round_ in range(1, args.rounds + 1):
                for w in workloads:
                    getattr(bench, f"round_{w}")(round_, preps[w])
    finally:
        bench.stop_api()
        bench.drop_postgres()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report(bench.results, args)


if __name__ == "__main__":
    sys.exit(main())
