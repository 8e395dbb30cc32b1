"""`etl-assets reexecute RUN_ID`: re-execution from failure from the command line, as the UI's "Re-execute ->
From failure" does: the steps that succeeded are not run again, the parent's partition tags travel along."""

from __future__ import annotations

import argparse
import os

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from etl_assets.cli import CommandError, check_job, data_dir, open_instance
from etl_assets.definitions import build_definitions
from etl_assets.recovery.sensors import process_state, run_worker_pid

JOB_ENV = "ETL_REEXECUTE_JOB"
# `execute_job` only gets the tags it is given: the parent's partition (or range) must be passed on.
_CARRIED_TAG_PREFIXES = ("dagster/partition", "dagster/asset_partition_range")


class ReexecuteError(CommandError):
    """The run cannot be re-executed; the message says why and what to do."""


def _job_to_reexecute():
    """The parent run's job, rebuilt from the specs (``reconstructable`` needs a module-level function)."""
    return build_definitions().resolve_job_def(os.environ[JOB_ENV])


def _run_process(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The process that started a run executed in place (``dagster job execute``, ``execute_in_process``)."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START):
        if entry.dagster_event is not None and entry.dagster_event.pid is not None:
            return entry.dagster_event.pid, entry.timestamp
    return None


def reexecute_from_failure(instance: DagsterInstance, run_id: str) -> tuple[str, bool]:
    """Re-execute ``run_id`` from failure in this process; returns the new run's id and whether it succeeded.

    A run still marked STARTED whose process is gone (killed, or lost with the machine or the daemon) is first
    reported failed, as ``run_worker_watchdog`` would; this must run on the machine that ran it. The run's
    concurrency slots are freed before the re-execution claims them again.

    Raises:
        ReexecuteError: no such run, it succeeded, or it is still running.
        CommandError: the run's job is not in the code location (any more).
    """
    parent = instance.get_run_by_id(run_id)
    if parent is None:
        raise ReexecuteError(
            f"no run {run_id} in the instance at {instance.root_directory}; list runs with `dagster run list`"
        )
    if parent.status == DagsterRunStatus.SUCCESS:
        raise ReexecuteError(f"run {run_id} succeeded; there is nothing to re-execute")
    if parent.status not in (DagsterRunStatus.STARTED, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        raise ReexecuteError(f"run {run_id} is {parent.status.value}; only a failed or canceled run can be re-executed")
    check_job(build_definitions(), parent.job_name, f"the job of run {run_id}")
    if parent.status == DagsterRunStatus.STARTED:
        worker = run_worker_pid(instance, run_id) or _run_process(instance, run_id)
        state = process_state(*worker) if worker else None
        if state is None or state.alive:
            why = f"its process (pid {state.pid}) is alive" if state else "no process is recorded for it"
            raise ReexecuteError(f"run {run_id} is still STARTED and {why}; wait for it, or terminate it in the UI")
        instance.report_run_failed(
            parent, message=f"marked failed by `etl-assets reexecute`: its process (pid {state.pid}) is {state.state}"
        )
    # a run killed mid-step never released its concurrency slots (the warehouse pool has one): without this the
    # re-execution would wait for the slot for ever when no daemon runs run monitoring to free it
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    os.environ[JOB_ENV] = parent.job_name
    tags = {k: v for k, v in parent.tags.items() if k.startswith(_CARRIED_TAG_PREFIXES)}
    options = ReexecutionOptions.from_failure(run_id, instance)
    with execute_job(reconstructable(_job_to_reexecute), instance, tags=tags, reexecution_options=options) as result:
        return result.run_id, result.success


def command(args: argparse.Namespace) -> int:
    """Re-execute ``args.run_id`` from failure in the CLI's instance; exit 1 when the new run failed (a
    :class:`~etl_assets.cli.CommandError` when the run cannot be re-executed)."""
    data_dir(args.data_dir)
    with open_instance() as instance:
        run_id, success = reexecute_from_failure(instance, args.run_id)
    print(f"re-executed {args.run_id} from failure as run {run_id}: {'success' if success else 'FAILED'}")
    return 0 if success else 1
