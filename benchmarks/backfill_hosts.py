"""A backfill through the dagster-daemon on Celery workers in ONE simulated host, against the same on TWO.

The harness is etl_assets_tests/test_distributed.py's (deployed as deploy/celery/ says): on this machine a code
server, the daemon and the webserver over a fresh Postgres database; Celery workers (deploy/celery/worker.sh,
concurrency 1) each in its own network namespace with a private DAGSTER_HOME, data dir and temp dir
(etl_assets_tests/hosts.py), reaching Postgres, RabbitMQ (a private vhost), moto S3 (lake, landing, compute logs)
and the demo orders API only through the bridge. The pipeline is the test's: daily partitions of orders from the
API, validated, loaded into Postgres; its extracts share one API pool slot across hosts. Nothing is killed here.

Per variant (a fresh database, bucket, vhost and hosts each; interleaved over ``--rounds``) a backfill of
``--partitions`` days is launched through GraphQL, and printed: wall time from the launch to the last run finished,
runs per minute, the median run (start to end), runs per host (the worker the Celery result backend names), and
the two-hosts / one-host ratio of the wall time. The target table must equal the source in every variant (per day
the same rows, distinct keys and sums) and every partition must have succeeded, or the exit status is 1.

On a 2-core machine both worker hosts share the same 2 cores (with the control host, Postgres, RabbitMQ and moto):
the ratio shows the coordination overhead of a second host more than added capacity.

Usage (from the repository root, as root: network namespaces)::

    .venv/bin/python benchmarks/backfill_hosts.py --partitions 20      # about 8 minutes here, under load
    .venv/bin/python benchmarks/backfill_hosts.py                      # 200 partitions, 1 round (about an hour here)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import progress  # noqa: E402  (this directory is on sys.path: run as a script)
from dagster import DagsterRunStatus, RunsFilter  # noqa: E402

from etl_assets_tests.s3server import S3Server  # noqa: E402
from etl_assets_tests.test_distributed import (  # noqa: E402
    ASSETS,
    BACKFILL_TAG,
    LAUNCH,
    START,
    STARTUP_TIMEOUT,
    Deployment,
    celery_app,
    fresh_database,
    open_deployment,
    run_facts,
    source_by_day,
    start_control_plane,
    start_workers,
    target_by_day,
    worker_node,
)

VARIANTS = {"one host": ("a",), "two hosts": ("a", "b")}
POLL_SECONDS = 2.0
# a generous bound: a warm run takes 6-11 s here, and one host runs them one after the other
SECONDS_PER_PARTITION_LIMIT = 30.0


@dataclass
class Outcome:
    variant: str
    round_: int
    partitions: int
    wall: float
    median_run: float | None
    per_host: dict[str, int]
    failed: int
    equal: bool
    totals: tuple[int, int, int, str]


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _partition(tags: Mapping[str, str]) -> str | None:
    # an asset backfill's run names its partition as a range of one
    return tags.get("dagster/partition") or tags.get("dagster/asset_partition_range_start")


def run_backfill(deployment: Deployment, partitions: int, variant: str, round_: int, title: str) -> Outcome:
    """Start the control host and the workers, launch the backfill, wait until every partition has finished; each
    run is reported as the poll sees it finished (bench_common.progress, under ``title``)."""
    start_control_plane(deployment)
    start_workers(deployment, victim=None, check=False)
    deployment.api.open()  # the test holds the API shut to force pool contention; here it is open from the start
    server = deployment.webserver
    assert server is not None
    server.wait_until_ready(STARTUP_TIMEOUT)
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range(partitions)]
    answer = server.graphql(LAUNCH, {"partitions": days, "assets": [{"path": p} for p in ASSETS]})[
        "launchPartitionBackfill"
    ]
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"the backfill was not launched: {answer}")
    launched = time.time()
    instance = deployment.instance()
    runs_filter = RunsFilter(tags={BACKFILL_TAG: answer["backfillId"]})
    deadline = time.monotonic() + STARTUP_TIMEOUT + partitions * SECONDS_PER_PARTITION_LIMIT
    reported: set[str] = set()
    with progress(partitions, title) as bar:
        while True:
            records = instance.get_run_records(runs_filter)
            runs = [record.dagster_run for record in records]
            if len(runs) > bar.total:  # a run retry is a run more
                bar.set_total(len(runs))
            for record in reversed(records):  # oldest first
                run = record.dagster_run
                if run.is_finished and run.run_id not in reported:
                    reported.add(run.run_id)
                    bar.finished(
                        f"partition {_partition(run.tags)}",
                        run.status == DagsterRunStatus.SUCCESS,
                        None,
                        (record.end_time or 0.0) - (record.start_time or record.end_time or 0.0),
                        run.run_id,
                    )
            done = {_partition(r.tags) for r in runs if r.status == DagsterRunStatus.SUCCESS}
            if done >= set(days) and all(r.is_finished for r in runs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{variant}: {len(done)} of {partitions} partitions succeeded before the time limit\n"
                    + deployment.tails()
                )
            time.sleep(POLL_SECONDS)
    facts = [run_facts(instance, r.run_id) for r in runs]
    ok = [f for f in facts if f.status == DagsterRunStatus.SUCCESS]
    app = celery_app(deployment)
    node_host = {worker_node(name): name for name in deployment.hosts.hosts}
    per_host = dict.fromkeys(deployment.hosts.hosts, 0)
    for r in runs:
        if r.status == DagsterRunStatus.SUCCESS:
            worker = app.AsyncResult(r.tags["dagster-celery/task_id"]).worker or "?"
            host = node_host.get(worker.split("@")[0], worker)
            per_host[host] = per_host.get(host, 0) + 1
    target, source = target_by_day(deployment.target_url), source_by_day(deployment.orders_path)
    rows = sum(v[0] for v in target.values())
    keys = sum(v[1] for v in target.values())
    qty = sum(v[2] for v in target.values())
    price = sum((v[3] for v in target.values()), start=Decimal(0))
    instance.dispose()
    return Outcome(
        variant=variant,
        round_=round_,
        partitions=partitions,
        wall=max(f.ended or 0.0 for f in facts) - launched,
        median_run=_median([f.ended - f.started for f in ok if f.started is not None and f.ended is not None]),
        per_host=per_host,
        failed=len(facts) - len(ok),
        equal=target == source,
        totals=(rows, keys, qty, str(price)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C, so that namespaces, processes, vhost and database are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="backfill-hosts-", dir=args.workdir))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"backfill_hosts.py: {os.cpu_count()} cores, {uptime}, work dir {work}", flush=True)
    s3 = S3Server().start(log=work / "moto.log")
    outcomes: list[Outcome] = []
    try:
        for round_ in range(1, args.rounds + 1):
            for index, (variant, names) in enumerate(VARIANTS.items()):
                began = time.monotonic()
                tmp = work / f"{round_}-{names[-1]}"
                with (
                    fresh_database(args.postgres_url) as database,
                    open_deployment(
                        tmp, database, args.postgres_url, s3, os.environ.__setitem__, names, args.partitions
                    ) as deployment,
                ):
                    nth = (round_ - 1) * len(VARIANTS) + index + 1
                    title = f"round {round_}/{args.rounds}, {variant} (variant {nth}/{args.rounds * len(VARIANTS)})"
                    out = run_backfill(deployment, args.partitions, variant, round_, title)
                outcomes.append(out)
                print(
                    f"  round {round_} {variant}: backfill {out.wall:.1f}s, runs per host {out.per_host},"
                    f" failed runs {out.failed}, target equals source: {out.equal}"
                    f" (whole variant with set-up and teardown {time.monotonic() - began:.0f}s)",
                    flush=True,
                )
    except BaseException as exc:  # pytest.fail() in the harness raises a BaseException
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"backfill of {args.partitions} daily partitions (API -> lake on S3 -> Postgres) through the daemon on Celery"
        f" workers (concurrency 1 each), {args.rounds} round(s), interleaved"
    )
    print(
        "| variant | round | partitions | wall s (launch to last run finished) | runs per min | median run s |"
        " runs per host | failed runs | ratio two/one (wall) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    one = {o.round_: o.wall for o in outcomes if o.variant == "one host"}
    for o in outcomes:
        ratio = f"{o.wall / one[o.round_]:.2f}x" if o.variant == "two hosts" else "1.00x"
        median = f"{o.median_run:.1f}" if o.median_run is not None else "-"
        hosts = ", ".join(f"{h}: {n}" for h, n in o.per_host.items())
        print(
            f"| {o.variant} | {o.round_} | {o.partitions} | {o.wall:.1f} | {o.partitions / o.wall * 60:.1f} |"
            f" {median} | {hosts} | {o.failed} | {ratio} |"
        )
    print(
        "note: both worker hosts share this machine's cores (with the control host, Postgres, RabbitMQ and moto),"
        " so the ratio shows the coordination overhead of a second host more than added capacity."
    )
    totals = {o.totals for o in outcomes}
    good = all(o.equal for o in outcomes) and len(totals) == 1
    print(
        "target equals source in every variant (per day rows, distinct keys, sums):"
        f" {'yes' if good else 'NO'}; totals rows, keys, quantity, price: {sorted(totals)}"
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
