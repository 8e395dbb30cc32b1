"""ETL_EXECUTOR picks the executor of every job of the built code location; unset, ETL_ENV's default holds; an
unknown value is an error that names the variable and the allowed values."""

from __future__ import annotations

import pytest
from dagster import in_process_executor, multiprocess_executor
from dagster_k8s import k8s_job_executor

from etl_assets.definitions import build_definitions
from etl_assets.executors import EXECUTORS
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets.settings import SettingsError

# the packaged shop orders pipeline's job
ORDERS_JOB = pipeline_job_name(Pipeline("shop", "orders"))


@pytest.mark.parametrize(
    ("etl_env", "etl_executor", "expected"),
    [
        ("local", None, in_process_executor),
        ("production", None, multiprocess_executor),
        ("production", "", multiprocess_executor),
        ("local", "multiprocess", multiprocess_executor),
        ("production", " In_Process ", in_process_executor),
        ("production", "k8s_job", k8s_job_executor),
        ("local", "k8s_job", k8s_job_executor),
    ],
)
def test_etl_executor_picks_the_executor_of_every_job(monkeypatch, data_dir, etl_env, etl_executor, expected):
    monkeypatch.setenv("ETL_ENV", etl_env)
    if etl_executor is None:
        monkeypatch.delenv("ETL_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("ETL_EXECUTOR", etl_executor)
    jobs = build_definitions().get_repository_def().get_all_jobs()
    assert {job.name: job.executor_def for job in jobs} == {job.name: expected for job in jobs}
    assert ORDERS_JOB in {job.name for job in jobs}


def test_the_k8s_job_executor_launches_steps_as_kubernetes_jobs(monkeypatch, data_dir):
    monkeypatch.setenv("ETL_ENV", "production")
    monkeypatch.setenv("ETL_EXECUTOR", "k8s_job")
    executor = build_definitions().resolve_job_def(ORDERS_JOB).executor_def
    # dagster-k8s' executor (named "k8s"); it needs a persistent instance and a reconstructable job, as steps run in
    # other pods
    assert executor.name == "k8s"
    assert executor.executor_creation_fn is k8s_job_executor.executor_creation_fn


def test_an_unknown_etl_executor_is_an_error_naming_the_allowed_values(monkeypatch, data_dir):
    monkeypatch.setenv("ETL_EXECUTOR", "celery")
    with pytest.raises(SettingsError) as raised:
        build_definitions()
    assert str(raised.value) == (
        "ETL_EXECUTOR='celery' is not an executor; set ETL_EXECUTOR to one of in_process, multiprocess, k8s_job"
    )
    assert EXECUTORS == ("in_process", "multiprocess", "k8s_job")
