"""etl_assets: declarative, asset-centric data pipelines on Dagster."""

from etl_assets.definitions import defs

__all__ = ["defs"]
