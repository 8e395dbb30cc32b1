"""Benchmark: extracting a MySQL/MariaDB table as Arrow batches, the platform's path against the other candidates.

Run (MariaDB from ``ETL_TEST_MARIADB_URL``, default ``mysql://root@127.0.0.1:3306/test``)::

    .venv/bin/python benchmarks/mysql_extract.py --rows 1000000 --repeat 3

Creates ``etl_bench_mysql_extract_<pid>`` with N rows (``id bigint, customer_id bigint, quantity int, amount
decimal(12,2), note varchar(200), created_at datetime(6), updated_at timestamp(6)``; ``note`` has commas, quotes,
NULLs and empty strings), then runs each method in a fresh child process, in interleaved rounds (every method once
per round), reading every batch. The table shows medians: ``wall s`` (connect to last batch, inside the child),
``cpu s`` (the child's user+sys over the same span), ``peak RSS`` (the child's, from ``os.wait4``), ``x fastest``,
``batches`` (1 = the whole result in memory at once) and the Arrow type DECIMAL(12,2) arrives as.

Methods:

* ``platform``: ``SqlDatabaseSource.extract`` (PyMySQL unbuffered cursor, text values cast by Arrow per column);
* ``pymysql_objects``: the same cursor with PyMySQL's converters (``Decimal``/``datetime`` objects) -> ``pa.array``;
* ``mysqlclient_text``: mysqlclient's (``MySQLdb``) unbuffered cursor, text cast by Arrow (only when installed: it is
  built from source against libmariadb/libmysqlclient headers);
* ``connectorx`` / ``connectorx_stream``: ``connectorx.read_sql(..., return_type="arrow" / "arrow_stream")``.

The table is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_URL = os.environ.get("ETL_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
METHODS = ("platform", "pymysql_objects", "mysqlclient_text", "connectorx", "connectorx_stream")


def _connect(url: str):
    import pymysql

    from etl_assets.resources.mysql import connect_kwargs

    return pymysql.connect(**connect_kwargs("bench", url), autocommit=True)


def create_table(url: str, table: str, rows: int) -> None:
    with _connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(
            f"CREATE TABLE `{table}` (id BIGINT PRIMARY KEY, customer_id BIGINT, quantity INT, amount DECIMAL(12,2),"
            " note VARCHAR(200), created_at DATETIME(6), updated_at TIMESTAMP(6) NULL)"
        )
        # seq_1_to_N is MariaDB's SEQUENCE engine
        cur.execute(
            f"INSERT INTO `{table}` SELECT seq, seq * 7919 % 100000, seq % 20 + 1, (seq % 100000) * 1.37,"
            " CASE WHEN seq % 50 = 0 THEN NULL WHEN seq % 49 = 0 THEN ''"
            "      ELSE CONCAT('order ', seq, ', \"gift\" wrap: ', md5(seq)) END,"
            " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND,"
            " TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL (seq % 86400) SECOND"
            f" FROM seq_1_to_{int(rows)}"
        )
        cur.execute(f"SELECT count(*), sum(length(note)) FROM `{table}`")  # warm the buffer pool


def drop_table(url: str, table: str) -> None:
    with _connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")


def _count(batches) -> tuple[int, int, Any]:
    rows = count = 0
    schema = None
    for batch in batches:
        rows += batch.num_rows
        count += 1
        schema = batch.schema
    return rows, count, schema


def run(method: str, url: str, table: str, chunk: int) -> tuple[int, int, Any]:
    query = f"SELECT * FROM `{table}`"
    if method == "platform":
        from etl_assets.resources.sql import SqlDatabaseSource, SqlSource

        spec = SqlSource(kind="sql", connection="bench", default_url=url, table=table, chunk_size=chunk)
        return _count(SqlDatabaseSource(connection="bench", default_url=url).extract(spec))
    if method == "pymysql_objects":
        import pyarrow as pa
        import pymysql.cursors

        from etl_assets.resources.mysql import connect_kwargs

        conn = pymysql.connect(**connect_kwargs("bench", url), cursorclass=pymysql.cursors.SSCursor)
        cur = conn.cursor()
        cur.execute(query)
        names = [d[0] for d in cur.description]

        def batches():
            while rows := cur.fetchmany(chunk):
                yield pa.RecordBatch.from_arrays([pa.array(c) for c in zip(*rows)], names=names)

        return _count(batches())
    if method == "mysqlclient_text":
        import MySQLdb
        import MySQLdb.cursors
        import pyarrow as pa
        import pyarrow.compute as pc

        from etl_assets.resources.mysql import connect_kwargs

        kw = connect_kwargs("bench", url)
        conn = MySQLdb.connect(
            host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"], database=kw["database"],
            cursorclass=MySQLdb.cursors.SSCursor, conv={},
        )  # fmt: skip
        cur = conn.cursor()
        cur.execute(query)
        types = [pa.int64(), pa.int64(), pa.int32(), pa.decimal128(12, 2), pa.string(), pa.timestamp("us")] * 1
        types.append(pa.timestamp("us"))
        names = [d[0] for d in cur.description]

        def batches():
            while rows := cur.fetchmany(chunk):
                arrays = [pa.array(c, pa.binary()).cast(pa.string()) for c in zip(*rows)]
                yield pa.RecordBatch.from_arrays([pc.cast(a, t) for a, t in zip(arrays, types)], names=names)

        return _count(batches())
    import connectorx as cx

    cx_url = "mysql://" + url.split("://", 1)[1]
    if method == "connectorx":
        return _count(cx.read_sql(cx_url, query, return_type="arrow").to_batches(max_chunksize=None))
    return _count(cx.read_sql(cx_url, query, return_type="arrow_stream", batch_size=chunk))


def child(args: argparse.Namespace) -> None:
    import resource

    import connectorx  # noqa: F401 - the same imports for every method, so RSS differences are the extraction's
    import pyarrow  # noqa: F401
    import pymysql  # noqa: F401

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    cpu0, t0 = cpu(), time.perf_counter()
    rows, batches, schema = run(args.method, args.url, args.table, args.chunk)
    seconds, cpu_seconds = time.perf_counter() - t0, cpu() - cpu0
    amount = str(schema.field("amount").type) if schema is not None else ""
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "rows": rows, "batches": batches, "amount": amount}))


def run_child(method: str, args: argparse.Namespace, table: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--method", method, "--table", table, "--url", args.url]
    cmd += ["--chunk", str(args.chunk)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{method} failed:\n{err.read().decode(errors='replace')[-2000:]}")
        report = json.loads(out.read().decode().strip().splitlines()[-1])
    report["rss"] = usage.ru_maxrss / 1024
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--table")
    args = parser.parse_args()
    if args.method:
        child(args)
        return
    try:
        import MySQLdb  # noqa: F401

        methods = list(METHODS)
    except ImportError:
        methods = [m for m in METHODS if m != "mysqlclient_text"]
    table = f"etl_bench_mysql_extract_{os.getpid()}"
    create_table(args.url, table, args.rows)
    try:
        results: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.repeat):
            for method in methods:
                report = run_child(method, args, table)
                assert report["rows"] == args.rows, (method, report)
                results[method].append(report)
    finally:
        drop_table(args.url, table)
    med = {
        m: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "cpu", "rss")} for m, runs in results.items()
    }
    fastest = min(s["seconds"] for s in med.values())
    print(f"\n{args.rows:,} rows x 7 columns, median of {args.repeat} interleaved round(s), a fresh process per run\n")
    header = f"{'method':<18} {'wall s':>7} {'cpu s':>6} {'peak RSS MB':>12} {'x fastest':>10} {'batches':>8}  decimal(12,2) as"
    print(header)
    print("-" * len(header))
    for method, s in med.items():
        first = results[method][0]
        print(
            f"{method:<18} {s['seconds']:>7.2f} {s['cpu']:>6.2f} {s['rss']:>12.0f} {s['seconds'] / fastest:>10.2f}"
            f" {first['batches']:>8}  {first['amount']}"
        )


if __name__ == "__main__":
    main()
