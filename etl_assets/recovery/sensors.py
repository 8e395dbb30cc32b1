"""The run-worker watchdog: a local run whose worker process died is marked failed, so run retries resume it.

Dagster's run monitoring asks the run launcher whether a run's worker is healthy. The Kubernetes launcher can
answer; the default (local) launcher cannot, so without this sensor a run whose process was killed (SIGKILL, OOM
killer, a laptop closing) stays STARTED forever and is never retried. The sensor finds the worker's pid in the
run's event log ("Started process for run (pid: N).", written by Dagster when it launches a run), and when that
process is gone, or is a zombie, or is a newer process that reused the pid, reports the run failed. The run-retry
daemon (``run_retries`` in ``dagster.yaml``) then re-executes it from failure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultRunLauncher,
    DefaultSensorStatus,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

WATCHDOG_SENSOR = "run_worker_watchdog"
_PID_MESSAGE = re.compile(r"Started process for run \(pid: (\d+)\)")
# A process that started this long after the run logged its pid is another process that reused the number.
_PID_REUSE_SLACK_SECONDS = 5.0
MAX_RUNS_PER_TICK = 200


@dataclass(frozen=True)
class WorkerState:
    """What became of a run worker: ``alive``, or why it is not (``gone``, ``zombie``, ``pid reused``)."""

    pid: int
    state: str

    @property
    def alive(self) -> bool:
        return self.state == "alive"


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def process_state(pid: int, logged_at: float) -> WorkerState:
    """Whether ``pid`` is still the process that logged itself at ``logged_at`` (a Unix timestamp).

    Reads ``/proc`` where there is one (Linux); elsewhere only whether a process with that pid exists.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return WorkerState(pid, "gone")
    except PermissionError:
        pass  # it exists, owned by someone else
    stat_path = Path(f"/proc/{pid}/stat")
    try:
        stat = stat_path.read_text()
    except FileNotFoundError:
        return WorkerState(pid, "gone")
    except OSError:
        return WorkerState(pid, "alive")
    # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return WorkerState(pid, "zombie")
    boot = _boot_time()
    if boot is not None:
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        if started > logged_at + _PID_REUSE_SLACK_SECONDS:
            return WorkerState(pid, "pid reused")
    return WorkerState(pid, "alive")


def run_worker_pid(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid a launched run's worker logged, with the time it did; None for a run not (yet) in a worker."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        match = _PID_MESSAGE.search(entry.message or "")
        if match:
            return int(match.group(1)), entry.timestamp
    return None


def dead_worker_runs(instance: DagsterInstance) -> list[tuple[str, WorkerState]]:
    """STARTED runs whose worker process is no longer running."""
    dead = []
    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=MAX_RUNS_PER_TICK):
        found = run_worker_pid(instance, record.dagster_run.run_id)
        if found is None:
            continue
        state = process_state(*found)
        if not state.alive:
            dead.append((record.dagster_run.run_id, state))
    return dead


def build_watchdog_sensor(interval_seconds: int) -> SensorDefinition:
    """The sensor that fails runs whose local worker died (see the module docstring)."""

    @sensor(
        name=WATCHDOG_SENSOR,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks a STARTED run failed when its local run worker process has died, so that run "
        "retries (dagster.yaml run_retries) re-execute it from failure. Does nothing with other run launchers "
        "(Kubernetes), whose health Dagster's run monitoring checks itself.",
    )
    def run_worker_watchdog(context: SensorEvaluationContext):
        instance = context.instance
        if not isinstance(instance.run_launcher, DefaultRunLauncher):
            return SkipReason(f"run launcher {type(instance.run_launcher).__name__} is checked by run monitoring")
        dead = dead_worker_runs(instance)
        for run_id, state in dead:
            run = instance.get_run_by_id(run_id)
            if run is None or run.status != DagsterRunStatus.STARTED:
                continue
            message = (
                f"run worker (pid {state.pid}) is no longer running ({state.state}); marked failed by "
                f"{WATCHDOG_SENSOR} so that run retries re-execute it from failure"
            )
            context.log.warning(f"run {run_id}: {message}")
            instance.report_run_failed(run, message=message)
        if dead:
            return SkipReason(f"marked {len(dead)} run(s) with a dead worker failed: {', '.join(r for r, _ in dead)}")
        return SkipReason("every started run's worker is alive")

    return run_worker_watchdog
