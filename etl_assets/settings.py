"""Environment switches (``ETL_ENV``, ``ETL_DEPLOYMENT``) and paths, read at call time (inside resources), never at
import time; and the rules of a distributed deployment (no DuckDB warehouse, no local lake)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from etl_assets.redact import redact
from etl_assets.sqlutil import quote_literal

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

LOCAL = "local"
PRODUCTION = "production"
ENVIRONMENTS = (LOCAL, PRODUCTION)

# Where the work of the deployment runs: one host (the default), or several hosts sharing only Postgres and object
# storage, where anything kept on a local disk (the DuckDB warehouse, a local lake) would be a different one per host.
DEPLOYMENT_ENV = "ETL_DEPLOYMENT"
SINGLE_HOST = "single-host"
DISTRIBUTED = "distributed"
DEPLOYMENTS = (SINGLE_HOST, DISTRIBUTED)
# The variables naming the shared storage of each kind a distributed deployment needs on object storage.
SHARED_STORAGE_ENV = {"lake": "ETL_LAKE_URL", "landing": "ETL_LANDING_URL"}
_STORAGE_NAMES = {"lake": "lake", "landing": "landing zone"}
SHARED_STORAGE_SCHEME = "s3"
# Why a distributed deployment refuses the DuckDB warehouse, and what to do instead: the spec loader (field
# `targets`) and the warehouse resource (a write) say the same.
DUCKDB_WAREHOUSE_REFUSED = (
    f"{DEPLOYMENT_ENV}={DISTRIBUTED} refuses it: the DuckDB warehouse is a file on the disk of the host that runs the"
    " load, and with work spread over hosts each would write a warehouse file of its own, the tables split between them"
)
DUCKDB_WAREHOUSE_FIX = (
    "use `targets: [postgres]` with ETL_POSTGRES_URL set (the warehouse every host shares), or run on one host with"
    f" {DEPLOYMENT_ENV}={SINGLE_HOST}"
)


class SettingsError(ValueError):
    """An environment variable holds a value the platform cannot use."""


class DeploymentRefused(SettingsError):
    """Something this deployment mode does not allow was asked for (the DuckDB warehouse or a local lake on
    several hosts): ``problem``, then ``fix``."""

    error_class = "permanent"  # as monitoring classifies failures (etl_assets.errors): another attempt fails alike

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}. Fix: {fix}.")
        self.problem, self.fix = problem, fix


@dataclass(frozen=True)
class Settings:
    """Where the platform keeps its data and which environment it runs in.

    Attributes:
        env: ``local`` (embedded defaults) or ``production``.
        data_dir: Root of the lake, landing zone, archive and DuckDB warehouse.
    """

    env: str
    data_dir: Path

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"


def current_settings() -> Settings:
    """Read ``ETL_ENV`` and ``ETL_DATA_DIR`` now.

    Raises:
        SettingsError: ``ETL_ENV`` names an unknown environment.
    """
    env = os.environ.get("ETL_ENV", LOCAL).strip().lower() or LOCAL
    if env not in ENVIRONMENTS:
        raise SettingsError(f"ETL_ENV={env!r} is not an environment; set ETL_ENV to one of {', '.join(ENVIRONMENTS)}")
    data_dir = Path(os.environ.get("ETL_DATA_DIR") or "data").expanduser().resolve()
    return Settings(env=env, data_dir=data_dir)


def deployment_mode() -> str:
    """Read ``ETL_DEPLOYMENT`` now: ``single-host`` (the default) or ``distributed``.

    Raises:
        SettingsError: ``ETL_DEPLOYMENT`` names an unknown mode.
    """
    mode = os.environ.get(DEPLOYMENT_ENV, SINGLE_HOST).strip().lower() or SINGLE_HOST
    if mode not in DEPLOYMENTS:
        raise SettingsError(
            f"{DEPLOYMENT_ENV}={mode!r} is not a deployment mode; set {DEPLOYMENT_ENV} to {SINGLE_HOST} (everything on"
            f" one host, the default) or {DISTRIBUTED} (work spread over several hosts)"
        )
    return mode


def is_distributed() -> bool:
    """Whether ``ETL_DEPLOYMENT`` says work runs on several hosts (an unknown value raises ``SettingsError``)."""
    return deployment_mode() == DISTRIBUTED


def require_single_host_warehouse(path: Path) -> None:
    """Refuse writing the DuckDB warehouse file ``path`` in a distributed deployment.

    Raises:
        DeploymentRefused: ``ETL_DEPLOYMENT=distributed``, with the fix.
    """
    if is_distributed():
        raise DeploymentRefused(
            f"the DuckDB warehouse {path} was not opened for writing, as {DUCKDB_WAREHOUSE_REFUSED}",
            DUCKDB_WAREHOUSE_FIX,
        )


def require_shared_storage(kind: str, url: str | None) -> None:
    """Refuse a lake or landing zone on a local disk in a distributed deployment.

    Args:
        kind: ``lake`` or ``landing``.
        url: Where that storage is: the value of ``ETL_LAKE_URL`` / ``ETL_LANDING_URL`` (None or empty when unset,
            which means the local directory under ``ETL_DATA_DIR``).

    Raises:
        DeploymentRefused: ``ETL_DEPLOYMENT=distributed`` and ``url`` is not an ``s3://`` URL, with the fix.
        ValueError: ``kind`` is not a storage kind.
    """
    if kind not in SHARED_STORAGE_ENV:
        raise ValueError(f"{kind!r} is not a storage kind; use one of {', '.join(SHARED_STORAGE_ENV)}")
    if not is_distributed() or is_object_storage(url):
        return
    name, what = SHARED_STORAGE_ENV[kind], _STORAGE_NAMES[kind]
    settings = current_settings()
    local = settings.lake_dir if kind == "lake" else settings.landing_dir
    where = f"{name}={redact(url)!r}" if url else f"{name} is not set, so the {what} is the local directory {local}"
    raise DeploymentRefused(
        f"{DEPLOYMENT_ENV}={DISTRIBUTED} needs the {what} on object storage every host reaches, and {where}: each"
        " host would read and write its own copy",
        f"set {name}=s3://<bucket>/<prefix> (with AWS_ENDPOINT_URL for an S3-compatible server), or run on one host"
        f" with {DEPLOYMENT_ENV}={SINGLE_HOST}",
    )


def is_object_storage(url: str | None) -> bool:
    """Whether ``url`` names a bucket on object storage (``s3://<bucket>[/<prefix>]``)."""
    parts = urlsplit((url or "").strip())
    return parts.scheme.lower() == SHARED_STORAGE_SCHEME and bool(parts.netloc)


def duckdb_connection(
    database: str = ":memory:", read_only: bool = False, allowed_directories: list[Path] | None = None
):
    """A DuckDB connection with the platform's settings: UTC, bounded memory, spilling under the data dir.

    ``ETL_DUCKDB_MEMORY_LIMIT`` (default ``1GB``) caps each connection, so big partitions spill instead of
    growing; ``ETL_DUCKDB_THREADS`` caps threads (default: DuckDB's choice, the core count).

    Args:
        database: The database file, or ``:memory:``.
        read_only: Open the file read-only.
        allowed_directories: When given, the connection's SQL reads and writes files only under these directories
            and its spill directory: DuckDB's external access is turned off, which also refuses every other file,
            URL, ``ATTACH``, ``INSTALL``/``LOAD`` and setting that would turn it back on (``duckdb.PermissionException``
            or ``duckdb.InvalidInputException``). Relations and Arrow data registered from Python still read.
    """
    import duckdb

    settings = current_settings()
    spill = settings.data_dir / ".duckdb_tmp"
    spill.mkdir(parents=True, exist_ok=True)
    config: dict[str, str | bool | int | float | list[str]] = {  # duckdb.connect's config type
        "memory_limit": os.environ.get("ETL_DUCKDB_MEMORY_LIMIT", "1GB"),
        "temp_directory": str(spill),
    }
    if os.environ.get("ETL_DUCKDB_THREADS"):
        config["threads"] = int(os.environ["ETL_DUCKDB_THREADS"])
    if database == ":memory:" and allowed_directories is None:
        con = _shared_memory_database(config).cursor()
        con.execute("SET TimeZone = 'UTC'")
        return con
    con = duckdb.connect(database, read_only=read_only, config=config)
    con.execute("SET TimeZone = 'UTC'")
    if allowed_directories is not None:
        # DuckDB refuses allowed_directories in the connect config next to enable_external_access = false (it applies
        # that first) and any change to it once access is off: the list goes first, as a statement.
        dirs = ", ".join(quote_literal(str(Path(d).resolve())) for d in [*allowed_directories, spill])
        con.execute(f"SET allowed_directories = [{dirs}]")
        con.execute("SET enable_external_access = false")
    return con


# One in-memory DuckDB database per process and configuration, which every in-memory connection is a cursor of.
# duckdb.connect(":memory:") starts a database instance (buffer manager, built-in extensions): 11-16 ms here, four
# times per partition of a run; a cursor is a connection of its own to that database (its own registered relations,
# temporary tables, settings and transactions, nothing shared but the memory limit) for about 5 µs. A confined
# connection (allowed_directories) turns external access off for its whole database, so it always gets its own.
_SHARED: dict[tuple, DuckDBPyConnection] = {}
_SHARED_LOCK = threading.Lock()


def _shared_memory_database(config: dict) -> DuckDBPyConnection:
    import duckdb

    key = (os.getpid(), tuple(sorted(config.items())))  # a forked child never uses its parent's instance
    with _SHARED_LOCK:
        base = _SHARED.get(key)
        if base is None:
            base = _SHARED[key] = duckdb.connect(":memory:", config=config)
        return base


LAKE_URL_ENV = "ETL_LAKE_URL"
LANDING_URL_ENV = "ETL_LANDING_URL"


def lake_url() -> str:
    """Where the lake is: ``$ETL_LAKE_URL`` (a directory, or ``s3://bucket/prefix``), else ``$ETL_DATA_DIR/lake``."""
    return os.environ.get(LAKE_URL_ENV, "").strip() or str(current_settings().lake_dir)


def landing_url() -> str:
    """Where files land: ``$ETL_LANDING_URL`` (a directory, or ``s3://bucket/prefix``), else
    ``$ETL_DATA_DIR/landing``. Loaded files are archived and refused ones quarantined beside it (``archive/``,
    ``quarantine/`` next to the landing directory or prefix)."""
    return os.environ.get(LANDING_URL_ENV, "").strip() or str(current_settings().landing_dir)
