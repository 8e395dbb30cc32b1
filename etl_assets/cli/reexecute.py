"""`etl-assets reexecute RUN_ID`: re-execution from failure from the command line, as the UI's "Re-execute ->
From failure" does: the steps that succeeded are not run again, the parent's partition tags travel along."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import threading
from collections import defaultdict

from dagster import (
    AssetMaterialization,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    ReexecutionOptions,
    RunsFilter,
    execute_job,
    reconstructable,
)

from etl_assets.cli import CommandError, check_job, data_dir, open_instance
from etl_assets.cli.progress import Progress, row_count, target_rows
from etl_assets.definitions import build_definitions
from etl_assets.recovery.sensors import process_state, run_worker_pid

JOB_ENV = "ETL_REEXECUTE_JOB"
# `execute_job` only gets the tags it is given: the parent's partition (or range) must be passed on.
_CARRIED_TAG_PREFIXES = ("dagster/partition", "dagster/asset_partition_range")


# how often the step progress reads the run's new events from the instance
POLL_SECONDS = 0.5
# a step whose upstream step failed is not executed and logs no step event of its own
STEP_ENDS = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED}


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


def reexecute_from_failure(
    instance: DagsterInstance, run_id: str, progress: Progress | None = None
) -> tuple[str, bool]:
    """Re-execute ``run_id`` from failure in this process; returns the new run's id and whether it succeeded.

    A run still marked STARTED whose process is gone (killed, or lost with the machine or the daemon) is first
    reported failed, as ``run_worker_watchdog`` would; this must run on the machine that ran it. The run's
    concurrency slots are freed before the re-execution claims them again.

    Args:
        progress: Told of each step of the new run as it finishes (its total is set when the run starts).

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
    watcher = _StepWatcher(instance, parent.job_name, run_id, progress) if progress is not None else None
    if watcher is not None:
        watcher.start()
    try:
        with execute_job(
            reconstructable(_job_to_reexecute), instance, tags=tags, reexecution_options=options
        ) as result:
            return result.run_id, result.success
    finally:
        if watcher is not None:
            watcher.stop()


class _StepWatcher:
    """Reports each step of the re-execution of ``parent_run_id`` to ``progress`` as it finishes.

    The steps run inside ``execute_job`` (in this process or in its children, as the executor decides), so their
    ends are read from the run's events in the instance, every :data:`POLL_SECONDS`; the new run is the one of
    ``job`` with that parent created after the watcher started.
    """

    def __init__(self, instance: DagsterInstance, job: str, parent_run_id: str, progress: Progress):
        self._thread = threading.Thread(target=self._watch, name="etl-reexecute-progress", daemon=True)
        self._instance, self._job, self._parent, self._progress = instance, job, parent_run_id, progress
        self._since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        self._stopping = threading.Event()
        self._run_id: str | None = None
        self._cursor: str | None = None
        self._step_started: dict[str, float] = {}
        self._materializations: dict[str, list[AssetMaterialization]] = defaultdict(list)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Report what is left to report, then end the thread."""
        self._stopping.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            last = self._stopping.is_set()  # the run has ended: one more read takes its last events
            self._poll()
            if last:
                return
            self._stopping.wait(POLL_SECONDS)

    def _poll(self) -> None:
        if self._run_id is None:
            runs = self._instance.get_runs(RunsFilter(job_name=self._job, created_after=self._since))
            child = next((r for r in reversed(runs) if r.parent_run_id == self._parent), None)
            if child is None:
                return
            self._run_id = child.run_id
            self._progress.set_total(len(child.step_keys_to_execute or []))
        connection = self._instance.get_records_for_run(
            self._run_id,
            cursor=self._cursor,
            of_type={DagsterEventType.STEP_START, DagsterEventType.ASSET_MATERIALIZATION, *STEP_ENDS},
        )
        self._cursor = connection.cursor
        for record in connection.records:
            event = record.event_log_entry.dagster_event
            step = record.event_log_entry.step_key
            if event is None or step is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                self._step_started[step] = record.timestamp
            elif record.asset_materialization is not None:
                self._materializations[step].append(record.asset_materialization)
            elif event.event_type in STEP_ENDS:
                materializations = self._materializations.pop(step, [])
                counts = [c for c in map(row_count, materializations) if c is not None]
                self._progress.finished(
                    ", ".join(m.asset_key.to_user_string() for m in materializations) or step,
                    event.event_type == DagsterEventType.STEP_SUCCESS,
                    sum(counts) if counts else None,
                    record.timestamp - self._step_started.get(step, record.timestamp),
                    note="skipped" if event.event_type == DagsterEventType.STEP_SKIPPED else "",
                    counted=target_rows(materializations) or 0,
                )


def command(args: argparse.Namespace) -> int:
    """Re-execute ``args.run_id`` from failure in the CLI's instance, reporting each step as it finishes; exit 1 when
    the new run failed (a :class:`~etl_assets.cli.CommandError` when the run cannot be re-executed)."""
    data_dir(args.data_dir)
    with open_instance() as instance, Progress(0, f"reexecute {args.run_id}", unit="steps") as progress:
        run_id, success = reexecute_from_failure(instance, args.run_id, progress)
    print(f"re-executed {args.run_id} from failure as run {run_id}: {'success' if success else 'FAILED'}")
    return 0 if success else 1
