"""SQL database source. Any SQLAlchemy URL for small sources; Postgres through ADBC and MySQL/MariaDB through PyMySQL,
streamed as typed Arrow batches.

ADBC was chosen for Postgres after measuring (``benchmarks/pg_extract.py``): it streams record batches with
bounded memory and keeps Postgres types (numeric as exact decimal text). It streams only queries without bind
parameters (those go through binary COPY), so a window's bounds are passed as session settings. connectorx is
about as fast; its ``return_type="arrow"`` loads the whole result first, its ``"arrow_stream"`` streams but
turns int4 into int64 and numeric(p,s) into decimal128(38,10). ``COPY ... TO STDOUT`` as CSV needs every type
re-declared for the parse and was two to three times slower.

MySQL/MariaDB (``mysql://``, ``mariadb://``, either with ``+pymysql``) go through PyMySQL's unbuffered cursor with
its converters off, each chunk of text values cast to the column's Arrow type by Arrow (``resources/mysql.py``).
Measured (``benchmarks/mysql_extract.py``, MariaDB 10.11, 1 M rows x 7 columns, 2 shared cores, median of 3): this
path 8.9 s wall / 8.3 s CPU / 377 MB; PyMySQL building ``Decimal``/``datetime`` objects 16.3 s; mysqlclient's C
parser, text cast the same way, 7.5 s / 5.4 s CPU; connectorx 0.9 s (``arrow``, whole result) and 0.7 s
(``arrow_stream``, 150 MB). connectorx is out on correctness, not speed: it has no bind parameters (the window
would be formatted into the SQL), it reads every DECIMAL as decimal128(38,10), cutting DECIMAL(30,15) to 10 places
without a word, and panics on DECIMAL(65,30). There is no ADBC MySQL driver on PyPI. mysqlclient is a source
build against libmariadb/libmysqlclient headers, which a plain ``pip install`` of this project must not need.
Other databases (SQL Server, Oracle, ...) go through SQLAlchemy with the dialect's driver installed; that path
delivers text, for small tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import unquote, urlsplit

import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import Field, field_validator, model_validator

from etl_assets.errors import EtlError, PermanentSourceError, TransientSourceError
from etl_assets.keys import SOURCE_COLUMN
from etl_assets.redact import ENCODING_HINT, is_clean, redact, url_secrets, userinfo_needs_encoding
from etl_assets.resources import mysql
from etl_assets.resources.mysql import is_mysql_url
from etl_assets.settings import current_settings
from etl_assets.specmodel import SpecFieldError, SpecModel, identifier
from etl_assets.sqlutil import is_identifier

_ALIAS = "src"
# Session settings that carry a Postgres extract's window bounds (see `_extract_postgres`).
_WINDOW_START = "etl.window_start"
_WINDOW_END = "etl.window_end"


class SqlSource(SpecModel):
    """A table or query of an SQL database (SQLAlchemy URL; Postgres and MySQL/MariaDB get an Arrow fast path)."""

    kind: Literal["sql"]
    connection: str
    default_url: str = Field(
        description="URL used when <CONNECTION>_URL is not set; '{data_dir}' expands to ETL_DATA_DIR."
    )
    table: str | None = None
    query: str | None = None
    incremental_column: str | None = None
    chunk_size: int = Field(default=100_000, ge=1_000, le=5_000_000)

    _check_connection = field_validator("connection")(identifier)

    @field_validator("table", "incremental_column")
    @classmethod
    def _check_names(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split(".")
        if len(parts) > 2 or not all(is_identifier(p) for p in parts):
            raise SpecFieldError(
                "",
                f"{value!r} is not a table or column name",
                "use a plain name (schema.table for a table in another schema): letters, digits "
                "and underscores only, no spaces or line breaks",
            )
        return value

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise SpecFieldError(
                "table", "both or neither of `table` and `query` are set", "give exactly one of `table` or `query`"
            )
        return self


def _quote(name: str, mark: str = '"') -> str:
    """``name`` quoted as an identifier (validated by ``SqlSource``: no quote marks inside); MySQL quotes with
    backticks, since a double-quoted word is a string there unless the server runs in ANSI_QUOTES mode."""
    return ".".join(mark + part + mark for part in name.split("."))


def _naive_utc(moment: datetime) -> datetime:
    """``moment`` as naive UTC: SQLite has no time zones, and its timestamps are read as UTC, as Postgres reads a
    ``timestamp`` column in the extract's UTC session. A window in another zone is converted, not relabelled."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _text_array(values: tuple) -> pa.Array:
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _adbc_reader(cursor) -> pa.RecordBatchReader:
    """The cursor's result stream, keeping ADBC's error translation.

    ``Cursor.fetch_record_batch()`` hands back the bare PyArrow reader, whose failures mid-stream are a plain
    ``OSError`` without class or SQLSTATE (a dropped connection and a division by zero look alike). The ADBC
    wrapper re-raises them as ``OperationalError``/``DataError``/... with the SQLSTATE, as ``execute`` does.
    """
    try:
        from adbc_driver_manager._reader import AdbcRecordBatchReader
    except ImportError:  # a future driver manager without the private module: lose the typing, not the data
        return cursor.fetch_record_batch()
    handle = cursor.fetch_arrow()  # keep it referenced until imported: dropping it releases the stream
    return AdbcRecordBatchReader._import_from_c(handle.address)


# SQLSTATE classes a retry can cure: connection exception, insufficient resources, operator intervention
# (admin shutdown, pg_terminate_backend), transaction rollback (serialization failure, deadlock).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "40")
_PERMANENT_CONNECT_HINTS = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "access denied",
    "unknown database",
)
# libpq's words for a connection string it could not parse (it quotes the piece it choked on, which can be part
# of the password: never repeated)
_UNPARSABLE_HINTS = ("invalid", "unexpected", 'missing "="', "unterminated", "percent-encoded")


def _url_parts(url: str) -> tuple[str, str]:
    """``(user, "host:port/database")`` of ``url`` as this module parses it, for messages (no password)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "", "the server"
    where = (host or "the default host") + (f":{port}" if port else "")
    database = unquote(parts.path.lstrip("/"))
    return unquote(parts.username or ""), where + (f"/{database}" if database else "")


def invalid_url_error(connection: str, unparsable: bool = False) -> PermanentSourceError:
    """The error for a connection URL that is invalid; it never quotes the URL or the driver."""
    what = (
        "could not be parsed by the driver (its message is not repeated: it can quote a piece of the password); "
        "check the host, port, database and options, and "
        if unparsable
        else "has a user name or password holding characters a URL must carry percent-encoded: "
    )
    return PermanentSourceError(
        f"{connection}: the connection URL ({connection.upper()}_URL, or the spec's default_url) {what}{ENCODING_HINT}"
    )


def connect_error(connection: str, url: str, text: str) -> EtlError:
    """A libpq connection failure in this module's own words: libpq's message can quote a piece of the URL."""
    user, where = _url_parts(url)
    low = text.lower()
    prefix = f"{connection}: could not connect to {where}"
    fix = "check the connection URL (<CONNECTION>_URL)"
    if "connection refused" in low:
        return TransientSourceError(
            f"{prefix}: connection refused (is the server running and accepting TCP/IP "
            "connections on that host and port?)"
        )
    if "timeout expired" in low or "timed out" in low:
        return TransientSourceError(f"{prefix}: the connection timed out")
    if "could not translate host name" in low:
        return TransientSourceError(
            f"{prefix}: the host name could not be resolved; check the host, and {ENCODING_HINT}"
        )
    if "database" in low and "does not exist" in low:
        return PermanentSourceError(f"{prefix}: the database does not exist; {fix}")
    if "role" in low and "does not exist" in low:
        return PermanentSourceError(f"{prefix}: the role {user!r} does not exist; {fix}")
    if "authentication failed" in low:
        return PermanentSourceError(
            f"{prefix}: authentication failed for user {user!r}; check the user name and "
            f"password in the connection URL, and {ENCODING_HINT}"
        )
    if "no pg_hba.conf entry" in low:
        return PermanentSourceError(
            f"{prefix}: the server's pg_hba.conf admits no connection for user {user!r} from this host to this database"
        )
    if "too many" in low or "starting up" in low or "shutting down" in low or "recovery mode" in low:
        return TransientSourceError(
            f"{prefix}: the server is not taking connections now (too many clients, starting up or shutting down)"
        )
    if any(hint in low for hint in _UNPARSABLE_HINTS):
        return invalid_url_error(connection, unparsable=True)
    return TransientSourceError(
        f"{prefix} (the driver's message is not repeated: it can quote the connection URL); {fix}"
    )


def _safe_cause(exc: BaseException, url: str) -> BaseException | None:
    """``exc`` to chain to the platform's error when its text shows no secret of ``url``; else None (not chained:
    Dagster stores the whole chain)."""
    return exc if is_clean(str(exc), url_secrets(url)) else None


def _source_error(connection: str, exc: Exception, when: str, url: str = "") -> Exception:
    """Map an ADBC error to the platform's transient/permanent source errors, with secrets of ``url`` masked."""
    import adbc_driver_manager

    text = str(exc)
    if when == "connect" or "failed to connect" in text.lower():
        return connect_error(connection, url, text)
    message = redact(text, url_secrets(url))
    sqlstate = getattr(exc, "sqlstate", None) or ""
    prefix = f"{connection}: " + (f"{when}: " if when else "")
    if sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return TransientSourceError(f"{prefix}{message}")
    if isinstance(
        exc,
        (
            adbc_driver_manager.ProgrammingError,
            adbc_driver_manager.DataError,
            adbc_driver_manager.IntegrityError,
            adbc_driver_manager.NotSupportedError,
        ),
    ):
        return PermanentSourceError(f"{prefix}{message}; check `table`, `query` and `incremental_column`")
    if isinstance(exc, adbc_driver_manager.OperationalError) and any(h in text for h in _PERMANENT_CONNECT_HINTS):
        return PermanentSourceError(f"{prefix}{message}; check the connection URL (<CONNECTION>_URL)")
    return TransientSourceError(f"{prefix}{message}")


def _close_quietly(cursor, conn) -> None:
    for closable in (cursor, conn):
        if closable is None:
            continue
        try:
            closable.close()
        except Exception:  # closing a connection the server already dropped
            pass


class SqlDatabaseSource(ConfigurableResource):
    """An SQL database, reached at ``url`` (bound to ``EnvVar("<CONNECTION>_URL")``) or else ``default_url``.

    Attributes:
        connection: Connection name from the spec (``shop_db``).
        default_url: URL when nothing else is configured; ``{data_dir}`` expands to ``ETL_DATA_DIR``.
        url: Explicit URL, which may carry a password: bind it with ``EnvVar``.
    """

    connection: str
    default_url: str
    url: str | None = None

    def resolved_url(self) -> str:
        url = self.url or self.default_url
        return url.replace("{data_dir}", str(current_settings().data_dir))

    def is_postgres(self) -> bool:
        return self.resolved_url().split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")

    def is_mysql(self) -> bool:
        return is_mysql_url(self.resolved_url())

    def fast_path(self) -> str:
        """Which extract path the URL takes, as recorded in the materialization's metadata."""
        return "adbc" if self.is_postgres() else "pymysql" if self.is_mysql() else "sqlalchemy"

    def build_query(self, spec: SqlSource, window: tuple[datetime, datetime] | None, style: str) -> str:
        """The SELECT for the spec, restricted to the window.

        ``style`` says where the window's bounds come from: ``named`` (``:start``/``:end`` bind parameters),
        ``numeric`` (``$1``/``$2``), ``pyformat`` (``%s``, MySQL's spelling, identifiers in backticks) or ``setting`` (the session settings ``etl.window_start``/``etl.window_end``,
        bound beforehand with ``set_config``; a query without parameters is what ADBC can stream through COPY).
        """
        mark = "`" if style == "pyformat" else '"'
        relation = _quote(spec.table, mark) if spec.table else f"({spec.query})"
        base = f"SELECT * FROM {relation} AS {_ALIAS}"
        if window is None:
            return base
        if style == "pyformat":
            # PyMySQL fills the parameters in with Python's % operator: a % of the query itself (LIKE 'a%') doubled
            base = base.replace("%", "%%")
        if spec.incremental_column is None:
            raise PermanentSourceError(f"{self.connection}: a partitioned sql source needs `incremental_column`")
        # Qualified with the alias: SQLite reads an unknown bare "name" as the string 'name', so a misspelt
        # column would compare a constant and return every row for every partition; src."name" is an error.
        column = f"{_ALIAS}.{_quote(spec.incremental_column.split('.')[-1], mark)}"
        if style == "pyformat":
            return f"{base} WHERE {column} >= %s AND {column} < %s"
        if style == "numeric":
            return f"{base} WHERE {column} >= CAST($1 AS timestamptz) AND {column} < CAST($2 AS timestamptz)"
        if style == "setting":
            return (
                f"{base} WHERE {column} >= CAST(current_setting('{_WINDOW_START}') AS timestamptz)"
                f" AND {column} < CAST(current_setting('{_WINDOW_END}') AS timestamptz)"
            )
        return f"{base} WHERE {column} >= :start AND {column} < :end"

    def extract(self, spec: SqlSource, window: tuple[datetime, datetime] | None = None) -> pa.RecordBatchReader:
        """Stream the table or query, restricted to ``window`` on ``incremental_column``, as Arrow batches.

        Error messages never hold the URL's password or a piece of it: connection failures are described in this
        module's words (the driver's message can quote the URL), others are redacted.

        Raises:
            PermanentSourceError: the table, column or database does not exist, or the URL is invalid (a password
                holding a character that must be percent-encoded included).
            TransientSourceError: the connection failed or dropped.
        """
        if userinfo_needs_encoding(self.resolved_url()):
            # refused before any driver parses it: each reads such a URL its own way and quotes pieces back
            raise invalid_url_error(self.connection)
        if self.is_postgres():
            return self._extract_postgres(spec, window)
        if self.is_mysql():
            return self._extract_mysql(spec, window)
        return self._extract_sqlalchemy(spec, window)

    def _extract_postgres(self, spec: SqlSource, window: tuple[datetime, datetime] | None) -> pa.RecordBatchReader:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as pg

        url = self.resolved_url()
        scheme, rest = url.split("://", 1)
        uri = "postgresql://" + rest
        # The ADBC driver streams a result through COPY only when the query has no bind parameters; with
        # parameters libpq receives the whole result before the first batch. So the window's bounds are bound
        # to two session settings first and the streamed query reads them with current_setting().
        query = self.build_query(spec, window, "setting")
        conn = cursor = None
        try:
            conn = pg.connect(uri)
        except adbc_driver_manager.Error as exc:
            # never chained: libpq's message can quote a piece of the URL, password included
            raise _source_error(self.connection, exc, "connect", url) from None
        try:
            cursor = conn.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")
            if window is not None:
                cursor.execute(
                    f"SELECT set_config('{_WINDOW_START}', $1, false), set_config('{_WINDOW_END}', $2, false)",
                    [window[0].isoformat(), window[1].isoformat()],
                )
                cursor.fetchall()
            cursor.execute(query)
            reader = _adbc_reader(cursor)
        except adbc_driver_manager.Error as exc:
            _close_quietly(cursor, conn)
            raise _source_error(self.connection, exc, "", url) from _safe_cause(exc, url)
        source = f"{spec.table or 'query'}"
        schema = reader.schema.append(pa.field(SOURCE_COLUMN, pa.string()))

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield pa.RecordBatch.from_arrays(
                        [*batch.columns, pa.array([source] * batch.num_rows, type=pa.string())], schema=schema
                    )
            except adbc_driver_manager.Error as exc:
                raise _source_error(self.connection, exc, "mid-extract", url) from _safe_cause(exc, url)
            except (OSError, pa.ArrowException) as exc:
                # Only reached without ADBC's error translation (see `_adbc_reader`): the driver's failure then
                # carries no class or SQLSTATE, and a dropped connection is the usual cause.
                raise TransientSourceError(
                    f"{self.connection}: connection lost mid-extract: {redact(str(exc), url_secrets(url))}"
                ) from _safe_cause(exc, url)
            finally:
                _close_quietly(cursor, conn)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _extract_mysql(self, spec: SqlSource, window: tuple[datetime, datetime] | None) -> pa.RecordBatchReader:
        import pymysql

        url = self.resolved_url()
        conn, cursor = mysql.open_cursor(self.connection, url)
        query = self.build_query(spec, window, "pyformat")
        # naive UTC, as the session's time zone reads a TIMESTAMP column and as a DATETIME is taken (see mysql.py)
        params = (_naive_utc(window[0]), _naive_utc(window[1])) if window else None
        try:
            cursor.execute(query, params)
            schema = mysql.result_schema(cursor).append(pa.field(SOURCE_COLUMN, pa.string()))
        except pymysql.err.Error as exc:
            mysql.close(conn, cursor)
            raise mysql.source_error(self.connection, exc, "", url) from None
        source = f"{spec.table or 'query'}"

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                yield from mysql.record_batches(
                    self.connection,
                    cursor,
                    schema,
                    spec.chunk_size,
                    url,
                    lambda rows: pa.array([source] * rows, type=pa.string()),
                )
            finally:
                mysql.close(conn, cursor)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _extract_sqlalchemy(self, spec: SqlSource, window: tuple[datetime, datetime] | None) -> pa.RecordBatchReader:
        import sqlalchemy as sa
        from sqlalchemy import exc as sa_exc

        url = self.resolved_url()
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if not os.path.exists(path):
                raise PermanentSourceError(
                    f"{self.connection}: SQLite database {path} does not exist; run `etl-assets demo generate` or fix the URL"
                )
        secrets = url_secrets(url)
        scheme = url.split(":", 1)[0]
        # None of these is chained: SQLAlchemy's URL errors quote the URL, a driver's may quote a piece of it.
        try:
            engine = sa.create_engine(url)
        except sa_exc.NoSuchModuleError:
            raise PermanentSourceError(
                f"{self.connection}: SQLAlchemy has no dialect for the URL scheme {redact(scheme)!r}; install the "
                "dialect's package or fix the connection URL (<CONNECTION>_URL)"
            ) from None
        except ImportError as exc:
            raise PermanentSourceError(
                f"{self.connection}: the database driver for {redact(scheme)!r} is not installed (module "
                f"{exc.name or '?'}); install it"
            ) from None
        except (sa_exc.ArgumentError, ValueError, TypeError):
            raise invalid_url_error(self.connection, unparsable=True) from None
        query = sa.text(self.build_query(spec, window, "named"))
        params = {"start": _naive_utc(window[0]), "end": _naive_utc(window[1])} if window else {}
        try:
            conn = engine.connect()
        except sa_exc.DBAPIError as exc:
            engine.dispose()
            user, where = _url_parts(url)
            message = redact(str(exc.orig), secrets)
            error = (
                PermanentSourceError
                if any(h in message.lower() for h in _PERMANENT_CONNECT_HINTS)
                else TransientSourceError
            )
            raise error(f"{self.connection}: could not connect to {where}: {message}") from None
        try:
            result = conn.execution_options(stream_results=True).execute(query, params)
        except sa_exc.OperationalError as exc:
            conn.close()
            message = redact(str(exc.orig), secrets)
            if "no such" in message or "does not exist" in message:
                raise PermanentSourceError(
                    f"{self.connection}: {message}; check `table`, `query` and `incremental_column`"
                ) from _safe_cause(exc, url)
            raise TransientSourceError(f"{self.connection}: {message}") from _safe_cause(exc, url)
        names = list(result.keys())
        schema = pa.schema([pa.field(n, pa.string()) for n in names] + [pa.field(SOURCE_COLUMN, pa.string())])
        source = f"{spec.table or 'query'}"

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for rows in result.partitions(spec.chunk_size):
                    columns = list(zip(*rows)) if rows else [() for _ in names]
                    arrays = [_text_array(c) for c in columns] + [pa.array([source] * len(rows), type=pa.string())]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            finally:
                conn.close()
                engine.dispose()

        return pa.RecordBatchReader.from_batches(schema, batches())
