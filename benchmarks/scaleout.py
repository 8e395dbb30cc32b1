"""Scale-out costs, each compared with its single-machine baseline in the same run.

  lake      one landing CSV (``--rows``, default 10,000,000; the contract of validation_overhead.py) through the
            whole files pipeline (extract -> validate -> warehouse) with the lake and the landing zone on local
            disk, and with both on S3 (a real moto_server on loopback, started here), each a fresh process,
            interleaved over ``--rounds``. Printed: wall, CPU, peak RSS per variant and the S3/local ratio of the
            best of each; the two warehouse tables must be equal (rows, distinct keys, sums) or the run fails.
  storage   the per-run overhead of Dagster's storage: ``--runs`` in-process runs of a tiny pipeline (100 rows) on
            an instance with SQLite storage and on one with dagster-postgres storage (the production instance's
            ``postgres_db`` block, ``scheme: postgresql+psycopg2``), interleaved, in fresh processes; the Postgres
            database is created here and dropped afterwards. ``--postgres-url`` (default ``$ETL_TEST_POSTGRES_URL``
            or the local test server) names the server.

The backfill across one and two worker hosts (Celery over RabbitMQ in network namespaces) is
``benchmarks/backfill_hosts.py``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/scaleout.py --rows 200000 --runs 5      # quick, ~2 minutes
    .venv/bin/python benchmarks/scaleout.py                               # 10M rows, 20 runs per storage
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench_common import progress, step_failure_message  # this directory is on sys.path
from validation_overhead import DOMAIN, GENERATE_SQL, LANDING_FILE, NAME, REF, SPEC, job_name

REPO = Path(__file__).resolve().parent.parent
MARKER = "@@scaleout@@ "


def _usage() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": own.ru_utime + own.ru_stime, "peak_rss_mib": own.ru_maxrss / 1024}


# -- child side ------------------------------------------------------------------------------------------------


def child_pipeline() -> dict:
    from dagster import DagsterInstance

    from etl_assets.cli import QUIET
    from etl_assets.definitions import build_definitions

    job = build_definitions().resolve_job_def(job_name())
    instance = DagsterInstance.ephemeral()
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
    wall = time.perf_counter() - started
    out = {"seconds": wall, "success": result.success, **_usage()}
    if not result.success:
        out["failures"] = [step_failure_message(e)[:300] for e in result.get_step_failure_events()]
        return out
    import duckdb

    with duckdb.connect(str(Path(os.environ["ETL_DATA_DIR"]) / "warehouse.duckdb"), read_only=True) as con:
        out["table"] = list(
            con.execute(
                f"SELECT count(*), count(DISTINCT order_id), sum(order_id), sum(quantity), sum(unit_price)::VARCHAR"
                f" FROM {DOMAIN}.{NAME}"
            ).fetchall()[0]
        )
    return out


def child_runs(runs: int) -> dict:
    from dagster import DagsterInstance

    from etl_assets.cli import QUIET
    from etl_assets.definitions import build_definitions

    job = build_definitions().resolve_job_def(job_name())
    instance = DagsterInstance.get()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
        seconds.append(time.perf_counter() - started)
        if not result.success:
            return {"success": False, "seconds": seconds}
    events = len(instance.all_logs(result.run_id))
    return {"success": True, "seconds": seconds, "events_per_run": events, **_usage()}


# -- parent side -----------------------------------------------------------------------------------------------


@dataclass
class Result:
    variant: str
    seconds: float
    cpu: float
    rss: float
    payload: dict


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (the S3 server's share of a run)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child(stage: str, env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", stage, *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER) :])


def _write_spec(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{NAME}.yaml").write_text(SPEC)


def bench_lake(args, work: Path) -> bool:
    from etl_assets_tests.s3server import S3Server

    specs = work / "specs"
    _write_spec(specs)
    source = work / LANDING_FILE
    import duckdb

    started = time.perf_counter()
    with duckdb.connect() as con:
        con.execute(GENERATE_SQL.format(path=str(source).replace("'", "''")), [args.rows])
    print(
        f"generated {args.rows:,} rows ({source.stat().st_size / 2**20:.0f} MiB CSV) in {time.perf_counter() - started:.1f}s"
    )
    server = S3Server().start(log=work / "moto.log")
    results: list[Result] = []
    try:
        with progress(2 * args.rounds, "scaleout lake", unit="pipeline runs") as bar:
            for round_ in range(args.rounds):
                for variant in ("local", "s3"):
                    data = work / f"data-{variant}-{round_}"
                    env = {**os.environ, "ETL_DATA_DIR": str(data), "ETL_PIPELINES_DIR": str(specs)}
                    env.pop("ETL_LAKE_URL", None)
                    env.pop("ETL_LANDING_URL", None)
                    if variant == "local":
                        (data / "landing" / REF).mkdir(parents=True)  # the pipeline's landing folder
                        shutil.copyfile(source, data / "landing" / REF / LANDING_FILE)
                    else:
                        env.update(server.env())
                        bucket = server.new_bucket("bench")
                        server.client().upload_file(str(source), bucket, f"landing/{REF}/{LANDING_FILE}")
                        env["ETL_LAKE_URL"] = f"s3://{bucket}/lake"
                        env["ETL_LANDING_URL"] = f"s3://{bucket}/landing"
                    assert server.process is not None
                    server_cpu = _process_cpu(server.process.pid)
                    out = _child("pipeline", env)
                    out["server_cpu"] = _process_cpu(server.process.pid) - server_cpu if variant == "s3" else 0.0
                    if not out["success"]:
                        print(f"{variant} round {round_ + 1} FAILED: {out.get('failures')}")
                        return False
                    results.append(Result(variant, out["seconds"], out["cpu_seconds"], out["peak_rss_mib"], out))
                    bar.finished(
                        f"lake round {round_ + 1}/{args.rounds}, {variant}",
                        True,
                        out["table"][0],
                        out["seconds"],
                        note=f"cpu {out['cpu_seconds']:.1f} s, peak RSS {out['peak_rss_mib']:.0f} MiB",
                    )
                    print(
                        f"  round {round_ + 1} {variant:5}: {out['seconds']:7.1f}s wall {out['cpu_seconds']:7.1f}s CPU"
                        f" {out['peak_rss_mib']:7.0f} MiB, S3 server {out['server_cpu']:.1f}s CPU"
                    )
                    shutil.rmtree(data, ignore_errors=True)
    finally:
        server.stop()
    tables = {json.dumps(r.payload["table"]) for r in results}
    best = {v: min((r for r in results if r.variant == v), key=lambda r: r.seconds) for v in ("local", "s3")}
    print()
    print(
        f"lake and landing zone: local disk against S3 (moto_server on loopback), {args.rows:,} rows, best of {args.rounds}"
    )
    print("| variant | wall s | CPU s | peak RSS MiB | ratio to local (wall) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant, r in best.items():
        print(f"| {variant} | {r.seconds:.1f} | {r.cpu:.1f} | {r.rss:.0f} | {r.seconds / best['local'].seconds:.2f}x |")
    same = len(tables) == 1
    print(f"same warehouse table in every run (rows, distinct keys, sums): {'yes' if same else 'NO: ' + str(tables)}")
    return same


POSTGRES_INSTANCE = """\
storage:
  postgres:
    postgres_db:
      username: {user}
      password: ""
      hostname: {host}
      port: {port}
      db_name: {db}
      scheme: postgresql+psycopg2
concurrency:
  pools:
    granularity: op
    default_limit: 1
telemetry:
  enabled: false
"""


def bench_storage(args, work: Path) -> bool:
    from urllib.parse import urlsplit

    import psycopg
    from bench_common import write_dagster_yaml
    from psycopg import sql

    url = args.postgres_url
    parts = urlsplit(url)
    db = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        specs = work / "specs"
        _write_spec(specs)
        homes = {"sqlite": work / "home-sqlite", "postgres": work / "home-postgres"}
        write_dagster_yaml(homes["sqlite"], "scaleout.py")
        homes["postgres"].mkdir(parents=True, exist_ok=True)
        (homes["postgres"] / "dagster.yaml").write_text(
            POSTGRES_INSTANCE.format(
                user=parts.username or "postgres", host=parts.hostname, port=parts.port or 5432, db=db
            )
        )
        import duckdb

        per_run: dict[str, list[float]] = {"sqlite": [], "postgres": []}
        events = {}
        with progress(2 * args.rounds, "scaleout storage", unit="processes") as bar:
            for round_ in range(args.rounds):
                for variant, home in homes.items():
                    data = work / f"runs-{variant}-{round_}"
                    (data / "landing" / REF).mkdir(parents=True)
                    with duckdb.connect() as con:
                        con.execute(
                            GENERATE_SQL.format(path=str(data / "landing" / REF / LANDING_FILE).replace("'", "''")),
                            [100],
                        )
                    env = {
                        **os.environ,
                        "ETL_DATA_DIR": str(data),
                        "ETL_PIPELINES_DIR": str(specs),
                        "DAGSTER_HOME": str(home),
                    }
                    out = _child("runs", env, str(args.runs))
                    if not out["success"]:
                        print(f"{variant}: a run failed")
                        return False
                    per_run[variant].extend(out["seconds"][1:])  # the first run of a process warms caches
                    warm = out["seconds"][1:]
                    bar.finished(
                        f"storage round {round_ + 1}/{args.rounds}, {variant}: {args.runs} runs in one process",
                        True,
                        None,
                        sum(out["seconds"]),
                        note=(f"median {sorted(warm)[len(warm) // 2]:.2f} s per run after the first, " if warm else "")
                        + f"{out['events_per_run']} events per run",
                    )
                    events[variant] = out["events_per_run"]
                    shutil.rmtree(data, ignore_errors=True)
        print()
        print(
            f"per-run overhead of Dagster's storage: {args.runs} in-process runs of a 100-row files pipeline per process, {args.rounds} rounds"
        )
        print("| storage | median s per run | min s | events per run | ratio to SQLite (median) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        median = {v: sorted(s)[len(s) // 2] for v, s in per_run.items()}
        for variant, seconds in per_run.items():
            print(
                f"| {variant} | {median[variant]:.3f} | {min(seconds):.3f} | {events[variant]} |"
                f" {median[variant] / median['sqlite']:.2f}x |"
            )
        return True
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--only", choices=["lake", "storage"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        out = child_pipeline() if args.child == "pipeline" else child_runs(int(args.child_args[0]))
        print(MARKER + json.dumps(out, default=str))
        return 0
    work = Path(tempfile.mkdtemp(prefix="scaleout-", dir=args.workdir))
    print(f"scaleout.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, work dir {work}")
    try:
        ok = True
        if args.only in (None, "lake"):
            ok = bench_lake(args, work) and ok
        if args.only in (None, "storage"):
            ok = bench_storage(args, work) and ok
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
