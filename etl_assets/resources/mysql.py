"""MySQL and MariaDB extracts: PyMySQL's unbuffered cursor, each chunk of rows turned into typed Arrow columns.

Why PyMySQL, and why text: see ``etl_assets/resources/sql.py`` (the measurements). The converters are switched off, so
every value arrives as the server's own text and Arrow parses it per column (``pyarrow.compute.cast``): DECIMAL(p,s)
becomes ``decimal128(p,s)`` (``decimal256`` above 38 digits) exactly, the way the server printed it, and Python never
builds a ``Decimal`` or ``datetime`` per value (which doubles the time). The types come from the result's column
definitions, not from the values, so an all-NULL chunk has the same schema as the others.

The window's bounds are passed to ``cursor.execute`` as parameters (PyMySQL escapes them by type; MySQL's text
protocol, the one that streams unbuffered, has no server-side parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from etl_assets.errors import EtlError, PermanentSourceError, TransientSourceError
from etl_assets.redact import ENCODING_HINT, redact, url_secrets

SCHEMES = ("mysql", "mariadb")
# The spellings SQLAlchemy users copy around; any other driver (mysql+mysqldb://, ...) goes through SQLAlchemy.
DRIVERS = ("", "pymysql")
# URL query options passed on to PyMySQL; anything else is refused by name rather than silently ignored.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "charset": str,
    "unix_socket": str,
    "connect_timeout": int,
    "read_timeout": int,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
    "ssl_verify_cert": lambda v: v.lower() in ("1", "true", "yes"),
    "ssl_verify_identity": lambda v: v.lower() in ("1", "true", "yes"),
}
# The server drops an unbuffered result whose client has not read for net_write_timeout seconds (60 by default):
# a slow lake write between two chunks must not look like a dead client.
_SESSION_SETUP = "SET time_zone = '+00:00', net_write_timeout = 3600"

# Column type codes of the MySQL protocol (pymysql.constants.FIELD_TYPE), and flags (pymysql.constants.FLAG).
_DECIMAL, _NEWDECIMAL = 0, 246
_TINY, _SHORT, _LONG, _INT24, _LONGLONG, _YEAR = 1, 2, 3, 9, 8, 13
_FLOAT, _DOUBLE = 4, 5
_TIMESTAMP, _DATE, _DATETIME, _NEWDATE = 7, 10, 12, 14
_BIT, _GEOMETRY, _JSON = 16, 255, 245
_BLOBS = (249, 250, 251, 252)
_UNSIGNED_FLAG = 32
_BINARY_CHARSET = 63

_INTS = {
    _TINY: (pa.int8(), pa.uint8()),
    _SHORT: (pa.int16(), pa.uint16()),
    _INT24: (pa.int32(), pa.uint32()),
    _LONG: (pa.int32(), pa.uint32()),
    _LONGLONG: (pa.int64(), pa.uint64()),
    _YEAR: (pa.int16(), pa.int16()),
}

# Error numbers a retry can cure: can't connect, server gone away or lost mid-query, too many connections, server
# shutting down, lock wait timeout, deadlock, connection killed, query interrupted.
_TRANSIENT_ERRNOS = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1205, 1213, 1317, 1927, 3024}
# access denied (user, database), unknown database
_PERMANENT_CONNECT_ERRNOS = {1044, 1045, 1049, 1698}


def is_mysql_url(url: str) -> bool:
    """Whether ``url`` takes this module's path: ``mysql://``, ``mariadb://`` or either with ``+pymysql``."""
    scheme = url.split(":", 1)[0].lower()
    base, _, driver = scheme.partition("+")
    return base in SCHEMES and driver in DRIVERS


def connect_kwargs(connection: str, url: str) -> dict[str, Any]:
    """PyMySQL's ``connect`` arguments for ``url`` (``mysql://user:password@host:3306/database?charset=utf8mb4``).

    Raises:
        PermanentSourceError: the URL has no database or an option PyMySQL is not given by this module.
    """
    from etl_assets.resources.sql import invalid_url_error

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid_url_error(connection, unparsable=True) from None
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise PermanentSourceError(
            f"{connection}: the connection URL ({connection.upper()}_URL, or the spec's default_url) names no "
            "database; write it as mysql://user:password@host:3306/database"
        )
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username or "") or None,
        "password": unquote(parts.password or ""),
        "database": database,
        "charset": "utf8mb4",
        "connect_timeout": 10,
    }
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise PermanentSourceError(
                f"{connection}: the connection URL has the option {key!r}, which this source does not pass to the "
                f"driver; use one of {', '.join(sorted(_OPTIONS))}, or drop it"
            )
        try:
            kwargs[key] = _OPTIONS[key](value)
        except ValueError:
            raise PermanentSourceError(f"{connection}: the connection URL's {key} must be a number") from None
    return kwargs


def _where(kwargs: dict[str, Any]) -> str:
    return f"{kwargs['host']}:{kwargs['port']}/{kwargs['database']}"


def connect_error(connection: str, kwargs: dict[str, Any], exc: Exception) -> EtlError:
    """A failed connect in this module's words, classified by the server's error number."""
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    prefix = f"{connection}: could not connect to {_where(kwargs)}"
    fix = "check the connection URL (<CONNECTION>_URL)"
    if errno in (1045, 1698):
        return PermanentSourceError(
            f"{prefix}: access denied for user {kwargs['user']!r}; check the user name and password in the "
            f"connection URL, and {ENCODING_HINT}"
        )
    if errno == 1044:
        return PermanentSourceError(f"{prefix}: user {kwargs['user']!r} may not use this database; {fix}")
    if errno == 1049:
        return PermanentSourceError(f"{prefix}: the database does not exist; {fix}")
    if errno in (2002, 2003):
        return TransientSourceError(
            f"{prefix}: no server answered (is it running and listening on that host and port?)"
        )
    if errno == 1040:
        return TransientSourceError(f"{prefix}: the server has too many connections")
    return TransientSourceError(f"{prefix} (MySQL error {errno}; the driver's message is not repeated); {fix}")


def source_error(connection: str, exc: Exception, when: str, url: str) -> EtlError:
    """A failed query in the platform's error classes, with secrets of ``url`` masked."""
    import pymysql

    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    message = redact(f"{text} (MySQL error {errno})" if errno else str(text), url_secrets(url))
    prefix = f"{connection}: " + (f"{when}: " if when else "")
    if errno in _TRANSIENT_ERRNOS or isinstance(exc, pymysql.err.InterfaceError):
        return TransientSourceError(f"{prefix}{message}")
    if errno in _PERMANENT_CONNECT_ERRNOS:
        return PermanentSourceError(f"{prefix}{message}; check the connection URL (<CONNECTION>_URL)")
    if isinstance(exc, (pymysql.err.ProgrammingError, pymysql.err.DataError, pymysql.err.NotSupportedError)) or (
        isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InternalError)) and 1000 <= errno < 2000
    ):
        return PermanentSourceError(f"{prefix}{message}; check `table`, `query` and `incremental_column`")
    return TransientSourceError(f"{prefix}{message}")


def arrow_field(name: str, type_code: int, length: int, scale: int, flags: int, charset: int) -> pa.Field:
    """The Arrow field for one result column, from its protocol column definition."""
    unsigned = bool(flags & _UNSIGNED_FLAG)
    if type_code in _INTS:
        return pa.field(name, _INTS[type_code][unsigned])
    if type_code in (_DECIMAL, _NEWDECIMAL):
        # the display length counts the sign (unless unsigned) and the decimal point (when there is a scale)
        precision = max(length - (0 if unsigned else 1) - (1 if scale else 0), 1)
        return pa.field(name, (pa.decimal128 if precision <= 38 else pa.decimal256)(precision, scale))
    if type_code == _FLOAT:
        return pa.field(name, pa.float32())
    if type_code == _DOUBLE:
        return pa.field(name, pa.float64())
    if type_code in (_DATE, _NEWDATE):
        return pa.field(name, pa.date32())
    if type_code == _DATETIME:  # no time zone in MySQL: read as UTC, like a Postgres `timestamp`
        return pa.field(name, pa.timestamp("us"))
    if type_code == _TIMESTAMP:  # stored as UTC, and printed in UTC by this session (_SESSION_SETUP)
        return pa.field(name, pa.timestamp("us", tz="UTC"))
    if type_code in (_BIT, _GEOMETRY) or (type_code in (*_BLOBS, 253, 254) and charset == _BINARY_CHARSET):
        return pa.field(name, pa.binary())
    return pa.field(name, pa.string())  # VARCHAR, TEXT, ENUM, SET, JSON, TIME (which may exceed 24 hours)


def result_schema(cursor) -> pa.Schema:
    """The Arrow schema of ``cursor``'s result, from PyMySQL's column definitions (``description`` lacks the
    unsigned flag and the character set)."""
    fields = getattr(getattr(cursor, "_result", None), "fields", None)
    if fields is None:  # a PyMySQL without the attribute: lose unsigned and binary, not the data
        return pa.schema([arrow_field(d[0], d[1], d[3] or 0, d[5] or 0, 0, 0) for d in cursor.description])
    return pa.schema([arrow_field(f.name, f.type_code, f.length, f.scale, f.flags, f.charsetnr) for f in fields])


def _column(values: Sequence, field: pa.Field) -> pa.Array:
    # PyMySQL hands binary-charset columns over as bytes and decodes every other one (numbers as ASCII)
    if pa.types.is_binary(field.type):
        return pa.array(values, pa.binary())
    text = pa.array(values, pa.string())
    if pa.types.is_string(field.type):
        return text
    if pa.types.is_timestamp(field.type) and field.type.tz:
        return pc.cast(pc.cast(text, pa.timestamp("us")), field.type)
    return pc.cast(text, field.type)


def record_batches(
    connection: str, cursor, schema: pa.Schema, chunk_size: int, url: str, extra: Callable[[int], pa.Array]
) -> Iterator[pa.RecordBatch]:
    """The cursor's rows in batches of ``chunk_size``, typed as ``schema`` but for its last field, ``extra(rows)``.

    Raises:
        PermanentSourceError: a value Arrow cannot take as its column's type (a zero date ``0000-00-00``).
        TransientSourceError / PermanentSourceError: the query failed mid-stream (see ``source_error``).
    """
    import pymysql

    while True:
        try:
            rows = cursor.fetchmany(chunk_size)
        except pymysql.err.Error as exc:
            raise source_error(connection, exc, "mid-extract", url) from None
        if not rows:
            return
        columns = list(zip(*rows))
        arrays = []
        for values, field in zip(columns, list(schema)[:-1]):
            try:
                arrays.append(_column(values, field))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise PermanentSourceError(
                    f"{connection}: column {field.name!r} has a value that is not a valid {field.type} ({exc}); "
                    "a zero date (0000-00-00) is the usual cause: select it as NULL (NULLIF) in a `query`"
                ) from None
        yield pa.RecordBatch.from_arrays([*arrays, extra(len(rows))], schema=schema)


def close(conn, cursor) -> None:
    """Close an extract's connection, also when its result was not read to the end: PyMySQL's cursor would read
    (and drop) every remaining row first, and a dead socket makes that raise inside ``__del__``."""
    result = getattr(cursor, "_result", None)
    if result is not None:
        result.unbuffered_active = False  # the socket goes below; the server discards the rest
    for closable in (conn, cursor):
        try:
            closable.close()
        except Exception:  # closing a connection the server already dropped
            pass


def open_cursor(connection: str, url: str):
    """A connected PyMySQL connection and its unbuffered cursor, the session in UTC.

    Raises:
        PermanentSourceError / TransientSourceError: the connect failed (see ``connect_error``).
    """
    import pymysql
    import pymysql.converters
    import pymysql.cursors

    kwargs = connect_kwargs(connection, url)
    try:
        conn = pymysql.connect(
            **kwargs,
            cursorclass=pymysql.cursors.SSCursor,
            # encoders only: parameters are escaped by type, results are left as the server's text
            conv=cast(Any, dict(pymysql.converters.encoders)),
            init_command=_SESSION_SETUP,
        )
    except pymysql.err.Error as exc:
        # never chained: a driver message can quote a piece of the URL
        raise connect_error(connection, kwargs, exc) from None
    return conn, conn.cursor()
