"""`etl-assets replay`: re-validate a pipeline's partitions from the raw lake and reload them (quarantine replay),
one run of the pipeline's ``<domain>__<name>_revalidate`` job per partition."""

from __future__ import annotations

import argparse
import time

from etl_assets.cli import QUIET, check_source_pipeline, data_dir, open_instance, partitions_in_range
from etl_assets.cli.progress import Progress, target_rows
from etl_assets.definitions import build_definitions
from etl_assets.keys import clean_key, pipeline_ref, revalidate_job_name


def command(args: argparse.Namespace) -> int:
    """Replay ``args.pipeline`` from ``--from`` to ``--to``, reporting each partition as it is replayed; exit 1 when a
    run failed (a :class:`~etl_assets.cli.CommandError` when there is nothing to replay)."""
    data_dir(args.data_dir)
    defs = build_definitions()
    pipeline = check_source_pipeline(defs, args.pipeline, "replay")
    ref = pipeline_ref(pipeline)
    job = defs.resolve_job_def(revalidate_job_name(pipeline))
    partitions = partitions_in_range(job.partitions_def, ref, args.start, args.end)
    clean = clean_key(pipeline)
    with open_instance() as instance, Progress(len(partitions), f"replay {ref}") as progress:
        for partition in partitions:
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET
            )
            materializations = [e.materialization for e in result.get_asset_materialization_events()]
            meta = {}
            for materialization in materializations:
                if materialization.asset_key == clean:
                    meta = materialization.metadata
            valid = meta["rows_valid"].value if "rows_valid" in meta else "?"
            bad = meta["rows_quarantined"].value if "rows_quarantined" in meta else "?"
            progress.finished(
                f"{ref} {partition}" if partition else ref,
                result.success,
                target_rows(materializations),
                time.perf_counter() - started,
                run_id=result.run_id,
                note=f"{valid} valid, {bad} still quarantined",
            )
    return 0 if progress.ok == progress.total else 1
