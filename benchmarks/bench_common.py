"""What the benchmark scripts share: a throw-away Dagster instance's settings, a digest of the code measured and
the progress reporter of each measured run.

Imported by the scripts in this directory (run as scripts, so this directory is on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterEvent

    from etl_assets.cli.progress import Progress

REPO = Path(__file__).resolve().parent.parent
DLT_VERSION = "1.31.0"  # the dlt the peer benchmarks compare against (rest_client.py, peers.py)
PYARROW = "26.0.1"  # the platform's pin, also in dlt's virtualenv

# The repository's dagster.yaml reduced to what an in-process benchmark needs: SQLite storage under the benchmark's
# own DAGSTER_HOME and the same one-slot pools (the warehouse pool serializes DuckDB writers as in production).
_DAGSTER_YAML = """\
# Written by benchmarks/{writer}: SQLite storage under this DAGSTER_HOME, the repository's pool settings.
storage:
  sqlite:
    base_dir: {storage}
concurrency:
  pools:
    granularity: op
    default_limit: 1
telemetry:
  enabled: false
"""


def write_dagster_yaml(home: Path, writer: str) -> Path:
    """Write ``home/dagster.yaml`` for a benchmark instance (storage in ``home/storage``); returns its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(_DAGSTER_YAML.format(writer=writer, storage=home / "storage"))
    return path


def code_digest() -> str:
    """A short digest of the etl_assets and etl_assets_demo sources, to tell which code a result came from (others
    may edit it)."""
    digest = hashlib.sha256()
    files = sorted(
        f
        for package in ("etl_assets", "etl_assets_demo")
        for f in (REPO / package).rglob("*")
        if f.suffix in (".py", ".yaml", ".sql") and "__pycache__" not in f.parts
    )
    for f in files:
        digest.update(str(f.relative_to(REPO)).encode())
        digest.update(f.read_bytes())
    return f"{digest.hexdigest()[:12]} ({len(files)} files)"


def step_failure_message(event: DagsterEvent) -> str:
    """The error message of a step-failure event (stripped), as a benchmark reports it."""
    error = event.step_failure_data.error
    return error.message.strip() if error is not None else "(no error recorded)"


def progress(total: int, title: str, unit: str = "runs") -> Progress:
    """The CLI's progress reporter (:class:`etl_assets.cli.progress.Progress`) for a benchmark's measured runs: call
    ``finished`` as each run ends, outside its timing. It writes to standard error, one line per finished run,
    flushed at once, so standard output keeps the benchmark's own lines and tables unchanged. The rich bar is drawn
    only when standard output and standard error are both a terminal: while it is drawn, ``print`` goes through its
    console, which would send a table meant for standard output to standard error.

    Imported here, when a benchmark starts reporting, so that a benchmark's child processes import nothing more.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # this checkout's etl_assets, as the benchmarks measure it
    from etl_assets.cli.progress import Progress

    terminal = sys.stdout.isatty() and sys.stderr.isatty()
    return Progress(total, title, unit=unit, file=sys.stderr, terminal=terminal)


def dlt_python(cache: Path, version: str = DLT_VERSION, extras: tuple[str, ...] = ()) -> Path:
    """The python of a virtualenv holding dlt ``version`` (with pyarrow at the platform's pin) and ``extras`` (pip
    requirements, e.g. ``"connectorx"``), made on first use under ``cache`` with ``uv venv`` + ``uv pip install``.

    dlt is never a dependency of the platform: it lives only in this virtualenv, where the platform is not
    importable, and a benchmark runs it there in a child process.
    """
    name = f"dlt-{version}-pyarrow-{PYARROW}"
    if extras:
        name += "-" + hashlib.sha256("\n".join(sorted(extras)).encode()).hexdigest()[:8]
    venv = cache / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "--quiet",
                "--python",
                str(python),
                f"dlt=={version}",
                f"pyarrow=={PYARROW}",
                *extras,
            ],
            check=True,
        )
        marker.write_text("\n".join([f"dlt=={version}", f"pyarrow=={PYARROW}", *extras]) + "\n")
    return python
