"""Benchmark: our REST source (``RestApiSource.extract``) against dlt's ``RESTClient.paginate`` on the demo API.

Run::

    .venv/bin/python benchmarks/rest_client.py --records 200000

What it does: generates demo shop data with N orders, serves it with ``DemoApiServer`` on loopback (in this
process), and installs dlt (``--dlt-version``, pinned) into a virtualenv of its own under the cache directory
(``uv venv`` + ``uv pip install``; dlt is never a dependency of the platform, and the platform is not importable
there). Then, in interleaved rounds (ours, dlt, dlt+arrow, ours, ...), each client runs in a fresh process and reads every
order through the same keyset-cursor endpoint (``GET /orders?limit=...&cursor=...``, ``--page-size`` records a
page, the cursor at ``next_cursor``):

* ``ours``: ``RestApiSource.extract`` with ``pagination.style: cursor``: each page parsed with decimals kept exact
  and turned into an Arrow batch of text columns (what the raw layer stores);
* ``dlt``: ``RESTClient(base_url).paginate("/orders", paginator=JSONResponseCursorPaginator(...),
  data_selector="data")``: each page parsed into Python dicts (``requests`` underneath), nothing more;
* ``dlt+arrow``: the same, each page then made an Arrow batch (``pa.RecordBatch.from_pylist``, types inferred), the
  least a raw layer of Arrow batches needs on top of dlt's client.

The table shows the median over ``--rounds``: ``rows/s`` over the client's own wall time (interpreter start and
imports not included), ``cpu s`` the client's user+sys CPU over the same span, ``peak RSS`` the child's maximum
resident set (``os.wait4``), and ``x ours`` dlt's figure over ours. Every run is checked to have read N records.
The server's own work is in this process and in neither client's CPU.
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

from bench_common import DLT_VERSION, REPO, dlt_python  # this directory is on sys.path (run as a script)

_DLT_CHILD = """
import json, sys, time
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
url, page_size, arrow = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "arrow"
if arrow:
    import pyarrow as pa
started, cpu0 = time.perf_counter(), time.process_time()
client = RESTClient(base_url=url)
paginator = JSONResponseCursorPaginator(cursor_path="next_cursor", cursor_param="cursor")
records = pages = 0
for page in client.paginate("/orders", params={"limit": page_size}, paginator=paginator, data_selector="data"):
    records += pa.RecordBatch.from_pylist(page).num_rows if arrow else len(page)
    pages += 1
print(json.dumps({"records": records, "pages": pages, "wall": time.perf_counter() - started,
                  "cpu": time.process_time() - cpu0}))
"""


def _ours_child(url: str, page_size: int) -> None:
    from etl_assets.resources.api import ApiSource, ExtractStats, RestApiSource

    columns = ["order_id", "customer_id", "product_id", "quantity", "unit_price", "currency", "status"]
    spec = ApiSource.model_validate(
        {
            "kind": "api",
            "connection": "bench_api",
            "default_url": url,
            "endpoint": "/orders",
            "records_path": "data",
            "pagination": {"style": "cursor", "page_size": page_size},
            "timeout_seconds": 60,
        }
    )
    started, cpu0 = time.perf_counter(), time.process_time()
    stats = ExtractStats()
    records = sum(
        batch.num_rows
        for batch in RestApiSource(connection="bench_api", default_url=url).extract(spec, columns, stats=stats)
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    print(json.dumps({"records": records, "pages": stats.pages, "wall": wall, "cpu": cpu}))


def _run(command: list[str], env: dict[str, str]) -> dict:
    """Run one client in a fresh process: its JSON report plus its peak RSS in MiB."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[:3]} failed with exit code {process.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    report["rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dlt-version", default=DLT_VERSION)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "etl_assets_bench_rest_client")
    parser.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "ours":
        _ours_child(args.url, args.page_size)
        return

    sys.path.insert(0, str(REPO))
    from etl_assets_demo import DemoApiServer, generate_shop_data

    python = dlt_python(args.cache, args.dlt_version)
    with tempfile.TemporaryDirectory(prefix="bench_rest_") as tmp:
        shop = generate_shop_data(Path(tmp), orders=args.records, days=30)
        env = {**os.environ, "PYTHONPATH": str(REPO), "ETL_DATA_DIR": str(Path(tmp) / "data")}
        results: dict[str, list[dict]] = {"ours": [], "dlt": [], "dlt+arrow": []}
        with DemoApiServer(shop.orders_path) as server:
            commands = {
                "ours": [
                    sys.executable,
                    __file__,
                    "--child",
                    "ours",
                    "--url",
                    server.url,
                    "--page-size",
                    str(args.page_size),
                ],
                "dlt": [str(python), "-c", _DLT_CHILD, server.url, str(args.page_size), "dicts"],
                "dlt+arrow": [str(python), "-c", _DLT_CHILD, server.url, str(args.page_size), "arrow"],
            }
            for round_ in range(1, args.rounds + 1):
                for name, command in commands.items():
                    report = _run(command, env)
                    if report["records"] != args.records:
                        raise SystemExit(f"{name} read {report['records']} records, expected {args.records}")
                    results[name].append(report)
                    print(
                        f"round {round_} {name}: {report['wall']:.2f} s, {report['cpu']:.2f} cpu s, "
                        f"{report['rss_mib']:.0f} MiB",
                        file=sys.stderr,
                    )

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(
        f"\n{args.records:,} records, {args.page_size} a page, median of {args.rounds} rounds, dlt "
        f"{args.dlt_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(
        "| client | rows/s | wall s | cpu s | peak RSS MiB | x ours (rows/s) |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    )
    ours_rate = args.records / median("ours", "wall")
    for name in results:
        rate = args.records / median(name, "wall")
        print(
            f"| {name} | {rate:,.0f} | {median(name, 'wall'):.2f} | {median(name, 'cpu'):.2f} | "
            f"{median(name, 'rss_mib'):.0f} | {rate / ours_rate:.2f} |"
        )


if __name__ == "__main__":
    main()
