"""etl_assets: declarative, asset-centric data pipelines on Dagster.

Importing the package (or any submodule) builds nothing and imports no pipeline code: ``etl_assets.defs``, the code
location's lazy ``@definitions`` loader, is imported on first access (PEP 562), which is how Dagster finds it with
``-m etl_assets``.
"""

from __future__ import annotations

__all__ = ["defs"]


def __getattr__(name: str):
    if name == "defs":
        from etl_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
