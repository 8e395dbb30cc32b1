"""Scheduling under the real `dagster-daemon`: files dropped into the landing zone become exactly one run each,
land in the warehouse and are archived; a changed upstream refreshes its mart through automation with no request
from the test; and a daemon killed mid-tick and restarted neither loses nor duplicates a file's run."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

pytestmark = [pytest.mark.daemon]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _zone_near_midday() -> str:
    """A fixed-offset zone in which it is now about noon. Eager automation builds only the latest partition, so a
    suite that crosses midnight in the partitions' zone would move the target between writing a file and waiting for
    its mart; twelve hours from midnight, no boundary passes while the tests run."""
    hours = 12 - dt.datetime.now(dt.UTC).hour  # local = UTC + hours, in -11..+12
    return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"  # Etc/GMT-5 is UTC+5: POSIX signs are inverted


ZONE = _zone_near_midday()
YESTERDAY = (dt.datetime.now(ZoneInfo(ZONE)).date() - dt.timedelta(days=1)).isoformat()
START = (dt.date.fromisoformat(YESTERDAY) - dt.timedelta(days=30)).isoformat()

SPECS = {
    "events.yaml": f"""
        name: events
        domain: lab
        source: {{kind: files, format: csv, glob: "events_*.csv"}}
        partitions: {{type: daily, start: {START}, timezone: {ZONE}}}
        columns:
          - {{name: event_id, type: BIGINT, nullable: false}}
          - {{name: kind, type: VARCHAR, nullable: false}}
          - {{name: amount, type: "DECIMAL(10,2)", nullable: false}}
        primary_key: [event_id]
        arrival: {{default_status: running, interval_seconds: 1, max_files_per_tick: 10}}
        retry: {{max_retries: 0}}
    """,
    "events_audit.yaml": f"""
        name: events_audit
        domain: lab
        transform: {{sql: events_audit.sql, inputs: [events]}}
        partitions: {{type: daily, start: {START}, timezone: {ZONE}}}
        after: [events]
    """,
    "events_daily.yaml": f"""
        name: events_daily
        domain: lab
        transform: {{sql: events_daily.sql, inputs: [events]}}
        partitions: {{type: daily, start: {START}, timezone: {ZONE}}}
        automation: {{condition: eager}}
    """,
}
MART_SQL = "SELECT kind, count(*) AS n, sum(amount) AS total FROM events GROUP BY kind ORDER BY kind\n"


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; daemon log tail:\n{daemon.tail()}")


class Daemon:
    def __init__(self, env: dict, log: Path):
        self.env, self.log_path, self.proc = env, log, None

    def start(self) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "etl_assets"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def make_lab(tmp_path: Path, files: dict[str, str], env: dict[str, str]):
    """A DAGSTER_HOME with the repository's dagster.yaml, a data dir with `landing/lab.events/`, a spec dir holding
    ``files`` and a (not yet started) daemon over them. Returns ``(env, landing, data, daemon)``."""
    home, data, specs = tmp_path / "home", tmp_path / "data", tmp_path / "specs"
    for d in (home, data, specs):
        d.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for name, text in files.items():
        (specs / name).write_text(textwrap.dedent(text))
    env = {**os.environ, "DAGSTER_HOME": str(home), "ETL_DATA_DIR": str(data), "ETL_PIPELINES_DIR": str(specs), **env}
    landing = data / "landing" / "lab.events"
    landing.mkdir(parents=True)
    # the instance's SQLite storage is created here, before the daemon starts: created by the daemon while the test
    # polls it, both processes stamped the schema and the next read failed ("more than one head present")
    with DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
    return env, landing, data, Daemon(env, tmp_path / "daemon.log")


@pytest.fixture
def lab(tmp_path: Path):
    files = {**SPECS, "events_daily.sql": MART_SQL, "events_audit.sql": "SELECT count(*) AS events FROM events\n"}
    env, landing, data, daemon = make_lab(tmp_path, files, {"ETL_AUTOMATION_INTERVAL_SECONDS": "5"})
    yield env, landing, data, daemon
    daemon.stop()


def write_events(landing: Path, day: str, rows: list[tuple[int, str, str]], suffix: str = "") -> Path:
    tmp = landing / f"events_{day}{suffix}.csv.part"
    tmp.write_text("event_id,kind,amount\n" + "".join(f"{i},{k},{a}\n" for i, k, a in rows))
    final = landing / f"events_{day}{suffix}.csv"
    tmp.rename(final)  # writers deliver under a temporary name, then rename
    return final


def runs_of(env: dict, job: str, status=None) -> Sequence[DagsterRun]:
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    filters = RunsFilter(job_name=job, statuses=[status] if status else None)
    return instance.get_runs(filters)


def warehouse(env: dict, sql: str):
    path = Path(env["ETL_DATA_DIR"]) / "warehouse.duckdb"
    if not path.exists():
        return None
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute(sql).fetchall()
    except duckdb.Error:
        return None  # a writer holds the file; ask again next poll


def test_files_to_warehouse_and_automation_refreshes_the_mart(lab):
    env, landing, data, daemon = lab
    earlier = (dt.date.fromisoformat(YESTERDAY) - dt.timedelta(days=3)).isoformat()
    write_events(landing, earlier, [(1, "view", "1.00"), (2, "buy", "10.00")])
    write_events(landing, YESTERDAY, [(3, "view", "2.00"), (4, "buy", "20.50"), (5, "buy", "5.25")])
    daemon.start()

    wait_for(
        "two pipeline runs to succeed",
        lambda: len(runs_of(env, "lab__events_pipeline", DagsterRunStatus.SUCCESS)) == 2,
        240,
        daemon,
    )
    assert warehouse(env, "SELECT count(*), sum(amount) FROM lab.events") == [(5, pytest.approx(38.75))]
    wait_for("both files archived", lambda: len(list((data / "archive" / "lab.events").glob("*.csv"))) == 2, 60, daemon)
    assert list(landing.iterdir()) == []
    # event trigger: events_audit runs after each successful events run, for the same partition
    wait_for(
        "the triggered audit runs",
        lambda: len(runs_of(env, "lab__events_audit_pipeline", DagsterRunStatus.SUCCESS)) == 2,
        240,
        daemon,
    )
    audits = runs_of(env, "lab__events_audit_pipeline")
    assert sorted(r.tags["dagster/partition"] for r in audits) == sorted([earlier, YESTERDAY])
    assert all(r.tags["etl/triggered_by_run"] for r in audits)

    # a broken second file for a day is refused alone: the empty (0-byte) delivery goes to quarantine with the reason
    # beside it, and the day keeps the rows of its other file
    bad = landing / f"events_{earlier}_late.csv"
    bad.write_bytes(b"")
    wait_for(
        "the empty file quarantined",
        lambda: len(list((data / "quarantine" / "lab.events").glob("*.reason.txt"))) == 1,
        240,
        daemon,
    )
    reason = next((data / "quarantine" / "lab.events").glob("*.reason.txt")).read_text()
    assert "empty (0 bytes)" in reason and bad.name in reason
    wait_for(
        "the empty file's run",
        lambda: len(runs_of(env, "lab__events_pipeline", DagsterRunStatus.SUCCESS)) == 3,
        240,
        daemon,
    )
    assert warehouse(env, f"SELECT count(*) FROM lab.events WHERE _etl_partition = '{earlier}'") == [(2,)]
    # automation: the mart's latest partition is built without any request from the test
    wait_for(
        "the mart's automated run",
        lambda: warehouse(env, "SELECT kind, n FROM lab.events_daily ORDER BY kind") == [("buy", 2), ("view", 1)],
        240,
        daemon,
    )

    # the upstream changes: a corrected file for yesterday is delivered again
    write_events(landing, YESTERDAY, [(3, "view", "2.00"), (4, "buy", "20.50"), (5, "buy", "5.25"), (6, "buy", "1.00")])
    wait_for(
        "the mart refreshed from the corrected file",
        lambda: warehouse(env, "SELECT kind, n FROM lab.events_daily ORDER BY kind") == [("buy", 3), ("view", 1)],
        300,
        daemon,
    )
    assert len(runs_of(env, "lab__events_pipeline", DagsterRunStatus.SUCCESS)) == 4
    assert warehouse(env, "SELECT count(*) FROM lab.events") == [(6,)]


@pytest.fixture
def events_lab(tmp_path: Path):
    """The events pipeline alone (no marts), so the daemon launches only the file sensor's runs."""
    env, landing, data, daemon = make_lab(tmp_path, {"events.yaml": SPECS["events.yaml"]}, {})
    yield env, landing, data, daemon
    daemon.stop()


def test_every_file_of_a_day_is_the_partition_and_a_redelivery_replaces_only_its_rows(events_lab):
    env, landing, data, daemon = events_lab
    archive = data / "archive" / "lab.events"

    def events() -> list[tuple]:
        rows = warehouse(env, "SELECT event_id, kind, amount, _etl_partition FROM lab.events ORDER BY event_id")
        assert rows is not None, "the warehouse is missing or held by a writer"
        return rows

    def succeeded():
        return len(runs_of(env, "lab__events_pipeline", DagsterRunStatus.SUCCESS))

    write_events(landing, YESTERDAY, [(1, "view", "1.00"), (2, "buy", "10.00")], "_storeA")
    daemon.start()
    wait_for(
        "storeA loaded and archived",
        lambda: succeeded() == 1 and len(list(archive.glob("*storeA.csv"))) == 1,
        240,
        daemon,
    )
    # minutes later, a second file for the same day: its rows are added to the day's
    write_events(landing, YESTERDAY, [(3, "view", "2.00"), (4, "buy", "20.50"), (5, "buy", "5.25")], "_storeB")
    wait_for(
        "storeB loaded and archived",
        lambda: succeeded() == 2 and len(list(archive.glob("*storeB.csv"))) == 1,
        240,
        daemon,
    )
    assert [tuple(r[:3]) for r in events()] == [
        (1, "view", 1),
        (2, "buy", 10),
        (3, "view", 2),
        (4, "buy", 20.5),
        (5, "buy", 5.25),
    ]
    assert {r[3] for r in events()} == {YESTERDAY}

    # a changed re-delivery of storeA replaces storeA's rows only
    write_events(landing, YESTERDAY, [(1, "view", "1.50"), (6, "refund", "-3.00")], "_storeA")
    wait_for(
        "the re-delivered storeA loaded",
        lambda: succeeded() == 3 and len(list(archive.glob("*storeA.csv"))) == 2,
        240,
        daemon,
    )
    assert [tuple(r[:3]) for r in events()] == [
        (1, "view", 1.5),
        (3, "view", 2),
        (4, "buy", 20.5),
        (5, "buy", 5.25),
        (6, "refund", -3),
    ]

    # an identical re-delivery changes nothing: archived without a run
    write_events(landing, YESTERDAY, [(3, "view", "2.00"), (4, "buy", "20.50"), (5, "buy", "5.25")], "_storeB")
    wait_for("the identical storeB archived", lambda: len(list(archive.glob("*storeB.csv"))) == 2, 120, daemon)
    assert succeeded() == 3 and len(runs_of(env, "lab__events_pipeline")) == 3
    assert len(events()) == 5
    # the raw partition holds every file's rows once, named by file
    import pyarrow.parquet as pq

    raw = pq.read_table(data / "lake" / "lab" / "raw_events" / f"{YESTERDAY}.parquet").to_pylist()
    assert sorted((r["_etl_source"], r["event_id"]) for r in raw) == [
        (f"events_{YESTERDAY}_storeA.csv", "1"),
        (f"events_{YESTERDAY}_storeA.csv", "6"),
        (f"events_{YESTERDAY}_storeB.csv", "3"),
        (f"events_{YESTERDAY}_storeB.csv", "4"),
        (f"events_{YESTERDAY}_storeB.csv", "5"),
    ]


def test_daemon_killed_mid_tick_loses_and_duplicates_nothing(lab):
    env, landing, data, daemon = lab
    days = [(dt.date.fromisoformat(START) + dt.timedelta(days=i)).isoformat() for i in range(12)]
    for n, day in enumerate(days):
        write_events(landing, day, [(n * 10 + j, "view", "1.00") for j in range(3)])
    daemon.start()
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    wait_for(
        "the first sensor run request",
        lambda: len(instance.get_runs(RunsFilter(job_name="lab__events_pipeline"))) > 0,
        180,
        daemon,
    )
    daemon.kill()  # mid-way: max_files_per_tick is 10, so 2 files are not yet requested
    daemon.start()
    wait_for(
        "every file's run to succeed",
        lambda: len(runs_of(env, "lab__events_pipeline", DagsterRunStatus.SUCCESS)) >= len(days),
        420,
        daemon,
    )
    runs = runs_of(env, "lab__events_pipeline")
    keys = [r.tags.get("dagster/run_key") for r in runs]
    assert len(keys) == len(set(keys)) == len(days), keys
    assert sorted(r.tags["dagster/partition"] for r in runs) == days
    wait_for(
        "all files archived",
        lambda: len(list((data / "archive" / "lab.events").glob("*.csv"))) == len(days),
        120,
        daemon,
    )
    assert warehouse(env, "SELECT count(*), count(DISTINCT event_id) FROM lab.events") == [(36, 36)]


def test_a_bad_spec_beside_a_good_one_under_the_daemon(tmp_path: Path):
    """Under the real daemon, with one invalid spec in the folder: the good pipeline's file sensor still launches its
    run and it loads; the sensor invalid_pipeline_specs ticks (and fails) and its alert names the bad file; the
    run-failure alerting still works (a refused file's failed run is alerted)."""
    bad_spec = 'name: broken\nsource: {kind: files, format: csv, glob: "*.csv"}\ncolumns: [{name: a, type: INTEGR}]\n'
    env, landing, data, daemon = make_lab(tmp_path, {"events.yaml": SPECS["events.yaml"], "broken.yaml": bad_spec}, {})
    try:
        write_events(landing, YESTERDAY, [(1, "view", "1.00"), (2, "buy", "2.50")])
        daemon.start()
        wait_for(
            "the good pipeline's run",
            lambda: len(runs_of(env, "lab__events_pipeline", DagsterRunStatus.SUCCESS)) == 1,
            240,
            daemon,
        )
        assert warehouse(env, "SELECT count(*) FROM lab.events") == [(2,)]
        alerts_file = data / "alerts" / "alerts.jsonl"

        def alerts(kind: str) -> list[dict]:
            import json

            lines = alerts_file.read_text().splitlines() if alerts_file.exists() else []
            return [a for a in map(json.loads, lines) if a["kind"] == kind]

        wait_for("the spec-error alert", lambda: len(alerts("spec_error")) == 1, 240, daemon)
        assert "broken.yaml" in alerts("spec_error")[0]["text"]
        assert "unknown column type 'INTEGR'" in alerts("spec_error")[0]["text"]
        # a file the good pipeline refuses, alone in its partition, fails its run; the failure is still alerted
        lone_day = (dt.date.fromisoformat(YESTERDAY) - dt.timedelta(days=2)).isoformat()
        (landing / f"events_{lone_day}.csv").write_text("other\n1\n")
        wait_for("the failed run's alert", lambda: len(alerts("run_failure")) == 1, 240, daemon)
        assert len(alerts("spec_error")) == 1  # the same errors are alerted once, though every tick fails
        # each tick of the sensor fails with the errors (what the UI's Automation page shows), as the daemon logs
        log = daemon.log_path.read_text(errors="replace")
        assert "invalid_pipeline_specs" in log and "unknown column type 'INTEGR'" in log
    finally:
        daemon.stop()
