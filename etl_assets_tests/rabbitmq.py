"""A private RabbitMQ virtual host for one test: its own queues and user on the machine's broker, removed after.

Celery workers take any task from their queue (``dagster``) in their virtual host, so two test runs (or a developer's
workers) sharing ``/`` would take each other's runs. ``rabbitmqctl`` (root, on the broker's machine) creates the
vhost and a user allowed only there; RabbitMQ's ``guest`` may connect from loopback only, and a dedicated user has
no such limit.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Vhost:
    name: str
    user: str
    password: str

    def url(self, host: str, port: int) -> str:
        """The broker URL for Celery (py-amqp) at ``host:port``."""
        return f"pyamqp://{self.user}:{self.password}@{host}:{port}/{self.name}"


def _ctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed ({done.returncode}): {done.stderr.strip()}")


@contextmanager
def private_vhost(prefix: str = "etl") -> Iterator[Vhost]:
    """A new vhost and user (``<prefix>_<hex>``) with every permission on that vhost only; both deleted on exit.
    Fails the test when ``rabbitmqctl`` is missing or refuses."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH: these tests need the machine's RabbitMQ and its CLI (as root)")
    name = f"{prefix}_{secrets.token_hex(4)}"
    vhost = Vhost(name=name, user=name, password=secrets.token_hex(12))
    try:
        _ctl("add_vhost", name)
        _ctl("add_user", name, vhost.password)
        _ctl("set_permissions", "-p", name, name, ".*", ".*", ".*")
    except RuntimeError as exc:
        _cleanup(vhost)
        pytest.fail(f"could not create RabbitMQ vhost {name}: {exc}")
    try:
        yield vhost
    finally:
        _cleanup(vhost)


def _cleanup(vhost: Vhost) -> None:
    for args in (("delete_vhost", vhost.name), ("delete_user", vhost.user)):
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=120)
