"""The Dagster instance of a deployment: the rule its Postgres storage URL must follow, checked at start.

dagster-postgres 0.29 is written against psycopg2, and SQLAlchemy 2.1 picks psycopg 3 for a URL that names no driver
(``postgresql://``): the instance then opens, creates its tables and fails on the first event it writes
(``NOTIFY run_events, $1``, a statement psycopg 3 cannot bind a parameter into). So a Dagster storage URL must select
psycopg2: ``postgresql+psycopg2://`` in ``postgres_url``, or ``scheme: postgresql+psycopg2`` under ``postgres_db``
(whose default scheme is the bare one). :func:`check_instance_home` refuses any other with that sentence; the code
location (:mod:`etl_assets.definitions`) and the CLI call it when they start, before any run could fail half-way.

Only the file's text is read here (``env:`` references resolved from the environment); nothing connects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from etl_assets.redact import redact

INSTANCE_FILE = "dagster.yaml"
WORKING_DRIVER = "psycopg2"
WORKING_SCHEME = "postgresql+psycopg2"
# dagster.yaml sections that can hold a Dagster storage of their own (besides `storage`)
_STORAGE_SECTIONS = ("run_storage", "event_log_storage", "schedule_storage")
_POSTGRES_MODULE = "dagster_postgres"
_WHY = "dagster-postgres needs psycopg2 (with psycopg 3 its first event write fails: NOTIFY run_events, $1)"


class InstanceConfigError(ValueError):
    """The Dagster instance's configuration cannot work; the message says what to write instead."""


def resolve_config_value(value: Any) -> Any:
    """A ``dagster.yaml`` value as Dagster reads it: ``{env: NAME}`` is the variable's value (None when it is not
    set)."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        return os.environ.get(str(value["env"]))
    return value


def postgres_storage_configs(config: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(where, config)`` of each Postgres storage a parsed ``dagster.yaml`` declares: ``storage: postgres:``, or a
    ``dagster_postgres`` class in ``storage: custom:`` or in ``run_storage`` / ``event_log_storage`` /
    ``schedule_storage``; ``config`` holds ``postgres_url`` or ``postgres_db``."""
    storage = config.get("storage")
    if isinstance(storage, Mapping):
        if isinstance(storage.get("postgres"), Mapping):
            yield "storage.postgres", storage["postgres"]
        custom = storage.get("custom")
        if isinstance(custom, Mapping) and str(custom.get("module", "")).startswith(_POSTGRES_MODULE):
            yield "storage.custom.config", custom.get("config") or {}
    for section in _STORAGE_SECTIONS:
        entry = config.get(section)
        if isinstance(entry, Mapping) and str(entry.get("module", "")).startswith(_POSTGRES_MODULE):
            yield f"{section}.config", entry.get("config") or {}


def selected_driver(url: str) -> str | None:
    """The DBAPI driver SQLAlchemy uses for ``url`` (None when it cannot use the URL at all)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        return make_url(url).get_dialect().driver
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError):
        return None


def _with_working_scheme(url: str) -> str:
    """``url`` with its scheme replaced by ``postgresql+psycopg2`` and its user and password masked."""
    rest = url.split("://", 1)[1] if "://" in url else url
    return redact(f"{WORKING_SCHEME}://{rest}")


def storage_problem(where: str, storage: Mapping[str, Any], source: str) -> str | None:
    """Why the Postgres storage ``storage`` (at ``where`` in ``source``) cannot work, with what to write; None when
    it selects psycopg2, or names a variable that is not set (Dagster itself then says which)."""
    if storage.get("postgres_url") is not None:
        raw = storage["postgres_url"]
        url = resolve_config_value(raw)
        if not isinstance(url, str) or selected_driver(url) == WORKING_DRIVER:
            return None
        variable = raw["env"] if isinstance(raw, Mapping) else None
        fixed = _with_working_scheme(url)
        given = f"{where}.postgres_url (from the variable {variable})" if variable else f"{where}.postgres_url"
        fix = f"set {variable}={fixed}" if variable else f"write postgres_url: {fixed}"
        return (
            f"{source}: {given} is {redact(url)}, for which SQLAlchemy {_driver_phrase(url)}; {_WHY}. Fix: {fix}"
            f" (the scheme {WORKING_SCHEME}), or use postgres_db with scheme: {WORKING_SCHEME}."
        )
    db = storage.get("postgres_db")
    if not isinstance(db, Mapping):
        return None
    scheme = resolve_config_value(db.get("scheme", "postgresql"))
    sample = f"{scheme}://user@host/db"
    if not isinstance(scheme, str) or selected_driver(sample) == WORKING_DRIVER:
        return None
    default = "" if "scheme" in db else " (the default, as none is given)"
    return (
        f"{source}: {where}.postgres_db has scheme {scheme!r}{default}, for which SQLAlchemy {_driver_phrase(sample)};"
        f" {_WHY}. Fix: add `scheme: {WORKING_SCHEME}` under {where}.postgres_db."
    )


def _driver_phrase(url: str) -> str:
    driver = selected_driver(url)
    if driver is None:
        return "finds no driver"
    return "selects psycopg 3" if driver == "psycopg" else f"selects the driver {driver}"


def instance_problems(config: Mapping[str, Any], source: str) -> list[str]:
    """Every Postgres storage of a parsed ``dagster.yaml`` (read from ``source``) that cannot work, with its fix."""
    found = (storage_problem(where, storage, source) for where, storage in postgres_storage_configs(config))
    return [problem for problem in found if problem]


def unset_variables(config: Any) -> list[str]:
    """The environment variables a parsed ``dagster.yaml`` reads (``{env: NAME}``) that are not set, in file order."""
    if isinstance(config, Mapping):
        if set(config) == {"env"}:
            name = str(config["env"])
            return [] if name in os.environ else [name]
        return [name for value in config.values() for name in unset_variables(value)]
    if isinstance(config, list):
        return [name for value in config for name in unset_variables(value)]
    return []


def read_instance_file(path: Path) -> Mapping[str, Any] | None:
    """The parsed ``dagster.yaml`` at ``path`` (None when it cannot be read or is not a mapping: Dagster says why)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, Mapping) else None


def instance_file(home: str | Path | None = None) -> Path | None:
    """``$DAGSTER_HOME/dagster.yaml`` (or ``home``'s), when there is one."""
    home = home or os.environ.get("DAGSTER_HOME")
    if not home:
        return None
    path = Path(home).expanduser() / INSTANCE_FILE
    return path if path.is_file() else None


def check_instance_home(home: str | Path | None = None) -> None:
    """Refuse a Dagster instance whose Postgres storage would fail on its first event write.

    Reads ``$DAGSTER_HOME/dagster.yaml`` (or ``home``'s); without one, or when it is not valid YAML (Dagster reports
    that itself), there is nothing to check.

    Raises:
        InstanceConfigError: a Postgres storage URL selects another driver than psycopg2, saying what to write.
    """
    path = instance_file(home)
    config = read_instance_file(path) if path else None
    problems = instance_problems(config, str(path)) if config is not None else []
    if problems:
        raise InstanceConfigError("\n".join(problems))
