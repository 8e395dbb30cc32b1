"""Which executor runs the steps of a run: ``ETL_EXECUTOR``, by default the one ``ETL_ENV`` implies.

| ``ETL_EXECUTOR`` | steps run | when |
| --- | --- | --- |
| ``in_process`` | one after the other in the run's own process | default for ``ETL_ENV=local``: a fresh interpreter per step costs seconds |
| ``multiprocess`` | in parallel child processes of the run | default for ``ETL_ENV=production`` |
| ``k8s_job`` | each as its own Kubernetes Job (dagster-k8s' ``k8s_job_executor``) | a partition too big for one pod; needs the ``K8sRunLauncher`` (deploy/k8s/) |

Read when the code location is built, like ``ETL_ENV``; an unknown value is an error there, never a silent default.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from etl_assets.settings import LOCAL, SettingsError

if TYPE_CHECKING:
    from dagster import ExecutorDefinition

EXECUTOR_ENV = "ETL_EXECUTOR"
IN_PROCESS = "in_process"
MULTIPROCESS = "multiprocess"
K8S_JOB = "k8s_job"
EXECUTORS = (IN_PROCESS, MULTIPROCESS, K8S_JOB)


def executor_name(env: str) -> str:
    """The executor ``ETL_EXECUTOR`` names, or the default of the environment ``env`` (an ``ETL_ENV`` value).

    Raises:
        SettingsError: ``ETL_EXECUTOR`` names no executor.
    """
    name = os.environ.get(EXECUTOR_ENV, "").strip().lower()
    if not name:
        return IN_PROCESS if env == LOCAL else MULTIPROCESS
    if name not in EXECUTORS:
        raise SettingsError(
            f"{EXECUTOR_ENV}={name!r} is not an executor; set {EXECUTOR_ENV} to one of {', '.join(EXECUTORS)}"
        )
    return name


def select_executor(env: str) -> ExecutorDefinition:
    """The executor definition for :func:`executor_name`; dagster-k8s is imported only when it is chosen."""
    name = executor_name(env)
    if name == K8S_JOB:
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    from dagster import in_process_executor, multiprocess_executor

    return in_process_executor if name == IN_PROCESS else multiprocess_executor
