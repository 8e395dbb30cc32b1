"""Whole runs on Celery workers, with a health check that notices a worker that died.

dagster-celery's ``CeleryRunLauncher`` sends each run to a worker as one task and answers run monitoring from the
task's state in the Celery result backend. That state cannot tell a lost worker from a busy one: a worker killed
with SIGKILL (or a host that vanished) never writes anything again, so its task stays ``STARTED`` and the run stays
STARTED for ever. With ``task_acks_late`` the broker hands the unacknowledged task to another worker, where Dagster
ignores the duplicate (run monitoring is on) and the task ends ``SUCCESS`` while the run is still unfinished, which
the stock launcher reports as healthy too.

:class:`MonitoredCeleryRunLauncher` keeps everything else of the stock launcher and, for a started run whose task
is ``STARTED``, or ``SUCCESS`` while the run is unfinished, asks the workers over the broker which tasks they are
executing (Celery's ``inspect active``, answered by each worker's parent process even while its pool child is busy
with a run). When no worker holds the task, asked a few times, the run is reported ``FAILED``; run monitoring then
marks it failed and run retries (``run_retries`` in the instance config) launch it again on whichever worker is
free. A worker that lost its broker connection for a moment and still runs the task keeps the run: the copy the
broker redelivered elsewhere ends at once, and the original worker still lists the task as active.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from dagster import DagsterRun

# No public export: the launcher interface's health result types (dagster-celery imports them from here too).
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

# A task is declared lost only when this many "inspect active" broadcasts in a row, each waiting this long for the
# workers' replies (seconds), found no worker executing it.
INSPECT_ATTEMPTS = 3
INSPECT_TIMEOUT_SECONDS = 2.0
# One broadcast answers for every run checked in the same monitoring pass.
_ACTIVE_TTL_SECONDS = 5.0

# Celery's reply to "inspect active": node name -> the tasks it is executing, each a dict with the task's "id".
ActiveReplies = Mapping[str, list[dict]]


class ActiveTasks:
    """Which worker is executing which Celery task, as the workers answer over the broker.

    Args:
        inspect_active: Asks every worker, waiting ``timeout`` seconds for the replies; returns Celery's
            ``inspect().active()`` answer (``None`` when no worker replied).
        clock: Monotonic seconds.
    """

    def __init__(
        self, inspect_active: Callable[[float], ActiveReplies | None], clock: Callable[[], float] = time.monotonic
    ):
        self._inspect, self._clock = inspect_active, clock
        self._holders: dict[str, str] = {}
        self._asked_at = float("-inf")

    def _ask(self) -> None:
        replies = self._inspect(INSPECT_TIMEOUT_SECONDS) or {}
        self._holders = {task["id"]: node for node, tasks in replies.items() for task in tasks or [] if "id" in task}
        self._asked_at = self._clock()

    def holder(self, task_id: str) -> str | None:
        """The node name (``name@host``) of the worker executing ``task_id``; None when, asked
        :data:`INSPECT_ATTEMPTS` times, no worker said it was."""
        if self._clock() - self._asked_at > _ACTIVE_TTL_SECONDS:
            self._ask()
        for attempt in range(INSPECT_ATTEMPTS):
            if task_id in self._holders:
                return self._holders[task_id]
            if attempt < INSPECT_ATTEMPTS - 1:
                self._ask()
        return None


class MonitoredCeleryRunLauncher(CeleryRunLauncher):
    """dagster-celery's run launcher whose health check reports a run whose worker died (see the module docstring).

    Configured exactly like ``dagster_celery.CeleryRunLauncher`` (``broker``, ``backend``, ``config_source``, ...).
    The result backend must be one every host reads (a database or Redis; not ``rpc://``, whose results only the
    process that sent the task receives).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._active = ActiveTasks(lambda timeout: self.celery.control.inspect(timeout=timeout).active())

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if task_id is None:  # the launcher tags the run right after sending it; a look in between sees no tag yet
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run's Celery task is not tagged yet")
        result = self.celery.AsyncResult(task_id)
        state = result.state
        if state == "SUCCESS":
            current = self._instance.get_run_by_id(run.run_id)
            if current is None or current.is_finished:
                return CheckRunHealthResult(WorkerStatus.SUCCESS)
        elif state != "STARTED":
            return super().check_run_worker_health(run)
        if self._active.holder(task_id) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if self.celery.AsyncResult(task_id).state != state:  # it moved on while the workers were asked
            return super().check_run_worker_health(run)
        last = result.info.get("hostname") if isinstance(result.info, dict) else result.worker
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"no Celery worker is executing this run's task {task_id} (state {state}, last seen on "
            f"{last or 'an unknown worker'}; asked {INSPECT_ATTEMPTS} times): the run's worker or its host is gone",
        )
