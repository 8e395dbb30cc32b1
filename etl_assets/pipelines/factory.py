"""Builds Dagster definitions from pipeline specs.

Per source pipeline ``x`` of domain ``d``:
``raw/x`` (extract to the lake) -> ``clean/x`` + ``quarantine/x`` (validate) -> ``warehouse/x`` / ``postgres/x`` (load).
Per transform pipeline ``m``: ``marts/m`` (SQL over its inputs) -> ``warehouse/m`` / ``postgres/m``.
"""


import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetSelection,
    AutomationCondition,
    BackfillPolicy,
    BetaWarning,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    AssetsDefinition,
    Backoff,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    EnvVar,
    HourlyPartitionsDefinition,
    Jitter,
    MaterializeResult,
    MetadataValue,
    Output,
    PartitionsDefinition,
    RetryPolicy,
    ScheduleDefinition,
    asset,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
    define_asset_job,
    get_dagster_logger,
    multi_asset,
)

from etl_assets.errors import ContractError, PermanentSourceError, UpstreamNotReadyError, no_retry_for_permanent_errors
from etl_assets.lake import (VIEW_SUFFIX, LakeError, LakeIOManager, LakeStorage, LakeStream, LakeTable, LakeView,
                             view_files, view_stats, write_metadata)
from etl_assets.pipelines import sensors as sensors_mod
from etl_assets.pipelines import validation
from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec
from etl_assets.keys import (SOURCE_COLUMN, UNPARTITIONED, clean_key, mart_key, quarantine_key, raw_key,
                             target_key)
from etl_assets.resources.api import ExtractStats, RestApiSource
from etl_assets.resources.files import LandingFilesSource
from etl_assets.resources.sql import SqlDatabaseSource
from etl_assets.settings import duckdb_connection
from etl_assets.resources.targets import (PARTITION_COLUMN, WAREHOUSE_POOL, DuckDBWarehouse, GuardTripped, PostgresTarget,
                                         RowGuard)
from etl_assets.sqlutil import qualified, quote_ident, quote_literal

LAKE_IO_MANAGER = "lake_io_manager"
CHECK_ROWS_CONSERVED = "rows_conserved"
CHECK_PRIMARY_KEY_UNIQUE = "primary_key_unique"
CHECK_MATCHES_LAKE = "matches_lake"
CHECK_CONTRACT_HOLDS = "contract_holds"
QUARANTINE_SCHEMA = "quarantine"
TARGET_RESOURCE = {"duckdb": "warehouse", "postgres": "postgres_target"}


def dataset_key(spec: PipelineSpec) -> AssetKey:
    """The lake asset other pipelines read: the validated dataset, or the mart."""
    return clean_key(spec.name) if spec.source is not None else mart_key(spec.name)


def source_resource_key(spec: PipelineSpec) -> str:
    assert spec.source is not None
    return "landing" if spec.source.kind == "files" else f"source_{spec.source.connection}"


def partitions_def_for(spec: PipelineSpec) -> PartitionsDefinition | None:
    p = spec.partitions
    if p.type == "daily":
        return DailyPartitionsDefinition(start_date=p.start.isoformat(), timezone=p.timezone)
    if p.type == "hourly":
        return HourlyPartitionsDefinition(start_date=f"{p.start.isoformat()}-00:00", timezone=p.timezone)
    return None


def automation_for(spec: PipelineSpec) -> AutomationCondition | None:
    """The spec's dependency-driven condition; ``eager`` follows Dagster's (latest time partition only)."""
    if spec.automation is None:
        return None
    if spec.automation.condition == "eager":
        return AutomationCondition.eager()
    return AutomationCondition.on_cron(spec.automation.cron)


def retry_policy_for(spec: PipelineSpec) -> RetryPolicy:
    r = spec.retry
    return RetryPolicy(
        max_retries=r.max_retries,
        delay=r.delay_seconds,
        backoff=Backoff.EXPONENTIAL if r.backoff == "exponential" else Backoff.LINEAR,
        jitter={"full": Jitter.FULL, "plus_minus": Jitter.PLUS_MINUS, "none": None}[r.jitter],
    )


def _partition(context: AssetExecutionContext) -> str:
    return context.partition_key if context.has_partition_key else UNPARTITIONED


def _run_keys(context: AssetExecutionContext) -> list[str] | None:
    """The partitions of a single-run backfill over a range (``--partition-range``), else None."""
    if context.has_partition_key_range and not context.has_partition_key:
        return list(context.partition_keys)
    return None


def _write_range(context: AssetExecutionContext, lake: LakeStorage, key: AssetKey,
                 values: Iterable[tuple[str, object]]) -> Output:
    """Write each partition of a range run to the lake (atomically, one file each, one after the other), each
    partition's materialization getting its own figures.

    A range run's output is written here, through the same lake storage the IO manager uses, because the IO
    manager receives one value per output; it then gets ``None`` and writes nothing more.
    """
    count = 0
    for partition, value in values:
        count += 1
        if isinstance(value, LakeStream):
            result = lake.write(key.path, partition, value.reader)
            metadata = {**write_metadata(result), **value.describe()}
        else:
            result = lake.write(key.path, partition, value)
            metadata = write_metadata(result)
        context.add_asset_metadata(metadata, asset_key=key, partition_key=partition)
    return Output(None, metadata={"partitions_in_run": count})


def source_pool(spec: PipelineSpec) -> str | None:
    """The Dagster pool an API source's extracts run in: one per connection, so a backfill's many runs (one per
    partition) ask the API at most the pool's limit at a time (`dagster.yaml` default 1; raise it with
    ``dagster instance concurrency set api_<connection> N``)."""
    if spec.source is not None and spec.source.kind == "api":
        return f"api_{spec.source.connection}"
    return None


def backfill_policy_for(spec: PipelineSpec) -> BackfillPolicy | None:
    """Database, file and transform pipelines backfill a range in one run; API sources one partition per run."""
    if spec.partitions.type == "none":
        return None
    if spec.source is not None and spec.source.kind == "api":
        return BackfillPolicy.multi_run(max_partitions_per_run=1)
    return BackfillPolicy.single_run()


def _conforming(schema: pa.Schema, batches: Iterator[pa.RecordBatch], dataset: str) -> Iterator[pa.RecordBatch]:
    """Give every batch the first batch's columns; a column that appears only later is a schema change."""
    for index, batch in enumerate(batches):
        extra = [n for n in batch.schema.names if n not in schema.names]
        if extra:
            raise ContractError(
                f"{dataset}: page {index + 1} has new column(s) {extra} not in earlier pages; "
                "re-run so the raw schema includes them, or declare them in the spec"
            )
        arrays = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type) for f in schema]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _build_extract(loaded: LoadedSpec, pdef: PartitionsDefinition | None) -> AssetsDefinition:
    spec = loaded.spec
    src = spec.source
    resource_key = source_resource_key(spec)
    columns = [c.name for c in spec.columns]

    @asset(
        key=raw_key(spec.name),
        group_name=spec.domain,
        partitions_def=pdef,
        io_manager_key=LAKE_IO_MANAGER,
        required_resource_keys={resource_key, "lake"},
        pool=source_pool(spec),
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
        kinds={src.kind, "parquet"},
        description=f"{spec.name} as delivered by its {src.kind} source (text values, plus _etl_source).",
        metadata={"spec_file": str(loaded.path)},
    )
    def extract(context: AssetExecutionContext):
        with no_retry_for_permanent_errors():
            keys = _run_keys(context)
            if keys is None:
                return _extract(context, context.partition_key if context.has_partition_key else None)
            lake: LakeStorage = context.resources.lake
            return _write_range(context, lake, raw_key(spec.name), ((k, _extract(context, k)) for k in keys))

    def _extract(context: AssetExecutionContext, partition: str | None):
        started = time.perf_counter()
        resource = getattr(context.resources, resource_key)
        window = None
        if partition is not None:
            tw = pdef.time_window_for_partition_key(partition)
            window = (tw.start, tw.end)
        if src.kind == "api":
            api: RestApiSource = resource
            stats = ExtractStats()
            pages = api.extract(src, columns, window=window, stats=stats)
            first = next(pages, None)
            if first is None:
                first = pa.RecordBatch.from_pylist([], schema=pa.schema([pa.field(c, pa.string()) for c in [*columns, "_etl_source"]]))
            schema = first.schema

            def batches() -> Iterator[pa.RecordBatch]:
                yield first
                yield from pages

            reader = pa.RecordBatchReader.from_batches(schema, _conforming(schema, batches(), spec.name))
            return LakeStream(reader, lambda: {
                "pages": stats.pages,
                "records_extracted": stats.records,
                "request_retries": stats.retries,
                "retry_reasons": MetadataValue.json(stats.retry_reasons),
                "source_position": stats.max_watermark or "",
                "extract_seconds": round(time.perf_counter() - started, 3),
                "base_url": api.display_url(),
            })
        if src.kind == "sql":
            db: SqlDatabaseSource = resource
            reader = db.extract(src, window=window)
            return LakeStream(reader, lambda: {
                "source_position": f"{src.table or 'query'} window {window[0].isoformat()}..{window[1].isoformat()}" if window else (src.table or "query"),
                "extract_seconds": round(time.perf_counter() - started, 3),
                "fast_path": "adbc" if db.is_postgres() else "sqlalchemy",
            })
        landing: LandingFilesSource = resource
        tags = context.run.tags
        # the file this run was launched for (by the file sensor); a manual or backfill run has none
        own_file = tags.get(sensors_mod.TAG_FILE) if tags.get(sensors_mod.TAG_DATASET) == spec.name else None
        con = duckdb_connection()
        read = landing.open_partition(con, spec.name, src, partition, required=[c.name for c in spec.columns if not c.nullable],
                                      own_file=own_file)
        for refusal in read.moved:
            context.log.warning(f"{spec.name}: {refusal.file.delivered.name} refused and moved to landing quarantine: {refusal.reason}")
        for refusal in read.skipped:
            context.log.warning(f"{spec.name}: {refusal.file.delivered.name} left out (its own run judges it): {refusal.reason}")
        gone = _sources_no_longer_delivered(context.resources.lake, spec, partition, read)
        if gone:
            context.log.warning(f"{spec.name}: the partition's raw data held rows of {', '.join(gone)}, which is no longer "
                                "in landing or the archive (expired by retention.archive_days, or removed); its rows "
                                "are not in the new raw partition")
        reader = read.stream()
        return LakeStream(reader, lambda: {
            "source_position": MetadataValue.json([f.name for f in read.files]),
            "files_no_longer_delivered": MetadataValue.json(gone),
            "files": len(read.files),
            "files_archived": sum(f.archived for f in read.files),
            "files_refused": MetadataValue.json({r.file.delivered.name: r.reason for r in read.moved}),
            "files_left_out": MetadataValue.json({r.file.delivered.name: r.reason for r in read.skipped}),
            "malformed_rows": read.malformed_rows,
            "extract_seconds": round(time.perf_counter() - started, 3),
        })

    return extract


def _sources_no_longer_delivered(lake: LakeStorage, spec: PipelineSpec, partition: str | None, read) -> list[str]:
    """Files whose rows the partition's current raw data holds but that are among its inputs no more."""
    stored = lake.stored_path(raw_key(spec.name).path, partition)
    if stored is None or stored.name.endswith(".view.json"):
        return []
    with duckdb_connection() as con:
        before = {r[0] for r in con.execute(
            f"SELECT DISTINCT {quote_ident(SOURCE_COLUMN)} FROM read_parquet(?)", [str(stored)]).fetchall()}
    return sorted(before - {f.name for f in read.files} - {None})


CHECK_QUALITY_SCORE = "quality_score"
CHECK_SCHEMA_CHANGE = "schema_change"
CHECK_ROW_COUNT = "row_count"
SAMPLE_ROWS = 5


def contract_families(spec: PipelineSpec) -> dict[str, str]:
    """Check families the contract generates, with their severity (ERROR when any rule in the family is)."""
    column = validation.partition_window_column(spec)
    rules, _ = validation.contract_rules(spec.columns, spec.primary_key, [c.name for c in spec.columns], True,
                                         targets=spec.targets,
                                         window=validation.PartitionWindow(column) if column else None)
    families: dict[str, str] = {}
    for rule in rules:
        families[rule.family] = "ERROR" if "ERROR" in (rule.severity, families.get(rule.family)) else "WARN"
    return {f: families[f] for f in validation.FAMILIES if f in families}


def validation_check_specs(spec: PipelineSpec) -> list[AssetCheckSpec]:
    """The checks generated from a source pipeline's contract (declared next to the asset they guard)."""
    ck = clean_key(spec.name)
    specs = [
        AssetCheckSpec(CHECK_ROWS_CONSERVED, asset=ck, blocking=True, description="rows_in = rows_valid + rows_quarantined"),
        AssetCheckSpec(CHECK_QUALITY_SCORE, asset=ck, blocking=True,
                       description=f"share of valid rows is at least {spec.quality.threshold:.0%}"),
        AssetCheckSpec(CHECK_SCHEMA_CHANGE, asset=ck, blocking=False,
                       description="no columns beyond the contract arrived (new ones are loaded and flagged)"),
    ]
    for family, severity in contract_families(spec).items():
        specs.append(AssetCheckSpec(family, asset=ck, blocking=severity == "ERROR",
                                    description=f"{family} rules ({severity}); failing rows are "
                                    + ("quarantined" if severity == "ERROR" else "flagged")))
    if spec.row_count is not None:
        specs.append(AssetCheckSpec(CHECK_ROW_COUNT, asset=ck, blocking=spec.row_count.severity == "ERROR",
                                    description="rows per partition within the expected range"))
    return specs


def _sample(con, where: str, params: list | None = None) -> MetadataValue:
    """The first failing rows (values as delivered and ``_etl_errors``) from the flagged rows of the batch."""
    row = f'"{validation.ROW_COLUMN}"'
    sample = con.sql(f"SELECT * EXCLUDE ({validation.WARNINGS_COLUMN}, {row}) FROM {validation.FLAGGED}"
                     f" WHERE {where} ORDER BY {row} LIMIT {SAMPLE_ROWS}", params=params)
    rows = sample.fetchall()
    if not rows:
        return MetadataValue.md("(none)")

    def cell(value: object) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    # a Markdown table built here: rendering five rows is not worth importing pandas (over a second) in the step
    lines = ["| " + " | ".join(sample.columns) + " |", "|" + "|".join("---" for _ in sample.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return MetadataValue.md("\n".join(lines))


def _row_count_result(context, spec: PipelineSpec, rows_in: int, partition: str) -> AssetCheckResult:
    expectation = spec.row_count
    history = context.instance.fetch_materializations(clean_key(spec.name), limit=expectation.trailing_partitions + 1).records
    partition = None if partition == UNPARTITIONED else partition
    previous = [r.asset_materialization.metadata["rows_in"].value for r in history
                if r.asset_materialization is not None and r.asset_materialization.partition != partition
                and "rows_in" in r.asset_materialization.metadata][: expectation.trailing_partitions]
    average = sum(previous) / len(previous) if previous else None
    problems = []
    if rows_in < expectation.min:
        problems.append(f"{rows_in} rows, fewer than the minimum {expectation.min}")
    if average is not None and expectation.max_deviation is not None and average > 0:
        deviation = abs(rows_in - average) / average
        if deviation > expectation.max_deviation:
            problems.append(f"{rows_in} rows deviate {deviation:.0%} from the trailing average {average:.1f}")
    return AssetCheckResult(
        asset_key=clean_key(spec.name), check_name=CHECK_ROW_COUNT, passed=not problems,
        severity=AssetCheckSeverity.ERROR if expectation.severity == "ERROR" else AssetCheckSeverity.WARN,
        metadata={"rows_in": rows_in, "trailing_average": average if average is not None else -1.0,
                  "trailing_partitions": len(previous), "problem": "; ".join(problems) or "none"},
    )


KEY_MIN, KEY_MAX = "key_min", "key_max"  # a clean view's first-key range (as text), for pruning


def _overlapping_partitions(con, others: LakeTable, spec: PipelineSpec, low, high,
                            unreadable: list[str] | None = None) -> list[str | None]:
    """The partitions of ``others`` that may hold a key between ``low`` and ``high`` (the first key column): those
    whose recorded range overlaps it, and those without a recorded range (read to be sure).

    A partition that cannot be read (its view manifest is corrupt, or a file it names is gone) is left out instead of
    failing this batch: its keys are not compared with the batch's. Each is logged as a warning and its key appended
    to ``unreadable``, for the caller to report; re-materializing it repairs it.
    """
    if low is None:
        return []  # a batch without keys matches nothing
    key_type = next(c.type for c in spec.columns if c.name == spec.primary_key[0])
    keys, lows, highs, unknown = [], [], [], []
    skipped: list[tuple[str, str]] = []
    paths = dict(zip(others.partitions, others.paths))
    for key, path in paths.items():
        try:
            stats = view_stats(path)
        except LakeError as exc:
            skipped.append((key, str(exc)))
            continue
        if not stats or KEY_MIN not in stats or KEY_MAX not in stats:
            unknown.append(key)
        elif stats[KEY_MIN] is not None:
            keys.append(key)
            lows.append(stats[KEY_MIN])
            highs.append(stats[KEY_MAX])
    overlapping = con.execute(
        f"SELECT k FROM (SELECT unnest($keys::VARCHAR[]) AS k, unnest($lows::VARCHAR[]) AS lo, unnest($highs::VARCHAR[]) AS hi)"
        f" WHERE CAST(lo AS {key_type}) <= CAST($high AS {key_type}) AND CAST(hi AS {key_type}) >= CAST($low AS {key_type})",
        {"keys": keys, "lows": lows, "highs": highs, "low": str(low), "high": str(high)}).fetchall() if keys else []
    chosen = []
    for key in unknown + [k for (k,) in overlapping]:
        path = paths[key]
        try:
            gone = [f for f in view_files(path) if not f.is_file()] if path.endswith(VIEW_SUFFIX) else []
            reason = f"{path} names {gone[0]}, which is not there" if gone else None
        except LakeError as exc:  # replaced by a corrupt one since it was read above
            reason = str(exc)
        if reason:
            skipped.append((key, reason))
        else:
            chosen.append(None if key == UNPARTITIONED else key)
    for key, reason in skipped:
        get_dagster_logger().warning(
            f"{spec.name}: partition {key} is left out of the duplicate-key check across partitions, as it cannot be"
            f" read ({reason}); its keys were not compared with this batch's. Re-materialize it to repair it.")
    if unreadable is not None:
        unreadable.extend(key for key, _ in skipped)
    return chosen


def _build_validate(loaded: LoadedSpec, pdef: PartitionsDefinition | None) -> AssetsDefinition:
    spec = loaded.spec
    ck, qk = clean_key(spec.name), quarantine_key(spec.name)
    references = sorted({c.references.dataset for c in spec.columns if c.references is not None})
    contract = {c.name for c in spec.columns}

    @multi_asset(
        name=f"validate_{spec.name}",
        group_name=spec.domain,
        partitions_def=pdef,
        ins={"raw": AssetIn(key=raw_key(spec.name))},
        deps=[clean_key(name) for name in references],
        outs={
            "clean": AssetOut(key=ck, io_manager_key=LAKE_IO_MANAGER, kinds={"parquet"},
                              description=f"{spec.name}: rows meeting the contract, typed."),
            "quarantine": AssetOut(key=qk, io_manager_key=LAKE_IO_MANAGER, kinds={"parquet"},
                                   description=f"{spec.name}: rows breaking the contract, as delivered, with reasons."),
        },
        check_specs=validation_check_specs(spec),
        required_resource_keys={"lake"},
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
    )
    def validate(context: AssetExecutionContext, raw: LakeTable):
        with no_retry_for_permanent_errors():
            keys = _run_keys(context)
            if keys is None:
                yield from _validate(context, raw, _partition(context))
            else:
                yield from _validate_range(context, raw, keys)

    def _validate_range(context: AssetExecutionContext, raw: LakeTable, keys: list[str]):
        """A range run: validate partition by partition and write each, every partition's materializations getting
        its own figures; the checks are reported over all of them."""
        lake: LakeStorage = context.resources.lake
        tables = raw.by_partition()
        targets = {"clean": ck, "quarantine": qk}
        checks: dict[str, list[tuple[str, AssetCheckResult]]] = {}
        for partition in keys:
            if partition not in tables:
                raise LakeError(f"raw/{spec.name}: partition {partition} is not in the lake; materialize it first")
            for event in _validate(context, tables[partition], partition):
                if isinstance(event, Output):
                    key = targets[event.output_name]
                    result = lake.write(key.path, partition, event.value)
                    context.add_asset_metadata({**event.metadata, **write_metadata(result)}, asset_key=key,
                                               partition_key=partition)
                else:
                    checks.setdefault(event.check_name, []).append((partition, event))
        yield Output(None, "clean", metadata={"partitions_in_run": len(keys)})
        yield Output(None, "quarantine", metadata={"partitions_in_run": len(keys)})
        for name, results in checks.items():
            failed = [p for p, r in results if not r.passed]
            yield AssetCheckResult(
                asset_key=ck, check_name=name, passed=not failed, severity=results[0][1].severity,
                metadata={"partitions_checked": len(results), "partitions_failed": MetadataValue.json(failed)},
            )

    def _validate(context: AssetExecutionContext, raw: LakeTable, partition: str):
        # pinned: a re-extract of this partition while it is validated cannot change the rows under the checks
        with context.resources.lake.pinned(raw) as pinned:
            yield from _validate_pinned(context, pinned, partition)

    def _validate_pinned(context: AssetExecutionContext, raw: LakeTable, partition: str):
        started = time.perf_counter()
        lake: LakeStorage = context.resources.lake
        con = duckdb_connection()
        try:
            if len(raw.paths) != 1:
                raise LakeError(f"{raw.name}: validation reads one partition file at a time, got {len(raw.paths)}")
            raw_rel = raw.relation(con)
            raw_columns = raw_rel.columns
            raw_types = dict(zip(raw_columns, map(str, raw_rel.types)))
            # names no SQL can use (`bad col`, the platform's own, equal up to case) fail at once, not as a retried bug
            validation.check_column_names(spec.name, raw_columns)
            validation.check_required_columns(spec.name, spec.columns, raw_columns)
            validation.check_castable_types(spec.name, spec.columns, raw_types)
            # file_row_number: DuckDB's position of the row in its Parquet file (first-wins order and row identity)
            con.register("raw", raw_rel.project(f'*, file_row_number AS "{validation.ROW_COLUMN}"'))
            for name in references:
                ref_key = clean_key(name)
                ref_partitions = lake.partitions(ref_key.path)
                if not ref_partitions:
                    raise UpstreamNotReadyError(f"{spec.name}: its relationship to {name} needs {name} loaded first; run it")
                con.register(validation.reference_view(name), lake.table(ref_key.path, ref_partitions).relation(con))
            others = [p for p in lake.partitions(ck.path) if (p or UNPARTITIONED) != partition] if spec.primary_key else []
            stats: dict = {}
            unreadable: list[str] = []  # other partitions left out of the duplicate-key check (see below)
            if spec.primary_key and (others or pdef is not None):
                # the batch's first-key range, kept with the clean view so later batches can skip this partition
                low, high = con.sql(validation.key_bounds_sql(spec.columns, spec.primary_key, raw_types)).fetchall()[0]
                stats = {KEY_MIN: None if low is None else str(low), KEY_MAX: None if high is None else str(high)}
            if others:
                # Only keys of other partitions whose key range overlaps this batch's can match: read just those
                # partitions, and of them only the keys within the range.
                others = _overlapping_partitions(con, lake.table(ck.path, others), spec, low, high, unreadable)
            if others:
                con.register("__etl_other_clean", lake.table(ck.path, others).relation(con))
                con.execute(f"CREATE TEMP TABLE {validation.OTHER_BATCHES} AS "
                            + validation.other_batch_keys_sql(spec.primary_key, "__etl_other_clean"), [low, high])
            window = None
            window_column = validation.partition_window_column(spec)
            if window_column is not None and pdef is not None and partition != UNPARTITIONED:
                # records whose time lies outside this partition's window break out_of_window (bind parameters)
                tw = pdef.time_window_for_partition_key(partition)
                window = validation.PartitionWindow(window_column, tw.start, tw.end)
            rules, params = validation.contract_rules(spec.columns, spec.primary_key, raw_columns, bool(others),
                                                      targets=spec.targets, raw_types=raw_types, window=window)
            for _, statement in validation.batch_statements(spec.columns, spec.primary_key, rules, raw_columns, raw_types):
                con.execute(statement, validation.params_for(statement, params))
            rows_in = raw.num_rows
            rows_bad = con.sql(f"SELECT count(*) FROM {validation.FLAGGED} WHERE len({validation.ERRORS_COLUMN}) > 0").fetchall()[0][0]
            counts: dict[str, int] = dict(con.sql(validation.rule_counts_sql()).fetchall())
            validate_seconds = time.perf_counter() - started
            rows_valid = rows_in - rows_bad
            valid_share = rows_valid / rows_in if rows_in else 1.0
            # clean is stored as a view over this raw file minus the quarantined positions, typed as it is read
            valid = LakeView(source=raw.paths[0], select=validation.clean_select(spec.columns, raw_columns, raw_types),
                             excluded=con.sql(validation.quarantined_positions_sql()), stats=stats)
            quarantined = con.sql(validation.quarantine_sql(raw_columns),
                                  params={"run_id": context.run.run_id, "partition": partition})
            yield Output(valid, "clean", metadata={
                "rows_in": rows_in,
                "rows_valid": rows_valid,
                "rows_quarantined": rows_bad,
                "quality_score": round(valid_share, 6),
                "validate_seconds": round(validate_seconds, 3),
                "validate_rows_per_second": round(rows_in / validate_seconds, 1) if validate_seconds else 0.0,
                "rule_violations": MetadataValue.json(dict(sorted(counts.items()))),
                **({"partitions_not_compared": MetadataValue.json(sorted(unreadable))} if unreadable else {}),
            })
            yield Output(quarantined, "quarantine", metadata={"reasons": MetadataValue.json(dict(sorted(counts.items())))})
            clean_table = lake.table(ck.path, [None if partition == UNPARTITIONED else partition])
            quarantine_table = lake.table(qk.path, [None if partition == UNPARTITIONED else partition])
            results = [AssetCheckResult(
                asset_key=ck, check_name=CHECK_ROWS_CONSERVED, passed=clean_table.num_rows + quarantine_table.num_rows == rows_in,
                metadata={"rows_in": rows_in, "rows_valid": clean_table.num_rows, "rows_quarantined": quarantine_table.num_rows},
            )]
            # rows breaking an ERROR rule that the clean view as written does not leave out (the loads re-check
            # the contract on the rows they insert, before they commit)
            in_clean = validation.errors_not_excluded(con, view_files(clean_table.paths[0])[1])
            for family, severity in contract_families(spec).items():
                family_rules = [r for r in rules if r.family == family]
                names = [r.name for r in family_rules]
                flagged = {n: counts.get(n, 0) for n in names}
                if severity == "ERROR":
                    # blocking: passes when no row breaking an ERROR rule reached the clean data; rows flagged by a
                    # WARN rule of the same family are loaded and reported in the metadata
                    passed = sum(in_clean.get(r.name, 0) for r in family_rules if r.severity == "ERROR") == 0
                else:
                    passed = sum(flagged.values()) == 0
                failing = [n for n in names if flagged[n]]
                where = " OR ".join(f"list_contains({validation.ERRORS_COLUMN}, ?) OR list_contains({validation.WARNINGS_COLUMN}, ?)" for _ in failing)
                results.append(AssetCheckResult(
                    asset_key=ck, check_name=family, passed=passed,
                    severity=AssetCheckSeverity.ERROR if severity == "ERROR" else AssetCheckSeverity.WARN,
                    metadata={
                        "failing_rows": sum(flagged.values()),
                        "by_rule": MetadataValue.json(flagged),
                        "reached_clean": sum(in_clean.get(n, 0) for n in names),
                        "sample": _sample(con, where, [n for n in failing for _ in (0, 1)]) if failing else MetadataValue.md("(none)"),
                    },
                ))
            extra = [c for c in raw_columns if c not in contract and not c.startswith("_etl_")]
            results.append(AssetCheckResult(
                asset_key=ck, check_name=CHECK_SCHEMA_CHANGE, passed=not extra, severity=AssetCheckSeverity.WARN,
                metadata={"new_columns": MetadataValue.json(extra),
                          "missing_optional_columns": MetadataValue.json([c for c in contract if c not in raw_columns])},
            ))
            if spec.row_count is not None:
                results.append(_row_count_result(context, spec, rows_in, partition))
            results.append(AssetCheckResult(
                asset_key=ck, check_name=CHECK_QUALITY_SCORE, passed=valid_share >= spec.quality.threshold,
                metadata={"quality_score": round(valid_share, 6), "threshold": spec.quality.threshold,
                          "checks_passed_share": round(sum(r.passed for r in results) / len(results), 6)},
            ))
            yield from results
        finally:
            con.close()

    return validate


def _one_partition(table: LakeTable, partition: str) -> LakeTable:
    """The slice of an input for one partition of a range run (an unpartitioned input is read whole)."""
    if table.partitions == (UNPARTITIONED,):
        return table
    slices = table.by_partition()
    if partition not in slices:
        raise LakeError(f"{table.name}: partition {partition} is not in the lake; materialize it first")
    return slices[partition]


def _build_transform(loaded: LoadedSpec, pdef: PartitionsDefinition | None, by_name: dict[str, LoadedSpec]) -> AssetsDefinition:
    spec = loaded.spec
    sql_text = loaded.transform_sql()
    inputs = spec.transform.inputs

    @asset(
        key=mart_key(spec.name),
        group_name=spec.domain,
        partitions_def=pdef,
        io_manager_key=LAKE_IO_MANAGER,
        ins={name: AssetIn(key=dataset_key(by_name[name].spec)) for name in inputs},
        required_resource_keys={"lake"},
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
        automation_condition=automation_for(spec),
        kinds={"duckdb", "parquet"},
        description=spec.description or f"{spec.name}: {spec.transform.sql} over {', '.join(inputs)}.",
        metadata={"spec_file": str(loaded.path), "sql": MetadataValue.md(f"```sql\n{sql_text}\n```")},
    )
    def transform(context: AssetExecutionContext, **tables: LakeTable):
        with no_retry_for_permanent_errors():
            keys = _run_keys(context)
            lake: LakeStorage = context.resources.lake
            if keys is None:
                return _transform(tables, context.partition_key if context.has_partition_key else None, lake)
            return _write_range(context, lake, mart_key(spec.name), (
                (k, _transform({n: _one_partition(t, k) for n, t in tables.items()}, k, lake)) for k in keys))

    def _transform(tables: dict[str, LakeTable], partition: str | None, lake: LakeStorage):
        con = duckdb_connection(allowed_directories=[lake.root_path()])
        for name, table in tables.items():
            con.register(name, table.relation(con))
        params = {}
        if "$partition_start" in sql_text or "$partition_end" in sql_text:
            if partition is None:
                raise ContractError(f"{loaded.path}: the SQL uses $partition_start/$partition_end but {spec.name} is unpartitioned")
            window = pdef.time_window_for_partition_key(partition)
            params = {"partition_start": window.start, "partition_end": window.end}
        try:
            return con.sql(sql_text, params=params or None)
        except duckdb.Error as exc:
            # DuckDB refuses a file, URL, ATTACH or extension outside the allowed directories with a PermissionException,
            # and a setting that would turn external access back on with an InvalidInputException naming it
            message = str(exc)
            if isinstance(exc, duckdb.PermissionException) or any(
                    words in message for words in ("external access", "enable_external_access")):
                raise PermanentSourceError(
                    f"transform {spec.name} ({spec.transform.sql}) was refused access outside the lake: {message}. Transform "
                    f"SQL may only read its inputs ({', '.join(inputs)}, registered as views of those names) and cannot "
                    "read or write files, URLs, databases or extensions: remove that access from the SQL") from exc
            raise

    return transform


def _build_load(loaded: LoadedSpec, target: str, pdef: PartitionsDefinition | None) -> AssetsDefinition:
    spec = loaded.spec
    key = target_key(target, spec.name)
    resource_key = TARGET_RESOURCE[target]
    # The DuckDB warehouse also gets the quarantine, as table quarantine.<name>, next to the valid rows.
    with_quarantine = target == "duckdb" and spec.source is not None
    ins = {"data": AssetIn(key=dataset_key(spec))}
    if with_quarantine:
        ins["quarantined"] = AssetIn(key=quarantine_key(spec.name))

    check_seconds = [0.0]  # the uniqueness re-check's share of the last load (metadata)
    table_name = f"{spec.domain}.{spec.name}"
    # the ERROR value rules, re-checked by the warehouse INSERT itself on every row it inserts
    guard = validation.load_guard(spec.columns) if with_quarantine else None
    guards = {table_name: RowGuard(guard[0], guard[1])} if guard else {}
    guarded_rules = guard[2] if guard else []

    def _contract_broken(partition: str, found: dict[str, int]) -> ContractError:
        broken = ", ".join(f"{rule}: {n}" for rule, n in sorted(found.items()) if n) or "a row refused by the load's guard"
        return ContractError(
            f"{table_name} partition {partition}: the rows being loaded break the contract ({broken}); the load was "
            "rolled back and the warehouse keeps its previous rows. The clean data in the lake does not match its "
            f"validation: re-run validate_{spec.name} for this partition")

    def _verify_loaded(con, partition: str) -> dict[str, int]:
        """Inside the load's transaction, after the inserts (which refused any row breaking an ERROR value rule): key
        uniqueness on the rows just inserted; a repeated key rolls the load back with the rule named."""
        found = dict.fromkeys(guarded_rules, 0)
        if spec.primary_key:
            literal = quote_literal(partition)
            con.execute(f"CREATE OR REPLACE TEMP VIEW __etl_loaded AS SELECT * FROM {qualified(spec.domain, spec.name)}"
                        f" WHERE {PARTITION_COLUMN} = {literal}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW __etl_loaded_quarantine AS SELECT * FROM"
                        f" {qualified(QUARANTINE_SCHEMA, spec.name)} WHERE {PARTITION_COLUMN} = {literal}")
            started = time.perf_counter()
            found[validation.DUPLICATE_KEY] = validation.loaded_duplicate_keys(
                con, spec.columns, spec.primary_key, "__etl_loaded", "__etl_loaded_quarantine")
            check_seconds[0] += time.perf_counter() - started
        if any(found.values()):
            raise _contract_broken(partition, found)
        return found

    def _guard_tripped(data: LakeTable, quarantined: LakeTable, partition: str) -> ContractError:
        """The load's INSERT refused a row and everything was rolled back: count, over the rows that were being loaded,
        those breaking each rule, for the error to name them."""
        con = duckdb_connection()
        try:
            con.register("__etl_loading", data.relation(con))
            found = validation.value_violations(con, spec.columns, "__etl_loading")
            if spec.primary_key:
                con.register("__etl_loading_quarantine", quarantined.relation(con))
                found[validation.DUPLICATE_KEY] = validation.loaded_duplicate_keys(
                    con, spec.columns, spec.primary_key, "__etl_loading", "__etl_loading_quarantine")
        finally:
            con.close()
        return _contract_broken(partition, found)

    @asset(
        key=key,
        group_name=spec.domain,
        partitions_def=pdef,
        ins=ins,
        required_resource_keys={resource_key},
        pool=WAREHOUSE_POOL if target == "duckdb" else None,
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
        automation_condition=automation_for(spec),
        kinds={target},
        check_specs=[AssetCheckSpec(CHECK_MATCHES_LAKE, asset=key, blocking=True,
                                    description="the loaded partition has exactly the lake partition's rows")]
        + ([AssetCheckSpec(CHECK_CONTRACT_HOLDS, asset=key, blocking=True,
                           description="the contract re-checked on the rows as loaded, before the commit")]
           if with_quarantine else []),
        description=f"{spec.name} loaded into {target} table {spec.domain}.{spec.name}, one partition replaced per run."
        + (f" Its quarantine goes to quarantine.{spec.name}." if with_quarantine else ""),
    )
    def load(context: AssetExecutionContext, data: LakeTable, **extra: LakeTable) -> MaterializeResult:
        quarantined = extra.get("quarantined")
        resource: DuckDBWarehouse | PostgresTarget = getattr(context.resources, resource_key)
        keys = _run_keys(context) or [_partition(context)]
        rows = expected = 0
        contract_verified: dict[str, int] = {}
        check_seconds[0] = 0.0
        for partition in keys:  # a range run replaces its partitions one transaction each
            part = data if len(keys) == 1 else _one_partition(data, partition)
            q_result = None
            if quarantined is not None:  # the dataset and its quarantine are replaced in one transaction
                q_part = quarantined if len(keys) == 1 else _one_partition(quarantined, partition)
                with no_retry_for_permanent_errors():  # a contract mismatch is not fixed by loading again
                    try:
                        result, q_result = resource.replace_partitions(
                            [(spec.domain, spec.name, part), (QUARANTINE_SCHEMA, spec.name, q_part)], partition,
                            context.run.run_id, guards=guards,
                            verify=lambda con, p=partition: contract_verified.update(_verify_loaded(con, p)))
                    except GuardTripped:
                        raise _guard_tripped(part, q_part, partition) from None
            else:
                result = resource.replace_partition(spec.domain, spec.name, part, partition, context.run.run_id)
            rows, expected = rows + result.rows, expected + part.num_rows
            metadata = {
                "dagster/row_count": result.rows,
                "table": table_name,
                "rows_replaced": result.rows_replaced,
                "load_seconds": round(result.seconds, 3),
                "rows_per_second": round(result.rows / result.seconds, 1) if result.seconds else 0.0,
            }
            if q_result is not None:
                metadata["quarantine_table"] = f"{QUARANTINE_SCHEMA}.{spec.name}"
                metadata["rows_quarantined"] = q_result.rows
            if len(keys) > 1:  # each partition of a range run records its own figures
                context.add_asset_metadata(metadata, partition_key=partition)
        if len(keys) > 1:
            metadata = {"table": table_name, "partitions_in_run": len(keys)}
        return MaterializeResult(
            metadata=metadata,
            check_results=[AssetCheckResult(
                check_name=CHECK_MATCHES_LAKE, passed=rows == expected,
                metadata={"lake_rows": expected, "target_rows": rows},
            )] + ([AssetCheckResult(
                check_name=CHECK_CONTRACT_HOLDS, passed=not any(contract_verified.values()),
                metadata={"violations_by_rule": MetadataValue.json(dict(sorted(contract_verified.items()))),
                          "check_seconds": round(check_seconds[0], 3)},
            )] if with_quarantine else []),
        )

    return load


@dataclass
class BuiltPipelines:
    assets: list[AssetsDefinition]
    jobs: list
    schedules: list[ScheduleDefinition]
    sensors: list
    resources: dict


def pipeline_keys(spec: PipelineSpec) -> list[AssetKey]:
    """All asset keys one pipeline owns."""
    keys = [raw_key(spec.name), clean_key(spec.name), quarantine_key(spec.name)] if spec.source else [mart_key(spec.name)]
    return keys + [target_key(t, spec.name) for t in spec.targets]


def _job_suffix(spec: PipelineSpec) -> str:
    return {"none": "full_refresh", "daily": "daily", "hourly": "hourly"}[spec.partitions.type]


def _build_schedule(spec: PipelineSpec, job, pdef: PartitionsDefinition | None, status: DefaultScheduleStatus):
    """A cron schedule; for a time-partitioned pipeline each tick requests the partition that has just closed."""

    @schedule(
        name=f"{spec.name}_schedule",
        job=job,
        cron_schedule=spec.schedule.cron,
        execution_timezone=spec.schedule.timezone,
        default_status=status,
        description=f"{spec.name} on '{spec.schedule.cron}' ({spec.schedule.timezone}).",
    )
    def _schedule(context: ScheduleEvaluationContext):
        if pdef is None:
            return RunRequest(run_key=None)
        closed = pdef.get_partition_keys(current_time=context.scheduled_execution_time)
        partition = closed[-1] if closed else None
        if partition is None:
            return SkipReason(f"no {spec.name} partition has closed yet (partitions start {spec.partitions.start})")
        return RunRequest(run_key=partition, partition_key=partition)

    return _schedule


def build_resources(specs: list[LoadedSpec], env: Callable[[str], str | None]) -> dict:
    """Resources for the specs' connections. Secrets and URLs are bound as ``EnvVar`` when the variable is set.

    Args:
        env: Looks up whether an environment variable is set (``os.environ.get``); only names are bound.
    """
    lake = LakeStorage()
    resources: dict = {
        "lake": lake,
        "landing": LandingFilesSource(),
        "warehouse": DuckDBWarehouse(),
        "postgres_target": PostgresTarget(url=EnvVar("ETL_POSTGRES_URL") if env("ETL_POSTGRES_URL") else None),
    }
    resources[LAKE_IO_MANAGER] = LakeIOManager(lake=lake)
    for loaded in specs:
        src = loaded.spec.source
        if src is None or src.kind == "files":
            continue
        key = source_resource_key(loaded.spec)
        prefix = src.connection.upper()
        url = EnvVar(f"{prefix}_URL") if env(f"{prefix}_URL") else None
        if src.kind == "api":
            token = EnvVar(f"{prefix}_TOKEN") if env(f"{prefix}_TOKEN") else None
            resources.setdefault(key, RestApiSource(connection=src.connection, default_url=src.default_url, url=url, token=token))
        else:
            resources.setdefault(key, SqlDatabaseSource(connection=src.connection, default_url=src.default_url, url=url))
    return resources


def build_pipelines(specs: list[LoadedSpec], env: Callable[[str], str | None]) -> BuiltPipelines:
    """Assets, jobs and schedules for every spec."""
    with warnings.catch_warnings():
        # backfill_policy is marked beta in Dagster 1.13; single-run backfills rely on it deliberately
        warnings.simplefilter("ignore", BetaWarning)
        return _build_pipelines(specs, env)


def _build_pipelines(specs: list[LoadedSpec], env: Callable[[str], str | None]) -> BuiltPipelines:
    by_name = {s.spec.name: s for s in specs}
    assets: list[AssetsDefinition] = []
    groups: dict[tuple, list[AssetKey]] = defaultdict(list)
    jobs = []
    job_by_name = {}
    schedules = []
    sensors = []
    for loaded in specs:
        spec = loaded.spec
        pdef = partitions_def_for(spec)
        if spec.source is not None:
            assets += [_build_extract(loaded, pdef), _build_validate(loaded, pdef)]
        else:
            assets.append(_build_transform(loaded, pdef, by_name))
        assets += [_build_load(loaded, target, pdef) for target in spec.targets]
        keys = pipeline_keys(spec)
        groups[(spec.domain, _job_suffix(spec))].extend(keys)
        job = define_asset_job(
            name=f"{spec.name}_pipeline",
            selection=AssetSelection.assets(*keys),
            description=f"Pipeline {spec.name} ({loaded.path.name}): extract or build, validate, load.",
        )
        jobs.append(job)
        job_by_name[spec.name] = job
        if spec.source is not None:
            jobs.append(define_asset_job(
                name=f"{spec.name}_revalidate",
                selection=AssetSelection.assets(*[k for k in keys if k != raw_key(spec.name)]),
                description=f"Re-validate {spec.name} from the raw lake (no source call) and reload it: "
                "the replay of quarantined rows after a contract or upstream fix.",
            ))
        if spec.source is not None and spec.source.kind == "files":
            sensors.append(sensors_mod.build_file_sensor(spec, job, pdef))
        if spec.source is not None and spec.source.kind == "api" and spec.source.incremental \
                and spec.source.incremental.watermark_endpoint:
            sensors.append(sensors_mod.build_watermark_sensor(spec, job, pdef, source_resource_key(spec)))
        if spec.schedule is not None:
            status = DefaultScheduleStatus.RUNNING if spec.schedule.default_status == "running" else DefaultScheduleStatus.STOPPED
            schedules.append(_build_schedule(spec, job, pdef, status))
    for (domain, suffix), keys in sorted(groups.items()):
        jobs.append(define_asset_job(
            name=f"{domain}_{suffix}",
            selection=AssetSelection.assets(*keys),
            description=f"Every {suffix.replace('_', ' ')} pipeline of the {domain} domain.",
        ))
    for loaded in specs:
        if loaded.spec.after:
            upstream = [job_by_name[name] for name in loaded.spec.after]
            sensors.append(sensors_mod.build_after_sensor(loaded.spec, job_by_name[loaded.spec.name], upstream))
    if any(s.spec.source is not None and s.spec.source.kind == "files" for s in specs):
        sensors += sensors_mod.build_landing_sensors(s.spec for s in specs)
    if any(s.spec.automation is not None for s in specs):
        sensors.append(AutomationConditionSensorDefinition(
            name="automation_condition_sensor",
            target=AssetSelection.all(),
            default_status=DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=int(env("ETL_AUTOMATION_INTERVAL_SECONDS") or 30),
            description="Evaluates the specs' automation conditions (dependency-driven runs).",
        ))
    return BuiltPipelines(assets=assets, jobs=jobs, schedules=schedules, sensors=sensors,
                          resources=build_resources(specs, env))
