"""The pipelines' asset checks: their names, their specs (declared with the asset they guard) and the results
built from the steps' figures."""

from __future__ import annotations

from typing import cast

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterInstance,
    MetadataValue,
    PartitionsDefinition,
)

from etl_assets.keys import UNPARTITIONED, clean_key, quarantine_key
from etl_assets.pipelines import validation
from etl_assets.pipelines.spec import PipelineSpec
from etl_assets.pipelines.steps.load import PartitionLoad, quarantine_table
from etl_assets.pipelines.steps.validate import (
    FamilyOutcome,
    OutputsChecked,
    ValidatedBatch,
    contract_rules_by_family,
)

CHECK_ROWS_CONSERVED = "rows_conserved"
CHECK_MATCHES_LAKE = "matches_lake"
CHECK_CONTRACT_HOLDS = "contract_holds"
CHECK_QUALITY_SCORE = "quality_score"
CHECK_SCHEMA_CHANGE = "schema_change"
CHECK_ROW_COUNT = "row_count"


def _rule_text(rule: validation.Rule, spec: PipelineSpec) -> str:
    """What one rule requires, naming its column and its parameters (``currency: USD, EUR, GBP``)."""
    kind, _, name = rule.name.partition(":")
    column = next((c for c in spec.columns if c.name == name), None)
    if rule.name == validation.MALFORMED_ROW:
        return "every row readable"
    if rule.name == validation.OUT_OF_WINDOW:
        return f"{validation.partition_window_column(spec)} inside the partition's time window"
    if rule.name == validation.DUPLICATE_KEY:
        return f"one row per ({', '.join(spec.primary_key)})"
    if rule.family == "unique":  # the key against the partitions already in the lake
        return f"({', '.join(spec.primary_key)}) not in another partition"
    if kind == "storable":
        return f"{name} without NUL characters (Postgres refuses them)"
    if column is None:
        return rule.name
    if kind == "type":
        return f"{name} as {column.type}"
    if kind == "accepted_values":
        return f"{name}: {', '.join(str(v) for v in column.accepted_values or [])}"
    if kind == "min":
        return f"{name} >= {column.min}"
    if kind == "max":
        return f"{name} <= {column.max}"
    if kind == "regex":
        return f"{name} matches {column.regex}"
    if kind == "max_length":
        return f"{name} at most {column.max_length} characters"
    if kind == "relationship" and column.references is not None:
        return f"{name} in {column.references.dataset}.{column.references.column}"
    return name


def family_description(spec: PipelineSpec, family: str, rules: list[validation.Rule]) -> str:
    """A check family's description: the family, each rule's column and parameters, and what happens to failing
    rows (``accepted_values on currency: USD, EUR, GBP (ERROR: rows quarantined)``)."""
    texts = list(dict.fromkeys(_rule_text(r, spec) for r in rules))
    severities = sorted({r.severity for r in rules})
    outcome = " and ".join(f"{s}: rows {'quarantined' if s == 'ERROR' else 'loaded and flagged'}" for s in severities)
    return f"{family} on {'; '.join(texts)} ({outcome})"


def validation_check_specs(spec: PipelineSpec, partitions_def: PartitionsDefinition | None) -> list[AssetCheckSpec]:
    """The checks generated from a source pipeline's contract (declared next to the asset they guard, partitioned
    with it so each partition shows its own result)."""
    ck = clean_key(spec)
    specs = [
        AssetCheckSpec(
            CHECK_ROWS_CONSERVED,
            asset=ck,
            blocking=True,
            description="rows_in = rows_valid + rows_quarantined",
            partitions_def=partitions_def,
        ),
        AssetCheckSpec(
            CHECK_QUALITY_SCORE,
            asset=ck,
            blocking=True,
            description=f"share of valid rows is at least {spec.quality.threshold:.0%}; below it the run stops "
            "before the load",
            partitions_def=partitions_def,
        ),
        AssetCheckSpec(
            CHECK_SCHEMA_CHANGE,
            asset=ck,
            blocking=False,
            description="no columns beyond the contract arrived (new ones are loaded and flagged)",
            partitions_def=partitions_def,
        ),
    ]
    for family, rules in contract_rules_by_family(spec).items():
        specs.append(
            AssetCheckSpec(
                family,
                asset=ck,
                # an ERROR family fails with severity ERROR only when a breaking row reached the clean data
                blocking=any(r.severity == "ERROR" for r in rules),
                description=family_description(spec, family, rules),
                partitions_def=partitions_def,
            )
        )
    if spec.row_count is not None:
        specs.append(
            AssetCheckSpec(
                CHECK_ROW_COUNT,
                asset=ck,
                blocking=spec.row_count.severity == "ERROR",
                description="rows per partition within the expected range",
                partitions_def=partitions_def,
            )
        )
    return specs


def _family_result(spec: PipelineSpec, family: FamilyOutcome) -> AssetCheckResult:
    """A contract family's result. Rows that broke an ERROR rule and were quarantined fail the check as a WARN (the
    clean data is sound, so nothing downstream is held, but the rows are missing from it); a breaking row that
    reached the clean data fails it as an ERROR; rows flagged by a WARN rule fail it as a WARN."""
    quarantined = family.quarantined
    if not family.passed:
        severity = AssetCheckSeverity.ERROR if family.severity == "ERROR" else AssetCheckSeverity.WARN
        if family.severity == "ERROR":
            description = f"{family.reached_clean} row(s) breaking an ERROR rule reached the clean data"
        else:
            description = f"{family.failing_rows} row(s) flagged and loaded"
    elif family.failing_rows:
        severity = AssetCheckSeverity.WARN
        description = f"{quarantined} row(s) quarantined to {quarantine_key(spec).to_user_string()}" + (
            f", {family.flagged_loaded} flagged and loaded" if family.flagged_loaded else ""
        )
    else:
        severity = AssetCheckSeverity.ERROR if family.severity == "ERROR" else AssetCheckSeverity.WARN
        description = "no failing rows"
    return AssetCheckResult(
        asset_key=clean_key(spec),
        check_name=family.name,
        passed=family.failing_rows == 0,
        severity=severity,
        description=description,
        metadata={
            "failing_rows": family.failing_rows,
            "rows_quarantined": quarantined,
            "rows_flagged_loaded": family.flagged_loaded,
            "by_rule": MetadataValue.json(family.by_rule),
            "reached_clean": family.reached_clean,
            "sample": MetadataValue.md(family.sample),
        },
    )


def validation_check_results(
    spec: PipelineSpec, batch: ValidatedBatch, outputs: OutputsChecked, row_count: AssetCheckResult | None
) -> list[AssetCheckResult]:
    """The validation checks of one batch, from the step's figures; ``row_count`` is :func:`row_count_result`'s
    when the spec declares ``row_count``."""
    ck = clean_key(spec)
    results = [
        AssetCheckResult(
            asset_key=ck,
            check_name=CHECK_ROWS_CONSERVED,
            passed=outputs.clean_rows + outputs.quarantine_rows == batch.rows_in,
            metadata={
                "rows_in": batch.rows_in,
                "rows_valid": outputs.clean_rows,
                "rows_quarantined": outputs.quarantine_rows,
            },
        )
    ]
    results.extend(_family_result(spec, family) for family in outputs.families)
    results.append(
        AssetCheckResult(
            asset_key=ck,
            check_name=CHECK_SCHEMA_CHANGE,
            passed=not outputs.new_columns,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "new_columns": MetadataValue.json(outputs.new_columns),
                "missing_optional_columns": MetadataValue.json(outputs.missing_optional_columns),
            },
        )
    )
    if row_count is not None:
        results.append(row_count)
    score, threshold = batch.quality_score, spec.quality.threshold
    gate_passed = score >= threshold
    results.append(
        AssetCheckResult(
            asset_key=ck,
            check_name=CHECK_QUALITY_SCORE,
            passed=gate_passed,
            description=(
                f"quality score {score:.2%} ({batch.rows_valid} of {batch.rows_in} rows valid) "
                + (
                    f"meets the threshold {threshold:.0%}"
                    if gate_passed
                    else f"is below the threshold {threshold:.0%}: the load is held; the {batch.rows_quarantined} "
                    f"quarantined row(s) are in {quarantine_key(spec).to_user_string()}"
                    + (f" and the warehouse's {quarantine_table(spec)}" if "duckdb" in spec.targets else "")
                )
            ),
            metadata={
                "quality_score": round(batch.quality_score, 6),
                "threshold": spec.quality.threshold,
                "checks_passed_share": round(sum(r.passed for r in results) / len(results), 6),
            },
        )
    )
    return results


def row_count_result(instance: DagsterInstance, spec: PipelineSpec, rows_in: int, partition: str) -> AssetCheckResult:
    """The ``row_count`` check: at least the minimum, and within the deviation from the trailing partitions' average
    (read from the instance's earlier materializations of ``<domain>/clean_<name>``)."""
    expectation = spec.row_count
    assert expectation is not None, f"{spec.ref} declares no row_count"
    history = instance.fetch_materializations(clean_key(spec), limit=expectation.trailing_partitions + 1).records
    stored = None if partition == UNPARTITIONED else partition
    previous = [
        cast(int, r.asset_materialization.metadata["rows_in"].value)  # the validate step's row count
        for r in history
        if r.asset_materialization is not None
        and r.asset_materialization.partition != stored
        and "rows_in" in r.asset_materialization.metadata
    ][: expectation.trailing_partitions]
    average = sum(previous) / len(previous) if previous else None
    problems = []
    if rows_in < expectation.min:
        problems.append(f"{rows_in} rows, fewer than the minimum {expectation.min}")
    if average is not None and expectation.max_deviation is not None and average > 0:
        deviation = abs(rows_in - average) / average
        if deviation > expectation.max_deviation:
            problems.append(f"{rows_in} rows deviate {deviation:.0%} from the trailing average {average:.1f}")
    return AssetCheckResult(
        asset_key=clean_key(spec),
        check_name=CHECK_ROW_COUNT,
        passed=not problems,
        severity=AssetCheckSeverity.ERROR if expectation.severity == "ERROR" else AssetCheckSeverity.WARN,
        metadata={
            "rows_in": rows_in,
            "trailing_average": average if average is not None else -1.0,
            "trailing_partitions": len(previous),
            "problem": "; ".join(problems) or "none",
        },
    )


def load_check_specs(
    key: AssetKey, with_contract: bool, partitions_def: PartitionsDefinition | None
) -> list[AssetCheckSpec]:
    """The checks of a target asset: ``matches_lake``, and ``contract_holds`` when it loads under the contract."""
    return [
        AssetCheckSpec(
            CHECK_MATCHES_LAKE,
            asset=key,
            blocking=True,
            description="the loaded partition has exactly the lake partition's rows",
            partitions_def=partitions_def,
        )
    ] + (
        [
            AssetCheckSpec(
                CHECK_CONTRACT_HOLDS,
                asset=key,
                blocking=True,
                description="the contract re-checked on the rows as loaded, before the commit",
                partitions_def=partitions_def,
            )
        ]
        if with_contract
        else []
    )


def partition_evaluations(key: AssetKey, partition: str, results: list[AssetCheckResult]) -> list[AssetCheckEvaluation]:
    """One partition's check results in a range run, as evaluations of that partition: a step reports one result
    per check, so the run's result summarises the range and these record what each partition got."""
    return [
        AssetCheckEvaluation(
            asset_key=r.asset_key or key,
            check_name=r.check_name or "",
            passed=r.passed,
            metadata=r.metadata,
            severity=r.severity,
            description=r.description,
            partition=partition,
        )
        for r in results
    ]


def load_check_results(loads: list[PartitionLoad], with_contract: bool) -> list[AssetCheckResult]:
    """The target checks over the partitions one run loaded."""
    rows = sum(load.rows for load in loads)
    expected = sum(load.rows_expected for load in loads)
    results = [
        AssetCheckResult(
            check_name=CHECK_MATCHES_LAKE,
            passed=rows == expected,
            metadata={"lake_rows": expected, "target_rows": rows},
        )
    ]
    if with_contract:
        verified: dict[str, int] = {}
        for load in loads:
            verified.update(load.violations or {})
        results.append(
            AssetCheckResult(
                check_name=CHECK_CONTRACT_HOLDS,
                passed=not any(verified.values()),
                metadata={
                    "violations_by_rule": MetadataValue.json(dict(sorted(verified.items()))),
                    "check_seconds": round(sum(load.check_seconds for load in loads), 3),
                },
            )
        )
    return results
