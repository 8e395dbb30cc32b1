"""File-arrival, watermark and schedule logic, evaluated tick by tick through their cursors: stability before a
run, run keys by content, re-delivery, partial files, the marker mode, partition mapping, refusal of symlinks,
and bounded work for a backlog of 10,000 files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import build_schedule_context, build_sensor_context

from etl_assets.definitions import build_definitions
from etl_assets.keys import Named, Pipeline, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.factory import partitioned_schedule_offsets
from etl_assets.pipelines.sensors import decide_arrivals, run_key_for
from etl_assets.resources.files import LandingFile, LandingFilesSource
from etl_assets_demo import DemoApiServer, generate_shop_data
from etl_assets_tests.specs import definitions_for, files_source, load_spec, pipeline

INVENTORY = Pipeline("shop", "inventory")  # the packaged shop pipelines
ORDERS = Pipeline("shop", "orders")
DROPS = Pipeline("default", "drops")  # a test pipeline of the default domain


def file_sensor(pipeline: Named) -> str:
    return f"{dagster_name(pipeline)}_file_sensor"


def schedule_name(pipeline: Named) -> str:
    return f"{dagster_name(pipeline)}_schedule"


def lf(name: str, size: int = 10, mtime: int = 1, etag: str = "") -> LandingFile:
    return LandingFile(name, Path(name), size, mtime, etag)


@pytest.mark.parametrize(
    "cursor, files, ready, observed, requested",
    [
        ({}, [lf("a")], [], ["a"], []),  # first sight: wait one tick
        ({"observed": {"a": [10, 1]}}, [lf("a")], ["a"], [], ["a"]),  # unchanged since last tick: ready
        ({"observed": {"a": [5, 1]}}, [lf("a")], [], ["a"], []),  # still growing
        ({"observed": {"a": [10, 0]}}, [lf("a")], [], ["a"], []),  # mtime moved
        ({"requested": {"a": [10, 1]}}, [lf("a")], [], [], ["a"]),  # already requested: no work
        ({"requested": {"a": [10, 1]}}, [lf("a", 11, 2)], [], ["a"], []),  # re-delivered: observe again
        ({"requested": {"gone": [1, 1]}}, [], [], [], []),  # archived files drop out of the cursor
        # an object re-delivered with the same size in the same second (S3 times have whole seconds): its ETag
        ({"requested": {"a": [10, 1, "e1"]}}, [lf("a", etag="e2")], [], ["a"], []),
        ({"requested": {"a": [10, 1, "e1"]}}, [lf("a", etag="e1")], [], [], ["a"]),
        ({"observed": {"a": [10, 1, "e1"]}}, [lf("a", etag="e1")], ["a"], [], ["a"]),
    ],
)
def test_decide_arrivals(cursor, files, ready, observed, requested):
    decision = decide_arrivals(files, cursor, max_ready=10)
    assert [f.name for f in decision.ready] == ready
    assert sorted(decision.observed) == observed
    assert sorted(decision.requested) == requested


def test_decide_arrivals_is_bounded():
    files = [lf(f"f{i:05d}") for i in range(50)]
    decision = decide_arrivals(files, {"observed": {f.name: [10, 1] for f in files}}, max_ready=7)
    assert [f.name for f in decision.ready] == [f"f{i:05d}" for i in range(7)]
    assert len(decision.observed) == 43  # the rest stay observed and become ready on later ticks


@pytest.fixture
def defs(data_dir):
    return build_definitions()


@pytest.fixture
def landing(data_dir) -> Path:
    path = data_dir / "landing" / pipeline_ref(INVENTORY)
    path.mkdir(parents=True)
    return path


def tick(defs, name, instance, cursor):
    sensor = defs.resolve_sensor_def(name) if hasattr(defs, "resolve_sensor_def") else defs.get_sensor_def(name)
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"landing": LandingFilesSource()}, definitions=defs
    )
    return sensor.evaluate_tick(context)


def drop(directory: Path, name: str, text: str, mtime: int = 1_700_000_000) -> Path:
    path = directory / name
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def test_file_sensor_requests_one_run_per_file_version(defs, instance, landing):
    path = drop(landing, "inventory_2024-01-02.ndjson", '{"snapshot_date":"2024-01-02","product_id":1,"on_hand":3}\n')
    drop(landing, "inventory_2024-01-03.ndjson.part", "half")  # still being written
    drop(landing, ".inventory_2024-01-04.ndjson", "hidden")
    first = tick(defs, file_sensor(INVENTORY), instance, None)
    assert first.run_requests == []
    second = tick(defs, file_sensor(INVENTORY), instance, first.cursor)
    assert len(second.run_requests) == 1
    request = second.run_requests[0]
    assert request.partition_key == "2024-01-02"
    sha = LandingFilesSource.sha256(path)
    assert request.run_key == run_key_for(pipeline_ref(INVENTORY), path.name, path.stat().st_size, sha)
    assert request.tags["etl/landing_file"] == path.name and request.tags["etl/landing_sha256"] == sha
    third = tick(defs, file_sensor(INVENTORY), instance, second.cursor)
    assert third.run_requests == []

    # re-delivery with new content: a new version, a new run key once it is stable
    drop(landing, path.name, '{"snapshot_date":"2024-01-02","product_id":1,"on_hand":4}\n', mtime=1_700_000_100)
    fourth = tick(defs, file_sensor(INVENTORY), instance, third.cursor)
    assert fourth.run_requests == []
    fifth = tick(defs, file_sensor(INVENTORY), instance, fourth.cursor)
    assert len(fifth.run_requests) == 1 and fifth.run_requests[0].run_key != request.run_key


def test_identical_redelivery_after_a_successful_load_is_archived_without_a_run(defs, instance, landing, data_dir):
    from dagster import DagsterRun, DagsterRunStatus

    path = drop(landing, "inventory_2024-01-02.ndjson", '{"snapshot_date":"2024-01-02","product_id":1,"on_hand":3}\n')
    key = run_key_for(pipeline_ref(INVENTORY), path.name, path.stat().st_size, LandingFilesSource.sha256(path))
    instance.add_run(
        DagsterRun(
            job_name=pipeline_job_name(INVENTORY),
            run_id="earlier-run",
            status=DagsterRunStatus.SUCCESS,
            tags={"dagster/run_key": key},
        )
    )
    first = tick(defs, file_sensor(INVENTORY), instance, None)
    second = tick(defs, file_sensor(INVENTORY), instance, first.cursor)
    assert second.run_requests == []
    assert not path.exists()
    assert [p.name.split("_", 1)[1] for p in (data_dir / "archive" / pipeline_ref(INVENTORY)).iterdir()] == [path.name]


def test_file_without_a_partition_is_quarantined_with_a_reason(defs, instance, landing, data_dir):
    drop(landing, "inventory_latest.ndjson", "{}\n")
    first = tick(defs, file_sensor(INVENTORY), instance, None)
    second = tick(defs, file_sensor(INVENTORY), instance, first.cursor)
    assert second.run_requests == []
    quarantine = data_dir / "quarantine" / pipeline_ref(INVENTORY)
    moved = sorted(p.name for p in quarantine.iterdir())
    assert len(moved) == 2 and moved[1].endswith(".reason.txt")
    reason = (quarantine / moved[1]).read_text()
    assert "no partition in the file name" in reason


def test_a_file_for_a_day_past_the_partitions_is_quarantined_with_a_reason(defs, instance, landing, data_dir):
    # the shop's daily partitions end with 2024-01-07 (partitions.last): a snapshot of the 8th has no partition
    drop(landing, "inventory_2024-01-07.ndjson", '{"snapshot_date":"2024-01-07","product_id":1,"on_hand":3}\n')
    drop(landing, "inventory_2024-01-08.ndjson", '{"snapshot_date":"2024-01-08","product_id":1,"on_hand":3}\n')
    first = tick(defs, file_sensor(INVENTORY), instance, None)
    second = tick(defs, file_sensor(INVENTORY), instance, first.cursor)
    assert [r.partition_key for r in second.run_requests or []] == ["2024-01-07"]
    assert not (landing / "inventory_2024-01-08.ndjson").exists()
    (reason,) = (data_dir / "quarantine" / pipeline_ref(INVENTORY)).glob("*inventory_2024-01-08.ndjson.reason.txt")
    assert (
        "inventory_2024-01-08.ndjson: partition '2024-01-08' is outside the dataset's partitions" in reason.read_text()
    )


def test_symlinks_are_refused(defs, instance, landing, tmp_path):
    outside = tmp_path / "secret_2024-01-02.ndjson"
    outside.write_text("{}\n")
    (landing / "inventory_2024-01-02.ndjson").symlink_to(outside)
    first = tick(defs, file_sensor(INVENTORY), instance, None)
    second = tick(defs, file_sensor(INVENTORY), instance, first.cursor)
    assert second.run_requests == []
    assert json.loads(second.cursor) == {"observed": {}, "requested": {}}
    with pytest.raises(Exception, match="refusing"):
        LandingFilesSource().archive(pipeline_ref(INVENTORY), "../../../secret_2024-01-02.ndjson")


def test_marker_mode_waits_for_the_marker(tmp_path, instance, data_dir):
    defs = definitions_for(tmp_path / "specs", pipeline(DROPS.name, source=files_source(ready_marker="_SUCCESS")))
    directory = data_dir / "landing" / pipeline_ref(DROPS)
    directory.mkdir(parents=True)
    drop(directory, "part1.csv", "a\n1\n")
    waiting = tick(defs, file_sensor(DROPS), instance, None)
    assert waiting.run_requests == [] and waiting.skip_message is not None
    assert "waiting for the marker _SUCCESS" in waiting.skip_message
    (directory / "_SUCCESS").touch()
    first = tick(defs, file_sensor(DROPS), instance, None)
    second = tick(defs, file_sensor(DROPS), instance, first.cursor)
    assert second.run_requests is not None
    assert [r.partition_key for r in second.run_requests] == [None]
    assert second.run_requests[0].tags["etl/landing_file"] == "part1.csv"


@pytest.mark.slow
def test_backlog_of_10000_files_is_worked_off_in_bounded_ticks(tmp_path, instance, data_dir):
    defs = definitions_for(tmp_path / "specs", pipeline(DROPS.name, arrival={"max_files_per_tick": 500}))
    directory = data_dir / "landing" / pipeline_ref(DROPS)
    directory.mkdir(parents=True)
    for i in range(10_000):
        drop(directory, f"part_{i:05d}.csv", f"a\n{i}\n")
    cursor, seen, ticks = None, set(), 0
    while len(seen) < 10_000 and ticks < 60:
        result = tick(defs, file_sensor(DROPS), instance, cursor)
        ticks += 1
        assert result.run_requests is not None and result.cursor is not None
        assert len(result.run_requests) <= 500
        assert len(json.loads(result.cursor)["observed"]) + len(json.loads(result.cursor)["requested"]) <= 2500
        for request in result.run_requests:
            assert request.run_key not in seen
            seen.add(request.run_key)
            # the archive sensor moves each file once its run succeeded; do that here
            (directory / request.tags["etl/landing_file"]).unlink()
        cursor = result.cursor
    assert len(seen) == 10_000
    assert ticks <= 22


def test_orders_schedule_requests_the_partition_that_just_closed(defs, instance):
    schedule = (
        defs.resolve_schedule_def(schedule_name(ORDERS))
        if hasattr(defs, "resolve_schedule_def")
        else defs.get_schedule_def(schedule_name(ORDERS))
    )
    context = build_schedule_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=datetime(2024, 1, 5, 0, 30, tzinfo=UTC),
    )
    request = schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == "2024-01-04"
    assert request.run_key == "2024-01-04"
    # the shop's partitions end with the demo's week: once it is over, every tick skips and says why
    context = build_schedule_context(
        instance=instance, repository_def=defs.get_repository_def(), scheduled_execution_time=datetime.now(UTC)
    )
    skipped = schedule.evaluate_tick(context)
    assert not skipped.run_requests
    assert (
        skipped.skip_message is not None
        and "the partitions of shop.orders ended with 2024-01-07" in skipped.skip_message
    )


def test_watermark_sensor_runs_only_the_partitions_with_new_records(api_server, shop_data, instance, data_dir):
    import duckdb as ddb

    defs = build_definitions()
    sensor = defs.resolve_sensor_def(f"{dagster_name(ORDERS)}_watermark_sensor")
    assert defs.resources is not None
    resources = {"source_shop_api": defs.resources["source_shop_api"]}

    def run_tick(cursor):
        return sensor.evaluate_tick(
            build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs)
        )

    first = run_tick(None)
    top = ddb.execute(
        "SELECT strftime(max(updated_at) AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ') FROM read_parquet(?)",
        [str(shop_data.orders_path)],
    ).fetchall()[0][0]
    assert first.run_requests == [] and first.cursor == top
    quiet = run_tick(first.cursor)
    assert quiet.run_requests == [] and quiet.skip_message is not None
    assert "no records updated since" in quiet.skip_message

    # the source changes: two orders of the second day are updated after the watermark
    day = shop_data.partition_keys[1]
    con = ddb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ids = [
        r[0]
        for r in con.execute(
            "SELECT order_id FROM read_parquet(?) WHERE CAST(ordered_at AS DATE) = CAST(? AS DATE) ORDER BY order_id LIMIT 2",
            [str(shop_data.orders_path), day],
        ).fetchall()
    ]
    tmp = shop_data.orders_path.with_suffix(".new.parquet")
    con.sql(
        "SELECT * REPLACE (CASE WHEN order_id IN (SELECT unnest($ids)) THEN max_u + INTERVAL 1 HOUR ELSE updated_at END"
        " AS updated_at) FROM read_parquet($path), (SELECT max(updated_at) AS max_u FROM read_parquet($path))"
        " ORDER BY order_id",
        params={"ids": ids, "path": str(shop_data.orders_path)},
    ).project("* EXCLUDE (max_u)").write_parquet(str(tmp))
    tmp.replace(shop_data.orders_path)
    changed = run_tick(quiet.cursor if quiet.cursor else first.cursor)
    assert changed.run_requests is not None and changed.cursor is not None and first.cursor is not None
    assert [r.partition_key for r in changed.run_requests] == [day]
    assert changed.cursor > first.cursor
    assert run_tick(changed.cursor).run_requests == []


def test_watermark_sensor_requests_no_partition_past_the_last(data_dir, instance, monkeypatch):
    # records of days after the shop's last partition (2024-01-07) are updated: only the days within it run
    manifest = generate_shop_data(data_dir, orders=450, days=9)
    with DemoApiServer(manifest.orders_path) as server:
        monkeypatch.setenv("SHOP_API_URL", server.url)
        defs = build_definitions()
        assert defs.resources is not None
        context = build_sensor_context(
            instance=instance,
            cursor="2000-01-01T00:00:00Z",  # every record is newer
            resources={"source_shop_api": defs.resources["source_shop_api"]},
            definitions=defs,
        )
        result = defs.resolve_sensor_def(f"{dagster_name(ORDERS)}_watermark_sensor").evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests or []] == manifest.partition_keys[:7]
    assert result.cursor is not None and result.cursor > "2024-01-09"  # past the records of the 8th and 9th too


@pytest.mark.parametrize(
    ("partitions", "cron", "timezone", "offsets"),
    [
        ("daily", "30 0 * * *", "UTC", {"minute_of_hour": 30, "hour_of_day": 0}),
        ("hourly", "5 * * * *", "UTC", {"minute_of_hour": 5}),
        ("daily", "0 6 * * 1-5", "UTC", None),  # weekdays only: Dagster's builder ticks every partition
        ("daily", "0 6,18 * * *", "UTC", None),
        ("daily", "30 0 * * *", "Europe/Paris", None),  # another zone than the partitions'
        ("none", "0 * * * *", "UTC", None),
        # partitions that end: after the end, Dagster's builder would request the last partition every tick
        ("daily-to-2024-01-07", "30 0 * * *", "UTC", None),
    ],
)
def test_which_crons_become_dagsters_partitioned_schedule(tmp_path, partitions, cron, timezone, offsets):
    fields: dict = {"schedule": {"cron": cron, "timezone": timezone}}
    if partitions != "none":
        kind, _, last = partitions.partition("-to-")
        fields["partitions"] = {"type": kind, "start": "2024-01-01", **({"last": last} if last else {})}
    spec = load_spec(tmp_path, pipeline("p", **fields)).spec
    assert partitioned_schedule_offsets(spec, cron, timezone) == offsets


def test_a_weekday_schedule_of_a_daily_pipeline_requests_the_day_that_just_closed(tmp_path, instance):
    spec = pipeline(
        "weekdays",
        partitions={"type": "daily", "start": "2024-01-01"},
        schedule={"cron": "0 6 * * 1-5", "timezone": "UTC"},
    )
    defs = definitions_for(tmp_path / "specs", spec)
    context = build_schedule_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=datetime(2024, 3, 5, 6, 0, tzinfo=UTC),
    )
    requests = (
        defs.resolve_schedule_def(schedule_name(Pipeline("default", "weekdays"))).evaluate_tick(context).run_requests
    )
    assert requests is not None and len(requests) == 1
    request = requests[0]
    assert (request.partition_key, request.run_key) == ("2024-03-04", "2024-03-04")


@pytest.mark.parametrize(
    ("kind", "cron", "ticks"),
    [
        (
            "daily",
            "30 0 * * *",
            [
                (datetime(2024, 1, 5, 0, 30, tzinfo=UTC), "2024-01-04"),
                (datetime(2024, 1, 8, 0, 30, tzinfo=UTC), "2024-01-07"),  # the last closes: its turn
                (datetime(2024, 1, 9, 0, 30, tzinfo=UTC), None),
                (datetime.now(UTC), None),
            ],
        ),
        (
            "hourly",
            "5 * * * *",
            [
                (datetime(2024, 1, 8, 0, 5, tzinfo=UTC), "2024-01-07-23:00"),
                (datetime(2024, 1, 8, 1, 5, tzinfo=UTC), None),
            ],
        ),
    ],
)
def test_a_schedule_of_partitions_that_end_runs_the_last_then_skips_with_the_reason(
    tmp_path, instance, kind, cron, ticks
):
    spec = pipeline(
        "week",
        partitions={"type": kind, "start": "2024-01-01", "last": "2024-01-07"},
        schedule={"cron": cron, "timezone": "UTC"},
    )
    defs = definitions_for(tmp_path / "specs", spec)
    schedule = defs.resolve_schedule_def(schedule_name(Pipeline("default", "week")))
    last = "2024-01-07" if kind == "daily" else "2024-01-07-23:00"
    for at, expected in ticks:
        context = build_schedule_context(
            instance=instance, repository_def=defs.get_repository_def(), scheduled_execution_time=at
        )
        result = schedule.evaluate_tick(context)
        if expected is not None:
            assert [(r.partition_key, r.run_key) for r in result.run_requests or []] == [(expected, expected)], at
            continue
        assert not result.run_requests, at
        assert result.skip_message is not None
        assert result.skip_message.startswith(
            f"the partitions of default.week ended with {last} (partitions.last: 2024-01-07); "
        )
        assert result.skip_message.endswith("which has just closed, is past them: nothing to run")
