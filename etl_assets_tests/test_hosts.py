"""The simulated hosts of etl_assets_tests/hosts.py: a process in a host reaches a service of this machine only
through the bridge's forwarder, a host's processes die with :meth:`Hosts.kill`, and the namespaces, links,
forwarder and processes are gone after the block, also when it raised. Needs root, like test_distributed.py (marked
slow so that a quick run without root leaves it out)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from etl_assets_tests.hosts import STATE_DIR, simulated_hosts

pytestmark = [pytest.mark.slow]

PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(b"ping"); print("answer", s.recv(16).decode(), flush=True)
except OSError as exc:
    print("refused", type(exc).__name__, flush=True)
"""


def echo_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(conn.recv(16).upper())

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def probe(hosts, name: str, address: str, port: int, log: Path) -> str:
    process = hosts.spawn(name, [sys.executable, "-c", PROBE, address, str(port)], {"PATH": "/usr/bin:/bin"}, log)
    process.wait(timeout=30)
    return log.read_text().strip().splitlines()[-1]


def leftovers(tag: str) -> list[str]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in netns.splitlines() if line.startswith(tag)]
    found += [line.split(":")[1].strip() for line in links.splitlines() if tag in line]
    return found + [str(p) for p in STATE_DIR.glob(f"{tag}*")]


def test_hosts_reach_loopback_services_only_through_the_forwarder(tmp_path: Path):
    server, port = echo_server()
    try:
        with simulated_hosts(tmp_path, ["a", "b"]) as hosts:
            (address, forwarded), tag = hosts.forward({"echo": ("127.0.0.1", port)})["echo"], hosts.tag
            assert probe(hosts, "a", address, forwarded, tmp_path / "a.log") == "answer PING"
            assert probe(hosts, "b", address, forwarded, tmp_path / "b.log") == "answer PING"
            # a host's own loopback has no such service: it is another machine
            assert probe(hosts, "a", "127.0.0.1", port, tmp_path / "a2.log").startswith("refused")
            sleeper = hosts.spawn("b", ["sleep", "300"], {"PATH": "/usr/bin:/bin"}, tmp_path / "sleep.log")
            assert sleeper.pid in hosts.pids("b") and not hosts.pids("a")
            hosts.kill("b")
            assert sleeper.wait(timeout=10) == -9 and not hosts.pids("b")
    finally:
        server.close()
    assert leftovers(tag) == []


def test_everything_is_removed_when_the_test_fails_inside(tmp_path: Path):
    with pytest.raises(RuntimeError, match="the test failed"):
        with simulated_hosts(tmp_path, ["a"]) as hosts:
            tag = hosts.tag
            hosts.forward({"x": ("127.0.0.1", 9)})
            hosts.spawn("a", ["sleep", "300"], {"PATH": "/usr/bin:/bin"}, tmp_path / "sleep.log")
            raise RuntimeError("the test failed")
    assert leftovers(tag) == []
