"""Tests of etl_assets against real parts: loopback HTTP, SQLite and DuckDB files, Postgres, a Dagster instance."""
