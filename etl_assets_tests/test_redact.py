"""Secrets are never stored: no password of a connection URL and no bearer token ends in Dagster's event log, in
metadata, in ``ops.errors``, in an alert (file and webhook) or on the console, whatever the source answers.

Real parts only: a real Postgres (``postgres_url``) with a role created for the test (and dropped after it), SQL
pipelines failing through real Dagster materializations (a refused connection, URLs that libpq would misparse and
quote back, a missing table) and succeeding, an HTTP server on loopback that echoes the bearer token in its error
bodies, the real run-failure sensor writing ``ops.errors`` and alerts. Each secret is then looked for in every
event record, every run, every alert line, every ``ops.errors`` row, the console output, and the raw bytes of every
file under ``DAGSTER_HOME`` and ``ETL_DATA_DIR``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import duckdb
import pytest
from dagster import DagsterInstance, Definitions, build_sensor_context, instance_for_test
from dagster._serdes import serialize_value

from etl_assets.errors import PermanentSourceError, TransientSourceError
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets.pipelines.spec import SqlSource
from etl_assets.redact import redact, userinfo_needs_encoding
from etl_assets.resources.sql import SqlDatabaseSource
from etl_assets_tests.recorder import Recorder
from etl_assets_tests.specs import column, definitions_for, pipeline

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def spellings(secret: str) -> list[str]:
    return sorted({secret, quote(secret, safe=""), quote_plus(secret)})


@dataclass
class Lab:
    instance: DagsterInstance
    defs: Definitions
    home: Path
    data: Path
    webhook: Recorder
    run_cursor: str | None

    def materialize(self, name: str):
        """Run the job of pipeline ``name`` (of the default domain, as the specs here are)."""
        return self.defs.resolve_job_def(pipeline_job_name(Pipeline("default", name))).execute_in_process(
            instance=self.instance, raise_on_error=False, run_config=QUIET
        )

    def alert_failed_runs(self) -> None:
        """Tick the run-failure sensor (records ops.errors, sends alerts) until it has nothing left."""
        sensor = self.defs.resolve_sensor_def("alert_on_run_failure")
        assert self.defs.resources is not None
        resources = {"alerting": self.defs.resources["alerting"], "warehouse": self.defs.resources["warehouse"]}
        cursor = self.run_cursor
        for _ in range(10):
            result = sensor.evaluate_tick(
                build_sensor_context(instance=self.instance, cursor=cursor, resources=resources, definitions=self.defs)
            )
            if result.cursor == cursor:
                break
            cursor = result.cursor
        self.run_cursor = cursor

    def stored_text(self, run_ids: list[str]) -> dict[str, str]:
        """Everything the platform stored or sent about ``run_ids``, by where it was found."""
        out = {}
        for run_id in run_ids:
            out[f"run {run_id}"] = serialize_value(self.instance.get_run_by_id(run_id))
            for n, entry in enumerate(self.instance.all_logs(run_id)):
                out[f"event {run_id} #{n}"] = serialize_value(entry)
        alerts = self.data / "alerts" / "alerts.jsonl"
        out["alerts file"] = alerts.read_text() if alerts.exists() else ""
        out["webhook"] = "\n".join(r["body"].decode() for r in self.webhook.requests)
        with duckdb.connect(str(self.data / "warehouse.duckdb"), read_only=True) as con:
            if con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'ops' AND table_name = 'errors'"
            ).fetchall()[0][0]:
                out["ops.errors"] = json.dumps(con.execute("SELECT * FROM ops.errors").fetchall(), default=str)
        for root in (self.home, self.data):
            for path in root.rglob("*"):
                if path.is_file():
                    out[f"file {path}"] = path.read_bytes().decode("latin-1")
        return out


def chain_text(exc: BaseException | None) -> str:
    """An exception's message and those of its causes, as a traceback would show them."""
    chain = []
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(chain)


def assert_nowhere(stored: dict[str, str], secrets: list[str]) -> None:
    for secret in secrets:
        for spelled in spellings(secret):
            found = [where for where, text in stored.items() if spelled in text]
            if found:
                text = stored[found[0]]
                at = text.index(spelled)
                pytest.fail(f"{spelled!r} stored in {found[:5]}; first: ...{text[max(0, at - 200) : at + 60]!r}...")


@pytest.fixture
def pg_role(postgres_url: str, pg_schema: str) -> Iterator[tuple[str, str]]:
    """A login role with a password that can read ``<pg_schema>.items`` (3 rows); dropped afterwards. (The test
    server trusts loopback connections, so a wrong password is not refused: the failures below are others.)"""
    import psycopg
    from psycopg import sql

    # the password holds characters a URL reserves: the good URL carries it percent-encoded
    role, password = f"etl_secret_{uuid.uuid4().hex[:8]}", f"Pw{uuid.uuid4().hex[:14]}@/#x"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        items = sql.Identifier(pg_schema, "items")
        conn.execute(sql.SQL("CREATE TABLE {} (id BIGINT, name TEXT)").format(items))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b'), (3, 'c')").format(items))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(pg_schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(items, sql.Identifier(role)))
    yield role, password
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


class EchoApi:
    """An API on loopback that answers every request with ``status`` and a body echoing the credentials it got."""

    def __init__(self, status: int):
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("Authorization", "")
                api.requests.append({"path": self.path, "authorization": auth})
                body = json.dumps(
                    {"error": "token rejected", "you_sent": auth, "token": auth.removeprefix("Bearer ")}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lab_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Builds the code location over exactly the given specs, with a real instance, a webhook and the run-failure cursor set."""
    stack = []

    def make(specs: list[dict], env: dict[str, str]) -> Lab:
        data, spec_dir, home = tmp_path / "data", tmp_path / "specs", tmp_path / "home"
        for d in (data, spec_dir, home):
            d.mkdir()
        webhook = Recorder().__enter__()
        stack.append(webhook.__exit__)
        monkeypatch.setenv("ETL_DATA_DIR", str(data))
        monkeypatch.delenv("ETL_ENV", raising=False)
        monkeypatch.delenv("ETL_ALERT_FILE", raising=False)
        monkeypatch.setenv("ETL_ALERT_WEBHOOK_URL", f"{webhook.url}/hook")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        context = instance_for_test(temp_dir=str(home))
        instance = context.__enter__()
        stack.append(lambda *exc: context.__exit__(None, None, None))
        defs = definitions_for(spec_dir, *specs)
        lab = Lab(instance, defs, home, data, webhook, "")
        assert defs.resources is not None
        lab.run_cursor = (
            defs.resolve_sensor_def("alert_on_run_failure")
            .evaluate_tick(
                build_sensor_context(
                    instance=instance,
                    cursor=None,
                    definitions=defs,
                    resources={"alerting": defs.resources["alerting"], "warehouse": defs.resources["warehouse"]},
                )
            )
            .cursor
        )
        return lab

    yield make
    for close in reversed(stack):
        close(None, None, None)


def _vault_spec(table: str) -> list[dict]:
    """Two pipelines on the connection ``vault_db``: one reading ``table``, one a table that does not exist."""

    def vault(name: str, table: str, columns: list[dict]) -> dict:
        source = {
            "kind": "sql",
            "connection": "vault_db",
            "default_url": "sqlite:///{data_dir}/none.sqlite",
            "table": table,
        }
        return pipeline(name, columns, source=source, retry={"max_retries": 0})

    key = column("id", "BIGINT", nullable=False)
    return [vault("vault", table, [key, column("name")]), vault("vault_missing", "no_such_table", [key])]


def _api_spec(name: str, connection: str, url: str, **source) -> dict:
    """A pipeline reading ``/records`` from the API ``connection`` (default URL ``url``), never retried."""
    return pipeline(
        name,
        [column("id", "BIGINT", nullable=False)],
        retry={"max_retries": 0},
        source={"kind": "api", "connection": connection, "default_url": url, "endpoint": "/records", **source},
    )


@pytest.mark.postgres
def test_a_postgres_password_is_stored_nowhere(lab_factory, pg_role, pg_schema, capfd):
    role, password = pg_role
    base = password.removesuffix("@/#x")
    half_a, half_b = base[:8], base[8:]
    good = f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:5432/test"
    lab = lab_factory(_vault_spec(f"{pg_schema}.items"), {"VAULT_DB_URL": good})

    loaded = lab.materialize("vault")  # connects with the percent-encoded password and loads 3 rows
    assert loaded.success
    failures = {
        # a refused connection (wrong port), the password plain in the URL
        "refused": (
            f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:1/test",
            "vault",
            "connection refused",
        ),
        # the URL: a space and a '#' unencoded; libpq would quote "pa ss#..." back
        "spaces": (f"postgresql://{role}:pa ss#{base}@127.0.0.1:5432/test", "vault", "percent-encode"),
        # a '/' unencoded: libpq takes the first half for a port and quotes it back
        "slash": (f"postgresql://{role}:{half_a}/{half_b}@127.0.0.1:5432/test", "vault", "percent-encode"),
        # an '@' unencoded: libpq takes the second half for the host and quotes it back
        "at": (f"postgresql://{role}:{half_a}@{half_b}@127.0.0.1:5432/test", "vault", "percent-encode"),
        # connected (the good URL), then a missing table: the driver's own error
        "no table": (good, "vault_missing", "no_such_table"),
    }
    runs = {}
    for name, (url, failing, _) in failures.items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VAULT_DB_URL", url)
            runs[name] = lab.materialize(failing)
        assert not runs[name].success, name
    lab.alert_failed_runs()

    with duckdb.connect(str(lab.data / "warehouse.duckdb"), read_only=True) as con:
        rows = dict(con.execute("SELECT run_id, message FROM ops.errors").fetchall())
        assert con.execute('SELECT count(*) FROM "default".vault').fetchall() == [(3,)]
    for name, (_, _, words) in failures.items():
        assert words in rows[runs[name].run_id], (name, rows[runs[name].run_id])
    alerts = [json.loads(line) for line in (lab.data / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert sorted(a["run_id"] for a in alerts) == sorted(r.run_id for r in runs.values())
    assert len(lab.webhook.requests) == len(runs)

    stored = lab.stored_text([loaded.run_id, *(r.run_id for r in runs.values())])
    stored["console"] = "".join(capfd.readouterr())
    assert_nowhere(stored, [password, base, half_a, half_b, "pa ss"])


@pytest.mark.slow
def test_a_bearer_token_echoed_by_the_api_is_stored_nowhere(lab_factory, capfd):
    token = f"tok-{uuid.uuid4().hex}"
    refusing, failing = EchoApi(401), EchoApi(503)
    try:
        specs = [
            _api_spec("echoed", "shop_api", refusing.url, auth="bearer"),
            _api_spec("flaky_echo", "flaky_echo_api", failing.url, auth="bearer"),
        ]
        lab = lab_factory(specs, {"SHOP_API_TOKEN": token, "SHOP_API_URL": refusing.url, "FLAKY_ECHO_API_TOKEN": token})
        refused = lab.materialize("echoed")
        flaky = lab.materialize("flaky_echo")
        assert not refused.success and not flaky.success
        assert refusing.requests and all(r["authorization"] == f"Bearer {token}" for r in refusing.requests)
        assert failing.requests  # the token went out, and came back in each error body
        lab.alert_failed_runs()
    finally:
        refusing.close()
        failing.close()

    with duckdb.connect(str(lab.data / "warehouse.duckdb"), read_only=True) as con:
        rows = dict(con.execute("SELECT run_id, error_class FROM ops.errors").fetchall())
    assert rows == {refused.run_id: "permanent", flaky.run_id: "transient"}
    stored = lab.stored_text([refused.run_id, flaky.run_id])
    stored["console"] = "".join(capfd.readouterr())
    assert_nowhere(stored, [token, token.removeprefix("tok-")])


@pytest.mark.slow
def test_api_url_credentials_are_not_stored_as_metadata(lab_factory):
    """``http://user:pass@host`` as the API URL: the extract's metadata shows the URL without its userinfo."""
    user_password = f"Up{uuid.uuid4().hex[:12]}"
    api = Recorder(body={"data": [{"id": 1}, {"id": 2}]}).__enter__()
    try:
        host = api.url.removeprefix("http://")
        specs = [
            _api_spec(
                "plain_api", "plain_api", "http://127.0.0.1:1", records_path="data", pagination={"style": "cursor"}
            )
        ]
        lab = lab_factory(specs, {"PLAIN_API_URL": f"http://etl:{user_password}@{host}"})
        result = lab.materialize("plain_api")
    finally:
        api.__exit__()
    assert result.success
    stored = lab.stored_text([result.run_id])
    assert_nowhere(stored, [user_password])


# ---------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "url, needs",
    [
        ("postgresql://u:pa ss#word@host/db", True),
        ("postgresql://u:pa/ss@host/db", True),
        ("postgresql://u:p@ss@host/db", True),
        ("postgresql://u:pa?ss@host/db", True),
        ("postgresql://u:p%zzss@host/db", True),
        ("postgresql://u:p%40ss@host:5432/db", False),
        ("postgresql://u:p:ss@host/db", False),  # ':' in a password is read the same by every parser
        ("postgresql://postgres@127.0.0.1:5432/test", False),
        ("postgresql://host:5432/db?application_name=a@b", False),
        ("sqlite:////tmp/a@b.db", False),
        ("http://user:pass@host/x", False),
    ],
)
def test_userinfo_needing_percent_encoding_is_found(url, needs):
    assert userinfo_needs_encoding(url) is needs


@pytest.mark.parametrize(
    "text, secret",
    [
        ("postgresql://u:pa/ss@host/db failed", "pa/ss"),
        ("postgresql://u:p@ss@host/db failed", "p@ss"),
        ("see 'postgresql://u:hunter22@h/db' now", "hunter22"),
        ("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678"),
        ("password=hunter22&user=u", "hunter22"),
    ],
)
def test_redact_masks_userinfo_passwords_holding_url_delimiters(text, secret):
    assert secret not in redact(text)


def test_sql_errors_never_quote_the_password(tmp_path):
    """Every failure path of the SQL source, without Dagster: the message and its cause chain are clean."""
    password = f"Pw{uuid.uuid4().hex[:10]}"
    a, b = password[:6], password[6:]
    cases = [
        (f"postgresql://u:{a}/{b}@127.0.0.1:5432/test", PermanentSourceError),
        (f"postgresql://u:{a} {b}@127.0.0.1:5432/test", PermanentSourceError),
        (f"postgresql://u:{password}@127.0.0.1:1/test", TransientSourceError),
        (f"mysql://u:{a}/{b}@127.0.0.1:1/db", PermanentSourceError),
        (f"mysql://u:{password}@127.0.0.1:x/db", PermanentSourceError),  # SQLAlchemy cannot parse the port
        (f"nosuchdialect://u:{password}@127.0.0.1/db", PermanentSourceError),
        (f"sqlite://u:{password}@h/{tmp_path}/x.db", PermanentSourceError),
    ]
    for url, error in cases:
        source = SqlDatabaseSource(connection="vault_db", default_url="sqlite:///x", url=url)
        spec = SqlSource(kind="sql", connection="vault_db", default_url="sqlite:///x", table="t")
        with pytest.raises(error) as raised:
            source.extract(spec).read_all()
        text = chain_text(raised.value)
        for secret in (password, a, b):
            assert secret not in text, (url, text)
        assert "vault_db" in str(raised.value)


@pytest.mark.postgres
def test_postgres_target_errors_never_quote_the_password(pg_role):
    """The Postgres target's own connection: a URL libpq would misparse is refused before libpq reads it, and a
    connection failure is told in the target's own words (the message and its cause chain are clean)."""
    from etl_assets.resources.targets import PostgresTarget

    role, password = pg_role
    base = password.removesuffix("@/#x")
    a, b = base[:8], base[8:]
    cases = [
        (f"postgresql://{role}:{a}/{b}@127.0.0.1:5432/test", PermanentSourceError, "percent-encode"),
        (f"postgresql://{role}:{a} {b}@127.0.0.1:5432/test", PermanentSourceError, "percent-encode"),
        (
            f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:1/test",
            TransientSourceError,
            "connection refused",
        ),
        (
            f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:5432/no_such_db_{role}",
            PermanentSourceError,
            "the database does not exist",
        ),
    ]
    for url, error, words in cases:
        with pytest.raises(error) as raised:
            PostgresTarget(url=url)._connect()
        text = chain_text(raised.value)
        assert words in str(raised.value), (url, text)
        for secret in (password, base, a, b):
            for spelled in spellings(secret):
                assert spelled not in text, (url, text)
    with PostgresTarget(url=f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:5432/test")._connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)  # the encoded form connects


@pytest.mark.postgres
def test_postgres_target_load_errors_never_quote_the_password(pg_role, pg_schema: str, tmp_path: Path):
    """The load itself (ADBC's connection, its errors translated to psycopg's classes): a connection failure and an
    error the server reports mid-load are both told without the password, in the message and the cause chain."""
    import psycopg
    import pyarrow as pa

    from etl_assets.lake import LakeStorage
    from etl_assets.resources.targets import PostgresTarget

    role, password = pg_role
    lake = LakeStorage(root=str(tmp_path / "lake"))
    lake.write(["shop", "items"], "2024-01-01", pa.table({"id": pa.array([1], pa.int64())}))
    source = lake.table(["shop", "items"], ["2024-01-01"])
    encoded = quote(password, safe="")
    refused = PostgresTarget(url=f"postgresql://{role}:{encoded}@127.0.0.1:1/test")
    with pytest.raises(TransientSourceError) as connect_failed:
        refused.replace_partition(pg_schema, "loaded", source, "2024-01-01", "run-1")
    # the role may use the schema but not create in it: the server refuses the CREATE TABLE inside the load
    target = PostgresTarget(url=f"postgresql://{role}:{encoded}@127.0.0.1:5432/test")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused_mid_load:
        target.replace_partition(pg_schema, "loaded", source, "2024-01-01", "run-1")
    assert "connection refused" in str(connect_failed.value)
    assert "permission denied" in str(refused_mid_load.value)
    for raised in (connect_failed, refused_mid_load):
        text = chain_text(raised.value)
        for spelled in spellings(password):
            assert spelled not in text, text
