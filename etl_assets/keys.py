"""The asset-key scheme, in one place: every pipeline's assets are ``<stage>/<pipeline>``.

A source pipeline has ``raw/<name>`` (as delivered), ``clean/<name>`` and ``quarantine/<name>`` (validated) and one
target asset per target (``warehouse/<name>`` for DuckDB, ``postgres/<name>``); a transform has ``marts/<name>`` and
its targets. Monitoring, recovery and the CLI take keys and stages from here, never as literals.
"""

from __future__ import annotations

from dagster import AssetKey

RAW, CLEAN, QUARANTINE, MARTS = "raw", "clean", "quarantine", "marts"
# The target asset's first key part, by target kind.
TARGET_PREFIX = {"duckdb": "warehouse", "postgres": "postgres"}
TARGET_PREFIXES = tuple(TARGET_PREFIX.values())
# Every first key part of a pipeline's assets; the second part is the pipeline's name.
PIPELINE_STAGES = (RAW, CLEAN, QUARANTINE, MARTS, *TARGET_PREFIXES)
# The partition key of an unpartitioned asset in the lake, target tables and metadata.
UNPARTITIONED = "_all"
# The column naming the file, page or table each raw row came from.
SOURCE_COLUMN = "_etl_source"


def raw_key(name: str) -> AssetKey:
    return AssetKey([RAW, name])


def clean_key(name: str) -> AssetKey:
    return AssetKey([CLEAN, name])


def quarantine_key(name: str) -> AssetKey:
    return AssetKey([QUARANTINE, name])


def mart_key(name: str) -> AssetKey:
    return AssetKey([MARTS, name])


def target_key(target: str, name: str) -> AssetKey:
    return AssetKey([TARGET_PREFIX[target], name])
