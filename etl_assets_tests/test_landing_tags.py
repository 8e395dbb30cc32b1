"""Run tags are not paths, and a file its run refused leaves landing.

The landing archive and quarantine sensors move the file a finished run names in its tags. Tags are set by whoever
launches a run, so they are checked against the loaded specs before anything moves: the dataset must be a files
pipeline, the file a plain name matching its glob, inside the dataset's landing directory, neither it nor that
directory a symlink. Everything here runs against a real Dagster instance: real pipeline runs (the file sensor's
own tags, a hostile-tagged run of a real job, CSV and JSON files that break the contract) and tiny in-process jobs
whose steps fail the way the platform's steps do; the sensors are evaluated with
``build_run_status_sensor_context``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    build_run_status_sensor_context,
    build_sensor_context,
    job,
    op,
)

from etl_assets.errors import (
    ContractError,
    PermanentSourceError,
    TransientSourceError,
    UpstreamNotReadyError,
    no_retry_for_permanent_errors,
)
from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.sensors import TAG_DATASET, TAG_FILE, TAG_SHA256, landing_target
from etl_assets.pipelines.spec import FilesSource
from etl_assets.resources.files import LandingFilesSource
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def ref(name: str) -> str:
    """The reference of test pipeline ``name`` (the default domain): its landing tag and its landing folder."""
    return pipeline_ref(Pipeline("default", name))


def step_of(name: str) -> str:
    """The validation step of test pipeline ``name``."""
    return f"validate_{dagster_name(Pipeline('default', name))}"


DROPS_REF, LINKED_REF, NESTED_REF = ref("drops"), ref("linked"), ref("nested")
SPECS = [
    pipeline("drops", [column("a", "INTEGER", nullable=False), column("b")], retry={"max_retries": 0}),
    pipeline("linked", [column("a", "INTEGER")], retry={"max_retries": 0}),
    pipeline(
        "nested", [column("a", nullable=False), column("b")], source=files_source("ndjson"), retry={"max_retries": 0}
    ),
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lab(tmp_path: Path, data_dir: Path):
    for name in ("drops", "nested"):
        (data_dir / "landing" / ref(name)).mkdir(parents=True)
    return definitions_for(tmp_path / "specs", *SPECS)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and symlink under ``roots`` (not followed) with its content digest or link target."""
    out = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory) / name
                if path.is_symlink():
                    out[str(path)] = ("link", os.readlink(path))
                elif path.is_file():
                    out[str(path)] = ("file", sha(path))
    return out


def evaluate(defs: Definitions, instance: DagsterInstance, sensor_name: str, run_id: str):
    """Evaluate a landing sensor for one finished run, as the daemon would for that run."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    failed = run.status.value == "FAILURE"
    event_type = DagsterEventType.RUN_FAILURE if failed else DagsterEventType.RUN_SUCCESS
    event = instance.get_records_for_run(run_id, of_type=event_type).records[0].event_log_entry.dagster_event
    assert event is not None
    context = build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"landing": LandingFilesSource()},
    )
    if failed:
        context = context.for_run_failure()
    return defs.resolve_sensor_def(sensor_name)(context)


def sensor_tags(defs: Definitions, instance: DagsterInstance, name: str) -> dict[str, str]:
    """The tags the file sensor gives the run for the one file in test pipeline ``name``'s landing directory."""
    sensor = defs.resolve_sensor_def(f"{dagster_name(Pipeline('default', name))}_file_sensor")

    def tick(cursor):
        return sensor.evaluate_tick(
            build_sensor_context(
                instance=instance, cursor=cursor, resources={"landing": LandingFilesSource()}, definitions=defs
            )
        )

    run_requests = tick(tick(None).cursor).run_requests
    assert run_requests is not None
    (request,) = run_requests
    return dict(request.tags)


@op
def noop():
    pass


@job
def tagged():
    noop()


def failing_job(step: str, error: Exception):
    """A job whose one step, named like a pipeline step, fails with ``error`` as the platform's steps do."""

    @op(name=step)
    def fail():
        with no_retry_for_permanent_errors():
            raise error

    @job(name=f"fail_{step}_{type(error).__name__}")
    def failing():
        fail()

    return failing


# ---------------------------------------------------------------------------------------------- the tag check

DROPS = {DROPS_REF: FilesSource.model_validate({"kind": "files", "format": "csv", "glob": "*.csv"})}
DIGEST = "0" * 64


@pytest.mark.parametrize(
    "tags, refusal",
    [
        ({TAG_DATASET: "..", TAG_FILE: "warehouse.duckdb", TAG_SHA256: DIGEST}, "not a files pipeline"),
        ({TAG_DATASET: "orders", TAG_FILE: "x.csv", TAG_SHA256: DIGEST}, "not a files pipeline"),
        ({TAG_DATASET: "drops", TAG_FILE: "x.csv", TAG_SHA256: DIGEST}, "not a files pipeline"),  # no domain
        ({TAG_DATASET: f"{DROPS_REF}/..", TAG_FILE: "x.csv", TAG_SHA256: DIGEST}, "not a files pipeline"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "/etc/passwd.csv", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: f"../{DROPS_REF}/x.csv", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "sub/x.csv", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "sub\\x.csv", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "x\0.csv", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "..", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: ".", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: ".hidden.csv", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "", TAG_SHA256: DIGEST}, "not a plain file name"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "warehouse.duckdb", TAG_SHA256: DIGEST}, "does not match the glob"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "x.csv.part", TAG_SHA256: DIGEST}, "does not match the glob"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "x.csv"}, "not a sha256 digest"),
        ({TAG_DATASET: DROPS_REF, TAG_FILE: "x.csv", TAG_SHA256: "../x"}, "not a sha256 digest"),
        ({TAG_DATASET: DROPS_REF}, "not a plain file name"),
    ],
)
def test_tags_that_do_not_name_a_file_of_a_files_pipeline_are_refused(tags, refusal):
    target, reason = landing_target(tags, DROPS)
    assert target is None and refusal in reason


def test_the_file_sensors_tags_are_accepted():
    target, reason = landing_target({TAG_DATASET: DROPS_REF, TAG_FILE: "d 1.csv", TAG_SHA256: DIGEST}, DROPS)
    assert reason is None and target is not None
    assert (target.dataset, target.name, target.sha256) == (DROPS_REF, "d 1.csv", DIGEST)
    assert landing_target({"dagster/run_key": "x"}, DROPS) == (None, None)  # not a landing run: nothing to say


def test_the_landing_resource_refuses_a_symlinked_dataset_directory_and_dot_names(data_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.csv").write_text("a\n1\n")
    (data_dir / "landing").mkdir()
    (data_dir / "landing" / LINKED_REF).symlink_to(outside, target_is_directory=True)
    (data_dir / "warehouse.duckdb").write_text("the warehouse")
    landing = LandingFilesSource()
    for dataset, name in [
        (LINKED_REF, "x.csv"),
        ("..", "warehouse.duckdb"),
        (".", "landing"),
        ("", "x.csv"),
        (DROPS_REF, "../../warehouse.duckdb"),
        (DROPS_REF, ".."),
    ]:
        with pytest.raises(PermanentSourceError, match="refusing"):
            landing.archive(dataset, name)
        with pytest.raises(PermanentSourceError, match="refusing"):
            landing.quarantine(dataset, name, "reason")
    assert (outside / "x.csv").exists() and (data_dir / "warehouse.duckdb").read_text() == "the warehouse"
    # nor are its files listed (so never loaded) or its markers seen, while a real directory's are
    (outside / "_SUCCESS").write_text("")
    spec = FilesSource.model_validate({"kind": "files", "format": "csv", "glob": "*.csv"})
    assert landing.list_files(LINKED_REF, spec) == [] and landing.partition_inputs(LINKED_REF, spec) == []
    assert not landing.marker_present(LINKED_REF, "_SUCCESS")
    real = data_dir / "landing" / ref("real")
    real.mkdir()
    (real / "x.csv").write_text("a\n1\n")
    (real / "_SUCCESS").write_text("")
    (real / "_LINK").symlink_to(outside / "_SUCCESS")
    assert [p.name for p in landing.list_files(ref("real"), spec)] == ["x.csv"]
    assert landing.marker_present(ref("real"), "_SUCCESS") and not landing.marker_present(ref("real"), "_LINK")


# ---------------------------------------------------------------------------------------------- item 12


@pytest.mark.slow
def test_hostile_tags_on_successful_runs_move_nothing_and_the_file_sensors_tags_archive(
    lab, instance, data_dir, tmp_path, capfd
):
    defs = lab
    landing = data_dir / "landing"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.csv").write_text("a\n1\n")
    (outside / "secret.csv").write_text("a\n2\n")
    (landing / LINKED_REF).symlink_to(outside, target_is_directory=True)  # the dataset directory is a symlink
    (landing / DROPS_REF / "link.csv").symlink_to(outside / "secret.csv")  # the file is a symlink
    (landing / DROPS_REF / ".hidden.csv").write_text("a\n3\n")
    legit = landing / DROPS_REF / "d.csv"
    legit.write_text("a,b\n1,x\n2,y\n")

    # the legit run: the file sensor's own request, run for real
    tags = sensor_tags(defs, instance, "drops")
    assert tags[TAG_FILE] == "d.csv"
    loaded = defs.resolve_job_def(pipeline_job_name(Pipeline("default", "drops"))).execute_in_process(
        instance=instance, tags=tags, run_config=QUIET, raise_on_error=False
    )
    assert loaded.success
    warehouse = data_dir / "warehouse.duckdb"
    assert warehouse.exists()

    # the run: any job, launched with tags naming the warehouse file through ".."
    hostile_real = defs.resolve_job_def(pipeline_job_name(Pipeline("default", "drops"))).execute_in_process(
        instance=instance,
        run_config=QUIET,
        raise_on_error=False,
        tags={TAG_DATASET: "..", TAG_FILE: "warehouse.duckdb", TAG_SHA256: sha(warehouse)},
    )
    assert hostile_real.success
    hostile = [
        {TAG_DATASET: "..", TAG_FILE: "warehouse.duckdb", TAG_SHA256: sha(warehouse)},
        {TAG_DATASET: "..", TAG_FILE: "warehouse.duckdb"},
        {TAG_DATASET: LINKED_REF, TAG_FILE: "x.csv", TAG_SHA256: sha(outside / "x.csv")},
        {TAG_DATASET: DROPS_REF, TAG_FILE: str(warehouse), TAG_SHA256: sha(warehouse)},
        {TAG_DATASET: DROPS_REF, TAG_FILE: str(outside / "secret.csv"), TAG_SHA256: sha(outside / "secret.csv")},
        {TAG_DATASET: DROPS_REF, TAG_FILE: "../../warehouse.duckdb", TAG_SHA256: sha(warehouse)},
        {TAG_DATASET: DROPS_REF, TAG_FILE: f"../{LINKED_REF}/x.csv", TAG_SHA256: sha(outside / "x.csv")},
        {TAG_DATASET: DROPS_REF, TAG_FILE: "link.csv", TAG_SHA256: sha(outside / "secret.csv")},
        {TAG_DATASET: DROPS_REF, TAG_FILE: ".hidden.csv", TAG_SHA256: sha(landing / DROPS_REF / ".hidden.csv")},
        {TAG_DATASET: DROPS_REF, TAG_FILE: "d.csv", TAG_SHA256: "f" * 64},  # the right name, another content
    ]
    runs = [tagged.execute_in_process(instance=instance, tags=t) for t in hostile]
    assert all(r.success for r in runs)

    before = snapshot(data_dir, outside)
    capfd.readouterr()
    for run_id in [hostile_real.run_id, *(r.run_id for r in runs)]:
        assert evaluate(defs, instance, "landing_archive_sensor", run_id) is None
    assert snapshot(data_dir, outside) == before  # nothing moved, renamed or created
    log = capfd.readouterr().err  # the sensor's log (its console handler writes to stderr)
    assert log.count("landing tags refused, no file moved") == 8, log
    assert log.count("not archived") == 2 and "refusing" in log, log  # the symlinks, refused by the resource

    # the file sensor's tags still archive the loaded file
    assert sha(legit) == tags[TAG_SHA256], (legit.read_text(), tags)
    assert evaluate(defs, instance, "landing_archive_sensor", loaded.run_id) is None
    assert not legit.exists()
    (archived,) = (data_dir / "archive" / DROPS_REF).iterdir()
    assert archived.name.endswith("_d.csv") and archived.read_text() == "a,b\n1,x\n2,y\n"
    assert warehouse.exists() and (outside / "x.csv").exists() and (landing / DROPS_REF / "link.csv").is_symlink()


@pytest.mark.slow
def test_hostile_tags_on_failed_runs_quarantine_nothing(lab, instance, data_dir, tmp_path):
    defs = lab
    landing = data_dir / "landing"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.csv").write_text("a\n1\n")
    (landing / LINKED_REF).symlink_to(outside, target_is_directory=True)
    (data_dir / "warehouse.duckdb").write_text("the warehouse")
    unreadable = failing_job("default__raw_drops", PermanentSourceError(f"{DROPS_REF}: cannot read it"))
    failing = failing_job("default__raw_linked", PermanentSourceError(f"{LINKED_REF}: cannot read it"))
    runs = [
        unreadable.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags={TAG_DATASET: "..", TAG_FILE: "warehouse.duckdb", TAG_SHA256: sha(data_dir / "warehouse.duckdb")},
        ),
        unreadable.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags={
                TAG_DATASET: DROPS_REF,
                TAG_FILE: "../../warehouse.duckdb",
                TAG_SHA256: sha(data_dir / "warehouse.duckdb"),
            },
        ),
        failing.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags={TAG_DATASET: LINKED_REF, TAG_FILE: "x.csv", TAG_SHA256: sha(outside / "x.csv")},
        ),
    ]
    assert not any(r.success for r in runs)
    before = snapshot(data_dir, outside)
    for run in runs:
        assert evaluate(defs, instance, "landing_quarantine_sensor", run.run_id) is None
    assert snapshot(data_dir, outside) == before

    bad = landing / DROPS_REF / "bad.csv"
    bad.write_text("garbage")
    legit = unreadable.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={TAG_DATASET: DROPS_REF, TAG_FILE: "bad.csv", TAG_SHA256: sha(bad)},
    )
    evaluate(defs, instance, "landing_quarantine_sensor", legit.run_id)
    assert not bad.exists()
    reason = next((data_dir / "quarantine" / DROPS_REF).glob("*_bad.csv.reason.txt")).read_text()
    assert f"run {legit.run_id} step default__raw_drops" in reason and "cannot read it" in reason


# ---------------------------------------------------------------------------------------------- item 10


def _run_for_file(defs, instance, name: str):
    tags = sensor_tags(defs, instance, name)
    result = defs.resolve_job_def(pipeline_job_name(Pipeline("default", name))).execute_in_process(
        instance=instance, tags=tags, run_config=QUIET, raise_on_error=False
    )
    assert not result.success
    return result


def _quarantined(data_dir: Path, dataset: str, name: str) -> str:
    directory = data_dir / "quarantine" / dataset
    assert [p.name.split("_", 1)[1] for p in directory.iterdir() if not p.name.endswith(".reason.txt")] == [name]
    (reason,) = directory.glob("*.reason.txt")
    return reason.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, text, words",
    [
        ("no_a.csv", "b\nonly-b\n", "a"),  # a required column missing
        ("semicolons.csv", "a;b\n1;x\n", "a"),  # the wrong delimiter: one column named "a;b"
    ],
)
def test_a_csv_breaking_the_contract_leaves_landing_with_its_reason(lab, instance, data_dir, name, text, words):
    path = data_dir / "landing" / DROPS_REF / name
    path.write_text(text)
    run = _run_for_file(lab, instance, "drops")
    evaluate(lab, instance, "landing_quarantine_sensor", run.run_id)
    assert not path.exists()
    reason = _quarantined(data_dir, DROPS_REF, name)
    assert "required column(s) a missing" in reason, reason


@pytest.mark.slow
def test_a_nested_json_column_fails_validation_and_the_file_leaves_landing(lab, instance, data_dir):
    path = data_dir / "landing" / NESTED_REF / "n.ndjson"
    path.write_text('{"a": {"deep": 1}, "b": "x"}\n{"a": {"deep": 2}, "b": "y"}\n')
    run = _run_for_file(lab, instance, "nested")
    failed = {e.step_key for e in run.all_events if e.event_type == DagsterEventType.STEP_FAILURE}
    assert failed == {step_of("nested")}  # the extract read it; the contract refused it
    assert path.exists()  # run failed; the file waits for the sensor
    evaluate(lab, instance, "landing_quarantine_sensor", run.run_id)
    assert not path.exists()
    reason = _quarantined(data_dir, NESTED_REF, "n.ndjson")
    assert f"run {run.run_id} step {step_of('nested')}" in reason and "nested values" in reason


@pytest.mark.slow
@pytest.mark.parametrize(
    "step, error, moved",
    [
        (step_of("drops"), ContractError(f"{DROPS_REF}: required column(s) a missing"), True),
        ("default__raw_drops", PermanentSourceError(f"{DROPS_REF}: cannot read d.csv as csv"), True),
        (
            step_of("drops"),
            UpstreamNotReadyError(f"{DROPS_REF}: its relationship to {ref('products')} needs it loaded first"),
            False,
        ),  # a re-run fixes it once the upstream is loaded
        (step_of("drops"), RuntimeError("the lake is on fire"), False),  # infrastructure
        ("default__raw_drops", TransientSourceError(f"{DROPS_REF}: timed out"), False),
        # another dataset's step
        (step_of("other"), ContractError(f"{ref('other')}: required column(s) a missing"), False),
        # a load, not the file
        ("default__warehouse_drops", ContractError(f"{DROPS_REF}: contract mismatch at load"), False),
    ],
)
def test_only_failures_a_rerun_of_the_same_file_cannot_fix_move_it(lab, instance, data_dir, step, error, moved):
    path = data_dir / "landing" / DROPS_REF / "d.csv"
    path.write_text("a,b\n1,x\n")
    run = failing_job(step, error).execute_in_process(
        instance=instance, raise_on_error=False, tags={TAG_DATASET: DROPS_REF, TAG_FILE: "d.csv", TAG_SHA256: sha(path)}
    )
    assert not run.success
    evaluate(lab, instance, "landing_quarantine_sensor", run.run_id)
    assert path.exists() is not moved
    if moved:
        assert str(error) in _quarantined(data_dir, DROPS_REF, "d.csv")
