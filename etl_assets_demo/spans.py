"""The shop pipelines over the days of other generated data than the demo's week.

The packaged shop domain's daily pipelines have the partitions of the data `etl-assets demo` generates by default
(``partitions.start`` to ``partitions.last`` in ``etl_assets/defs/shop/defs.yaml``), so that the demo fills every
one of them. The stress and the benchmarks generate other spans (50 or 1,000 days, another ``--start``); they run
the packaged specs with those partitions moved to their data's days (:func:`shop_specs_over`).

Imported by its users only: it loads the specs, which imports Dagster (`etl-assets demo generate` does not).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from etl_assets.pipelines.spec import LoadedSpec, Partitioning, load_specs

__all__ = ["SHOP_DOMAIN", "shop_specs_over"]

SHOP_DOMAIN = "shop"


def shop_specs_over(start: dt.date, days: int, specs: Sequence[LoadedSpec] | None = None) -> list[LoadedSpec]:
    """``specs`` (default: the packaged ones, :func:`load_specs`) with the partitions of every partitioned shop
    pipeline spanning ``days`` days from ``start``.

    They all move together: the daily pipelines of a domain run as one job, over one set of partitions.

    Raises:
        ValueError: ``days`` is less than 1.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    last = start + dt.timedelta(days=days - 1)
    moved = []
    for loaded in load_specs() if specs is None else specs:
        spec = loaded.spec
        if spec.domain == SHOP_DOMAIN and spec.partitions.type != "none":
            # validated again, as a spec file saying these dates would be
            partitions = Partitioning.model_validate({**spec.partitions.model_dump(), "start": start, "last": last})
            loaded = loaded.model_copy(update={"spec": spec.model_copy(update={"partitions": partitions})})
        moved.append(loaded)
    return moved
