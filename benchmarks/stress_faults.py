"""Fault-injection stress of the reference ``orders`` pipeline: 1,000 daily partitions against a flaky demo API.

Every partition is one run of the real ``shop__orders_pipeline`` job (shop/raw_orders from the demo REST API ->
clean/quarantine -> shop/warehouse_orders in DuckDB), launched once with ``execute_in_process`` against one
DagsterInstance (SQLite storage in a temporary DAGSTER_HOME), while the demo API server faults 10% of its
``/orders`` requests, drawn uniformly from: 500, 503 (Retry-After), 429 (Retry-After), a "slow" answer past the
client's timeout, and a 200 whose body stops halfway (truncated). Recovery is the platform's own: request retries
in ``RestApiSource.get_json`` (exponential backoff with full jitter, Retry-After obeyed and capped), then the
step's RetryPolicy from the spec. A partition "succeeded without a person" when its run succeeded on its first
launch; one that failed is launched again (what a person would do, reported as "relaunched") so the warehouse
comparison covers every partition.

The stress runs the packaged specs with the orders spec changed in two places (``etl_assets_demo.stress``):
the client timeout is 1 s (the spec's 20 s would make each timeout cost 20 s) and a slow fault stalls 1.5 s, so
it is a timeout; pages hold 50 orders (the spec's 2,000 would fetch a partition in one request), so faults land
mid-pagination. The shop's daily partitions span the generated data's days instead of the demo's week
(``etl_assets_demo.spans``). ``--orders`` defaults to 100 per partition, 2 or 3 requests per partition.

Reported per phase: partitions succeeded on first launch (must be >= 99.9%), requests, faults injected per kind
(the server's counter), request retries by reason (``request_retries``/``retry_reasons`` metadata of the
raw/orders materializations), backoff seconds slept (from the client's retry warnings in the event log), step
retries (STEP_UP_FOR_RETRY events), wall time (inside the phase's runs), median run, partitions/s, and CPU time of
this process during the runs (the demo API server runs in it on threads). The baseline is the same pipeline on the
same generated data with faults off, in its own lake, warehouse and server, over the first
``--baseline-partitions`` partitions (default 100); those partitions run alternately, baseline and faulted, so
both phases see the same lake sizes and the same load from other work on the machine, and the ratio compares
them partition for partition.

Then, per phase, an exact comparison of ``shop.orders`` with the generated source parquet on all nine columns
as multisets (``EXCEPT ALL`` both ways: no row lost, none duplicated or altered), distinct order_id, every row's
``_etl_partition`` equal to its UTC order day, every row's ``_etl_run_id`` the run that loaded its partition,
nothing quarantined and every partition present. PASS/FAIL lines at the end; exit status 1 on any FAIL.

Usage (from the repository root)::

    .venv/bin/python benchmarks/stress_faults.py                                # 1,000 partitions, 30-90 min
    .venv/bin/python benchmarks/stress_faults.py --partitions 50 --baseline-partitions 20   # ~3 minutes
    nohup .venv/bin/python benchmarks/stress_faults.py > stress.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    REPO,
    code_digest,
    progress,
    write_dagster_yaml,
)  # this directory is on sys.path (run as a script)

sys.path.insert(0, str(REPO))

from etl_assets_demo import generate_shop_data  # noqa: E402
from etl_assets_demo.stress import (  # noqa: E402
    FAULT_KINDS,
    REASON_KIND,
    PhaseResult,
    PhaseRunner,
    StressSettings,
    WarehouseComparison,
    compare_warehouse,
    load_dimensions,
)

REQUIRED_SHARE = 0.999


def _instance(home: Path):
    from dagster import DagsterInstance

    write_dagster_yaml(home, "stress_faults.py")
    return DagsterInstance.from_config(str(home))


def _run_interleaved(runners: dict, keys: list[str], baseline_k: int) -> None:
    """The first ``baseline_k`` partitions alternate between the phases (who goes first alternates too), the rest
    are the faulted phase's alone: load from other work on the machine falls on both phases alike. Each partition is
    reported as it finishes (bench_common.progress), with its phase's request retries and failed first launches so
    far."""
    seen = {label: {"retries": 0, "failed": 0, "done": 0} for label in runners}
    total = {label: baseline_k if label == "baseline" else len(keys) for label in runners}
    with progress(sum(total.values()), "stress_faults", unit="partitions") as bar:
        for index, partition in enumerate(keys):
            order = ["baseline", "faulted"] if index % 2 == 0 else ["faulted", "baseline"]
            for label in order if index < baseline_k else ["faulted"]:
                outcome = runners[label].run(partition)
                phase = seen[label]
                phase["retries"] += outcome.request_retries
                phase["failed"] += not outcome.first_launch_ok
                phase["done"] += 1
                note = (
                    f"{outcome.request_retries} request retries; {label} {phase['done']}/{total[label]}:"
                    f" {phase['retries']} request retries, {phase['failed']} failed first launches"
                )
                if not outcome.first_launch_ok:
                    note += (
                        f"; failed on first launch ({'recovered by relaunch' if outcome.final_ok else 'still failing'}):"
                        f" {outcome.error}"
                    )
                bar.finished(
                    f"{label} {partition}", outcome.first_launch_ok, None, outcome.seconds, outcome.run_id, note
                )


def _table(headers: list[str], rows: list[list[object]]) -> str:
    text = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _median_seconds(phase: PhaseResult, k: int | None = None) -> float:
    return statistics.median(o.seconds for o in phase.outcomes[:k])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=1000, help="daily partitions to run (default 1000)")
    parser.add_argument("--orders", type=int, default=None, help="orders in total (default 100 per partition)")
    parser.add_argument(
        "--baseline-partitions",
        type=int,
        default=100,
        help="first partitions run again without faults as the baseline (default 100; 0 skips it)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.10, help="share of /orders requests faulted (0.10)")
    parser.add_argument("--kinds", default="+".join(FAULT_KINDS), help="fault kinds joined by + (all five)")
    parser.add_argument("--timeout", type=float, default=1.0, help="client timeout of the orders spec, s (1.0)")
    parser.add_argument("--slow-seconds", type=float, default=1.5, help="stall of a slow fault, s (1.5)")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After sent with 429/503, s (1)")
    parser.add_argument("--page-size", type=int, default=50, help="orders per API page (50)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1))
    parser.add_argument("--seed", type=int, default=42, help="data seed; the fault seed is --fault-seed")
    parser.add_argument("--fault-seed", type=int, default=7)
    parser.add_argument("--workdir", default=None, help="where the temporary directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the data, lakes, warehouses and instance")
    args = parser.parse_args(argv)

    partitions = args.partitions
    last_day = args.start + dt.timedelta(days=partitions - 1)
    if partitions < 1 or last_day >= dt.datetime.now(dt.UTC).date():
        parser.error(
            f"--partitions {partitions} from --start {args.start} reaches {last_day}: daily partitions "
            "must have closed; pick an earlier --start"
        )
    orders = args.orders or 100 * partitions
    baseline_k = max(0, min(args.baseline_partitions, partitions))
    settings = StressSettings(
        fault_rate=args.fault_rate,
        kinds=tuple(k for k in args.kinds.split("+") if k),
        timeout_seconds=args.timeout,
        slow_seconds=args.slow_seconds,
        retry_after_seconds=args.retry_after,
        page_size=args.page_size,
        seed=args.fault_seed,
    )
    settings.faults()  # validates the fault settings before anything runs

    root = Path(tempfile.mkdtemp(prefix="stress_faults_", dir=args.workdir))
    digest_before = code_digest()
    print(
        f"stress_faults: {partitions} partitions ({args.start}..{last_day}), {orders} orders, "
        f"{settings.fault_rate:.0%} of /orders requests faulted ({', '.join(settings.kinds)}), fault seed "
        f"{settings.seed}; baseline {baseline_k} partitions without faults",
        flush=True,
    )
    print(
        f"orders spec for the stress: timeout_seconds {settings.timeout_seconds} (spec: 20), slow fault "
        f"{settings.slow_seconds} s, page_size {settings.page_size} (spec: 2000), Retry-After "
        f"{settings.retry_after_seconds} s; client defaults otherwise (RestApiSource: 6 attempts, backoff 0.2 s "
        f"doubling, full jitter, Retry-After capped at 60 s; step RetryPolicy from the spec)",
        flush=True,
    )
    print(f"work dir {root}; etl_assets code {digest_before}", flush=True)

    phases: dict[str, PhaseResult] = {}
    comparisons: dict[str, WarehouseComparison] = {}
    dims: dict[str, float] = {}
    total_started = time.perf_counter()
    try:
        instance = _instance(root / "dagster_home")
        with instance, contextlib.ExitStack() as stack:
            runners = {}
            manifests = {}
            for label in (["baseline"] if baseline_k else []) + ["faulted"]:
                # The same generated data for both phases, each with its own lake and warehouse.
                manifest = generate_shop_data(
                    root / label / "data", orders=orders, days=partitions, start=args.start, seed=args.seed
                )
                dims[label] = load_dimensions(manifest, instance, settings)
                manifests[label] = manifest
                runners[label] = stack.enter_context(
                    PhaseRunner(manifest, instance, settings, settings.faults() if label == "faulted" else None, label)
                )
            _run_interleaved(runners, manifests["faulted"].partition_keys, baseline_k)
            stack.close()
            for label, runner in runners.items():
                phases[label] = runner.result()
                comparisons[label] = compare_warehouse(manifests[label], phases[label])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - total_started
    digest_after = code_digest()

    print()
    print(
        _table(
            [
                "phase",
                "partitions",
                "ok 1st launch",
                "share",
                "relaunched",
                "requests",
                "faults",
                "req retries",
                "step retries",
                "backoff s",
                "wall s",
                "s/partition",
                "median s",
                "partitions/s",
                "cpu s",
                "dims s",
            ],
            [
                [
                    label,
                    p.partitions,
                    p.first_launch_ok,
                    f"{p.success_share:.2%}",
                    p.relaunched,
                    p.requests,
                    sum(p.faults_injected.values()),
                    p.request_retries,
                    p.step_retries,
                    f"{sum(p.backoff_seconds.values()):.1f}",
                    f"{p.wall_seconds:.1f}",
                    f"{p.wall_seconds / p.partitions:.2f}",
                    f"{_median_seconds(p):.2f}",
                    f"{p.partitions / p.wall_seconds:.3f}",
                    f"{p.cpu_seconds:.1f}",
                    f"{dims[label]:.1f}",
                ]
                for label, p in phases.items()
            ],
        )
    )

    faulted = phases["faulted"]
    print()
    by_kind: dict[str, dict[str, float]] = {k: {"retries": 0, "backoff": 0.0} for k in FAULT_KINDS}
    other: dict[str, float] = {"retries": 0, "backoff": 0.0}
    for reason, count in faulted.retry_reasons.items():
        slot = by_kind.get(REASON_KIND.get(reason, ""), other)
        slot["retries"] += count
        slot["backoff"] += faulted.backoff_seconds.get(reason, 0.0)
    rows = [
        [kind, faulted.faults_injected.get(kind, 0), int(by_kind[kind]["retries"]), f"{by_kind[kind]['backoff']:.1f}"]
        for kind in FAULT_KINDS
    ]
    rows.append(["other", 0, int(other["retries"]), f"{other['backoff']:.1f}"])
    print(
        "faulted phase, per fault kind (a retry's reason: http_<status>, ReadTimeout for slow, "
        "RemoteProtocolError for truncated):"
    )
    print(_table(["fault", "injected", "request retries", "backoff s"], rows))
    print(f"retry reasons as recorded: {faulted.retry_reasons}")

    print()
    print(
        _table(
            [
                "phase",
                "source rows",
                "warehouse rows",
                "distinct ids",
                "missing",
                "extra",
                "dup ids",
                "bad partition",
                "bad run id",
                "quarantined",
                "partitions",
                "exact",
            ],
            [
                [
                    label,
                    c.source_rows,
                    c.warehouse_rows,
                    c.distinct_order_ids,
                    c.missing_rows,
                    c.extra_rows,
                    c.duplicate_order_ids,
                    c.wrong_partition,
                    c.wrong_run,
                    c.quarantined,
                    f"{c.partitions_present}/{c.partitions_expected}",
                    "yes" if c.exact else "NO",
                ]
                for label, c in comparisons.items()
            ],
        )
    )

    if "baseline" in phases:
        baseline = phases["baseline"]
        k = baseline.partitions
        first = {label: phase.outcomes[:k] for label, phase in phases.items()}
        wall = {label: sum(o.seconds for o in outcomes) for label, outcomes in first.items()}
        cpu = {label: sum(o.cpu_seconds for o in outcomes) for label, outcomes in first.items()}
        median = {label: statistics.median(o.seconds for o in outcomes) for label, outcomes in first.items()}
        print()
        print(
            f"faulted / baseline, the same first {k} partitions run alternately: "
            f"{wall['faulted'] / wall['baseline']:.2f}x run time ({wall['faulted']:.1f} s vs {wall['baseline']:.1f} s), "
            f"{median['faulted'] / median['baseline']:.2f}x median ({median['faulted']:.2f} s vs "
            f"{median['baseline']:.2f} s), {cpu['faulted'] / cpu['baseline']:.2f}x CPU "
            f"({cpu['faulted']:.1f} s vs {cpu['baseline']:.1f} s)"
        )
    print(
        f"total {total:.0f} s; etl_assets code {digest_before}"
        + ("" if digest_after == digest_before else f" -> {digest_after} (CHANGED during the run)")
    )

    checks: list[tuple[str, bool, str]] = []
    checks.append(
        (
            f"first-launch success >= {REQUIRED_SHARE:.1%}",
            faulted.success_share >= REQUIRED_SHARE,
            f"{faulted.first_launch_ok}/{faulted.partitions} = {faulted.success_share:.2%}",
        )
    )
    missing_kinds = [k for k in settings.kinds if not faulted.faults_injected.get(k)]
    checks.append(("every fault kind injected", not missing_kinds, f"{faulted.faults_injected}"))
    injected = sum(faulted.faults_injected.values())
    if faulted.step_retries == 0 and faulted.relaunched == 0:
        checks.append(
            (
                "every injected fault was seen and retried by the client",
                faulted.request_retries >= injected,
                f"{faulted.request_retries} request retries for {injected} faults",
            )
        )
    for label, phase in phases.items():
        comp = comparisons[label]
        checks.append(
            (
                f"{label}: warehouse equals the source exactly",
                comp.exact,
                "; ".join(comp.problems()) or f"{comp.warehouse_rows} rows, {comp.partitions_present} partitions",
            )
        )
        if label == "baseline":
            checks.append(
                (
                    "baseline: every partition succeeded",
                    phase.first_launch_ok == phase.partitions,
                    f"{phase.first_launch_ok}/{phase.partitions}",
                )
            )
    print()
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
