"""The assets of one pipeline spec. Each asset body calls its step (:mod:`etl_assets.pipelines.steps`) and turns the
result into outputs, metadata and check results.

Per source pipeline ``x`` of domain ``d`` (keys from :mod:`etl_assets.keys`):
``d/raw_x`` (extract to the lake) -> ``d/clean_x`` + ``d/quarantine_x`` (validate) -> ``d/warehouse_x`` /
``d/postgres_x`` (load). Per transform pipeline ``m``: ``d/marts_m`` (SQL over its inputs) -> ``d/warehouse_m`` /
``d/postgres_m``.
"""

from collections.abc import Iterable
from datetime import datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    TimeWindowPartitionsDefinition,
    asset,
    multi_asset,
)

from etl_assets.errors import no_retry_for_permanent_errors
from etl_assets.keys import UNPARTITIONED, clean_key, mart_key, quarantine_key, raw_key, target_key
from etl_assets.lake import COLUMN_SCHEMA, LakeError, LakeStorage, LakeStream, LakeTable, write_metadata
from etl_assets.pipelines import sensors as sensors_mod
from etl_assets.pipelines.catalog import TABLE_NAME, TARGET_COLUMNS, contract_schema, describe, target_table
from etl_assets.pipelines.checks import (
    load_check_results,
    load_check_specs,
    partition_evaluations,
    row_count_result,
    validation_check_results,
    validation_check_specs,
)
from etl_assets.pipelines.policy import automation_for, backfill_policy_for, retry_policy_for, source_pool
from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec
from etl_assets.pipelines.steps.extract import extract
from etl_assets.pipelines.steps.load import (
    LoadContract,
    PartitionLoad,
    load_held_quarantine,
    load_partition,
    quarantine_table,
)
from etl_assets.pipelines.steps.transform import transform
from etl_assets.pipelines.steps.validate import check_outputs, validate_batch
from etl_assets.resources.targets import WAREHOUSE_POOL
from etl_assets.settings import duckdb_connection

LAKE_IO_MANAGER = "lake_io_manager"
TARGET_RESOURCE = {"duckdb": "warehouse", "postgres": "postgres_target"}


def dataset_key(spec: PipelineSpec) -> AssetKey:
    """The lake asset other pipelines read: the validated dataset, or the mart."""
    return clean_key(spec) if spec.source is not None else mart_key(spec)


def source_resource_key(spec: PipelineSpec) -> str:
    """The resource of a source pipeline's source: ``landing``, or ``source_<connection>``."""
    assert spec.source is not None
    return "landing" if spec.source.kind == "files" else f"source_{spec.source.connection}"


def _partition(context: AssetExecutionContext) -> str:
    return context.partition_key if context.has_partition_key else UNPARTITIONED


def _run_keys(context: AssetExecutionContext) -> list[str] | None:
    """The partitions of a single-run backfill over a range (``--partition-range``), else None."""
    if context.has_partition_key_range and not context.has_partition_key:
        return list(context.partition_keys)
    return None


def _window(pdef: TimeWindowPartitionsDefinition | None, partition: str | None) -> tuple[datetime, datetime] | None:
    """The time window ``[start, end)`` of a partition; ``None`` for an unpartitioned pipeline."""
    if pdef is None or partition is None or partition == UNPARTITIONED:
        return None
    window = pdef.time_window_for_partition_key(partition)
    return window.start, window.end


def _write_range(
    context: AssetExecutionContext, lake: LakeStorage, key: AssetKey, values: Iterable[tuple[str, object]]
) -> Output:
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


def _one_partition(table: LakeTable, partition: str) -> LakeTable:
    """The slice of an input for one partition of a range run (an unpartitioned input is read whole)."""
    if table.partitions == (UNPARTITIONED,):
        return table
    slices = table.by_partition()
    if partition not in slices:
        raise LakeError(f"{table.name}: partition {partition} is not in the lake; materialize it first")
    return slices[partition]


def extract_asset(loaded: LoadedSpec, pdef: TimeWindowPartitionsDefinition | None) -> AssetsDefinition:
    """``<domain>/raw_<name>``: the source's rows as delivered (:func:`~etl_assets.pipelines.steps.extract.extract`)."""
    spec = loaded.spec
    src = spec.source
    assert src is not None, f"{spec.name} is a transform pipeline: it has no source to extract"
    resource_key = source_resource_key(spec)

    @asset(
        key=raw_key(spec),
        group_name=spec.domain,
        owners=spec.owners,
        tags=spec.tags,
        partitions_def=pdef,
        io_manager_key=LAKE_IO_MANAGER,
        required_resource_keys={resource_key, "lake"},
        pool=source_pool(spec),
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
        kinds={src.kind, "parquet"},
        description=describe(
            spec, f"{spec.name} as delivered by its {src.kind} source (text values, plus _etl_source)."
        ),
        metadata={"spec_file": str(loaded.path)},
    )
    def extract_raw(context: AssetExecutionContext):
        with no_retry_for_permanent_errors():
            keys = _run_keys(context)
            if keys is None:
                return _extract(context, context.partition_key if context.has_partition_key else None)
            lake: LakeStorage = context.resources.lake
            return _write_range(context, lake, raw_key(spec), ((k, _extract(context, k)) for k in keys))

    def _extract(context: AssetExecutionContext, partition: str | None) -> LakeStream:
        tags = context.run.tags
        # the file this run was launched for (by the file sensor); a manual or backfill run has none
        own_file = tags.get(sensors_mod.TAG_FILE) if tags.get(sensors_mod.TAG_DATASET) == spec.ref else None
        return extract(
            spec,
            getattr(context.resources, resource_key),
            partition,
            _window(pdef, partition),
            lake=context.resources.lake,
            log=context.log,
            own_file=own_file,
        )

    return extract_raw


def validate_asset(
    loaded: LoadedSpec, pdef: TimeWindowPartitionsDefinition | None, by_name: dict[str, LoadedSpec]
) -> AssetsDefinition:
    """``<domain>/clean_<name>`` and ``<domain>/quarantine_<name>`` with the contract's checks
    (:func:`~etl_assets.pipelines.steps.validate.validate_batch`); ``by_name`` holds the datasets it references."""
    spec = loaded.spec
    ck, qk = clean_key(spec), quarantine_key(spec)
    references = {
        ref: clean_key(by_name[ref].spec)
        for ref in sorted({spec.resolve(c.references.dataset) for c in spec.columns if c.references is not None})
    }

    @multi_asset(
        name=f"validate_{spec.dagster_name}",
        group_name=spec.domain,
        partitions_def=pdef,
        ins={"raw": AssetIn(key=raw_key(spec))},
        deps=list(references.values()),
        outs={
            "clean": AssetOut(
                key=ck,
                io_manager_key=LAKE_IO_MANAGER,
                kinds={"parquet"},
                owners=spec.owners,
                tags=spec.tags,
                description=describe(spec, f"{spec.name}: rows meeting the contract, typed."),
                metadata={COLUMN_SCHEMA: contract_schema(spec)},
            ),
            "quarantine": AssetOut(
                key=qk,
                io_manager_key=LAKE_IO_MANAGER,
                kinds={"parquet"},
                owners=spec.owners,
                tags=spec.tags,
                description=describe(spec, f"{spec.name}: rows breaking the contract, as delivered, with reasons."),
            ),
        },
        check_specs=validation_check_specs(spec, pdef),
        required_resource_keys={"lake", TARGET_RESOURCE["duckdb"]} if "duckdb" in spec.targets else {"lake"},
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
                raise LakeError(
                    f"{raw_key(spec).to_user_string()}: partition {partition} is not in the lake; materialize it first"
                )
            for event in _validate(context, tables[partition], partition):
                if isinstance(event, Output):
                    key = targets[event.output_name]
                    result = lake.write(key.path, partition, event.value)
                    declared = contract_schema(spec) if key == ck else None
                    context.add_asset_metadata(
                        {**event.metadata, **write_metadata(result, declared)}, asset_key=key, partition_key=partition
                    )
                else:
                    assert event.check_name is not None  # validation_check_results names every check
                    checks.setdefault(event.check_name, []).append((partition, event))
                    yield from partition_evaluations(ck, partition, [event])
        yield Output(None, "clean", metadata={"partitions_in_run": len(keys)})
        yield Output(None, "quarantine", metadata={"partitions_in_run": len(keys)})
        for name, results in checks.items():
            failed = [p for p, r in results if not r.passed]
            errors = [p for p, r in results if not r.passed and r.severity == AssetCheckSeverity.ERROR]
            yield AssetCheckResult(
                asset_key=ck,
                check_name=name,
                passed=not failed,
                # it holds the range only when a partition's own result would have held it
                severity=AssetCheckSeverity.ERROR if errors or not failed else AssetCheckSeverity.WARN,
                metadata={"partitions_checked": len(results), "partitions_failed": MetadataValue.json(failed)},
            )

    def _validate(context: AssetExecutionContext, raw: LakeTable, partition: str):
        lake: LakeStorage = context.resources.lake
        # pinned: a re-extract of this partition while it is validated cannot change the rows under the checks
        with lake.pinned(raw) as pinned:
            con = duckdb_connection()
            try:
                batch = validate_batch(
                    con,
                    spec,
                    pinned,
                    partition,
                    lake=lake,
                    window=_window(pdef, partition),
                    run_id=context.run.run_id,
                    references=references,
                )
                yield Output(
                    batch.valid,
                    "clean",
                    metadata={
                        "rows_in": batch.rows_in,
                        "rows_valid": batch.rows_valid,
                        "rows_quarantined": batch.rows_quarantined,
                        "quality_score": round(batch.quality_score, 6),
                        "validate_seconds": round(batch.validate_seconds, 3),
                        "validate_rows_per_second": round(batch.rows_in / batch.validate_seconds, 1)
                        if batch.validate_seconds
                        else 0.0,
                        "rule_violations": MetadataValue.json(dict(sorted(batch.rule_violations.items()))),
                        **(
                            {"partitions_not_compared": MetadataValue.json(batch.partitions_not_compared)}
                            if batch.partitions_not_compared
                            else {}
                        ),
                    },
                )
                yield Output(
                    batch.quarantined,
                    "quarantine",
                    metadata={"reasons": MetadataValue.json(dict(sorted(batch.rule_violations.items())))},
                )
                stored = [None if partition == UNPARTITIONED else partition]
                outputs = check_outputs(con, spec, batch, lake.table(ck.path, stored), lake.table(qk.path, stored))
                row_count = (
                    row_count_result(context.instance, spec, batch.rows_in, partition)
                    if spec.row_count is not None
                    else None
                )
                if "duckdb" in spec.targets and batch.quality_score < spec.quality.threshold:
                    # the gate holds the load, not the quarantine: its rows still reach its quarantine table
                    load_held_quarantine(
                        spec,
                        getattr(context.resources, TARGET_RESOURCE["duckdb"]),
                        lake.table(qk.path, stored),
                        partition,
                        context.run.run_id,
                    )
                yield from validation_check_results(spec, batch, outputs, row_count)
            finally:
                con.close()

    return validate


def transform_asset(
    loaded: LoadedSpec, pdef: TimeWindowPartitionsDefinition | None, by_name: dict[str, LoadedSpec]
) -> AssetsDefinition:
    """``<domain>/marts_<name>``: the transform's SQL over its inputs
    (:func:`~etl_assets.pipelines.steps.transform.transform`)."""
    spec = loaded.spec
    transform_spec = spec.transform
    assert transform_spec is not None, f"{spec.name} is a source pipeline: it has no transform"
    sql_text = loaded.transform_sql()
    inputs = transform_spec.inputs

    @asset(
        key=mart_key(spec),
        group_name=spec.domain,
        owners=spec.owners,
        tags=spec.tags,
        partitions_def=pdef,
        io_manager_key=LAKE_IO_MANAGER,
        # each input by its name without the domain (the spec makes those unique), as the SQL sees it
        ins={name.rpartition(".")[2]: AssetIn(key=dataset_key(by_name[spec.resolve(name)].spec)) for name in inputs},
        required_resource_keys={"lake"},
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
        automation_condition=automation_for(spec),
        kinds={"duckdb", "parquet"},
        description=spec.description or f"{spec.name}: {transform_spec.sql} over {', '.join(inputs)}.",
        metadata={"spec_file": str(loaded.path), "sql": MetadataValue.md(f"```sql\n{sql_text}\n```")},
    )
    def build_mart(context: AssetExecutionContext, **tables: LakeTable):
        with no_retry_for_permanent_errors():
            keys = _run_keys(context)
            lake: LakeStorage = context.resources.lake
            if keys is None:
                partition = context.partition_key if context.has_partition_key else None
                return transform(loaded, sql_text, tables, _window(pdef, partition), lake.root_path())
            return _write_range(
                context,
                lake,
                mart_key(spec),
                (
                    (
                        k,
                        transform(
                            loaded,
                            sql_text,
                            {n: _one_partition(t, k) for n, t in tables.items()},
                            _window(pdef, k),
                            lake.root_path(),
                        ),
                    )
                    for k in keys
                ),
            )

    return build_mart


def load_asset(loaded: LoadedSpec, target: str, pdef: TimeWindowPartitionsDefinition | None) -> AssetsDefinition:
    """``<target>/<name>``: the dataset loaded into a target table, one partition replaced per transaction
    (:func:`~etl_assets.pipelines.steps.load.load_partition`)."""
    spec = loaded.spec
    key = target_key(target, spec)
    resource_key = TARGET_RESOURCE[target]
    # The DuckDB warehouse also gets the quarantine, as table quarantine.<domain>__<name>, next to the valid rows.
    with_quarantine = target == "duckdb" and spec.source is not None
    ins = {"data": AssetIn(key=dataset_key(spec))}
    if with_quarantine:
        ins["quarantined"] = AssetIn(key=quarantine_key(spec))
    contract = LoadContract(spec) if with_quarantine else None
    table_name = target_table(spec)
    catalog: dict[str, object] = {TABLE_NAME: table_name}
    if spec.source is not None:  # a source pipeline's table has the contract's columns, typed
        catalog[COLUMN_SCHEMA] = contract_schema(spec, TARGET_COLUMNS)

    @asset(
        key=key,
        group_name=spec.domain,
        owners=spec.owners,
        tags=spec.tags,
        partitions_def=pdef,
        ins=ins,
        required_resource_keys={resource_key},
        pool=WAREHOUSE_POOL if target == "duckdb" else None,
        retry_policy=retry_policy_for(spec),
        backfill_policy=backfill_policy_for(spec),
        automation_condition=automation_for(spec),
        kinds={target, "table"},
        check_specs=load_check_specs(key, with_quarantine, pdef),
        description=describe(
            spec,
            f"{spec.name} loaded into {target} table {table_name}, one partition replaced per run."
            + (f" Its quarantine goes to {quarantine_table(spec)}." if with_quarantine else ""),
        ),
        metadata=catalog,
    )
    def load(context: AssetExecutionContext, data: LakeTable, **extra: LakeTable):
        quarantined = extra.get("quarantined")
        resource = getattr(context.resources, resource_key)
        keys = _run_keys(context) or [_partition(context)]
        loads: list[PartitionLoad] = []
        for partition in keys:  # a range run replaces its partitions one transaction each
            part = data if len(keys) == 1 else _one_partition(data, partition)
            q_part = None
            if quarantined is not None:  # the dataset and its quarantine are replaced in one transaction
                q_part = quarantined if len(keys) == 1 else _one_partition(quarantined, partition)
            result = load_partition(
                spec, resource, part, partition, context.run.run_id, quarantined=q_part, contract=contract
            )
            loads.append(result)
            metadata = {
                "dagster/row_count": result.rows,
                "table": table_name,
                "rows_replaced": result.rows_replaced,
                "load_seconds": round(result.seconds, 3),
                "rows_per_second": round(result.rows / result.seconds, 1) if result.seconds else 0.0,
            }
            if result.quarantine_rows is not None:
                metadata["quarantine_table"] = quarantine_table(spec)
                metadata["rows_quarantined"] = result.quarantine_rows
            if len(keys) > 1:  # each partition of a range run records its own figures and check results
                context.add_asset_metadata(metadata, partition_key=partition)
                yield from partition_evaluations(key, partition, load_check_results([result], with_quarantine))
        if len(keys) > 1:
            metadata = {"table": table_name, "partitions_in_run": len(keys)}
        yield MaterializeResult(metadata=metadata, check_results=load_check_results(loads, with_quarantine))

    return load
