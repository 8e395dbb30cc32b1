"""A request rate shared by every process of one host that calls the same API connection.

Each connection with ``requests_per_second`` has a small file under ``$ETL_DATA_DIR/.rate_limits/``; it holds the
time of the next free request slot. A caller takes the slot under an exclusive ``fcntl`` lock, moves it on by
``1 / requests_per_second`` and sleeps (outside the lock) until its slot comes: a token bucket of one token, so
requests are spaced evenly and runs started together do not burst past the API's limit.

Per host only: the lock is a local file lock, so workers on several hosts (Celery, Kubernetes) each get the whole
rate. Give each host its share (the rate divided by the hosts) where the API's limit is per account.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path

from etl_assets.settings import current_settings

# A slot further ahead than this is a wall clock that went back (the file holds wall-clock times, as monotonic clocks
# are not comparable across processes everywhere): it is taken as free, not waited for.
_MAX_AHEAD_SECONDS = 60.0
_SLOT = struct.Struct("<d")


def rate_limit_dir() -> Path:
    """Where the slot files live: ``$ETL_DATA_DIR/.rate_limits``."""
    return current_settings().data_dir / ".rate_limits"


def wait_for_slot(connection: str, requests_per_second: float, directory: Path | None = None) -> float:
    """Block until this process may send its next request to ``connection``; return the seconds waited.

    Args:
        connection: The spec's connection name, an identifier, so a safe file name.
        requests_per_second: The spacing asked for; specs sharing a connection should give the same rate, as each
            caller spaces its own slot by its own rate.
        directory: Where the slot files are (default :func:`rate_limit_dir`).
    """
    interval = 1.0 / requests_per_second
    folder = directory or rate_limit_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / connection, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, _SLOT.size, 0)
        now = time.time()
        slot = _SLOT.unpack(raw)[0] if len(raw) == _SLOT.size else now
        if slot < now or slot > now + _MAX_AHEAD_SECONDS:
            slot = now
        os.pwrite(fd, _SLOT.pack(slot + interval), 0)
    finally:
        os.close(fd)  # releases the lock
    wait = slot - now
    if wait > 0:
        time.sleep(wait)
    return wait
