"""The validate step: one raw partition judged by its contract, into the clean view and the quarantine.

:func:`validate_batch` runs the contract's rules and gives the two outputs (lazy on the caller's connection); the
caller stores them, and :func:`check_outputs` then gives the checks' figures over the outputs as written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
from dagster import AssetKey, get_dagster_logger

from etl_assets.errors import UpstreamNotReadyError
from etl_assets.keys import UNPARTITIONED, Pipeline, clean_key, parse_ref
from etl_assets.lake import VIEW_SUFFIX, LakeError, LakeStorage, LakeTable, LakeView, view_files, view_stats
from etl_assets.pipelines import validation
from etl_assets.pipelines.spec import PipelineSpec

SAMPLE_ROWS = 5
KEY_MIN, KEY_MAX = "key_min", "key_max"  # a clean view's first-key range (as text), for pruning

Phase = Callable[[str], AbstractContextManager]
"""Wraps each statement of the step, by its label (a benchmark times them; the assets do not)."""


def untimed(label: str) -> AbstractContextManager:
    """The default :data:`Phase`: nothing around the statement."""
    return nullcontext()


def contract_rules_by_family(spec: PipelineSpec) -> dict[str, list[validation.Rule]]:
    """The rules the contract generates over a delivery with exactly its columns, by check family (in the order of
    :data:`~etl_assets.pipelines.validation.FAMILIES`)."""
    column = validation.partition_window_column(spec)
    rules, _ = validation.contract_rules(
        spec.columns,
        spec.primary_key,
        [c.name for c in spec.columns],
        True,
        targets=spec.targets,
        window=validation.PartitionWindow(column) if column else None,
    )
    by_family: dict[str, list[validation.Rule]] = {}
    for rule in rules:
        by_family.setdefault(rule.family, []).append(rule)
    return {f: by_family[f] for f in validation.FAMILIES if f in by_family}


def contract_families(spec: PipelineSpec) -> dict[str, str]:
    """Check families the contract generates, with their severity (ERROR when any rule in the family is)."""
    return {
        family: "ERROR" if any(r.severity == "ERROR" for r in rules) else "WARN"
        for family, rules in contract_rules_by_family(spec).items()
    }


@dataclass
class ValidatedBatch:
    """A raw batch judged by the contract's rules; ``valid`` and ``quarantined`` are yet to be stored.

    Attributes:
        valid: The clean view: the raw file minus the quarantined positions, typed as it is read.
        quarantined: The quarantined rows (as delivered, with their reasons), lazy on the step's connection.
        rule_violations: Rows flagged, by rule.
        partitions_not_compared: Other partitions left out of the duplicate-key check as they cannot be read.
    """

    valid: LakeView
    quarantined: duckdb.DuckDBPyRelation
    rules: list[validation.Rule]
    raw_columns: list[str]
    rows_in: int
    rows_quarantined: int
    rule_violations: dict[str, int]
    validate_seconds: float
    partitions_not_compared: list[str] = field(default_factory=list)

    @property
    def rows_valid(self) -> int:
        return self.rows_in - self.rows_quarantined

    @property
    def quality_score(self) -> float:
        """The share of valid rows (1.0 for an empty batch)."""
        return self.rows_valid / self.rows_in if self.rows_in else 1.0


@dataclass
class FamilyOutcome:
    """One contract check family over the stored outputs.

    Attributes:
        passed: An ERROR family passes when no row breaking an ERROR rule reached the clean data (rows flagged by a
            WARN rule of the family are loaded and counted); a WARN family when no row was flagged.
        reached_clean: Rows breaking an ERROR rule of the family that the clean view keeps (none, when it holds).
        quarantined: Rows breaking an ERROR rule of the family, left out of the clean view.
        flagged_loaded: Rows breaking only a WARN rule of the family: loaded, and counted here.
        sample: The first failing rows, as a Markdown table, or ``(none)``.
    """

    name: str
    severity: str
    passed: bool
    failing_rows: int
    by_rule: dict[str, int]
    reached_clean: int
    sample: str
    quarantined: int = 0
    flagged_loaded: int = 0


@dataclass
class OutputsChecked:
    """The checks' figures over the outputs as stored."""

    clean_rows: int
    quarantine_rows: int
    families: list[FamilyOutcome]
    new_columns: list[str]
    missing_optional_columns: list[str]


def validate_batch(
    con: duckdb.DuckDBPyConnection,
    spec: PipelineSpec,
    raw: LakeTable,
    partition: str,
    *,
    lake: LakeStorage,
    window: tuple[datetime, datetime] | None,
    run_id: str,
    phase: Phase = untimed,
    references: dict[str, AssetKey] | None = None,
) -> ValidatedBatch:
    """Judge one raw partition by ``spec``'s contract, on ``con`` (which must stay open until the outputs are stored).

    Args:
        raw: One partition file of the raw dataset, pinned by the caller so it cannot change under the checks.
        partition: Its key (``UNPARTITIONED`` for an unpartitioned pipeline).
        lake: The lake holding the referenced datasets and the other clean partitions (for cross-partition keys).
        window: The partition's time window; records outside it break ``out_of_window``. ``None`` when unpartitioned.
        run_id: Recorded with every quarantined row.
        phase: Wraps each statement, by label.
        references: The key of each dataset a column references, by name; by default one of ``spec``'s domain.

    Raises:
        LakeError: ``raw`` is not one file.
        ContractError: the raw columns cannot be used (bad names, required ones missing, uncastable types).
        UpstreamNotReadyError: a referenced dataset has no data yet.
    """
    started = time.perf_counter()
    ck = clean_key(spec)
    if len(raw.paths) != 1:
        raise LakeError(f"{raw.name}: validation reads one partition file at a time, got {len(raw.paths)}")
    raw_rel = raw.relation(con)
    raw_columns = raw_rel.columns
    raw_types = dict(zip(raw_columns, map(str, raw_rel.types)))
    # names no SQL can use (`bad col`, the platform's own, equal up to case) fail at once, not as a retried bug
    validation.check_column_names(spec.ref, raw_columns)
    validation.check_required_columns(spec.ref, spec.columns, raw_columns)
    validation.check_castable_types(spec.ref, spec.columns, raw_types)
    # file_row_number: DuckDB's position of the row in its Parquet file (first-wins order and row identity)
    con.register("raw", raw_rel.project(f'*, file_row_number AS "{validation.ROW_COLUMN}"'))
    for name in sorted({c.references.dataset for c in spec.columns if c.references is not None}):
        ref = spec.resolve(name)
        ref_key = (references or {}).get(ref) or clean_key(parse_ref(ref) or Pipeline(spec.domain, name))
        ref_partitions = lake.partitions(ref_key.path)
        if not ref_partitions:
            raise UpstreamNotReadyError(f"{spec.ref}: its relationship to {ref} needs {ref} loaded first; run it")
        con.register(validation.reference_view(name), lake.table(ref_key.path, ref_partitions).relation(con))
    others = [p for p in lake.partitions(ck.path) if (p or UNPARTITIONED) != partition] if spec.primary_key else []
    stats: dict = {}
    unreadable: list[str] = []  # other partitions left out of the duplicate-key check (see below)
    if spec.primary_key and (others or spec.partitions.type != "none"):
        # the batch's first-key range, kept with the clean view so later batches can skip this partition
        low, high = con.sql(validation.key_bounds_sql(spec.columns, spec.primary_key, raw_types)).fetchall()[0]
        stats = {KEY_MIN: None if low is None else str(low), KEY_MAX: None if high is None else str(high)}
    if others:
        # Only keys of other partitions whose key range overlaps this batch's can match: read just those
        # partitions, and of them only the keys within the range.
        others = overlapping_partitions(con, lake.table(ck.path, others), spec, low, high, unreadable)
    if others:
        con.register("__etl_other_clean", lake.table(ck.path, others).relation(con))
        con.execute(
            f"CREATE TEMP TABLE {validation.OTHER_BATCHES} AS "
            + validation.other_batch_keys_sql(spec.primary_key, "__etl_other_clean"),
            [low, high],
        )
    bounds = None
    window_column = validation.partition_window_column(spec)
    if window_column is not None and window is not None:
        # records whose time lies outside this partition's window break out_of_window (bind parameters)
        bounds = validation.PartitionWindow(window_column, window[0], window[1])
    rules, params = validation.contract_rules(
        spec.columns,
        spec.primary_key,
        raw_columns,
        bool(others),
        targets=spec.targets,
        raw_types=raw_types,
        window=bounds,
    )
    for label, statement in validation.batch_statements(spec.columns, spec.primary_key, rules, raw_columns, raw_types):
        with phase(label):
            con.execute(statement, validation.params_for(statement, params))
    rows_bad = con.sql(
        f"SELECT count(*) FROM {validation.FLAGGED} WHERE len({validation.ERRORS_COLUMN}) > 0"
    ).fetchall()[0][0]
    with phase("rule counts (from the flagged rows)"):
        counts: dict[str, int] = dict(con.sql(validation.rule_counts_sql()).fetchall())
    validate_seconds = time.perf_counter() - started
    valid = LakeView(
        source=raw.paths[0],
        select=validation.clean_select(spec.columns, raw_columns, raw_types),
        excluded=con.sql(validation.quarantined_positions_sql()),
        stats=stats,
    )
    quarantined = con.sql(validation.quarantine_sql(raw_columns), params={"run_id": run_id, "partition": partition})
    return ValidatedBatch(
        valid=valid,
        quarantined=quarantined,
        rules=rules,
        raw_columns=raw_columns,
        rows_in=raw.num_rows,
        rows_quarantined=rows_bad,
        rule_violations=counts,
        validate_seconds=validate_seconds,
        partitions_not_compared=sorted(unreadable),
    )


def check_outputs(
    con: duckdb.DuckDBPyConnection,
    spec: PipelineSpec,
    batch: ValidatedBatch,
    clean: LakeTable,
    quarantine: LakeTable,
    phase: Phase = untimed,
) -> OutputsChecked:
    """The checks' figures over the batch's outputs as stored (``clean`` and ``quarantine``), on the connection
    :func:`validate_batch` judged it on."""
    # rows breaking an ERROR rule that the clean view as written does not leave out (the loads re-check the contract
    # on the rows they insert, before they commit)
    with phase("post-condition: every ERROR row left out of the view"):
        in_clean = validation.errors_not_excluded(con, view_files(clean.paths[0])[1])
    families = []
    for family, severity in contract_families(spec).items():
        family_rules = [r for r in batch.rules if r.family == family]
        names = [r.name for r in family_rules]
        flagged = {n: batch.rule_violations.get(n, 0) for n in names}
        if severity == "ERROR":
            passed = sum(in_clean.get(r.name, 0) for r in family_rules if r.severity == "ERROR") == 0
        else:
            passed = sum(flagged.values()) == 0
        failing = [n for n in names if flagged[n]]
        sample = "(none)"
        if failing:
            where = " OR ".join(
                f"list_contains({validation.ERRORS_COLUMN}, ?) OR list_contains({validation.WARNINGS_COLUMN}, ?)"
                for _ in failing
            )
            with phase(f"sample: {family}"):
                sample = _sample(con, where, [n for n in failing for _ in (0, 1)])
        families.append(
            FamilyOutcome(
                name=family,
                severity=severity,
                passed=passed,
                failing_rows=sum(flagged.values()),
                by_rule=flagged,
                reached_clean=sum(in_clean.get(n, 0) for n in names),
                sample=sample,
                quarantined=sum(
                    flagged[r.name] - in_clean.get(r.name, 0) for r in family_rules if r.severity == "ERROR"
                ),
                flagged_loaded=sum(flagged[r.name] for r in family_rules if r.severity != "ERROR"),
            )
        )
    contract = {c.name for c in spec.columns}
    return OutputsChecked(
        clean_rows=clean.num_rows,
        quarantine_rows=quarantine.num_rows,
        families=families,
        new_columns=[c for c in batch.raw_columns if c not in contract and not c.startswith("_etl_")],
        missing_optional_columns=[c for c in contract if c not in batch.raw_columns],
    )


def _sample(con: duckdb.DuckDBPyConnection, where: str, params: list | None = None) -> str:
    """The first failing rows (values as delivered and ``_etl_errors``) from the flagged rows of the batch, as a
    Markdown table, or ``(none)``."""
    row = f'"{validation.ROW_COLUMN}"'
    sample = con.sql(
        f"SELECT * EXCLUDE ({validation.WARNINGS_COLUMN}, {row}) FROM {validation.FLAGGED}"
        f" WHERE {where} ORDER BY {row} LIMIT {SAMPLE_ROWS}",
        params=params,
    )
    rows = sample.fetchall()
    if not rows:
        return "(none)"

    def cell(value: object) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    # a Markdown table built here: rendering five rows is not worth importing pandas (over a second) in the step
    lines = ["| " + " | ".join(sample.columns) + " |", "|" + "|".join("---" for _ in sample.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def overlapping_partitions(
    con: duckdb.DuckDBPyConnection,
    others: LakeTable,
    spec: PipelineSpec,
    low,
    high,
    unreadable: list[str] | None = None,
) -> list[str | None]:
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
    overlapping = (
        con.execute(
            f"SELECT k FROM (SELECT unnest($keys::VARCHAR[]) AS k, unnest($lows::VARCHAR[]) AS lo, unnest($highs::VARCHAR[]) AS hi)"
            f" WHERE CAST(lo AS {key_type}) <= CAST($high AS {key_type}) AND CAST(hi AS {key_type}) >= CAST($low AS {key_type})",
            {"keys": keys, "lows": lows, "highs": highs, "low": str(low), "high": str(high)},
        ).fetchall()
        if keys
        else []
    )
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
            f"{spec.ref}: partition {key} is left out of the duplicate-key check across partitions, as it cannot be"
            f" read ({reason}); its keys were not compared with this batch's. Re-materialize it to repair it."
        )
    if unreadable is not None:
        unreadable.extend(key for key, _ in skipped)
    return chosen
