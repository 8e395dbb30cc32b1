"""Protects that stopping `make dev` stops everything it started: the webserver, the daemon and the code servers,
however it is stopped (``make`` itself killed, or SIGTERM/SIGHUP to `etl-assets dev`), and the port is free after.
The real `make dev` on a free port with a temporary DAGSTER_HOME; processes found through /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from etl_assets_tests.webserver import REPO

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

STARTUP_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, int]:
    """``{pid: parent pid}`` of every process now."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(root: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.parametrize("how", ["kill make", "SIGTERM etl-assets dev", "SIGHUP etl-assets dev"])
def test_stopping_make_dev_stops_the_webserver_and_daemon(tmp_path, how):
    home = tmp_path / "home"
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "ETL_DATA_DIR": str(tmp_path / "data")}
    make = subprocess.Popen(
        ["make", "dev", f"DEV_PORT={port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "dev.log").open("w"),
        start_new_session=True,
    )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert make.poll() is None, (tmp_path / "dev.log").read_text()
            assert time.monotonic() < deadline, f"make dev did not answer in time\n{(tmp_path / 'dev.log').read_text()}"
            time.sleep(1)
        started = _descendants(make.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in started}
        assert any("dagster_webserver" in c for c in commands.values()), commands
        assert any("dagster._daemon" in c for c in commands.values()), commands
        launcher = next(pid for pid, c in commands.items() if "etl-assets dev" in c)

        if how == "kill make":
            make.kill()  # make forwards nothing; the launcher hears of it from the kernel
        else:
            os.kill(launcher, signal.SIGTERM if "SIGTERM" in how else signal.SIGHUP)

        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {pid: commands[pid][:120] for pid in _alive(started)}
        assert not left, f"still running {STOP_TIMEOUT:.0f} s after '{how}': {left}"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    finally:
        # whatever is left (the launcher runs `dg dev` in a group of its own), found again as the test ends
        for pid in _alive(started | _descendants(make.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if make.poll() is None:
            make.kill()
        make.wait(timeout=10)
