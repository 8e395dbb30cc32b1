"""The project's Dagster component types (``dg list components`` lists them)."""

from etl_assets.components.pipeline import Pipeline

__all__ = ["Pipeline"]
