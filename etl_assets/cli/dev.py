"""`etl-assets dev` (what `make dev` runs): `dg dev` (webserver, daemon and code server) that stops as a whole.

`dg dev` stops its webserver and daemon on Ctrl-C, which a terminal sends to every process of the foreground
group. Stopped any other way (SIGTERM from an IDE or `kill`, SIGHUP when its terminal closes, or `make` itself
being killed) the webserver, the daemon and the code servers were measured here to keep running, port 3000
included. So this launcher runs `dg dev` in a process group of its own and, however it is told to stop, sends that
group the Ctrl-C it would have had, then waits for it; on Linux it also asks the kernel to signal it when its
parent (`make`) dies, so a killed `make dev` stops everything too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

# How long the group has to stop after the Ctrl-C before it is killed.
STOP_TIMEOUT_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _signal_when_parent_dies(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _stop_group(pgid: int, child: subprocess.Popen) -> int:
    """Ctrl-C the group, wait for its leader, then make sure nothing of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGINT)
    try:
        code = child.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        code = -signal.SIGKILL
    # the webserver and daemon have their own shutdown; whatever of the group outlived the leader is killed
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    child.wait()
    return code


def command(args: argparse.Namespace) -> int:
    """Run `dg dev` on ``--host``/``--port`` until it exits or this process is told to stop."""
    dg = Path(sys.executable).parent / "dg"
    argv = [str(dg), "dev", "--host", args.host, "--port", str(args.port)]
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    _signal_when_parent_dies(signal.SIGTERM)
    child = subprocess.Popen(argv, env=env, start_new_session=True)
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        return child.wait()
    except KeyboardInterrupt:
        name = signal.Signals(stopping[-1]).name if stopping else "SIGINT"
        print(f"etl-assets dev: {name}: stopping the webserver, daemon and code servers", file=sys.stderr)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        _stop_group(child.pid, child)
        return 0
