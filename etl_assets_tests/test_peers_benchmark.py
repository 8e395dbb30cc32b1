"""``benchmarks/peers.py`` runs end to end at tiny sizes and checks that every tool produced the same table.

Protects: the files workload (floor against the platform's files pipeline, run in process on a real instance) and
the partitions workload (floor replaces against one range run of a daily files pipeline, one single-partition
run, and the start-up rows) each print their table, every table is compared with the floor's (rows, distinct keys,
sums), and the progress reporter writes one line per measured run to standard error. ``--no-dlt``: nothing is
downloaded (dlt's virtualenv is only made when dlt is measured); ``--partitions 5`` keeps the range run short.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_peers_quick_checks_every_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ETL_PIPELINES_DIR", None)
    command = [sys.executable, str(REPO / "benchmarks" / "peers.py"), "--quick", "--rounds", "1", "--no-dlt"]
    command += ["--workloads", "files,partitions", "--partitions", "5", "--workdir", str(tmp_path)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "PASS: every run succeeded, every table the same" in out
    for title in (
        "=== files ",
        "=== partitions: 5 partitions ",
        "=== partitions: 1 partition ",
        "=== partitions: start-up ",
    ):
        assert title in out, out
    assert "| tool | work s | process s | CPU s | peak RSS MiB | x floor | CPU x floor | same table |" in out
    # the platform's rows compared equal with the floor's, on the checked figures
    assert re.search(r"^\| platform \| [\d.]+ \| .* \| yes \|$", out, re.M), out
    assert re.search(r"^\| platform \(1 range run\) \| .* \| yes \|$", out, re.M), out
    assert "checked: 2 tables, each 20,000 rows, 20,000 distinct keys" in out
    assert "checked: 2 tables, each 500 rows, 500 distinct keys" in out
    assert "DIFFERENT" not in out and "dlt" not in out.split("\n", 1)[1].replace("dlt left out", "")
    progress = [line for line in proc.stderr.splitlines() if re.match(r"^\[\d+/\d+\] ", line)]
    assert len(progress) == 2 + 2 + 2 + 3  # files, the range run, the single run, start-up (floor and platform)
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
