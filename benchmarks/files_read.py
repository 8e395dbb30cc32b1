"""What reading landing CSV files the safe way costs, against DuckDB reading them its own way, in the same run.

The files source reads every file by its exact name with an explicit header and column list, judges the rows one
by one (a ragged or non-UTF-8 row is kept for the quarantine with its line and bytes instead of failing the file)
and pins the inputs by hard links while it reads; the platform's reader here is the files extract step itself
(``steps.extract.extract_files``, on the platform's DuckDB settings). The baseline is what it did before: DuckDB's
``read_csv`` with its sniffer, every column as text, on the path as a pattern, failing the whole file on the first
bad row.

Cases (each file has ``--rows`` data rows of 8 text columns, split over ``--files`` files of one partition):

  clean     every row well-formed: the baseline reads it too.
  ragged    one row in 1,000 with a field too many or too few: the baseline cannot read it at all (it fails or takes
            a wrong header), so only the platform's time is shown, and its quarantine count is checked.

Each reader consumes the whole Arrow stream; the best of ``--repeat`` interleaved runs counts (wall and CPU
separately; this machine is shared, so CPU seconds are the steadier figure). Exit status 1 when a reader returns a
wrong row count.

Usage (from the repository root)::

    .venv/bin/python benchmarks/files_read.py --rows 300000      # quick
    .venv/bin/python benchmarks/files_read.py                    # 3M rows, 3 repeats
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from bench_common import progress  # this directory is on sys.path (run as a script)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from etl_assets.lake import LakeStorage  # noqa: E402
from etl_assets.pipelines.spec import PipelineSpec  # noqa: E402
from etl_assets.pipelines.steps.extract import extract_files  # noqa: E402
from etl_assets.resources.files import LandingFilesSource  # noqa: E402

COLUMNS = ["id", "customer", "sku", "qty", "price", "currency", "ordered_at", "note"]
SPEC = PipelineSpec.model_validate(
    {
        "name": "bench_sales",
        "source": {"kind": "files", "format": "csv", "glob": "sales_*.csv"},
        "partitions": {"type": "daily", "start": "2024-01-01"},
        "columns": [{"name": c, "type": "VARCHAR", "nullable": c != "id"} for c in COLUMNS],
    }
)
DATASET = SPEC.ref  # its landing folder, landing/<domain>.<name>/


def generate(landing: Path, rows: int, files: int, ragged_every: int | None, seed: int) -> int:
    """Write the partition's files; returns how many rows are ragged."""
    rng = random.Random(seed)
    directory = landing / DATASET
    directory.mkdir(parents=True, exist_ok=True)
    ragged = 0
    per_file = rows // files
    for f in range(files):
        with open(directory / f"sales_2024-01-10_store{f}.csv", "w") as out:
            out.write(",".join(COLUMNS) + "\n")
            for i in range(f * per_file, (f + 1) * per_file):
                fields = [
                    str(i),
                    f"c{rng.randrange(10_000)}",
                    f"sku-{rng.randrange(500)}",
                    str(rng.randrange(1, 9)),
                    f"{rng.randrange(100, 99_999) / 100:.2f}",
                    rng.choice(["USD", "EUR", "GBP"]),
                    f"2024-01-10 {rng.randrange(24):02d}:{rng.randrange(60):02d}:00",
                    "ok",
                ]
                if ragged_every and i % ragged_every == ragged_every - 1:
                    fields = fields[:-1] if i % 2 else fields + ["extra"]
                    ragged += 1
                out.write(",".join(fields) + "\n")
    return ragged


def consume(reader) -> int:
    n = 0
    for batch in reader:
        n += batch.num_rows
    return n


def baseline(landing: Path) -> int:
    con = duckdb.connect()
    pattern = str(landing / DATASET / "sales_2024-01-10_*.csv")
    reader = con.sql(f"SELECT * FROM read_csv('{pattern}', all_varchar = true, filename = true)").to_arrow_reader(
        100_000
    )
    n = consume(reader)
    con.close()
    return n


def platform(landing: Path) -> tuple[int, int]:
    """The extract step of a files pipeline (``steps.extract.extract_files``), as ``raw/<name>`` runs it."""
    stream = extract_files(
        SPEC,
        LandingFilesSource(root=str(landing)),
        "2024-01-10",
        lake=LakeStorage(root=str(landing.parent / "lake")),
        log=logging.getLogger(__name__),
    )
    n = consume(stream.reader)
    return n, stream.describe()["malformed_rows"]


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    ok = True
    table = []
    # measured runs: every repeat reads clean with both readers and ragged with the platform's
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp, progress(3 * args.repeat, "files_read") as bar:
        for case, ragged_every in (("clean", None), ("ragged", 1000)):
            landing = Path(tmp) / case / "landing"
            ragged = generate(landing, args.rows, args.files, ragged_every, seed=42)
            expected = (args.rows // args.files) * args.files
            best: dict[str, list[float]] = {}
            platform(landing)  # warm-up, untimed: the first quarantined row imports pandas (DuckDB's fetch), ~1.6 s
            for repeat in range(args.repeat):
                readers = [("platform", platform)] + ([("baseline", baseline)] if case == "clean" else [])
                for name, fn in readers:
                    result, wall, cpu = timed(fn, landing)
                    rows, malformed = result if isinstance(result, tuple) else (result, 0)
                    right = rows == expected and malformed == ragged
                    bar.finished(
                        f"{case} {name}, repeat {repeat + 1}/{args.repeat}",
                        right,
                        rows,
                        wall,
                        note=f"cpu {cpu:.2f} s, {malformed:,} malformed",
                    )
                    if not right:
                        print(
                            f"FAIL {case}/{name}: {rows:,} rows ({malformed:,} malformed), expected {expected:,} "
                            f"({ragged:,} malformed)"
                        )
                        ok = False
                    w, c = best.get(name, [float("inf"), float("inf")])
                    best[name] = [min(w, wall), min(c, cpu)]
            for name, (wall, cpu) in best.items():
                base = best.get("baseline")
                table.append(
                    (
                        case,
                        name,
                        expected,
                        wall,
                        cpu,
                        expected / wall,
                        f"{wall / base[0]:.2f}" if base else "-",
                        f"{cpu / base[1]:.2f}" if base else "-",
                    )
                )
    print(
        f"\nfiles source CSV read, {args.rows:,} rows in {args.files} files, best of {args.repeat}, "
        f"{os.cpu_count()} cores"
    )
    print("| case | reader | rows | wall s | cpu s | rows/s | x baseline wall | x baseline cpu |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for case, name, rows, wall, cpu, rate, xw, xc in table:
        print(f"| {case} | {name} | {rows:,} | {wall:.2f} | {cpu:.2f} | {rate:,.0f} | {xw} | {xc} |")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
