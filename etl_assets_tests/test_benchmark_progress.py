"""The benchmarks report each measured run as it finishes, not only in the final table.

Protects: ``benchmarks/files_read.py`` (the cheapest benchmark, here on 60,000 rows, one repeat: a few seconds) writes
one ``[i/N]`` progress line per measured run to standard error, each when its run ends, and the final table to
standard output only. "When its run ends" is judged by the lines' arrival times on the pipe against the elapsed
time each line reports: the ragged case's data generation and untimed warm-up (half a second or more) lie between
the clean runs and the ragged run, so lines held back and written together at the end arrive together and fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] .*, ([\d.]+) s elapsed")
TABLE_HEADER = "| case | reader |"


def _run_timed(args: list[str]) -> tuple[int, list[tuple[float, str, str]]]:
    """Run a command; every line it writes, with when it arrived and on which stream, in arrival order."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str, str]] = []
    lock = threading.Lock()

    def read(stream, name: str) -> None:
        for line in stream:
            with lock:
                lines.append((time.monotonic(), name, line.rstrip("\n")))

    readers = [
        threading.Thread(target=read, args=(proc.stdout, "stdout")),
        threading.Thread(target=read, args=(proc.stderr, "stderr")),
    ]
    for reader in readers:
        reader.start()
    try:
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        for reader in readers:
            reader.join()
    return code, sorted(lines, key=lambda entry: entry[0])


def test_files_read_reports_each_run_as_it_finishes():
    code, lines = _run_timed(
        [sys.executable, "benchmarks/files_read.py", "--rows", "60000", "--files", "1", "--repeat", "1"]
    )
    output = "\n".join(f"{name}: {line}" for _, name, line in lines)
    assert code == 0, output
    progress = [
        (at, PROGRESS.match(line), line) for at, name, line in lines if name == "stderr" and PROGRESS.match(line)
    ]
    # clean: platform and baseline; ragged: platform; one repeat each
    assert [(m.group(1), m.group(2)) for _, m, _ in progress if m] == [("1", "3"), ("2", "3"), ("3", "3")], output
    assert "files_read: 3 of 3 runs ok" in output
    stdout = [line for _, name, line in lines if name == "stdout"]
    assert any(line.startswith(TABLE_HEADER) for line in stdout), output
    assert not any(PROGRESS.match(line) for line in stdout), "progress belongs on standard error, not in the table"

    # every progress line arrived before the table
    table_at = next(at for at, name, line in lines if name == "stdout" and line.startswith(TABLE_HEADER))
    assert all(at < table_at for at, _, _ in progress), output
    # ... and as its run finished: the lines arrive as far apart as the elapsed times they report (lines held back
    # and written together arrive within milliseconds of each other)
    (first_at, first, _), (last_at, last, _) = progress[0], progress[-1]
    assert first and last
    reported = float(last.group(3)) - float(first.group(3))
    assert reported > 0.2, f"the runs were too quick to tell progress as it goes from progress at the end:\n{output}"
    assert last_at - first_at > reported / 2, f"progress lines arrived together, not as the runs finished:\n{output}"
