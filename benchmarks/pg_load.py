"""Benchmark: loading a lake partition into Postgres, CSV COPY (the platform's load) against ADBC's Arrow ingest.

Run (Postgres from ``ETL_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``)::

    .venv/bin/python benchmarks/pg_load.py --rows 2000000 --repeat 3

Writes one zstd Parquet file of N rows (``id int64, customer_id int64, quantity int32, amount decimal128(12,2),
note string`` with commas, quotes and NULLs, ``created_at timestamp[us, UTC]``), then loads it into a fresh table in a
throw-away schema, each run in a fresh child process, the methods interleaved round by round:

* ``csv_copy``: ``PostgresTarget.replace_partition`` as it was before the ADBC load (commit ``CSV_COMMIT``, read
  with ``git show``, so this needs the repository's history): Arrow batches -> ``pyarrow.csv`` -> ``COPY ... FROM
  STDIN (FORMAT csv)`` through psycopg, in the load transaction with its advisory lock and DELETE;
* ``adbc_direct``: ``PostgresTarget.replace_partition`` now: the same transaction on one ADBC connection
  (``autocommit=False``: advisory lock, DELETE, ``cursor.adbc_ingest(..., mode="append")`` into the table, which
  sends binary COPY, then COMMIT);
* ``adbc_staged``: the same, through the staging table (``PostgresTarget._replace(..., staged=True)``: binary COPY
  into a ``TEMP`` table ``ON COMMIT DROP`` of the transaction, then ``INSERT ... SELECT`` into the table), the path
  a load takes when a column needs a cast.

Each run loads into a table created (empty, the platform's columns) beforehand, so all pay the same index-free
insert. The table shows medians: ``wall s`` (connect to COMMIT, in the child), ``cpu s`` (the child's user+sys: the
client's work, not the server's), ``peak RSS`` (the child's, from ``os.wait4``) and ``x fastest``; and checks that
every run left N rows whose ``sum(amount)`` and ``max(created_at)`` equal the file's.
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
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_URL = os.environ.get("ETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
METHODS = ("csv_copy", "adbc_direct", "adbc_staged")
# the last commit whose PostgresTarget loaded through CSV COPY
CSV_COMMIT = "55b30f2b4b369c5538b3c439ff889c7d1ad4fa46"
PARTITION = "2024-01-02"


def write_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.parquet as pq

    pc: Any = pyarrow.compute  # its kernels are generated at import: the stubs do not list them
    with pq.ParquetWriter(path, _schema(), compression="zstd") as writer:
        for start in range(0, rows, 500_000):
            ids = pa.array(range(start, min(start + 500_000, rows)), pa.int64())
            n = len(ids)
            cents = pc.multiply(pc.remainder(ids, 100_000), 137)
            notes = [None if i % 50 == 0 else f'order {i}, "gift" wrap' for i in range(start, start + n)]
            micros = pc.add(pc.multiply(ids, 1_000_001), 1_704_067_200_000_000)
            writer.write_table(
                pa.table(
                    {
                        "id": ids,
                        "customer_id": pc.remainder(pc.multiply(ids, 7919), 100_000),
                        "quantity": pc.cast(pc.add(pc.remainder(ids, 20), 1), pa.int32()),
                        # the cents as decimal128(12,0), read as hundredths (the same 128-bit integers)
                        "amount": pc.cast(cents, pa.decimal128(19, 0))
                        .view(pa.decimal128(19, 2))
                        .cast(pa.decimal128(12, 2)),
                        "note": pa.array(notes, pa.string()),
                        "created_at": pc.cast(micros, pa.timestamp("us", tz="UTC")),
                    },
                    schema=_schema(),
                )
            )


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("customer_id", pa.int64()),
            ("quantity", pa.int32()),
            ("amount", pa.decimal128(12, 2)),
            ("note", pa.string()),
            ("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def prepare(url: str, schema: str, table: str) -> None:
    """An empty target table with the platform's columns (as ``PostgresTarget`` would create it)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint, customer_id bigint, quantity integer, amount numeric(12,2), note text,"
                " created_at timestamptz, _etl_partition text NOT NULL, _etl_run_id text,"
                " _etl_loaded_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema, table))
        )


def check(url: str, schema: str, table: str) -> tuple:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), sum(amount)::text, max(created_at)::text, count(note) FROM {}").format(
                sql.Identifier(schema, table)
            )
        ).fetchone()
    assert row is not None
    return tuple(row)


def _csv_target_class():
    """``PostgresTarget`` as of ``CSV_COMMIT`` (the CSV COPY load), imported from that commit's targets.py."""
    import importlib.util

    repo = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "-C", str(repo), "show", f"{CSV_COMMIT}:etl_assets/resources/targets.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "targets_csv.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("targets_csv", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.PostgresTarget


def loader(method: str, url: str):
    """The load ``method`` measures, as ``load(parquet, schema, table) -> rows``; built before the clock starts."""
    from etl_assets.lake import LakeTable
    from etl_assets.resources.targets import PostgresTarget

    def source(parquet: str) -> LakeTable:
        return LakeTable(name="bench", paths=(parquet,), partitions=(PARTITION,))

    if method == "csv_copy":
        old = _csv_target_class()(url=url)
        return lambda parquet, schema, table: old.replace_partition(schema, table, source(parquet), PARTITION, "b").rows
    target, staged = PostgresTarget(url=url), method == "adbc_staged"
    return lambda parquet, schema, table: (
        target._replace(schema, table, source(parquet), PARTITION, "b", staged=staged).rows
    )


def child(args: argparse.Namespace) -> None:
    import resource

    import adbc_driver_postgresql.dbapi  # noqa: F401 - the same imports for every method, so RSS differences are the load's
    import psycopg  # noqa: F401
    import pyarrow.csv  # noqa: F401

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    load = loader(args.method, args.url)
    cpu0, t0 = cpu(), time.perf_counter()
    rows = load(args.parquet, args.schema, args.table)
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": cpu() - cpu0, "rows": rows}))


def run_child(method: str, args: argparse.Namespace, parquet: Path, schema: str, table: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--method", method, "--url", args.url, "--parquet", str(parquet)]
    cmd += ["--schema", schema, "--table", table]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{method} failed:\n{err.read().decode(errors='replace')[-3000:]}")
        report = json.loads(out.read().decode().strip().splitlines()[-1])
    report["rss"] = usage.ru_maxrss / 1024
    return report


def main() -> None:
    import psycopg
    import pyarrow.compute
    import pyarrow.parquet as pq
    from psycopg import sql

    pc: Any = pyarrow.compute

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--parquet")
    parser.add_argument("--schema")
    parser.add_argument("--table")
    args = parser.parse_args()
    if args.method:
        child(args)
        return
    schema = f"bench_pg_load_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "part.parquet"
        write_parquet(parquet, args.rows)
        data = pq.read_table(parquet, columns=["amount", "created_at"])
        expected = (str(pc.sum(data["amount"]).as_py()), pc.max(data["created_at"]).as_py())
        del data
        results: dict[str, list[dict]] = {m: [] for m in METHODS}
        try:
            for round_ in range(args.repeat):
                for method in METHODS:
                    table = f"{method}_{round_}"
                    prepare(args.url, schema, table)
                    report = run_child(method, args, parquet, schema, table)
                    count, total, latest, _notes = check(args.url, schema, table)
                    assert count == args.rows and total == expected[0], (method, count, total, expected)
                    assert latest.startswith(expected[1].strftime("%Y-%m-%d %H:%M:%S")), (method, latest, expected)
                    results[method].append(report)
                    with psycopg.connect(args.url, autocommit=True) as conn:
                        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
        finally:
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    med = {
        m: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "cpu", "rss")} for m, runs in results.items()
    }
    fastest = min(s["seconds"] for s in med.values())
    print(
        f"\n{args.rows:,} rows x 6 columns (+2), median of {args.repeat} interleaved round(s), a fresh process per run\n"
    )
    header = f"{'method':<12} {'wall s':>7} {'cpu s':>6} {'peak RSS MB':>12} {'x fastest':>10}"
    print(header)
    print("-" * len(header))
    for method, s in med.items():
        print(f"{method:<12} {s['seconds']:>7.2f} {s['cpu']:>6.2f} {s['rss']:>12.0f} {s['seconds'] / fastest:>10.2f}")


if __name__ == "__main__":
    main()
