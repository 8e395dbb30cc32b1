"""etl_assets: declarative, asset-centric data pipelines on Dagster.

Importing the package (or any submodule) builds nothing. The code location is :mod:`etl_assets.definitions`, whose
lazy ``@definitions`` loader Dagster calls when it loads the location; the pipelines are Components in the defs folder
:mod:`etl_assets.defs`. ``-m etl_assets`` finds the loader here too, as ``etl_assets.code_location`` (imported on
first access, PEP 562), so that every way of loading the location gives it the same name, ``etl_assets``: the
name that runs are recorded under and that the daemon looks a run's location up by when it retries it.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "code_location":
        from etl_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "code_location"])
