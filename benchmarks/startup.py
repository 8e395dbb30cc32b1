"""Start-up cost: ``import etl_assets`` and the time from ``dagster asset materialize`` starting to its run's first
event, for this checkout and optionally another one (e.g. a worktree of an older commit), in interleaved rounds.

Each measurement is a fresh process. The materialize command runs one unpartitioned asset (``shop/raw_products``) in a
throw-away instance; the time to the first event is that event's timestamp (from the instance's event log) minus
the moment the command was started, so it holds the interpreter start, the code location's load and the run's
set-up, whatever the step then does.

    python benchmarks/startup.py --rounds 3 --other /tmp/old-checkout --other-module etl_assets
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO, progress, write_dagster_yaml

ASSET = "shop/raw_products"


def _env(checkout: Path, home: Path, data: Path) -> dict[str, str]:
    # PYTHONPATH first: the checkout's etl_assets is imported, whatever the virtual environment has installed
    return {**os.environ, "PYTHONPATH": str(checkout), "DAGSTER_HOME": str(home), "ETL_DATA_DIR": str(data)}


def import_seconds(checkout: Path) -> float:
    """Wall time of a fresh interpreter importing ``etl_assets`` (minus an empty interpreter's start)."""

    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], check=True, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}
        )
        return time.perf_counter() - started

    return run("import etl_assets, etl_assets.sqlutil") - run("pass")


def first_event_seconds(checkout: Path, module: str) -> float:
    """Seconds from starting ``dagster asset materialize`` to the first event of its run."""
    from dagster import DagsterInstance

    with tempfile.TemporaryDirectory(prefix="etl-startup-") as tmp:
        home, data = Path(tmp) / "home", Path(tmp) / "data"
        write_dagster_yaml(home, "startup.py")
        data.mkdir()
        started = time.time()
        subprocess.run(
            [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", module, "--select", ASSET],
            env=_env(checkout, home, data),
            cwd=checkout,
            capture_output=True,
            check=False,
        )
        with DagsterInstance.from_ref(DagsterInstance.from_config(str(home)).get_ref()) as instance:
            [run] = instance.get_runs(limit=1)
            first = min(e.timestamp for e in instance.all_logs(run.run_id))
        return first - started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--module", default="etl_assets", help="this checkout's code location module")
    parser.add_argument("--other", type=Path, help="another checkout to compare with")
    parser.add_argument("--other-module", default="etl_assets", help="its code location module")
    args = parser.parse_args()
    checkouts = [("this checkout", REPO, args.module)]
    if args.other:
        checkouts.append((f"{args.other}", args.other.resolve(), args.other_module))
    results: dict[str, dict[str, list[float]]] = {label: {"import": [], "first_event": []} for label, _, _ in checkouts}
    with progress(args.rounds * len(checkouts) * 2, "startup", unit="measurements") as bar:
        for round_ in range(args.rounds):
            for label, checkout, module in checkouts:
                at = f"round {round_ + 1}/{args.rounds}, {label}"
                results[label]["import"].append(import_seconds(checkout))
                seconds = results[label]["import"][-1]
                bar.finished(f"{at}: import", True, None, seconds, note=f"{seconds:.3f} s")
                results[label]["first_event"].append(first_event_seconds(checkout, module))
                bar.finished(f"{at}: to first event", True, None, results[label]["first_event"][-1])
    base = results[checkouts[-1][0]]
    print(f"{'checkout':<40} {'import s (best)':>16} {'to first event s (best)':>24} {'median':>8} {'ratio':>6}")
    for label, _, _ in checkouts:
        r = results[label]
        ratio = min(r["first_event"]) / min(base["first_event"])
        print(
            f"{label:<40} {min(r['import']):>16.3f} {min(r['first_event']):>24.2f} "
            f"{statistics.median(r['first_event']):>8.2f} {ratio:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
