"""The Dagster UI as a user runs it: ``dagster-webserver`` in a subprocess on 127.0.0.1, over the code location.

Shared by the GraphQL and browser tests. :func:`running_webserver` starts the server with a temporary
``DAGSTER_HOME`` (the repository's ``dagster.yaml`` copied in) and waits, bounded, until it answers;
the ``webserver`` fixture wires it to the ``shop_data`` and ``api_server`` fixtures.

No daemon runs, so the instance gets ``DefaultRunCoordinator``: the instance default is the
``QueuedRunCoordinator``, whose queued runs only the daemon starts (``dagster dev`` runs one). The daemon
would also tick the sensors that are on by default (file arrival, landing archive, ...), which request their
own runs and move landing files while the test's run reads them. With the default coordinator a run
launched from the UI or the GraphQL API starts at once, in a subprocess of the code server, through the
instance's ``DefaultRunLauncher``, and nothing else runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
LOCATION = "etl_assets"
STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0

# Appended to the copied dagster.yaml; see the module docstring.
RUN_COORDINATOR_YAML = """
# Added by etl_assets_tests/webserver.py: no daemon runs in these tests, so runs start without a queue.
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""

LOCATION_STATUS_QUERY = """
query LocationStatus {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      eventConnection(afterCursor: null) {
        events {
          __typename
          ... on MessageEvent { message stepKey }
          ... on ErrorEvent { error { message } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Webserver:
    """A running ``dagster-webserver``: its address, process and logs."""

    port: int
    process: subprocess.Popen
    home: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        """The end of the webserver's stderr (stdout is merged into it): Dagster logs there."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no webserver log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> NoReturn:
        pytest.fail(f"{message}\n--- dagster-webserver stderr (last lines) ---\n{self.log_tail()}", pytrace=False)

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        """POST a query to ``/graphql`` the way any HTTP client would; returns ``data`` (fails on ``errors``)."""
        try:
            response = httpx.post(
                f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
            )
        except httpx.HTTPError as exc:
            self.fail(f"POST /graphql failed: {exc!r}")
        if response.status_code != 200:
            self.fail(f"POST /graphql answered {response.status_code}: {response.text[:2000]}")
        body = response.json()
        if body.get("errors"):
            self.fail(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def run_report(self, run_id: str, last: int = 25) -> str:
        """Why a run did not succeed: its failure messages and last events, read back through GraphQL."""
        try:
            response = httpx.post(
                f"{self.url}/graphql", timeout=30, json={"query": RUN_EVENTS_QUERY, "variables": {"runId": run_id}}
            )
            run = response.json()["data"]["runOrError"]
        except Exception as exc:  # a diagnostic: never hide the original failure behind this one
            return f"(could not read the run's events: {exc!r})"
        if run["__typename"] != "Run":
            return f"(run {run_id}: {run})"
        lines = [f"run {run_id} status {run['status']}"]
        for event in run["eventConnection"]["events"][-last:]:
            error = event.get("error")
            text = event.get("message") or ""
            if error:
                text += f" | {error['message'].strip()}"
            lines.append(f"  {event['__typename']} {event.get('stepKey') or '-'}: {text}")
        return "\n".join(lines)

    def wait_until_ready(self, timeout: float) -> None:
        """Until ``/server_info`` answers and the code location has loaded (a query can see the job)."""
        deadline = time.monotonic() + timeout
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"dagster-webserver exited with code {self.process.returncode} while starting")
            try:
                info = httpx.get(f"{self.url}/server_info", timeout=5)
                if info.status_code == 200:
                    status = httpx.post(f"{self.url}/graphql", timeout=10, json={"query": LOCATION_STATUS_QUERY})
                    entries = status.json()["data"]["workspaceOrError"]["locationEntries"]
                    states = {e["name"]: e["loadStatus"] for e in entries}
                    errors = [
                        e["locationOrLoadError"]
                        for e in entries
                        if (e.get("locationOrLoadError") or {}).get("__typename") == "PythonError"
                    ]
                    if errors:
                        self.fail(f"the code location failed to load: {errors[0].get('message')}")
                    if states.get(LOCATION) == "LOADED":
                        return
                    last_problem = f"code locations: {states}"
                else:
                    last_problem = f"/server_info answered {info.status_code}"
            except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                last_problem = repr(exc)
            time.sleep(0.5)
        self.fail(f"dagster-webserver at {self.url} not ready within {timeout:.0f}s ({last_problem})")


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the server's process group (webserver, its code server, run workers), SIGKILL it if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # The group outlives its leader when children ignore SIGTERM; make sure none is left.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=10)


@contextmanager
def running_webserver(
    workdir: Path, env: dict[str, str], timeout: float = STARTUP_TIMEOUT, pipelines_dir: Path | None = None
) -> Iterator[Webserver]:
    """``dagster-webserver -h 127.0.0.1 -p <free port> -m etl_assets`` in the repository, with a fresh
    ``DAGSTER_HOME`` under ``workdir``; ready when entered, its whole process group stopped on exit.

    Args:
        workdir: Holds ``dagster_home/`` and the server's log.
        env: Extra environment (``ETL_DATA_DIR``, ``SHOP_API_URL``, ...) over this process's environment.
        timeout: How long the server may take to answer and load the code location.
        pipelines_dir: A folder of the user's pipeline specs (``ETL_PIPELINES_DIR``), next to the packaged ones;
            without it the server gets none, whatever this process's environment says.
    """
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with open(home / "dagster.yaml", "a") as config:
        config.write(RUN_COORDINATOR_YAML)
    full_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    full_env.pop("ETL_PIPELINES_DIR", None)
    if pipelines_dir is not None:
        full_env["ETL_PIPELINES_DIR"] = str(pipelines_dir)
    log_path = workdir / "dagster-webserver.log"
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(BIN / "dagster-webserver"),
                "-h",
                HOST,
                "-p",
                str(port),
                "-m",
                LOCATION,
            ],
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches the code server and runs too
        )
    server = Webserver(port=port, process=process, home=home, log_path=log_path)
    try:
        server.wait_until_ready(timeout)
        yield server
    finally:
        _stop(process)


@pytest.fixture(name="webserver")
def webserver_fixture(tmp_path: Path, data_dir: Path, shop_data, api_server) -> Iterator[Webserver]:
    """The UI over the demo shop data, with the demo orders API serving on loopback.

    A test module gets it as ``webserver`` by importing ``webserver_fixture``."""
    env = {"ETL_DATA_DIR": str(data_dir), "SHOP_API_URL": api_server.url}
    with running_webserver(tmp_path, env) as server:
        yield server
