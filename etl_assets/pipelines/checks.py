"""The pipelines' asset checks: their names, their specs (declared with the asset they guard) and the results
built from the steps' figures."""

from __future__ import annotations

from typing import cast

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, DagsterInstance, MetadataValue

from etl_assets.keys import UNPARTITIONED, clean_key
from etl_assets.pipelines.spec import PipelineSpec
from etl_assets.pipelines.steps.load import PartitionLoad
from etl_assets.pipelines.steps.validate import OutputsChecked, ValidatedBatch, contract_families

CHECK_ROWS_CONSERVED = "rows_conserved"
CHECK_MATCHES_LAKE = "matches_lake"
CHECK_CONTRACT_HOLDS = "contract_holds"
CHECK_QUALITY_SCORE = "quality_score"
CHECK_SCHEMA_CHANGE = "schema_change"
CHECK_ROW_COUNT = "row_count"


def validation_check_specs(spec: PipelineSpec) -> list[AssetCheckSpec]:
    """The checks generated from a source pipeline's contract (declared next to the asset they guard)."""
    ck = clean_key(spec.name)
    specs = [
        AssetCheckSpec(
            CHECK_ROWS_CONSERVED, asset=ck, blocking=True, description="rows_in = rows_valid + rows_quarantined"
        ),
        AssetCheckSpec(
            CHECK_QUALITY_SCORE,
            asset=ck,
            blocking=True,
            description=f"share of valid rows is at least {spec.quality.threshold:.0%}",
        ),
        AssetCheckSpec(
            CHECK_SCHEMA_CHANGE,
            asset=ck,
            blocking=False,
            description="no columns beyond the contract arrived (new ones are loaded and flagged)",
        ),
    ]
    for family, severity in contract_families(spec).items():
        specs.append(
            AssetCheckSpec(
                family,
                asset=ck,
                blocking=severity == "ERROR",
                description=f"{family} rules ({severity}); failing rows are "
                + ("quarantined" if severity == "ERROR" else "flagged"),
            )
        )
    if spec.row_count is not None:
        specs.append(
            AssetCheckSpec(
                CHECK_ROW_COUNT,
                asset=ck,
                blocking=spec.row_count.severity == "ERROR",
                description="rows per partition within the expected range",
            )
        )
    return specs


def validation_check_results(
    spec: PipelineSpec, batch: ValidatedBatch, outputs: OutputsChecked, row_count: AssetCheckResult | None
) -> list[AssetCheckResult]:
    """The validation checks of one batch, from the step's figures; ``row_count`` is :func:`row_count_result`'s
    when the spec declares ``row_count``."""
    ck = clean_key(spec.name)
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
    for family in outputs.families:
        results.append(
            AssetCheckResult(
                asset_key=ck,
                check_name=family.name,
                passed=family.passed,
                severity=AssetCheckSeverity.ERROR if family.severity == "ERROR" else AssetCheckSeverity.WARN,
                metadata={
                    "failing_rows": family.failing_rows,
                    "by_rule": MetadataValue.json(family.by_rule),
                    "reached_clean": family.reached_clean,
                    "sample": MetadataValue.md(family.sample),
                },
            )
        )
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
    results.append(
        AssetCheckResult(
            asset_key=ck,
            check_name=CHECK_QUALITY_SCORE,
            passed=batch.quality_score >= spec.quality.threshold,
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
    (read from the instance's earlier materializations of ``clean/<name>``)."""
    expectation = spec.row_count
    assert expectation is not None, f"{spec.name} declares no row_count"
    history = instance.fetch_materializations(clean_key(spec.name), limit=expectation.trailing_partitions + 1).records
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
        asset_key=clean_key(spec.name),
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


def load_check_specs(key: AssetKey, with_contract: bool) -> list[AssetCheckSpec]:
    """The checks of a target asset: ``matches_lake``, and ``contract_holds`` when it loads under the contract."""
    return [
        AssetCheckSpec(
            CHECK_MATCHES_LAKE,
            asset=key,
            blocking=True,
            description="the loaded partition has exactly the lake partition's rows",
        )
    ] + (
        [
            AssetCheckSpec(
                CHECK_CONTRACT_HOLDS,
                asset=key,
                blocking=True,
                description="the contract re-checked on the rows as loaded, before the commit",
            )
        ]
        if with_contract
        else []
    )


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
