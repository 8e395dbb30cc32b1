"""etl_assets: declarative, asset-centric data pipelines on Dagster.

Importing the package (or any submodule) builds nothing. The code location is :mod:`etl_assets.definitions`, whose
lazy ``@definitions`` loader Dagster calls when it loads the location (``-m etl_assets.definitions``, ``dg``); the
pipelines are Components in the defs folder :mod:`etl_assets.defs`.
"""
