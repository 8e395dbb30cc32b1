"""Run-level recovery under the real `dagster-daemon`: a run whose worker is SIGKILLed mid-way is marked failed
(by Dagster's code server when only the worker died; by `run_worker_watchdog` when the daemon and code server died
with it and were restarted) and re-executed from failure by run retries, with no person and no row lost or
duplicated; and the watchdog's liveness test tells a live worker from a dead, a zombie and a reused pid."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from etl_assets.keys import Pipeline, pipeline_job_name, pipeline_ref
from etl_assets.recovery.sensors import process_state, run_worker_pid
from etl_assets.resources.targets import TEST_PAUSE_IN_LOAD_ENV
from etl_assets_tests.test_daemon_e2e import REPO, SPECS, YESTERDAY, make_lab, wait_for, warehouse

pytestmark = [pytest.mark.daemon]

ROWS = 400_000
SPEC = SPECS["events.yaml"]  # a daily files pipeline with its file sensor on
EVENTS = Pipeline("lab", "events")  # SPEC's
KINDS, VISITS = Pipeline("lab", "kinds"), Pipeline("lab", "visits")  # the pipelines of REEXECUTE_SPECS
# every load holds its transaction open this long before COMMIT (and again before the checkpoint), so the kill
# lands inside the load step however fast the machine is, rather than racing the run to its end
LOAD_PAUSE_SECONDS = 8


def test_repo_instance_config_enables_run_retries_and_monitoring(tmp_path):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries >= 1
        # step failures are the RetryPolicy's job; run retries are for runs whose worker died
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0  # a killed run's warehouse slot is freed


def test_process_state_tells_alive_gone_zombie_and_reused_pids():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = time.time()
        assert process_state(child.pid, now).state == "alive"
        # the pid was logged long before this process started: the number was reused by another process
        assert process_state(child.pid, now - 3600).state == "pid reused"
        child.kill()
        deadline = time.monotonic() + 10
        while process_state(child.pid, now).state == "alive" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(child.pid, now).state == "zombie"  # killed, not yet reaped by its parent
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid, now).state == "gone"


@pytest.fixture
def lab(tmp_path: Path):
    env, _, data, daemon = make_lab(
        tmp_path,
        {"events.yaml": SPEC},
        {"ETL_WATCHDOG_INTERVAL_SECONDS": "2", TEST_PAUSE_IN_LOAD_ENV: str(LOAD_PAUSE_SECONDS)},
    )
    landing = data / "landing" / pipeline_ref(EVENTS)  # the pipeline's landing folder, landing/<domain>.<name>/
    landing.mkdir(parents=True, exist_ok=True)
    yield env, landing, data, daemon
    daemon.stop()


def _paused_in_load(instance: DagsterInstance, run_id: str) -> bool:
    return any(
        TEST_PAUSE_IN_LOAD_ENV in (e.user_message or "") and "before COMMIT" in e.user_message
        for e in instance.all_logs(run_id)
    )


def _materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    keys = set()
    for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        assert e.dagster_event is not None and e.dagster_event.asset_key is not None
        keys.add(e.dagster_event.asset_key.to_user_string())
    return keys


@pytest.mark.parametrize("killed", ["worker", "everything"])
def test_killed_run_is_retried_from_failure_by_the_daemon(lab, killed):
    env, landing, data, daemon = lab
    part = landing / f"events_{YESTERDAY}.csv.part"
    with open(part, "w") as fh:
        fh.write("event_id,kind,amount\n")
        fh.writelines(f"{i},{'buy' if i % 3 else 'view'},{i % 1000}.{i % 100:02d}\n" for i in range(ROWS))
    part.rename(landing / f"events_{YESTERDAY}.csv")
    daemon.start()
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])

    def first_run():
        runs = instance.get_runs(RunsFilter(job_name=pipeline_job_name(EVENTS)))
        return runs[-1] if runs else None

    def in_worker() -> bool:
        started = first_run()
        return started is not None and run_worker_pid(instance, started.run_id) is not None

    wait_for("the file's run to start in a worker process", in_worker, 240, daemon)
    run = first_run()
    assert run is not None
    worker = run_worker_pid(instance, run.run_id)
    assert worker is not None
    pid, _ = worker
    wait_for("the load step to hold its transaction open", lambda: _paused_in_load(instance, run.run_id), 240, daemon)
    assert "lab/raw_events" in _materialized(instance, run.run_id)
    if killed == "worker":
        os.kill(pid, signal.SIGKILL)  # mid-load: rows inserted, not committed
    else:
        daemon.kill()  # the daemon, its code server and the run worker, as when a machine or `dagster dev` dies
        assert process_state(pid, time.time()).state != "alive"
    assert "lab/warehouse_events" not in _materialized(instance, run.run_id), "the run finished before it was killed"

    def status() -> DagsterRunStatus:
        killed_run = instance.get_run_by_id(run.run_id)
        assert killed_run is not None
        return killed_run.status

    if killed == "everything":
        time.sleep(3)
        assert status() == DagsterRunStatus.STARTED  # nobody is left to notice
        daemon.start()

    wait_for("the killed run marked failed", lambda: status() == DagsterRunStatus.FAILURE, 120, daemon)
    failure = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    by_watchdog = any("run_worker_watchdog" in e.message and str(pid) in e.message for e in failure)
    by_code_server = any(
        "Run execution process" in e.message
        for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
    )
    if killed == "everything":
        assert by_watchdog, [e.message for e in failure]  # the code server died with the worker
    else:  # the code server saw its child die; the watchdog may see it first (both tick every few seconds)
        assert by_code_server or by_watchdog, [e.message for e in failure]

    def retry():
        runs = [r for r in instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": run.run_id}))]
        return runs[0] if runs else None

    def retried() -> bool:
        child = retry()
        return child is not None and child.status == DagsterRunStatus.SUCCESS

    wait_for("run retries to re-execute it and succeed", retried, 300, daemon)
    again = retry()
    assert again is not None
    assert again.tags.get("dagster/retry_number") == "1"  # launched by run retries, not by a person
    # from failure: the finished extract was not run again, the rest was
    done_again = _materialized(instance, again.run_id)
    assert "lab/raw_events" not in done_again and "lab/warehouse_events" in done_again
    assert warehouse(
        env, "SELECT count(*), count(DISTINCT event_id), min(event_id), max(event_id) FROM lab.events"
    ) == [(ROWS, ROWS, 0, ROWS - 1)]
    assert warehouse(env, "SELECT DISTINCT _etl_partition FROM lab.events") == [(YESTERDAY,)]
    wait_for(
        "the loaded file archived",
        lambda: len(list((data / "archive" / pipeline_ref(EVENTS)).glob("*.csv"))) == 1,
        120,
        daemon,
    )


REEXECUTE_SPECS = {
    "kinds.yaml": """
        name: kinds
        domain: lab
        source: {kind: files, format: csv, glob: "kinds*.csv"}
        columns: [{name: kind, type: VARCHAR, nullable: false}]
        primary_key: [kind]
    """,
    "visits.yaml": """
        name: visits
        domain: lab
        source: {kind: files, format: csv, glob: "visits*.csv"}
        columns:
          - {name: visit_id, type: BIGINT, nullable: false}
          - {name: kind, type: VARCHAR, nullable: false, references: {dataset: kinds, column: kind}}
        primary_key: [visit_id]
    """,
}


def test_reexecute_command_resumes_a_failed_run_from_failure(tmp_path):
    home, data, specs = tmp_path / "home", tmp_path / "data", tmp_path / "specs"
    for d in (home, data / "landing" / pipeline_ref(VISITS), data / "landing" / pipeline_ref(KINDS), specs):
        d.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for name, text in REEXECUTE_SPECS.items():
        (specs / name).write_text(textwrap.dedent(text))
    (data / "landing" / pipeline_ref(VISITS) / "visits.csv").write_text("visit_id,kind\n1,view\n2,buy\n3,view\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ETL_DATA_DIR": str(data), "ETL_PIPELINES_DIR": str(specs)}
    bin_dir = Path(sys.executable).parent

    def run(*args):
        return subprocess.run([str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    # visits refers to kinds, which is not loaded yet: extract succeeds, validation fails for good
    first = run(bin_dir / "dagster", "job", "execute", "-m", "etl_assets", "-j", pipeline_job_name(VISITS))
    assert first.returncode != 0
    instance = DagsterInstance.from_config(str(home))
    (failed,) = instance.get_runs(RunsFilter(job_name=pipeline_job_name(VISITS)))
    assert failed.status == DagsterRunStatus.FAILURE
    assert "lab/raw_visits" in _materialized(instance, failed.run_id)

    (data / "landing" / pipeline_ref(KINDS) / "kinds.csv").write_text("kind\nview\nbuy\n")  # the upstream is fixed
    assert (
        run(bin_dir / "dagster", "job", "execute", "-m", "etl_assets", "-j", pipeline_job_name(KINDS)).returncode == 0
    )
    (data / "landing" / pipeline_ref(VISITS) / "visits.csv").unlink()  # re-execution must not need the source again
    again = run(bin_dir / "etl-assets", "reexecute", failed.run_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"re-executed {failed.run_id} from failure" in again.stdout
    # each re-executed step is reported as it ends, with the rows it wrote; the extract is not run again
    steps = re.findall(r"^\[(\d+)/(\d+)\] (.+?) ok, ", again.stdout, re.M)
    assert [(done, total, label) for done, total, label in steps] == [
        ("1", "2", "lab/clean_visits, lab/quarantine_visits"),  # one step validates into both
        ("2", "2", "lab/warehouse_visits"),
    ], again.stdout
    assert "lab/raw_visits" not in again.stdout
    assert re.search(r"^\[2/2\] lab/warehouse_visits ok, 3 rows, ", again.stdout, re.M), again.stdout
    assert re.search(r"^reexecute \S+: 2 of 2 steps ok, 3 rows, ", again.stdout, re.M), again.stdout  # loaded once
    child = instance.get_runs(RunsFilter(job_name=pipeline_job_name(VISITS)))[0]  # the newest
    assert child.run_id != failed.run_id and child.parent_run_id == failed.run_id
    assert child.status == DagsterRunStatus.SUCCESS
    done = _materialized(instance, child.run_id)
    assert "lab/raw_visits" not in done and {"lab/clean_visits", "lab/warehouse_visits"} <= done
    assert warehouse(env, "SELECT visit_id, kind FROM lab.visits ORDER BY 1") == [(1, "view"), (2, "buy"), (3, "view")]

    # a run that succeeded, or one that does not exist, is refused with the reason
    refused = run(bin_dir / "etl-assets", "reexecute", child.run_id)
    assert refused.returncode == 2 and "succeeded; there is nothing to re-execute" in refused.stderr
    missing = run(bin_dir / "etl-assets", "reexecute", "0" * 36)
    assert missing.returncode == 2 and "no run" in missing.stderr
