"""The asset-key scheme, in one place: every pipeline's assets are ``<domain>/<stage>_<pipeline>``.

A source pipeline ``orders`` of domain ``shop`` has ``shop/raw_orders`` (as delivered), ``shop/clean_orders`` and
``shop/quarantine_orders`` (validated) and one target asset per target (``shop/warehouse_orders`` for DuckDB,
``shop/postgres_orders``); a transform has ``shop/marts_<name>`` and its targets. The stage is in the last part of
the key because that part is what the lineage graph shows: four boxes reading "orders" told a user nothing. The
domain leads, so the catalog folds each domain's assets together. The lake stores an asset under its key's path.
Monitoring, recovery and the CLI take keys and stages from here, never as literals.

A pipeline is known by its domain and name together, so two domains may each have an ``orders``. Its reference,
``<domain>.<name>`` (``shop.orders``), is what users write and read: in the CLI, run tags, messages, metadata, and
the folder of its landing files (``landing/shop.orders/``). Its Dagster name, ``<domain>__<name>`` (``shop__orders``),
prefixes what Dagster names must be unique and plain: jobs (``shop__orders_pipeline``), sensors, schedules, ops and
quarantine tables. A domain holds no ``__``, so the first one in a Dagster name ends the domain.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from dagster import AssetKey

RAW, CLEAN, QUARANTINE, MARTS = "raw", "clean", "quarantine", "marts"
# The target asset's stage, by target kind.
TARGET_PREFIX = {"duckdb": "warehouse", "postgres": "postgres"}
TARGET_PREFIXES = tuple(TARGET_PREFIX.values())
# Every stage of a pipeline's assets; none holds an underscore, so the first one in a key's last part ends the stage.
PIPELINE_STAGES = (RAW, CLEAN, QUARANTINE, MARTS, *TARGET_PREFIXES)
# The partition key of an unpartitioned asset in the lake, target tables and metadata.
UNPARTITIONED = "_all"
# The column naming the file, page or table each raw row came from.
SOURCE_COLUMN = "_etl_source"


class Named(Protocol):
    """What a key is made of: a pipeline spec, or anything naming a domain and a pipeline."""

    @property
    def domain(self) -> str: ...

    @property
    def name(self) -> str: ...


class Pipeline(NamedTuple):
    """A pipeline's identity, where no spec is at hand."""

    domain: str
    name: str


def pipeline_ref(spec: Named) -> str:
    """``<domain>.<name>``: how users and messages name a pipeline, and its landing folder."""
    return f"{spec.domain}.{spec.name}"


def dagster_name(spec: Named) -> str:
    """``<domain>__<name>``: the prefix of the pipeline's jobs, sensors, schedules, ops and quarantine table."""
    return f"{spec.domain}__{spec.name}"


def pipeline_job_name(spec: Named) -> str:
    """The job that runs the whole pipeline: ``<domain>__<name>_pipeline``."""
    return f"{dagster_name(spec)}_pipeline"


def revalidate_job_name(spec: Named) -> str:
    """The job that re-validates a source pipeline from its raw lake data: ``<domain>__<name>_revalidate``."""
    return f"{dagster_name(spec)}_revalidate"


def parse_ref(ref: str) -> Pipeline | None:
    """The domain and name of a ``<domain>.<name>`` reference; ``None`` for a bare name."""
    domain, sep, name = ref.partition(".")
    return Pipeline(domain, name) if sep and domain and name else None


class PipelineAsset(NamedTuple):
    """A pipeline asset's key, read back: its domain, stage and pipeline."""

    domain: str
    stage: str
    pipeline: str

    @property
    def key(self) -> AssetKey:
        return stage_key(self.stage, Pipeline(self.domain, self.pipeline))

    @property
    def ref(self) -> str:
        """The pipeline's reference, ``<domain>.<name>``."""
        return f"{self.domain}.{self.pipeline}"


def stage_key(stage: str, spec: Named) -> AssetKey:
    return AssetKey([spec.domain, f"{stage}_{spec.name}"])


def raw_key(spec: Named) -> AssetKey:
    return stage_key(RAW, spec)


def clean_key(spec: Named) -> AssetKey:
    return stage_key(CLEAN, spec)


def quarantine_key(spec: Named) -> AssetKey:
    return stage_key(QUARANTINE, spec)


def mart_key(spec: Named) -> AssetKey:
    return stage_key(MARTS, spec)


def target_key(target: str, spec: Named) -> AssetKey:
    return stage_key(TARGET_PREFIX[target], spec)


def parse_key(key: AssetKey) -> PipelineAsset | None:
    """The domain, stage and pipeline of a pipeline asset's key; ``None`` for any other key."""
    if len(key.path) != 2:
        return None
    stage, sep, pipeline = key.path[1].partition("_")
    if not sep or not pipeline or stage not in PIPELINE_STAGES:
        return None
    return PipelineAsset(key.path[0], stage, pipeline)
