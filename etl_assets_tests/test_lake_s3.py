"""The lake and the landing zone on object storage, against a real S3 server (moto_server) on loopback.

Everything goes through the platform's own storage classes and boto3 over HTTP; the bucket is read back with a
separate boto3 client to see what is really stored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl_assets import lake_s3
from etl_assets.lake import LakeError, LakeStorage, LakeView
from etl_assets.objectstore import ObjectStoreError
from etl_assets.resources.files import FilesSource, LandingFilesSource
from etl_assets_tests.s3server import SECRET_KEY, S3Server


def _keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def lake(s3_bucket: str, data_dir: Path) -> LakeStorage:
    return LakeStorage(root=f"s3://{s3_bucket}/lake")


def test_parquet_partition_is_one_object_and_reads_back(lake: LakeStorage, s3_server, s3_bucket, data_dir):
    result = lake.write(["shop", "raw_orders"], "2024-01-01", pa.table({"x": [1, 2, 3]}))
    assert result.url == f"s3://{s3_bucket}/lake/shop/raw_orders/2024-01-01.parquet"
    assert pq.read_table(result.path).column("x").to_pylist() == [1, 2, 3]  # the local cached copy
    assert result.rows == 3
    assert _keys(s3_server, s3_bucket) == ["lake/shop/raw_orders/2024-01-01.parquet"]
    assert lake.partitions(["shop", "raw_orders"]) == ["2024-01-01"]
    assert lake.exists(["shop", "raw_orders"], "2024-01-01") and not lake.exists(["shop", "raw_orders"], "2024-01-02")
    con = duckdb.connect()
    assert sorted(lake.table(["shop", "raw_orders"], ["2024-01-01"]).relation(con).fetchall()) == [(1,), (2,), (3,)]
    # nothing of the lake is kept on the local disk but the read cache
    assert not (data_dir / "lake").exists()
    with pytest.raises(LakeError, match=f"not in the lake at s3://{s3_bucket}/lake"):
        lake.table(["shop", "raw_orders"], ["2024-01-09"])


def test_a_reader_keeps_the_version_it_read_when_the_partition_is_replaced(lake: LakeStorage, s3_server, s3_bucket):
    lake.write(["default", "raw_t"], None, pa.table({"x": [1, 2]}))
    before = lake.table(["default", "raw_t"], [None])
    lake.write(["default", "raw_t"], None, pa.table({"x": [7]}))
    con = duckdb.connect()
    assert sorted(before.relation(con).fetchall()) == [(1,), (2,)]  # the version this step read, whole
    assert lake.table(["default", "raw_t"], [None]).relation(con).fetchall() == [(7,)]
    # another process (empty cache) sees the new version only: the object was replaced whole
    lake_s3._origins.clear()
    for path in (lake.root_path() / "objects").rglob("*.parquet"):
        path.unlink()
    assert lake.table(["default", "raw_t"], [None]).relation(con).fetchall() == [(7,)]
    assert _keys(s3_server, s3_bucket) == ["lake/default/raw_t/_all.parquet"]


def _view(lake: LakeStorage, excluded: list[int]) -> LakeView:
    raw = lake.table(["default", "raw_v"], ["2024-01-01"])
    con = duckdb.connect()
    positions = (
        con.sql(f"SELECT unnest({excluded}::BIGINT[]) AS position")
        if excluded
        else con.sql("SELECT 1::BIGINT AS position WHERE false")
    )
    return LakeView(source=raw.paths[0], select='"x", "note"', excluded=positions, stats={"low": 1})


def test_view_partition_writes_its_manifest_last_and_removes_the_old_generation(
    lake: LakeStorage, s3_server, s3_bucket
):
    lake.write(["default", "raw_v"], "2024-01-01", pa.table({"x": [1, 2, 3], "note": ["a", "b", "c"]}))
    first = lake.write(["default", "clean_v"], "2024-01-01", _view(lake, [1]))
    assert first.rows == 2
    keys = _keys(s3_server, s3_bucket, "lake/default/clean_v/")
    assert "lake/default/clean_v/2024-01-01.view.json" in keys and len(keys) == 3, keys
    manifest = json.loads(
        s3_server.client().get_object(Bucket=s3_bucket, Key="lake/default/clean_v/2024-01-01.view.json")["Body"].read()
    )
    assert manifest["excluded_rows"] == 1 and manifest["stats"] == {"low": 1}
    assert {f"lake/default/clean_v/{manifest['source']}", f"lake/default/clean_v/{manifest['excluded']}"} < set(keys)
    con = duckdb.connect()
    assert sorted(lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).fetchall()) == [(1, "a"), (3, "c")]

    lake.write(["default", "clean_v"], "2024-01-01", _view(lake, [0, 2]))
    after = _keys(s3_server, s3_bucket, "lake/default/clean_v/")
    assert len(after) == 3 and not set(after) & (set(keys) - {"lake/default/clean_v/2024-01-01.view.json"})
    # a fresh reader (empty cache) downloads the manifest's generation and sees the new rows only
    for path in (lake.root_path() / "views").iterdir():
        shutil.rmtree(path)
    assert lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).fetchall() == [(2, "b")]

    # a Parquet partition over the view removes the manifest and its files
    lake.write(["default", "clean_v"], "2024-01-01", pa.table({"x": [9], "note": ["z"]}))
    assert _keys(s3_server, s3_bucket, "lake/default/clean_v/") == ["lake/default/clean_v/2024-01-01.parquet"]
    assert lake.remove(["default", "clean_v"], "2024-01-01") == ["2024-01-01.parquet"]
    assert _keys(s3_server, s3_bucket, "lake/default/clean_v/") == []


WRITER = textwrap.dedent(
    """
    import sys, duckdb
    from etl_assets.lake import LakeStorage
    root, tag, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    relation = duckdb.connect().sql(f"SELECT '{tag}' AS writer, range AS n FROM range({rows})")
    print(LakeStorage(root=root).write(["default", "raw_race"], "2024-01-01", relation).rows)
    """
)


@pytest.mark.slow
def test_two_processes_writing_one_partition_leave_one_writers_rows(lake: LakeStorage, s3_server, s3_bucket, tmp_path):
    """Two real processes write one partition at the same moment (both paused just before the switch): the
    partition is then exactly one writer's rows, never a mix, never both."""
    env = {**os.environ, **s3_server.env(), "ETL_TEST_PAUSE_IN_LAKE_WRITE_SECONDS": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, lake.root, tag, str(rows)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag, rows in (("a", 300_000), ("b", 200_000))
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [o[0].strip() for o in outputs] == ["300000", "200000"]
    con = duckdb.connect()
    lake_s3._origins.clear()
    con.register("got", lake.table(["default", "raw_race"], ["2024-01-01"]).relation(con))
    by_writer = {
        w: (c, d)
        for w, c, d in con.sql("SELECT writer, count(*), count(DISTINCT n) FROM got GROUP BY writer").fetchall()
    }
    assert len(by_writer) == 1, by_writer
    ((writer, (count, distinct)),) = by_writer.items()
    assert count == distinct == {"a": 300_000, "b": 200_000}[writer]
    assert _keys(s3_server, s3_bucket) == ["lake/default/raw_race/2024-01-01.parquet"]


def test_a_losing_view_writers_files_are_removed_after_the_grace_period(
    lake: LakeStorage, s3_server, s3_bucket, monkeypatch
):
    lake.write(["default", "raw_v"], "2024-01-01", pa.table({"x": [1, 2, 3], "note": ["a", "b", "c"]}))
    lake.write(["default", "clean_v"], "2024-01-01", _view(lake, [0]))
    # a writer that uploaded its generation and died before its manifest (or lost the race): files no manifest names
    client = s3_server.client()
    for suffix in ("source", "excluded"):
        client.put_object(
            Bucket=s3_bucket, Key=f"lake/default/clean_v/.2024-01-01.0123456789ab.{suffix}.parquet", Body=b"x"
        )
    lake.write(["default", "clean_v"], "2024-01-01", _view(lake, [1]))
    assert sum(".0123456789ab." in k for k in _keys(s3_server, s3_bucket)) == 2  # young: maybe still being written
    monkeypatch.setattr(lake_s3, "LEFTOVER_GRACE_SECONDS", -60)
    lake.write(["default", "clean_v"], "2024-01-01", _view(lake, [2]))
    keys = _keys(s3_server, s3_bucket, "lake/default/clean_v/")
    assert len(keys) == 3 and not any(".0123456789ab." in k for k in keys), keys
    con = duckdb.connect()
    assert sorted(lake.table(["default", "clean_v"], ["2024-01-01"]).relation(con).fetchall()) == [(1, "a"), (2, "b")]


def test_an_unreachable_or_missing_bucket_names_the_location_and_never_a_secret(s3_server, data_dir, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    lake = LakeStorage(root="s3://no-such-bucket-here/lake")
    with pytest.raises(ObjectStoreError) as missing:
        lake.write(["default", "raw_x"], None, pa.table({"x": [1]}))
    assert "s3://no-such-bucket-here/lake/default/raw_x/_all.parquet" in str(missing.value)
    assert "NoSuchBucket" in str(missing.value) and SECRET_KEY not in str(missing.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ObjectStoreError, match="check that the endpoint") as down:
        LakeStorage(root="s3://b/lake2").partitions(["default", "raw_x"])
    assert SECRET_KEY not in str(down.value)
    with pytest.raises(LakeError, match="only s3://"):
        LakeStorage(root="gs://b/lake").partitions(["raw"])


# -- the landing zone on S3 ------------------------------------------------------------------------------------


@pytest.fixture
def landing(s3_bucket: str, data_dir: Path, monkeypatch) -> LandingFilesSource:
    monkeypatch.setenv("ETL_LANDING_URL", f"s3://{s3_bucket}/landing")
    return LandingFilesSource()


def _put(server: S3Server, bucket: str, key: str, body: str) -> None:
    server.client().put_object(Bucket=bucket, Key=key, Body=body.encode())


def test_landing_lists_plain_complete_objects_and_moves_exactly_the_version_loaded(
    landing: LandingFilesSource, s3_server, s3_bucket
):
    spec = FilesSource.model_validate({"kind": "files", "format": "csv", "glob": "*.csv"})
    for key, body in {
        "landing/default.drops/x[1]_2024-01-01.csv": "id\n1\n2\n",
        "landing/default.drops/.hidden_2024-01-01.csv": "id\n9\n",
        "landing/default.drops/late_2024-01-01.csv.part": "id\n",
        "landing/default.drops/deeper/y_2024-01-01.csv": "id\n5\n",
        "landing/default.other/z_2024-01-01.csv": "id\n6\n",
    }.items():
        _put(s3_server, s3_bucket, key, body)
    files = landing.scan("default.drops", spec)
    assert [f.name for f in files] == ["x[1]_2024-01-01.csv"]
    key = landing.content_key(files[0].path)
    assert key.startswith("etag:") and files[0].size == len("id\n1\n2\n")

    con = duckdb.connect()
    read = landing.open_partition(con, "default.drops", spec, "2024-01-01", ["id"])
    try:  # the name with glob characters is read as one file, from its snapshot
        rows = read.stream().read_all()
    finally:
        read.close()
    assert sorted(rows.column("id").to_pylist()) == ["1", "2"]

    # a newer delivery under the same name is not moved by the older version's run
    _put(s3_server, s3_bucket, "landing/default.drops/x[1]_2024-01-01.csv", "id\n1\n2\n3\n")
    assert landing.archive("default.drops", "x[1]_2024-01-01.csv", key) is None
    assert "landing/default.drops/x[1]_2024-01-01.csv" in _keys(s3_server, s3_bucket)
    newer = landing.content_key(landing.scan("default.drops", spec)[0].path)
    moved = landing.archive("default.drops", "x[1]_2024-01-01.csv", newer)
    assert moved is not None and str(moved).startswith(f"s3://{s3_bucket}/archive/default.drops/")
    assert "landing/default.drops/x[1]_2024-01-01.csv" not in _keys(s3_server, s3_bucket)
    # the archived copy is the loaded version, and a rebuild of the partition reads it from the archive
    inputs = landing.partition_inputs("default.drops", spec, "2024-01-01")
    assert [(i.name, i.archived) for i in inputs] == [("x[1]_2024-01-01.csv", True)]
    read = landing.open_partition(con, "default.drops", spec, "2024-01-01", ["id"])
    try:
        assert sorted(read.stream().read_all().column("id").to_pylist()) == ["1", "2", "3"]
    finally:
        read.close()

    # quarantine: the file and its reason beside it; tags naming another place are refused
    _put(s3_server, s3_bucket, "landing/default.drops/bad_2024-01-02.csv", "not,a\n")
    quarantined = landing.quarantine("default.drops", "bad_2024-01-02.csv", "no column id")
    assert quarantined is not None
    reason_key = str(quarantined).removeprefix(f"s3://{s3_bucket}/") + ".reason.txt"
    assert reason_key.startswith("quarantine/default.drops/")
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=reason_key)["Body"].read()
    assert body == b"no column id\n"
    from etl_assets.errors import PermanentSourceError

    for dataset, name in (
        ("default.drops", "../default.other/z_2024-01-01.csv"),
        ("../default.other", "z_2024-01-01.csv"),
        ("default.drops", ".x"),
    ):
        with pytest.raises(PermanentSourceError, match="not a plain"):
            landing.archive(dataset, name)
    assert "landing/default.other/z_2024-01-01.csv" in _keys(s3_server, s3_bucket)

    # retention of archived objects
    assert landing.expire_archived("default.drops", oldest=0) == []
    expired = landing.expire_archived("default.drops", oldest=2**40)
    assert len(expired) == 1 and expired[0].endswith("_x[1]_2024-01-01.csv")
    assert not _keys(s3_server, s3_bucket, "archive/")


def test_landing_move_in_a_versioned_bucket_deletes_only_the_version_copied(landing, s3_server, s3_bucket, monkeypatch):
    client = s3_server.client()
    client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    name = "a_2024-01-01.csv"
    _put(s3_server, s3_bucket, f"landing/default.drops/{name}", "id\n1\n")
    remote = landing.remote()
    assert remote is not None and remote.store.versioned()
    loaded = remote.head("default.drops", name)
    assert loaded is not None and loaded.version_id
    real_head, redelivered = remote.head, []

    def head_then_redeliver(dataset, file_name):
        info = real_head(dataset, file_name)
        if not redelivered:  # the producer re-delivers the name right after the move looked at it
            redelivered.append(True)
            _put(s3_server, s3_bucket, f"landing/default.drops/{name}", "id\n2\n")
        return info

    monkeypatch.setattr(remote, "head", head_then_redeliver)
    moved = landing.archive("default.drops", name, f"etag:{loaded.etag}")
    assert moved is not None
    archived_key = str(moved).removeprefix(f"s3://{s3_bucket}/")
    assert client.get_object(Bucket=s3_bucket, Key=archived_key)["Body"].read() == b"id\n1\n"
    # the re-delivery is still in landing, for its own run
    assert client.get_object(Bucket=s3_bucket, Key=f"landing/default.drops/{name}")["Body"].read() == b"id\n2\n"


@pytest.mark.slow
def test_the_reference_pipelines_run_with_lake_and_landing_on_s3(s3_server, s3_bucket, tmp_path, monkeypatch):
    """The whole shop reference run (API, SQLite and landing files) with the lake and the landing zone in the
    bucket: the warehouse holds what the sources hold, and no lake or landing file is on the local disk."""
    from dagster import instance_for_test

    from etl_assets.cli.demo import run_reference
    from etl_assets.definitions import build_definitions
    from etl_assets_demo import DemoApiServer, generate_shop_data
    from etl_assets_tests.test_pipeline_e2e import _expected_revenue

    data_dir = tmp_path / "data"
    monkeypatch.setenv("ETL_DATA_DIR", str(data_dir))
    monkeypatch.delenv("ETL_PIPELINES_DIR", raising=False)
    manifest = generate_shop_data(data_dir, orders=600, days=2)
    expected = _expected_revenue(manifest)
    client = s3_server.client()
    local_landing = data_dir / "landing"
    for path in sorted(local_landing.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), s3_bucket, f"landing/{path.relative_to(local_landing)}")
    shutil.rmtree(local_landing)
    monkeypatch.setenv("ETL_LAKE_URL", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("ETL_LANDING_URL", f"s3://{s3_bucket}/landing")
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance, DemoApiServer(manifest.orders_path) as api:
        monkeypatch.setenv("SHOP_API_URL", api.url)
        runs = run_reference(build_definitions(), instance, manifest.partition_keys)
        assert [r.success for r in runs] == [True] * (1 + len(manifest.partition_keys))
    assert not (data_dir / "lake").exists() and not local_landing.exists()
    keys = _keys(s3_server, s3_bucket, "lake/")
    assert {f"lake/shop/raw_orders/{p}.parquet" for p in manifest.partition_keys} <= set(keys)
    assert {f"lake/shop/clean_orders/{p}.view.json" for p in manifest.partition_keys} <= set(keys)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        actual = con.execute(
            "SELECT strftime(order_date, '%Y-%m-%d'), country, orders, units, revenue_usd FROM shop.daily_revenue"
            " ORDER BY 1, 2"
        ).fetchall()
        orders = con.execute("SELECT count(*), count(DISTINCT order_id) FROM shop.orders").fetchall()[0]
    import pandas as pd

    source = pd.read_parquet(manifest.orders_path)
    assert orders == (len(source), len(source))
    assert [(d, c, o, u) for d, c, o, u, _ in actual] == [
        tuple(row) for row in expected[["order_date", "country", "orders", "units"]].itertuples(index=False)
    ]
    assert [str(v) for *_, v in actual] == [str(v) for v in expected["revenue"]]


def test_the_file_sensor_watches_a_prefix_and_keys_each_version_by_size_and_etag(
    landing: LandingFilesSource, s3_server, s3_bucket
):
    from dagster import build_sensor_context, instance_for_test

    from etl_assets.definitions import build_definitions
    from etl_assets.pipelines.sensors import TAG_SHA256, landing_target, run_key_for

    defs = build_definitions()
    sensor = defs.resolve_sensor_def("shop__inventory_file_sensor")
    name = "inventory_2024-01-02.ndjson"
    body = '{"snapshot_date":"2024-01-02","product_id":1,"on_hand":3}\n'
    _put(s3_server, s3_bucket, f"landing/shop.inventory/{name}", body)
    _put(s3_server, s3_bucket, "landing/shop.inventory/inventory_2024-01-03.ndjson.part", "half")

    with instance_for_test() as instance:

        def tick(cursor):
            context = build_sensor_context(
                instance=instance, cursor=cursor, resources={"landing": landing}, definitions=defs
            )
            return sensor.evaluate_tick(context)

        first = tick(None)
        second = tick(first.cursor)
        assert second.run_requests is not None
        assert [r.partition_key for r in second.run_requests] == ["2024-01-02"]
        request = second.run_requests[0]
        etag = s3_server.client().head_object(Bucket=s3_bucket, Key=f"landing/shop.inventory/{name}")["ETag"].strip('"')
        assert request.run_key == run_key_for("shop.inventory", name, len(body), f"etag:{etag}")
        assert request.tags[TAG_SHA256] == f"etag:{etag}"
        # the archive sensor accepts the tags it set, and moves exactly that version
        sources = {"shop.inventory": _inventory_source()}
        target, refused = landing_target(dict(request.tags), sources)
        assert refused is None and target is not None
        assert landing.archive(target.dataset, target.name, target.sha256) is not None
        assert tick(second.cursor).run_requests == []
        # a new delivery under the same name is a new version with a new run key
        _put(s3_server, s3_bucket, f"landing/shop.inventory/{name}", body.replace("3}", "4}"))
        third = tick(tick(second.cursor).cursor)
        assert (
            third.run_requests is not None
            and len(third.run_requests) == 1
            and third.run_requests[0].run_key != request.run_key
        )


def _inventory_source() -> FilesSource:
    from etl_assets.pipelines.spec import load_specs

    source = next(s.spec.source for s in load_specs() if s.spec.ref == "shop.inventory")
    assert isinstance(source, FilesSource)
    return source


def test_a_multipart_upload_is_cached_under_the_etag_the_server_gives_it(lake, s3_server, s3_bucket, monkeypatch):
    """Past the single-PUT size the lake uploads in parts; the ETag it computes for its read cache is the server's, so
    the writer's next read of the partition is served from the cache and a reader elsewhere gets the same bytes."""
    from etl_assets import objectstore

    monkeypatch.setattr(objectstore, "SINGLE_PUT_BYTES", 5 << 20)
    monkeypatch.setattr(objectstore, "PART_BYTES", 5 << 20)  # S3's smallest part
    import numpy as np

    table = pa.table({"x": np.random.default_rng(1).integers(0, 2**62, 2_000_000)})
    result = lake.write(["default", "raw_big"], None, table)
    assert result.bytes > 10 << 20
    etag = s3_server.client().head_object(Bucket=s3_bucket, Key="lake/default/raw_big/_all.parquet")["ETag"].strip('"')
    assert "-" in etag, etag  # a multipart ETag: <md5 of the part md5s>-<parts>
    cached = list((lake.root_path() / "objects").rglob("*.parquet"))
    assert [p.stem for p in cached] == [etag]
    got = lake.table(["default", "raw_big"], [None])
    assert got.paths == (str(cached[0]),) and got.num_rows == 2_000_000


@pytest.mark.slow
def test_rebuild_from_a_raw_lake_on_s3(shop_data, api_server, data_dir, instance, s3_server, s3_bucket, monkeypatch):
    """`etl-assets rebuild` with the lake in the bucket: everything but raw is lost (and the local read cache with
    it, as on a new host), the sources are gone, and the rebuild gives the same tables; a missing raw partition is
    named."""
    from etl_assets.cli import main as cli
    from etl_assets.cli.demo import run_reference
    from etl_assets.definitions import build_definitions
    from etl_assets_tests.test_rebuild import snapshot

    monkeypatch.setenv("ETL_LAKE_URL", f"s3://{s3_bucket}/lake")
    runs = run_reference(build_definitions(), instance, shop_data.partition_keys)
    assert all(r.success for r in runs), runs
    before = snapshot(data_dir)
    client = s3_server.client()
    for key in _keys(s3_server, s3_bucket, "lake/"):
        if not key.startswith("lake/shop/raw_"):
            client.delete_object(Bucket=s3_bucket, Key=key)
    (data_dir / "warehouse.duckdb").unlink()
    shutil.rmtree(data_dir / ".lake_cache")
    lake_s3._origins.clear()
    monkeypatch.setenv("SHOP_API_URL", "http://127.0.0.1:9")
    shop_data.sqlite_path.rename(shop_data.sqlite_path.with_suffix(".gone"))
    shutil.rmtree(data_dir / "landing")
    first, last = shop_data.partition_keys[0], shop_data.partition_keys[-1]
    for pipeline in ("customers", "products", "fx_rates"):
        assert cli(["rebuild", pipeline]) == 0
    assert cli(["rebuild", "orders", "--from", first, "--to", last]) == 0
    assert snapshot(data_dir) == before
    client.delete_object(Bucket=s3_bucket, Key=f"lake/shop/raw_orders/{first}.parquet")
    assert cli(["rebuild", "orders", "--from", first, "--to", last]) == 2
    assert snapshot(data_dir) == before


def test_a_distributed_deployment_refuses_a_local_lake_or_landing_zone_and_takes_s3(s3_bucket, data_dir, monkeypatch):
    from etl_assets.settings import DeploymentRefused

    monkeypatch.setenv("ETL_DEPLOYMENT", "distributed")
    monkeypatch.delenv("ETL_LAKE_URL", raising=False)
    monkeypatch.delenv("ETL_LANDING_URL", raising=False)
    with pytest.raises(DeploymentRefused, match="ETL_LAKE_URL=s3://"):
        LakeStorage().write(["default", "raw_x"], None, pa.table({"x": [1]}))
    with pytest.raises(DeploymentRefused, match="ETL_LANDING_URL=s3://"):
        LandingFilesSource().scan("default.drops", FilesSource.model_validate({"kind": "files", "format": "csv"}))
    assert not (data_dir / "lake").exists()
    monkeypatch.setenv("ETL_LAKE_URL", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("ETL_LANDING_URL", f"s3://{s3_bucket}/landing")
    assert LakeStorage().write(["default", "raw_x"], None, pa.table({"x": [1]})).rows == 1
    assert (
        LandingFilesSource().scan("default.drops", FilesSource.model_validate({"kind": "files", "format": "csv"})) == []
    )
