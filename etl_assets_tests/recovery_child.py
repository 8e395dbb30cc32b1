"""Child process of the crash tests: re-executes a killed run from failure, as an operator would after a crash.

``python -m etl_assets_tests.recovery_child <run_id>`` with ``DAGSTER_HOME`` pointing at the instance of the killed
run and ``ETL_RECOVERY_JOB`` naming its job. It runs in its own process so a test can bound it with a timeout: a
re-run blocked by a lock the killed process left behind fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import sys

from dagster import DagsterInstance, ReexecutionOptions, execute_job, reconstructable

JOB_ENV = "ETL_RECOVERY_JOB"
# The parent's partition (or partition range) travels with the re-execution, as Dagster's run retries and the UI's
# "re-execute from failure" carry it; `execute_job` only gets the tags it is given.
_PARTITION_TAG_PREFIXES = ("dagster/partition", "dagster/asset_partition_range")


def recovery_job():
    """The job of the killed run, rebuilt from the specs (``reconstructable`` needs a module-level function)."""
    from etl_assets.definitions import build_definitions

    return build_definitions().resolve_job_def(os.environ[JOB_ENV])


def main(argv: list[str]) -> int:
    (run_id,) = argv
    with DagsterInstance.get() as instance:
        parent = instance.get_run_by_id(run_id)
        tags = {k: v for k, v in parent.tags.items() if k.startswith(_PARTITION_TAG_PREFIXES)}
        options = ReexecutionOptions.from_failure(run_id, instance)
        with execute_job(reconstructable(recovery_job), instance, tags=tags, reexecution_options=options) as result:
            print(f"reexecution {result.run_id} of {run_id}: {'success' if result.success else 'failure'}", flush=True)
            return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
