"""`etl-assets replay`: re-validate a pipeline's partitions from the raw lake and reload them (quarantine replay),
one run of the pipeline's ``<pipeline>_revalidate`` job per partition."""

from __future__ import annotations

import argparse

from etl_assets.cli import QUIET, check_source_pipeline, data_dir, open_instance, partitions_in_range
from etl_assets.definitions import build_definitions
from etl_assets.keys import clean_key


def command(args: argparse.Namespace) -> int:
    """Replay ``args.pipeline`` from ``--from`` to ``--to``; exit 1 when a run failed (a
    :class:`~etl_assets.cli.CommandError` when there is nothing to replay)."""
    data_dir(args.data_dir)
    defs = build_definitions()
    check_source_pipeline(defs, args.pipeline, "replay")
    job = defs.resolve_job_def(f"{args.pipeline}_revalidate")
    partitions = partitions_in_range(job.partitions_def, args.pipeline, args.start, args.end)
    instance = open_instance()
    failed = 0
    for partition in partitions:
        result = job.execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET
        )
        meta = {}
        for event in result.get_asset_materialization_events():
            if event.asset_key == clean_key(args.pipeline):
                meta = event.materialization.metadata
        valid = meta["rows_valid"].value if "rows_valid" in meta else "?"
        bad = meta["rows_quarantined"].value if "rows_quarantined" in meta else "?"
        print(
            f"  {args.pipeline}[{partition or 'all'}] {'ok' if result.success else 'FAILED'}: "
            f"{valid} valid, {bad} still quarantined  (run {result.run_id})"
        )
        failed += not result.success
    return 1 if failed else 0
