"""Pipeline specs for tests, built as data: a dict with sane defaults, written as a YAML file and loaded the way
the platform loads a user's file, then handed to :func:`build_definitions` explicitly (no ``ETL_PIPELINES_DIR``).

Keep spec text as YAML in a test only when the test is about the text itself (a parse error's line, bad YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster import Definitions

from etl_assets.definitions import build_definitions
from etl_assets.pipelines.spec import PACKAGED_SPEC_DIRS, LoadedSpec, load_specs, parse_spec_file


def column(name: str, sql_type: str = "VARCHAR", **fields: Any) -> dict[str, Any]:
    """One contract column, e.g. ``column("a", "INTEGER", nullable=False)``."""
    return {"name": name, "type": sql_type, **fields}


def files_source(fmt: str = "csv", glob: str | None = None, **fields: Any) -> dict[str, Any]:
    """A landing-files source of ``fmt`` files matching ``glob`` (default ``*.<fmt>``)."""
    return {"kind": "files", "format": fmt, "glob": glob or f"*.{fmt}", **fields}


def pipeline(name: str, columns: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A source pipeline spec as a dict: a CSV files source (``*.csv``) unless ``source`` is given.

    Args:
        name: The pipeline's name (and the spec file's stem when written).
        columns: The contract; default one nullable ``INTEGER`` column ``a``.
        **fields: Any other spec field (``source``, ``domain``, ``partitions``, ``quality``, ``retry``, ...).
    """
    spec: dict[str, Any] = {
        "name": name,
        "source": files_source(),
        "columns": columns if columns is not None else [column("a", "INTEGER")],
    }
    spec.update(fields)
    return spec


def transform(name: str, sql: str, inputs: list[str], **fields: Any) -> dict[str, Any]:
    """A transform pipeline spec as a dict: the mart ``name`` built by the SQL file ``sql`` over ``inputs``."""
    return {"name": name, "transform": {"sql": sql, "inputs": inputs}, **fields}


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    """Write ``spec`` as ``<folder>/<name>.yaml`` (the folder is created) and return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load_spec(folder: Path, spec: dict[str, Any]) -> LoadedSpec:
    """Write ``spec`` into ``folder`` and load it back through the platform's parser.

    Raises:
        SpecError: the spec is invalid, with the platform's message.
    """
    return parse_spec_file(write_spec(folder, spec))


def shop_specs() -> list[LoadedSpec]:
    """The packaged shop pipelines, for a test whose specs sit beside them (or read their datasets)."""
    return load_specs(list(PACKAGED_SPEC_DIRS))


def definitions_for(folder: Path, *specs: dict[str, Any], shop: bool = False) -> Definitions:
    """The code location's definitions for exactly ``specs``, written into ``folder``.

    Args:
        shop: Also load the packaged shop pipelines, as the code location does.
    """
    loaded = [load_spec(folder, spec) for spec in specs]
    return build_definitions(specs=[*shop_specs(), *loaded] if shop else loaded)
