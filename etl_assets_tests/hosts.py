"""Several hosts on one machine, for tests of a distributed deployment: Linux network namespaces on a bridge.

Each simulated host is a network namespace (``ip netns add``) joined to a bridge by a veth pair, with an address of
its own on a private /24 and its own directory (its "disk": give each process it runs a DAGSTER_HOME and data dir
under it). A process started in a host (``ip netns exec``) has no loopback services: it reaches the machine's
Postgres, RabbitMQ or S3 server only through the bridge address, where :meth:`Hosts.forward` puts TCP forwarders
(a small asyncio process, :func:`serve_forwarders`) in front of services that listen on 127.0.0.1. Processes on the
machine itself reach the same addresses, so one configuration serves every host. :meth:`Hosts.kill` SIGKILLs every
process of a host, as if it had been lost; :meth:`Hosts.close` (the fixture's finalizer) removes the namespaces,
veths, bridge, forwarders and processes whatever the test's outcome.

Names carry a random suffix (``etl`` + 6 hex digits, at most 15 characters for links), so parallel test runs do not
clash. Needs root and iproute2; :func:`require_namespaces` fails (never skips) with the reason otherwise, since CI
runs as root and must run these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Where each live set of hosts records what it created, so a run killed before its finalizer is swept by the next.
STATE_DIR = Path("/run/etl_assets_tests_hosts")
_PREFIX = "etl"
_FORWARD_READY_TIMEOUT = 30.0


def require_namespaces() -> None:
    """Fail the test, saying why, unless this process can create network namespaces (root and ``ip``)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"the tests run as uid {os.geteuid()}, not root")
    if shutil.which("ip") is None:
        problems.append("iproute2's `ip` is not on PATH")
    if not problems:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        if probe.returncode != 0:
            problems.append(f"`ip netns list` failed: {probe.stderr.strip()}")
    if problems:
        pytest.fail(
            "simulating hosts needs root and iproute2 (network namespaces, veth pairs, a bridge): "
            + "; ".join(problems)
            + ". Run the suite as root (CI does), or leave these tests out with -m 'not slow'.",
            pytrace=False,
        )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-4", "-o", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        for word in line.split():
            if "/" in word and word[0].isdigit():
                nets.append(ipaddress.IPv4Interface(word).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first[0].isdigit():
                nets.append(ipaddress.IPv4Network(first, strict=False))
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.200-254.x.0/24 subnet for the simulated hosts")


@dataclass
class Host:
    """One simulated host: a network namespace, its address on the bridge and its private directory."""

    name: str
    netns: str
    address: str
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)


class Hosts:
    """A bridge with ``count`` hosts on it; see the module docstring.

    Args:
        workdir: Parent of the hosts' private directories (``<workdir>/<name>/``) and of the forwarder's log.
        names: The hosts' names, e.g. ``["a", "b"]`` (letters and digits, at most 2 characters).
    """

    def __init__(self, workdir: Path, names: Sequence[str]):
        if any(not n.isalnum() or len(n) > 2 for n in names) or len(set(names)) != len(names):
            raise ValueError(f"host names must be distinct, alphanumeric, at most 2 characters: {names}")
        self.suffix = secrets.token_hex(3)
        self.tag = f"{_PREFIX}{self.suffix}"
        self.bridge = f"{self.tag}br"
        self.workdir = workdir
        self.hosts: dict[str, Host] = {}
        self._forwarder: subprocess.Popen | None = None
        self._closed = False
        sweep_stale()
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.address = str(addresses[0])
        self._record()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(names, start=1):
                self._add_host(name, str(addresses[i]))
        except BaseException:
            self.close()
            raise

    def _record(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"owner": os.getpid(), "bridge": self.bridge, "netns": [h.netns for h in self.hosts.values()]}
        (STATE_DIR / f"{self.tag}.json").write_text(json.dumps(state))

    def _add_host(self, name: str, address: str) -> None:
        netns = f"{self.tag}{name}"
        outside, inside = f"{netns}h", f"{netns}n"  # _remove() deletes `outside` by this name
        root = self.workdir / name
        root.mkdir(parents=True, exist_ok=True)
        self.hosts[name] = Host(name=name, netns=netns, address=address, root=root)
        _ip("netns", "add", netns)
        self._record()
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", outside, "master", self.bridge, "up")
        _ip("link", "set", inside, "netns", netns)
        _ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def forward(self, upstreams: Mapping[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
        """Listen on the bridge address in front of each ``(host, port)`` of ``upstreams``; returns, by the same
        keys, the ``(bridge address, port)`` every host (and this machine) connects to instead. Call once."""
        if self._forwarder is not None:
            raise RuntimeError("forward() was already called for these hosts")
        spec = json.dumps({key: [host, port] for key, (host, port) in upstreams.items()})
        log = open(self.workdir / "forwarder.log", "ab")
        self._forwarder = subprocess.Popen(
            [sys.executable, "-m", "etl_assets_tests.hosts", "forward", self.address, spec],
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        assert self._forwarder.stdout is not None
        ready, _, _ = select.select([self._forwarder.stdout], [], [], _FORWARD_READY_TIMEOUT)
        line = self._forwarder.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(
                f"the forwarder did not listen within {_FORWARD_READY_TIMEOUT:.0f}s; see {self.workdir / 'forwarder.log'}"
            )
        ports = json.loads(line)
        return {key: (self.address, int(port)) for key, port in ports.items()}

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen:
        """Start ``argv`` inside host ``name`` with exactly ``env`` (stdout and stderr to ``log``)."""
        host = self.hosts[name]
        with open(log, "ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *argv],
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host.processes.append(process)
        return process

    def pids(self, name: str) -> set[int]:
        """Every process now running inside host ``name``, as the kernel sees it."""
        done = _ip("netns", "pids", self.hosts[name].netns, check=False)
        return {int(p) for p in done.stdout.split() if p.isdigit()}

    def kill(self, name: str, timeout: float = 10.0) -> None:
        """SIGKILL every process of host ``name`` (what a lost machine looks like to the others)."""
        _kill_netns(self.hosts[name].netns, timeout)
        for process in self.hosts[name].processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)

    def close(self) -> None:
        """Kill every host's processes and the forwarder; delete namespaces (and with them the veths) and the
        bridge. Safe to call twice; raises at the end if something could not be removed."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for host in self.hosts.values():
            try:
                self.kill(host.name)
            except Exception as exc:  # keep removing the rest
                errors.append(f"killing host {host.name}: {exc}")
        if self._forwarder is not None and self._forwarder.poll() is None:
            self._forwarder.kill()
            self._forwarder.wait(timeout=10)
        errors += _remove(self.bridge, [h.netns for h in self.hosts.values()])
        (STATE_DIR / f"{self.tag}.json").unlink(missing_ok=True)
        if errors:
            raise RuntimeError("could not clean up the simulated hosts: " + "; ".join(errors))


def _kill_netns(netns: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = _ip("netns", "pids", netns, check=False)
        pids = [int(p) for p in done.stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of network namespace {netns} survived SIGKILL")
        time.sleep(0.05)


def _remove(bridge: str, namespaces: Sequence[str]) -> list[str]:
    errors = []
    for netns in namespaces:
        try:
            _kill_netns(netns, 10.0)
        except RuntimeError as exc:
            errors.append(str(exc))
        # the host side of the veth pair first: deleting one end removes both at once, where a namespace's own
        # links go only when the kernel gets round to freeing it
        _ip("link", "del", f"{netns}h", check=False)
        done = _ip("netns", "del", netns, check=False)
        if done.returncode != 0 and "No such file" not in done.stderr:
            errors.append(f"ip netns del {netns}: {done.stderr.strip()}")
    done = _ip("link", "del", bridge, check=False)
    if done.returncode != 0 and "Cannot find device" not in done.stderr:
        errors.append(f"ip link del {bridge}: {done.stderr.strip()}")
    return errors


def sweep_stale() -> None:
    """Remove the hosts left by a test process that died before its finalizer ran (its state file names it)."""
    if not STATE_DIR.is_dir():
        return
    for path in STATE_DIR.glob(f"{_PREFIX}*.json"):
        try:
            state = json.loads(path.read_text())
            os.kill(int(state["owner"]), 0)
            continue  # its owner is alive: not ours to touch
        except ProcessLookupError:
            pass
        except (OSError, ValueError, KeyError):
            continue
        _remove(state["bridge"], state["netns"])
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def simulated_hosts(workdir: Path, names: Sequence[str]) -> Iterator[Hosts]:
    """:class:`Hosts` for the ``with`` block, removed on the way out whatever happened inside."""
    require_namespaces()
    hosts = Hosts(workdir, names)
    try:
        yield hosts
    finally:
        hosts.close()


# --- the forwarder process: `python -m etl_assets_tests.hosts forward LISTEN_ADDRESS '{"key": [host, port]}'` ---


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # either side closing (a process killed, a server ending the session) closes both: a killed client's
        # database session then ends at once, and its transaction is rolled back
        writer.close()


async def _serve(listen: str, upstreams: Mapping[str, tuple[str, int]]) -> None:
    ports = {}
    servers = []
    for key, (host, port) in upstreams.items():

        async def connect(reader, writer, host=host, port=port):
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        server = await asyncio.start_server(connect, listen, 0, backlog=256)
        servers.append(server)
        ports[key] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def serve_forwarders(listen: str, upstreams: Mapping[str, tuple[str, int]]) -> None:
    """Forward TCP from a free port on ``listen`` to each upstream until killed; prints ``{key: port}`` first."""
    asyncio.run(_serve(listen, upstreams))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "forward":
        sys.exit("usage: python -m etl_assets_tests.hosts forward LISTEN_ADDRESS '{\"key\": [host, port], ...}'")
    serve_forwarders(sys.argv[2], {k: (h, int(p)) for k, (h, p) in json.loads(sys.argv[3]).items()})
