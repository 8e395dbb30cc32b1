"""SQL database source. Any SQLAlchemy URL for small sources; Postgres through ADBC, streamed as Arrow batches.

ADBC was chosen for Postgres after measuring (see ``benchmarks/pg_extract.py`` and the README): it streams
record batches with bounded memory, keeps Postgres types, and takes bind parameters. connectorx loads a
whole result before returning it, and ``COPY ... TO STDOUT`` would need a CSV parse with types re-declared.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
from dagster import ConfigurableResource

from etl_assets.errors import PermanentSourceError, TransientSourceError
from etl_assets.pipelines.spec import SqlSource
from etl_assets.resources.api import SOURCE_COLUMN
from etl_assets.settings import current_settings


def _quote(name: str) -> str:
    return ".".join('"' + part + '"' for part in name.split("."))


def _text_array(values: tuple) -> pa.Array:
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


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

    def build_query(self, spec: SqlSource, window: tuple[datetime, datetime] | None, style: str) -> str:
        """The SELECT for the spec, with the window as bind parameters (``:start``/``:end`` or ``$1``/``$2``)."""
        base = f"SELECT * FROM {_quote(spec.table)}" if spec.table else f"SELECT * FROM ({spec.query}) AS q"
        if window is None:
            return base
        if spec.incremental_column is None:
            raise PermanentSourceError(f"{self.connection}: a partitioned sql source needs `incremental_column`")
        column = _quote(spec.incremental_column)
        if style == "numeric":
            return f"{base} WHERE {column} >= CAST($1 AS timestamptz) AND {column} < CAST($2 AS timestamptz)"
        return f"{base} WHERE {column} >= :start AND {column} < :end"

    def extract(self, spec: SqlSource, window: tuple[datetime, datetime] | None = None) -> pa.RecordBatchReader:
        """Stream the table or query, restricted to ``window`` on ``incremental_column``, as Arrow batches.

        Raises:
            PermanentSourceError: the table, column or database does not exist.
            TransientSourceError: the connection failed or dropped.
        """
        if self.is_postgres():
            return self._extract_postgres(spec, window)
        return self._extract_sqlalchemy(spec, window)

    def _extract_postgres(self, spec: SqlSource, window: tuple[datetime, datetime] | None) -> pa.RecordBatchReader:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as pg

        uri = self.resolved_url()
        scheme, rest = uri.split("://", 1)
        uri = "postgresql://" + rest
        query = self.build_query(spec, window, "numeric")
        params = [window[0].isoformat(), window[1].isoformat()] if window else None
        try:
            conn = pg.connect(uri)
            cursor = conn.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")
            cursor.execute(query, params)
            reader = cursor.fetch_record_batch()
        except adbc_driver_manager.ProgrammingError as exc:
            raise PermanentSourceError(f"{self.connection}: {exc}; check `table`, `query` and `incremental_column`") from exc
        except adbc_driver_manager.Error as exc:
            raise TransientSourceError(f"{self.connection}: {exc}") from exc
        source = f"{spec.table or 'query'}"
        schema = reader.schema.append(pa.field(SOURCE_COLUMN, pa.string()))

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield pa.RecordBatch.from_arrays(
                        [*batch.columns, pa.array([source] * batch.num_rows, type=pa.string())], schema=schema
                    )
            except adbc_driver_manager.OperationalError as exc:
                raise TransientSourceError(f"{self.connection}: connection lost mid-extract: {exc}") from exc
            finally:
                cursor.close()
                conn.close()

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _extract_sqlalchemy(self, spec: SqlSource, window: tuple[datetime, datetime] | None) -> pa.RecordBatchReader:
        import sqlalchemy as sa

        url = self.resolved_url()
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if not os.path.exists(path):
                raise PermanentSourceError(f"{self.connection}: SQLite database {path} does not exist; run `etl-assets demo generate` or fix the URL")
        engine = sa.create_engine(url)
        query = sa.text(self.build_query(spec, window, "named"))
        params = {"start": window[0].replace(tzinfo=None), "end": window[1].replace(tzinfo=None)} if window else {}
        conn = engine.connect()
        try:
            result = conn.execution_options(stream_results=True).execute(query, params)
        except sa.exc.OperationalError as exc:
            conn.close()
            message = str(exc.orig)
            if "no such" in message or "does not exist" in message:
                raise PermanentSourceError(f"{self.connection}: {message}; check `table`, `query` and `incremental_column`") from exc
            raise TransientSourceError(f"{self.connection}: {message}") from exc
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
