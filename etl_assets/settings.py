"""Environment switch and paths, read at call time (inside resources), never at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from etl_assets.sqlutil import quote_literal

LOCAL = "local"
PRODUCTION = "production"
ENVIRONMENTS = (LOCAL, PRODUCTION)


class SettingsError(ValueError):
    """An environment variable holds a value the platform cannot use."""


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
    con = duckdb.connect(database, read_only=read_only, config=config)
    con.execute("SET TimeZone = 'UTC'")
    if allowed_directories is not None:
        # DuckDB refuses allowed_directories in the connect config next to enable_external_access = false (it applies
        # that first) and any change to it once access is off: the list goes first, as a statement.
        dirs = ", ".join(quote_literal(str(Path(d).resolve())) for d in [*allowed_directories, spill])
        con.execute(f"SET allowed_directories = [{dirs}]")
        con.execute("SET enable_external_access = false")
    return con


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
