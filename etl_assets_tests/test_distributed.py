"""Runs distributed over two hosts with dagster-celery, deployed as deploy/celery/ says: on this machine (the control
host) a code server, the dagster-daemon and the webserver, with deploy/celery/dagster.yaml over a fresh Postgres
database; two Celery workers (deploy/celery/worker.sh), each in its own network namespace with a private
DAGSTER_HOME, data dir and temp dir, reaching Postgres, RabbitMQ (a private vhost), the S3 server (lake, landing
zone and compute logs) and the demo orders API only through the bridge (etl_assets_tests/hosts.py).

A backfill of 20 daily partitions of an API pipeline that loads into Postgres is launched the way the UI does
(GraphQL, handled by the daemon's backfill loop: one run per partition). The test asserts that:

* each worker host passes `etl-assets check-deployment` with its own environment (but for the packaged shop
  pipelines, which load into DuckDB and are set aside in a distributed deployment);
* runs execute on both hosts: the pid Dagster's run worker logs is, for the kernel, inside that host's namespace,
  and the Celery result backend names that host's worker for the run's task;
* a worker SIGKILLed while a run of it is inside its Postgres load transaction is noticed (run monitoring asks the
  launcher, which finds no worker executing the task), the run is marked failed and run retries run it again, from
  failure, on the surviving host, where it succeeds;
* the Postgres table then equals the source exactly: per partition the same count, distinct keys and sums;
* the API pool (one slot) held across hosts: no two extracts overlapped, and a run waited for the slot while a run
  on the other host held it (the API is held shut at first, so that this happens);
* the compute logs of runs on each worker are read back from S3 through this machine's instance.

It prints what it measured (first-run latency, per-run time, recovery after the kill); docs/celery.md has them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import httpx
import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from psycopg import sql

from etl_assets_demo import DemoApiServer, generate_shop_data
from etl_assets_tests.hosts import Hosts, simulated_hosts
from etl_assets_tests.rabbitmq import private_vhost
from etl_assets_tests.s3server import S3Server, free_port
from etl_assets_tests.specs import column, pipeline, write_spec
from etl_assets_tests.webserver import Webserver

pytestmark = [pytest.mark.slow, pytest.mark.daemon, pytest.mark.postgres]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy" / "celery"
LOCATION = "etl_assets"
PARTITIONS = 20
ORDERS_PER_DAY = 60
START = dt.date(2024, 1, 1)
NAME = "dist_orders"
SCHEMA = "dist"
ASSETS = [[SCHEMA, f"{stage}_{NAME}"] for stage in ("raw", "clean", "quarantine", "postgres")]
EXTRACT_STEP = f"{SCHEMA}__raw_{NAME}"
POOL = "api_dist_api"
HOSTS = ("a", "b")
VICTIM = "a"
# the victim is killed when about this many partitions are left, which the survivor then runs alone
RUNS_AFTER_KILL = 4
STARTUP_TIMEOUT = 120.0
TIMEOUT = 240.0
GATE_MAX_SECONDS = 120.0
BACKFILL_TAG = "dagster/backfill"
# what each host has of its own; the rest of the environment is the same on every host
HOST_PRIVATE = ("DAGSTER_HOME", "ETL_DATA_DIR", "TMPDIR", "ETL_COMPUTE_LOG_DIR")
_STARTED_PID = re.compile(r"Started process for run \(pid: (\d+)\)")

SPEC = pipeline(
    NAME,
    domain=SCHEMA,
    description="Orders from the demo API, loaded into Postgres by workers on several hosts.",
    source={
        "kind": "api",
        "connection": "dist_api",
        "default_url": "http://127.0.0.1:9",
        "endpoint": "/orders",
        "pagination": {"style": "cursor", "page_size": 25},
        "window_params": ["ordered_from", "ordered_to"],
        "timeout_seconds": 20,
    },
    partitions={"type": "daily", "start": START.isoformat(), "column": "ordered_at"},
    columns=[
        column("order_id", "BIGINT", nullable=False),
        column("customer_id", "BIGINT", nullable=False),
        column("product_id", "BIGINT", nullable=False),
        column("quantity", "INTEGER", nullable=False),
        column("unit_price", "DECIMAL(12,2)", nullable=False),
        column("currency", "VARCHAR", nullable=False),
        column("status", "VARCHAR", nullable=False),
        column("ordered_at", "TIMESTAMPTZ", nullable=False),
        column("updated_at", "TIMESTAMPTZ", nullable=False),
    ],
    primary_key=["order_id"],
    targets=["postgres"],
    retry={"max_retries": 2, "delay_seconds": 1},
)

LAUNCH = """
mutation Launch($partitions: [String!], $assets: [AssetKeyInput!]) {
  launchPartitionBackfill(backfillParams: {partitionNames: $partitions, assetSelection: $assets}) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


class GatedApi:
    """A loopback proxy in front of the demo API that holds every request until :meth:`open`. Shut at first, it
    keeps the first run that takes the API pool on its slot, so that the other host's run waits for it."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.gate = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                gate.gate.wait(GATE_MAX_SECONDS)
                answer = httpx.get(gate.upstream + self.path, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a client killed with its host hangs up
                    self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = ("127.0.0.1", self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Deployment:
    """The distributed deployment under test: hosts, the control host's environment and processes, the services."""

    hosts: Hosts
    env: dict[str, str]
    workdir: Path
    orders_path: Path
    target_url: str
    api: GatedApi
    webserver: Webserver | None = None
    logs: dict[str, Path] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(self.env["DAGSTER_HOME"])

    def start(self, key: str, argv: list[str]) -> subprocess.Popen:
        """Start a control-host process (its own process group, output in ``<key>.log``)."""
        self.logs[key] = self.workdir / f"{key}.log"
        with open(self.logs[key], "ab") as log:
            process = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def tails(self, lines: int = 30) -> str:
        parts = []
        for key, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- {key} ({path}) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
            process.wait(timeout=10)


def wait_for(what: str, predicate: Callable[[], object], timeout: float, deployment: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{deployment.tails()}", pytrace=False)


@contextlib.contextmanager
def fresh_database(postgres_url: str) -> Iterator[str]:
    """A fresh Postgres database (Dagster's storage, the Celery result backend, the target), dropped after."""
    name = f"etl_dist_{os.urandom(4).hex()}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as name:
        yield name


def _base_env() -> dict[str, str]:
    """This process's environment without the platform's, Dagster's and AWS's variables (each host sets its own)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETL_", "DAGSTER_", "AWS_", "SHOP_")) and k not in ("TMPDIR", "PYTHONPATH")
    }


def _host_env(root: Path, shared: dict[str, str]) -> dict[str, str]:
    """One host's environment: the shared settings, and its own DAGSTER_HOME (holding deploy/celery/dagster.yaml),
    data dir, temp dir and compute-log staging dir under ``root``."""
    dirs = {
        "DAGSTER_HOME": root / "dagster_home",
        "ETL_DATA_DIR": root / "data",
        "TMPDIR": root / "tmp",
        "ETL_COMPUTE_LOG_DIR": root / "compute_logs",
    }
    for path in dirs.values():
        path.mkdir(parents=True)
    shutil.copy(DEPLOY / "dagster.yaml", dirs["DAGSTER_HOME"] / "dagster.yaml")
    return {**_base_env(), **shared, **{k: str(v) for k, v in dirs.items()}}


def worker_node(host: str) -> str:
    """The Celery node name (before ``@hostname``) of the worker on ``host``."""
    return f"w{host}"


@contextlib.contextmanager
def open_deployment(
    tmp_path: Path,
    database: str,
    postgres_url: str,
    s3_server: S3Server,
    setenv: Callable[[str, str], None],
    host_names: Sequence[str] = HOSTS,
    partitions: int = PARTITIONS,
) -> Iterator[Deployment]:
    """Everything but the workers, which the caller starts: ``partitions`` days of source data, services behind the
    bridge of ``host_names``, the control host's environment (also given to ``setenv``, since this process opens
    the instance as a client on the control host) and its instance's tables. Removed in reverse order whatever
    the outcome."""
    with contextlib.ExitStack() as stack:
        source = generate_shop_data(tmp_path / "source", orders=partitions * ORDERS_PER_DAY, days=partitions)
        vhost = stack.enter_context(private_vhost())
        demo = stack.enter_context(DemoApiServer(source.orders_path))
        api = GatedApi(demo.url)
        stack.callback(api.close)
        hosts = stack.enter_context(simulated_hosts(tmp_path / "hosts", host_names))
        pg, s3 = urlsplit(postgres_url), urlsplit(s3_server.endpoint)
        fwd = hosts.forward(
            {
                "pg": (pg.hostname or "127.0.0.1", pg.port or 5432),
                "mq": ("127.0.0.1", 5672),
                "s3": (s3.hostname or "127.0.0.1", s3.port or 80),
                "api": api.address,
            }
        )
        (pg_host, pg_port), user = fwd["pg"], pg.username or "postgres"
        bucket = s3_server.new_bucket("etl-dist")
        specs = tmp_path / "specs"  # part of the code, like the image every host runs
        write_spec(specs, SPEC)
        shared = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "DAGSTER_PG_USER": user,
            "DAGSTER_PG_PASSWORD": pg.password or "",
            "DAGSTER_PG_HOST": pg_host,
            "DAGSTER_PG_PORT": str(pg_port),
            "DAGSTER_PG_DB": database,
            "ETL_CELERY_BROKER_URL": vhost.url(*fwd["mq"]),
            "ETL_CELERY_BACKEND_URL": f"db+postgresql+psycopg2://{user}@{pg_host}:{pg_port}/{database}",
            "ETL_COMPUTE_LOG_BUCKET": bucket,
            "ETL_COMPUTE_LOG_PREFIX": "dagster/compute-logs",
            **s3_server.env(),
            "AWS_ENDPOINT_URL": f"http://{fwd['s3'][0]}:{fwd['s3'][1]}",
            # lake and landing zone in the object store: a host's disk holds only its caches and scratch files
            "ETL_LAKE_URL": f"s3://{bucket}/lake",
            "ETL_LANDING_URL": f"s3://{bucket}/landing",
            "ETL_PIPELINES_DIR": str(specs),
            "ETL_EXECUTOR": "in_process",  # a worker runs a whole run in its pool process
            # no DuckDB warehouse, no local lake: the packaged shop pipelines (DuckDB targets) are set aside
            "ETL_DEPLOYMENT": "distributed",
            "ETL_POSTGRES_URL": f"postgresql://{user}@{pg_host}:{pg_port}/{database}",
            "DIST_API_URL": f"http://{fwd['api'][0]}:{fwd['api'][1]}",
        }
        env = _host_env(tmp_path / "control", shared)
        for key, value in env.items():
            if key.startswith(("DAGSTER_", "ETL_", "AWS_")):
                setenv(key, value)
        deployment = Deployment(
            hosts=hosts,
            env=env,
            workdir=tmp_path,
            orders_path=source.orders_path,
            target_url=f"postgresql://{user}@{pg.hostname}:{pg.port or 5432}/{database}",
            api=api,
        )
        stack.callback(deployment.stop)
        deployment.instance().dispose()  # creates Dagster's tables once, before several processes race to create them
        yield deployment


@pytest.fixture
def deployment(
    tmp_path: Path, database: str, postgres_url: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    with open_deployment(tmp_path, database, postgres_url, s3_server, monkeypatch.setenv) as deployment:
        yield deployment


def start_control_plane(deployment: Deployment) -> None:
    """One code server for the location, shared by the daemon and the webserver (as in production), all three on
    the control host."""
    grpc_port, web_port = free_port(), free_port()
    workspace = deployment.workdir / "workspace.yaml"
    workspace.write_text(
        json.dumps(
            {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": LOCATION}}]}
        )
    )
    deployment.start(
        "code-server",
        [str(BIN / "dagster"), "code-server", "start", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(grpc_port)],
    )
    health = [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(grpc_port)]
    wait_for(
        "the code server to serve",
        lambda: subprocess.run(health, env=deployment.env, capture_output=True).returncode == 0,
        STARTUP_TIMEOUT,
        deployment,
    )
    deployment.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
    process = deployment.start(
        "webserver", [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(web_port)]
    )
    home = Path(deployment.env["DAGSTER_HOME"])
    deployment.webserver = Webserver(port=web_port, process=process, home=home, log_path=deployment.logs["webserver"])


def start_workers(deployment: Deployment, victim: str | None = VICTIM, check: bool = True) -> None:
    """On each host, `etl-assets check-deployment` (every check passes but the packaged DuckDB pipelines'; unless
    ``check`` is false), then deploy/celery/worker.sh with concurrency 1. The victim, if any, also gets the test-only
    pause in the load (off while its release file exists): once the file is removed, its next load waits inside its
    Postgres transaction, where the test kills the host."""
    hosts = deployment.hosts
    names = list(hosts.hosts)
    shared = {k: v for k, v in deployment.env.items() if k not in HOST_PRIVATE}
    envs, checks = {}, {}
    for name in names:
        root = hosts[name].root
        envs[name] = env = _host_env(root, shared)
        if name == victim:
            (root / "release").touch()
            env["ETL_TEST_PAUSE_IN_LOAD_SECONDS"] = "120"
            env["ETL_TEST_PAUSE_RELEASE_FILE"] = str(root / "release")
        if check:
            checks[name] = root / "check-deployment.log"
            hosts.spawn(name, [str(BIN / "etl-assets"), "check-deployment"], env, checks[name], cwd=REPO)
    for name in names:
        if check:
            hosts[name].processes[-1].wait(timeout=STARTUP_TIMEOUT)
            report = checks[name].read_text()
            # the one failure is the packaged shop domain's DuckDB pipelines, which this deployment sets aside
            failed = [line for line in report.splitlines() if line.startswith("FAIL")]
            assert len(failed) == 1 and failed[0].startswith("FAIL warehouse") and f"{NAME} (" not in failed[0], report
            assert "OK   run launcher: MonitoredCeleryRunLauncher" in report, report
        log = deployment.workdir / f"worker-{name}.log"
        deployment.logs[f"worker-{name}"] = log
        hosts.spawn(name, [str(DEPLOY / "worker.sh"), worker_node(name), "1"], envs[name], log, cwd=REPO)


def celery_app(deployment: Deployment):
    """A Celery client of the deployment's broker and result backend, to read what the workers recorded."""
    from celery import Celery

    env = deployment.env
    app = Celery("etl-test", broker=env["ETL_CELERY_BROKER_URL"], backend=env["ETL_CELERY_BACKEND_URL"])
    app.conf.result_extended = True  # the workers store extended results; the table's shape depends on it
    return app


@dataclass
class RunFacts:
    """What the event log says about one run (Unix timestamps)."""

    run_id: str
    partition: str
    status: DagsterRunStatus
    parent: str | None
    pid: int | None
    launched: float | None
    started: float | None
    ended: float | None
    extract: tuple[float, float | None] | None
    blocked_at: list[float]
    paused_at: list[float]
    captured: list[str]  # file keys of the run's captured stdout/stderr


def run_facts(instance: DagsterInstance, run_id: str) -> RunFacts:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    pid = launched = started = ended = extract_start = extract_end = None
    blocked, paused, captured = [], [], []
    for entry in instance.all_logs(run_id):
        event, message = entry.dagster_event, entry.message or ""
        if pid is None and (found := _STARTED_PID.search(message)):
            pid = int(found.group(1))  # the first: a redelivered copy of the task logs another, then stops
        if event is None:
            if "ETL_TEST_PAUSE_IN_LOAD_SECONDS" in message:
                paused.append(entry.timestamp)
            continue
        kind = event.event_type
        if kind == DagsterEventType.RUN_STARTING:
            launched = entry.timestamp
        elif kind == DagsterEventType.RUN_START:
            started = entry.timestamp
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            ended = entry.timestamp
        elif event.step_key == EXTRACT_STEP and kind == DagsterEventType.STEP_START:
            extract_start = entry.timestamp
        elif event.step_key == EXTRACT_STEP and kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            extract_end = entry.timestamp
        elif kind == DagsterEventType.ENGINE_EVENT and message.startswith(f"Step blocked by limit for pool {POOL}"):
            blocked.append(entry.timestamp)
        elif kind == DagsterEventType.LOGS_CAPTURED:
            captured.append(event.logs_captured_data.file_key)
    return RunFacts(
        run_id=run_id,
        partition=run.tags.get("dagster/partition") or run.tags["dagster/asset_partition_range_start"],
        status=run.status,
        parent=run.tags.get("dagster/parent_run_id"),
        pid=pid,
        launched=launched,
        started=started,
        ended=ended,
        extract=(extract_start, extract_end) if extract_start is not None else None,
        blocked_at=blocked,
        paused_at=paused,
        captured=captured,
    )


class Observer:
    """The backfill's runs, and which host each ran on: the pid Dagster's run worker logged belongs, for the kernel,
    to one host's network namespace (``ip netns pids``, sampled while the hosts are alive). Reads the event log of
    a run only while it is unfinished, and once more when it has finished."""

    def __init__(self, deployment: Deployment, instance: DagsterInstance, backfill_id: str):
        self.deployment, self.instance, self.backfill_id = deployment, instance, backfill_id
        self.owner: dict[int, str] = {}
        self._final: dict[str, RunFacts] = {}

    def sample(self) -> list[RunFacts]:
        for name in self.deployment.hosts.hosts:
            for pid in self.deployment.hosts.pids(name):
                self.owner[pid] = name
        facts = []
        for run in self.instance.get_runs(RunsFilter(tags={BACKFILL_TAG: self.backfill_id})):
            if run.run_id not in self._final:
                found = run_facts(self.instance, run.run_id)
                if run.is_finished:
                    self._final[run.run_id] = found
                facts.append(found)
            else:
                facts.append(self._final[run.run_id])
        return facts

    def host(self, facts: RunFacts) -> str | None:
        return self.owner.get(facts.pid) if facts.pid is not None else None


def source_by_day(orders_path: Path) -> dict[str, tuple[int, int, int, Decimal]]:
    """Per order date (UTC): rows, distinct order ids, sum of quantities and of unit prices, from the API's file."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            "SELECT strftime(ordered_at, '%Y-%m-%d'), count(*), count(DISTINCT order_id), sum(quantity), "
            "sum(unit_price)::VARCHAR FROM read_parquet(?) GROUP BY 1",
            [str(orders_path)],
        ).fetchall()
    return {day: (n, keys, int(qty), Decimal(price)) for day, n, keys, qty, price in rows}


def target_by_day(url: str) -> dict[str, tuple[int, int, int, Decimal]]:
    """The same figures from the Postgres target, per loaded partition."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT _etl_partition, count(*), count(DISTINCT order_id), sum(quantity), sum(unit_price)::text "
                "FROM {}.{} GROUP BY 1"
            ).format(sql.Identifier(SCHEMA), sql.Identifier(NAME))
        ).fetchall()
    return {day: (n, keys, int(qty), Decimal(price)) for day, n, keys, qty, price in rows}


def _seconds(a: float | None, b: float | None) -> float | None:
    return round(b - a, 1) if a is not None and b is not None else None


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def measurements(
    facts: list[RunFacts], began: float, submitted: float, gate_opened: float, killed_at, victim_run
) -> dict[str, float | None]:
    """The figures docs/celery.md quotes: first-run latency, per-run time, recovery after the kill."""
    ok = [f for f in facts if f.status == DagsterRunStatus.SUCCESS]
    first = min(ok, key=lambda f: f.launched or float("inf"))
    killed = next((f for f in facts if f.run_id == victim_run), None)
    retry = next((f for f in facts if victim_run and f.parent == victim_run), None)
    return {
        "to_backfill_launched_s": _seconds(began, submitted),
        "first_run_launch_to_start_s": _seconds(first.launched, first.started),
        "run_launch_to_end_median_s": _median([d for f in ok if (d := _seconds(f.launched, f.ended)) is not None]),
        "run_start_to_end_median_s": _median([d for f in ok if (d := _seconds(f.started, f.ended)) is not None]),
        "gate_held_s": _seconds(submitted, gate_opened),
        "kill_to_failed_s": _seconds(killed_at, killed.ended if killed else None),
        "kill_to_retry_launched_s": _seconds(killed_at, retry.launched if retry else None),
        "kill_to_retry_succeeded_s": _seconds(killed_at, retry.ended if retry else None),
        "backfill_s": _seconds(submitted, max((f.ended or 0) for f in facts)),
        "total_s": _seconds(began, time.time()),
    }


def test_backfill_spreads_over_two_hosts_and_survives_a_lost_worker(deployment: Deployment):
    began = time.time()
    start_control_plane(deployment)
    start_workers(deployment)
    server = deployment.webserver
    assert server is not None
    server.wait_until_ready(STARTUP_TIMEOUT)
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range(PARTITIONS)]
    launched = server.graphql(LAUNCH, {"partitions": days, "assets": [{"path": p} for p in ASSETS]})
    answer = launched["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    submitted = time.time()
    instance = deployment.instance()
    observer = Observer(deployment, instance, answer["backfillId"])

    # with the API shut, the first run to reach its extract holds the pool's slot (its request waits at the gate),
    # and the other host's run, reaching its extract, is blocked by the pool; then the gate opens
    def contended() -> bool:
        facts = observer.sample()
        return any(f.extract for f in facts) and any(f.blocked_at for f in facts)

    try:
        wait_for("a run to hold the API pool while one on the other host waits", contended, STARTUP_TIMEOUT, deployment)
    finally:
        deployment.api.open()
    gate_opened = time.time()

    release = deployment.hosts[VICTIM].root / "release"
    released_at = killed_at = None
    victim_run = None
    deadline = time.monotonic() + TIMEOUT
    while True:
        facts = observer.sample()
        succeeded = [f for f in facts if f.status == DagsterRunStatus.SUCCESS]
        if released_at is None:
            per_host = [sum(1 for f in succeeded if observer.host(f) == h) for h in HOSTS]
            if len(succeeded) >= PARTITIONS - RUNS_AFTER_KILL and min(per_host) >= 1:
                released_at = time.time()
                release.unlink()  # the victim's next load now waits inside its transaction
        elif killed_at is None:
            held = [f for f in facts if observer.host(f) == VICTIM and any(t > released_at for t in f.paused_at)]
            if held and held[0].status == DagsterRunStatus.STARTED:
                victim_run = held[0].run_id
                deployment.hosts.kill(VICTIM)
                killed_at = time.time()
        elif {f.partition for f in succeeded} >= set(days) and all(
            f.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE) for f in facts
        ):
            break
        if time.monotonic() > deadline:
            runs = ", ".join(f"{f.partition}:{f.status.value}:{observer.host(f)}" for f in facts)
            pytest.fail(
                f"timed out after {TIMEOUT:.0f}s (released {released_at}, killed {killed_at}); runs: {runs}\n"
                + deployment.tails(),
                pytrace=False,
            )
        time.sleep(1)
    finished = time.time()
    facts = observer.sample()
    by_id = {f.run_id: f for f in facts}
    hosts_of = {f.run_id: observer.host(f) for f in facts}
    print("measured:", json.dumps(measurements(facts, began, submitted, gate_opened, killed_at, victim_run)))

    # each run ran on one of the hosts, both ran runs, and Celery's result backend names that host's worker
    assert None not in hosts_of.values(), {f.run_id: f.pid for f in facts if hosts_of[f.run_id] is None}
    assert set(hosts_of.values()) == set(HOSTS)
    app = celery_app(deployment)
    for f in facts:
        if f.status == DagsterRunStatus.SUCCESS:
            run = instance.get_run_by_id(f.run_id)
            assert run is not None
            worker = app.AsyncResult(run.tags["dagster-celery/task_id"]).worker
            assert worker and worker.split("@")[0] == worker_node(str(hosts_of[f.run_id])), (f.run_id, worker)

    # the killed run was failed by run monitoring and retried once, from failure, on the other host
    assert victim_run is not None and killed_at is not None
    killed = by_id[victim_run]
    assert killed.status == DagsterRunStatus.FAILURE and hosts_of[victim_run] == VICTIM
    failure = [e.message for e in instance.all_logs(victim_run, of_type=DagsterEventType.RUN_FAILURE)]
    assert any("no Celery worker is executing" in (m or "") for m in failure), failure
    retries = [f for f in facts if f.parent == victim_run]
    assert len(retries) == 1 and retries[0].status == DagsterRunStatus.SUCCESS, retries
    retry = retries[0]
    assert hosts_of[retry.run_id] != VICTIM and retry.partition == killed.partition
    assert retry.extract is None  # from failure: the extract had succeeded on the lost host, its output is in S3
    # nothing else failed, and each partition has exactly one successful run
    assert [f.run_id for f in facts if f.status != DagsterRunStatus.SUCCESS] == [victim_run]
    assert sorted(f.partition for f in facts if f.status == DagsterRunStatus.SUCCESS) == days

    # the target equals the source: per day the same rows, keys and sums (the killed transaction left nothing)
    assert target_by_day(deployment.target_url) == source_by_day(deployment.orders_path)

    # the API pool held across hosts: extracts never overlapped, and one waited while the other host held the slot
    spans = sorted((f.extract[0], f.extract[1], hosts_of[f.run_id]) for f in facts if f.extract)
    for (_, end, _), (next_start, _, _) in zip(spans, spans[1:]):
        assert end is not None and end <= next_start, spans
    waited_across = [
        t
        for f in facts
        for t in f.blocked_at
        for start, end, host in spans
        if host != hosts_of[f.run_id] and start <= t <= (end or finished)
    ]
    assert waited_across, f"no run waited for the pool while the other host held it: {spans}"

    # compute logs of runs (with every step) on each worker are read back from S3 by the instance on this machine
    manager = instance.compute_log_manager
    for name in HOSTS:
        ran_here = [
            f for f in facts if hosts_of[f.run_id] == name and f.status == DagsterRunStatus.SUCCESS and f.extract
        ]
        assert ran_here and ran_here[0].captured, name
        data = manager.get_log_data(manager.build_log_key_for_run(ran_here[0].run_id, ran_here[0].captured[0]))
        text = (data.stderr or b"").decode(errors="replace") + (data.stdout or b"").decode(errors="replace")
        assert EXTRACT_STEP in text and ran_here[0].run_id in text, text[:2000]
