"""The Celery run launcher's health check (etl_assets/celery_launcher.py): a started run is reported failed only
when no worker is executing its task, whatever the result backend still says, and a worker that answers keeps its
run. The task states are stored in Celery's in-memory result backend and the workers' answers to ``inspect active``
are given by the test; the real broker, workers and SIGKILL are in test_distributed.py."""

from __future__ import annotations

import uuid

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.launcher import WorkerStatus  # the launcher interface's types have no public export
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from etl_assets.celery_launcher import INSPECT_ATTEMPTS, ActiveTasks, MonitoredCeleryRunLauncher


class Workers:
    """What the workers answer to ``inspect active``: node name -> task ids; counts the broadcasts."""

    def __init__(self):
        self.active: dict[str, list[str]] = {}
        self.asked = 0
        self.on_ask = None

    def __call__(self, timeout: float):
        self.asked += 1
        if self.on_ask:
            self.on_ask()
        return {node: [{"id": t, "name": "execute_job"} for t in tasks] for node, tasks in self.active.items()}


@pytest.fixture
def launcher(instance: DagsterInstance) -> tuple[MonitoredCeleryRunLauncher, Workers]:
    launcher = MonitoredCeleryRunLauncher(default_queue="dagster", broker="memory://", backend="cache+memory://")
    launcher.register_instance(instance)
    workers = Workers()
    launcher._active = ActiveTasks(workers)  # the workers' answers, instead of a broadcast over a broker
    return launcher, workers


def started_run(instance: DagsterInstance, status: DagsterRunStatus = DagsterRunStatus.STARTED) -> DagsterRun:
    task_id = str(uuid.uuid4())
    return instance.add_run(
        DagsterRun(job_name="job", run_id=str(uuid.uuid4()), status=status, tags={DAGSTER_CELERY_TASK_ID_TAG: task_id})
    )


def store(launcher: MonitoredCeleryRunLauncher, run: DagsterRun, state: str, meta: object) -> None:
    launcher.celery.backend.store_result(run.tags[DAGSTER_CELERY_TASK_ID_TAG], meta, state)


def test_a_started_task_on_a_worker_that_executes_it_is_running(launcher, instance):
    launcher, workers = launcher
    run = started_run(instance)
    store(launcher, run, "STARTED", {"pid": 7, "hostname": "wa@host"})
    workers.active["wa@host"] = [run.tags[DAGSTER_CELERY_TASK_ID_TAG]]
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING


def test_a_started_task_no_worker_executes_is_failed_after_asking_again(launcher, instance):
    launcher, workers = launcher
    run = started_run(instance)
    store(launcher, run, "STARTED", {"pid": 7, "hostname": "wa@host"})
    workers.active["wb@host"] = ["another-task"]
    result = launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.FAILED
    assert "no Celery worker is executing" in result.msg and "wa@host" in result.msg
    assert workers.asked == INSPECT_ATTEMPTS


def test_one_broadcast_answers_for_every_run_of_a_monitoring_pass(launcher, instance):
    launcher, workers = launcher
    runs = [started_run(instance) for _ in range(3)]
    for run in runs:
        store(launcher, run, "STARTED", {"pid": 7, "hostname": "wa@host"})
    workers.active["wa@host"] = [r.tags[DAGSTER_CELERY_TASK_ID_TAG] for r in runs]
    assert {launcher.check_run_worker_health(r).status for r in runs} == {WorkerStatus.RUNNING}
    assert workers.asked == 1


def test_a_task_that_ended_while_the_run_did_not_is_failed(launcher, instance):
    """A task redelivered after its worker was lost ends at once (Dagster ignores the duplicate): SUCCESS in the
    backend, the run still STARTED and no worker executing the task."""
    launcher, workers = launcher
    run = started_run(instance)
    store(launcher, run, "SUCCESS", 0)
    result = launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.FAILED and "state SUCCESS" in result.msg


def test_the_original_worker_keeps_its_run_when_a_redelivered_copy_ended(launcher, instance):
    """A worker that lost its broker connection for a moment still runs the task; the copy that the broker handed to
    another worker ended at once. The original still lists the task as active: the run is healthy."""
    launcher, workers = launcher
    run = started_run(instance)
    store(launcher, run, "SUCCESS", 0)
    workers.active["wa@host"] = [run.tags[DAGSTER_CELERY_TASK_ID_TAG]]
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING


def test_a_finished_run_whose_task_succeeded_is_success(launcher, instance):
    launcher, workers = launcher
    run = started_run(instance, DagsterRunStatus.SUCCESS)
    store(launcher, run, "SUCCESS", 0)
    assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS
    assert workers.asked == 0


def test_a_task_that_finished_while_the_workers_were_asked_is_not_failed(launcher, instance):
    launcher, workers = launcher
    run = started_run(instance)
    store(launcher, run, "STARTED", {"pid": 7, "hostname": "wa@host"})
    workers.on_ask = lambda: store(launcher, run, "SUCCESS", 0)  # it ends between reading its state and asking
    assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS


def test_a_failed_task_is_failed_and_a_run_not_yet_tagged_is_running(launcher, instance):
    launcher, _ = launcher
    run = started_run(instance)
    store(launcher, run, "FAILURE", RuntimeError("worker lost"))
    assert launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
    untagged = instance.add_run(DagsterRun(job_name="job", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED))
    assert launcher.check_run_worker_health(untagged).status == WorkerStatus.RUNNING
