"""Shared fixtures: isolated data dirs, the demo upstreams on loopback, a real Dagster instance, Postgres, MariaDB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from etl_assets_demo import DemoApiServer, DemoManifest, generate_shop_data
from etl_assets_tests.s3server import S3Server

POSTGRES_URL_ENV = "ETL_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB_URL_ENV = "ETL_TEST_MARIADB_URL"
DEFAULT_MARIADB_URL = "mysql://root@127.0.0.1:3306/test"
SMALL_ORDERS = 1200
SMALL_DAYS = 3


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ETL_DATA_DIR for this test."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("ETL_DATA_DIR", str(path))
    monkeypatch.delenv("ETL_PIPELINES_DIR", raising=False)
    monkeypatch.delenv("ETL_ENV", raising=False)
    return path


@pytest.fixture
def shop_data(data_dir: Path) -> DemoManifest:
    """Small deterministic shop data: API data, the SQLite source and landing files."""
    return generate_shop_data(data_dir, orders=SMALL_ORDERS, days=SMALL_DAYS)


@pytest.fixture
def api_server(shop_data: DemoManifest, monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoApiServer]:
    """The demo orders API on a free loopback port; SHOP_API_URL points at it."""
    with DemoApiServer(shop_data.orders_path) as server:
        monkeypatch.setenv("SHOP_API_URL", server.url)
        yield server


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real Dagster instance with SQLite storage in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that reaches Postgres (through ``postgres_url``) or MariaDB (``mariadb_url``) without the
    ``postgres`` or ``mariadb`` mark, which ``make test-fast`` relies on to leave it out."""
    for fixture, mark, server in (("postgres_url", "postgres", "Postgres"), ("mariadb_url", "mariadb", "MariaDB")):
        unmarked = [
            item.nodeid
            for item in items
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
        ]
        if unmarked:
            raise pytest.UsageError(f"tests using {server} must be marked @pytest.mark.{mark}: " + ", ".join(unmarked))


def _postgres_reachable(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a real Postgres. Skips when none is reachable, unless ETL_REQUIRE_POSTGRES=1 (CI), which fails."""
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    problem = _postgres_reachable(url)
    if problem:
        message = f"Postgres at {url} is not reachable ({problem}); set {POSTGRES_URL_ENV} or start Postgres"
        if os.environ.get("ETL_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


def _mariadb_reachable(url: str) -> str | None:
    import pymysql

    from etl_assets.resources.mysql import connect_kwargs

    try:
        with pymysql.connect(**{**connect_kwargs("test", url), "connect_timeout": 3}) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return None
    except pymysql.err.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    """URL of a real MariaDB (or MySQL). Skips when none is reachable, unless ETL_REQUIRE_MARIADB=1 (CI), which
    fails."""
    url = os.environ.get(MARIADB_URL_ENV, DEFAULT_MARIADB_URL)
    problem = _mariadb_reachable(url)
    if problem:
        message = f"MariaDB at {url} is not reachable ({problem}); set {MARIADB_URL_ENV} or start MariaDB"
        if os.environ.get("ETL_REQUIRE_MARIADB") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh Postgres schema, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto_server) on a free loopback port for the whole session."""
    server = S3Server().start(log=tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on the loopback S3 server; the AWS variables of this test point at the server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.new_bucket()


@pytest.fixture
def defs_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A throw-away defs package on sys.path: (module name, folder)."""
    name = f"sandbox_defs_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return name, folder
