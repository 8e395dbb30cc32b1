"""Where a quarantined row came from: `_etl_source` names its file and `_etl_record` its record number in that
file, in the lake and in the warehouse's `quarantine.<domain>__<name>`, for a partition delivered as several files."""

from __future__ import annotations

import duckdb
import pytest

from etl_assets.keys import Pipeline, dagster_name, pipeline_job_name, pipeline_ref
from etl_assets.pipelines.steps.load import QUARANTINE_SCHEMA
from etl_assets_tests.specs import column, definitions_for, files_source, pipeline

pytestmark = [pytest.mark.slow]

SPEC = pipeline(
    "readings",
    [column("reading_id", "BIGINT", nullable=False), column("value", "INTEGER", nullable=False, min=0)],
    domain="lab",
    source=files_source(glob="readings_*.csv", partition_regex=r"readings_(?P<partition>\d{4}-\d{2}-\d{2})_[ab]\.csv$"),
    partitions={"type": "daily", "start": "2024-01-01"},
    primary_key=["reading_id"],
    quality={"threshold": 0},
)
READINGS = Pipeline(SPEC["domain"], SPEC["name"])


def test_quarantined_rows_name_their_file_and_record(tmp_path, data_dir, instance):
    landing = data_dir / "landing" / pipeline_ref(READINGS)
    landing.mkdir(parents=True)
    # two files for one day; bad rows at known records (1-based, header not counted)
    (landing / "readings_2024-01-01_a.csv").write_text(
        "reading_id,value\n" + "".join(f"{i},{'x' if i == 7 else i}\n" for i in range(1, 1001))
    )
    (landing / "readings_2024-01-01_b.csv").write_text(
        "reading_id,value\n" + "".join(f"{2000 + i},{-1 if i in (1, 500) else i}\n" for i in range(1, 501))
    )
    job = definitions_for(tmp_path / "specs", SPEC).resolve_job_def(pipeline_job_name(READINGS))
    assert job.execute_in_process(instance=instance, partition_key="2024-01-01").success
    expected = [
        ("7", "readings_2024-01-01_a.csv", 7, ["type:value"]),
        ("2001", "readings_2024-01-01_b.csv", 1, ["min:value"]),
        ("2500", "readings_2024-01-01_b.csv", 500, ["min:value"]),
    ]
    lake = data_dir / "lake" / "lab" / "quarantine_readings" / "2024-01-01.parquet"
    query = "SELECT reading_id, _etl_source, _etl_record, _etl_reasons FROM {} ORDER BY _etl_source, _etl_record"
    assert duckdb.execute(query.format(f"read_parquet('{lake}')")).fetchall() == expected
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(query.format(f"{QUARANTINE_SCHEMA}.{dagster_name(READINGS)}")).fetchall() == expected
        assert con.execute("SELECT count(*) FROM lab.readings").fetchall() == [(1497,)]
