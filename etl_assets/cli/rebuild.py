"""`etl-assets rebuild`: re-derive a pipeline's partitions, and what is built from them, from the raw lake without
asking the source.

The raw lake keeps every partition as delivered (until ``retention.raw_days``), so clean data, the quarantine,
the targets and the downstream marts of any partition can be rebuilt from it after a bug fix, a lost warehouse
file or a bad load. Each partition is one run that replaces that partition everywhere, so a rebuild can be
repeated.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job

from etl_assets.cli import (
    QUIET,
    CommandError,
    check_source_pipeline,
    data_dir,
    open_instance,
    partitions_in_range,
    pipeline_assets,
)
from etl_assets.cli.progress import Progress, row_count, target_rows
from etl_assets.definitions import build_definitions
from etl_assets.keys import (
    CLEAN,
    QUARANTINE,
    TARGET_PREFIXES,
    UNPARTITIONED,
    Pipeline,
    clean_key,
    pipeline_ref,
    quarantine_key,
    raw_key,
)
from etl_assets.lake import LakeStorage

REBUILD_JOB = "__etl_rebuild"


class RebuildError(CommandError):
    """A rebuild cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class RebuildPlan:
    """What a rebuild of one pipeline materializes, and what it leaves alone.

    Attributes:
        keys: Assets rebuilt per partition (the pipeline without its raw asset, plus downstream assets that
            share its partitioning).
        skipped: Downstream assets with other partitioning; rebuild them on their own.
    """

    keys: list[AssetKey]
    skipped: list[AssetKey]


def plan_rebuild(defs: Definitions, name: str, downstream: bool = True) -> RebuildPlan:
    """The assets a rebuild of pipeline ``name`` (``orders`` or ``shop.orders``) materializes.

    Raises:
        CommandError: ``name`` is not a source pipeline of this code location.
    """
    pipeline = check_source_pipeline(defs, name, "rebuild")
    graph = defs.resolve_asset_graph()
    clean, quarantine = clean_key(pipeline), quarantine_key(pipeline)
    own = AssetSelection.assets(
        *[
            p.key
            for p in pipeline_assets(defs)
            if p.stage in (CLEAN, QUARANTINE, *TARGET_PREFIXES) and Pipeline(p.domain, p.pipeline) == pipeline
        ]
    )
    selection = own | AssetSelection.assets(clean, quarantine).downstream() if downstream else own
    keys = sorted(selection.resolve(graph), key=lambda k: k.to_user_string())
    partitions = graph.get(clean).partitions_def
    same = [k for k in keys if graph.get(k).partitions_def == partitions]
    return RebuildPlan(keys=same, skipped=[k for k in keys if k not in same])


def missing_raw_partitions(lake: LakeStorage, raw: AssetKey, partitions: Sequence[str | None]) -> list[str]:
    """Partitions whose raw input (asset ``raw``) is not in the lake (never extracted, or removed by retention)."""
    return [p or UNPARTITIONED for p in partitions if not lake.exists(raw.path, p)]


def rebuild(
    defs: Definitions,
    instance: DagsterInstance,
    pipeline: str,
    partitions: Sequence[str | None],
    downstream: bool = True,
):
    """Rebuild ``partitions`` of ``pipeline`` from the raw lake, one run per partition.

    Yields:
        ``(partition, result)`` for each run, in order; a failed run does not stop the others.

    Raises:
        CommandError: the pipeline is not a source pipeline.
        RebuildError: a partition has no raw input (named, with the fix).
    """
    plan = plan_rebuild(defs, pipeline, downstream)
    found = check_source_pipeline(defs, pipeline, "rebuild")
    ref, raw = pipeline_ref(found), raw_key(found)
    missing = missing_raw_partitions(LakeStorage(), raw, partitions)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise RebuildError(
            f"{raw.to_user_string()} has no lake data for partition(s) {shown} (never extracted, or removed by "
            f"retention.raw_days); extract them again: dagster asset materialize -m etl_assets "
            f"--select {raw.to_user_string()} --partition <key>"
        )
    job_defs = Definitions.merge(
        defs,
        Definitions(
            jobs=[
                define_asset_job(
                    REBUILD_JOB,
                    selection=AssetSelection.assets(*plan.keys),
                    description=f"Rebuild {ref} from the raw lake",
                )
            ]
        ),
    )
    job_def = job_defs.resolve_job_def(REBUILD_JOB)
    for partition in partitions:
        result = job_def.execute_in_process(
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
            run_config=QUIET,
            tags={"etl/rebuild": ref},
        )
        yield partition, result


def command(args: argparse.Namespace) -> int:
    """Rebuild ``args.pipeline`` from ``--from`` to ``--to``, with its marts unless ``--no-downstream``, reporting each
    partition as it is rebuilt; exit 1 when a run failed (a :class:`CommandError` when the rebuild cannot start)."""
    data_dir(args.data_dir)
    defs = build_definitions()
    plan = plan_rebuild(defs, args.pipeline, downstream=not args.no_downstream)
    pipeline = check_source_pipeline(defs, args.pipeline, "rebuild")
    ref = pipeline_ref(pipeline)
    pdef = defs.resolve_asset_graph().get(clean_key(pipeline)).partitions_def
    partitions = partitions_in_range(pdef, ref, args.start, args.end)
    print(f"rebuilding {', '.join(k.to_user_string() for k in plan.keys)}")
    if plan.skipped:
        print(
            f"  not rebuilt (other partitioning; rebuild them on their own): "
            f"{', '.join(k.to_user_string() for k in plan.skipped)}"
        )
    with open_instance() as instance, Progress(len(partitions), f"rebuild {ref}") as progress:
        runs = rebuild(defs, instance, ref, partitions, downstream=not args.no_downstream)
        started = time.perf_counter()
        for partition, result in runs:
            materializations = [e.materialization for e in result.get_asset_materialization_events()]
            rows = {m.asset_key.to_user_string(): row_count(m) for m in materializations}
            loaded = ", ".join(f"{k} {v}" for k, v in sorted(rows.items()) if v is not None)
            progress.finished(
                f"{ref} {partition}" if partition else ref,
                result.success,
                target_rows(materializations),
                time.perf_counter() - started,
                run_id=result.run_id,
                note=loaded,
            )
            started = time.perf_counter()
    return 0 if progress.ok == progress.total else 1
