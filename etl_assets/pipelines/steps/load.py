"""The load step: one lake partition replaced in a target table, and the contract the warehouse load re-checks.

Loading into the DuckDB warehouse, a source pipeline's valid rows and its quarantine are replaced in one
transaction under :class:`LoadContract`: the INSERT refuses any row breaking an ERROR value rule (a row guard), the
keys are re-counted on the rows just inserted before the COMMIT, and a refused load names the rules the rows broke.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import duckdb

from etl_assets.errors import ContractError, no_retry_for_permanent_errors
from etl_assets.lake import LakeTable
from etl_assets.pipelines import validation
from etl_assets.pipelines.spec import PipelineSpec
from etl_assets.resources.targets import PARTITION_COLUMN, DuckDBWarehouse, GuardTripped, PostgresTarget, RowGuard
from etl_assets.settings import duckdb_connection
from etl_assets.sqlutil import qualified, quote_literal

QUARANTINE_SCHEMA = "quarantine"


def quarantine_table_name(spec: PipelineSpec) -> str:
    """The name of the pipeline's table in the warehouse's quarantine schema: ``<domain>__<name>``, so that two
    domains' pipelines of one name keep their quarantines apart."""
    return spec.dagster_name


def quarantine_table(spec: PipelineSpec) -> str:
    """``quarantine.<domain>__<name>``: where the warehouse keeps the pipeline's quarantined rows."""
    return f"{QUARANTINE_SCHEMA}.{quarantine_table_name(spec)}"


class LoadContract:
    """The contract as a warehouse load re-checks it on the rows it inserts, before it commits.

    Attributes:
        table: The target table, ``<domain>.<name>``.
        guards: The row guard of ``table``'s INSERT (the ERROR value rules), by table; empty when there are none.
    """

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.table = f"{spec.domain}.{spec.name}"
        guard = validation.load_guard(spec.columns)
        self.guards = {self.table: RowGuard(guard[0], guard[1])} if guard else {}
        self._guarded_rules = guard[2] if guard else []

    def verify(self, con: duckdb.DuckDBPyConnection, partition: str) -> tuple[dict[str, int], float]:
        """Inside the load's transaction, after the inserts (which refused any row breaking an ERROR value rule): key
        uniqueness on the rows just inserted.

        Returns:
            The violations by rule (all 0) and the seconds the key re-count took.

        Raises:
            ContractError: a key is repeated; raised inside the transaction, it rolls the load back.
        """
        spec = self.spec
        found = dict.fromkeys(self._guarded_rules, 0)
        seconds = 0.0
        if spec.primary_key:
            literal = quote_literal(partition)
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW __etl_loaded AS SELECT * FROM {qualified(spec.domain, spec.name)}"
                f" WHERE {PARTITION_COLUMN} = {literal}"
            )
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW __etl_loaded_quarantine AS SELECT * FROM"
                f" {qualified(QUARANTINE_SCHEMA, quarantine_table_name(spec))} WHERE {PARTITION_COLUMN} = {literal}"
            )
            started = time.perf_counter()
            found[validation.DUPLICATE_KEY] = validation.loaded_duplicate_keys(
                con, spec.columns, spec.primary_key, "__etl_loaded", "__etl_loaded_quarantine"
            )
            seconds = time.perf_counter() - started
        if any(found.values()):
            raise self.broken(partition, found)
        return found, seconds

    def refused(self, data: LakeTable, quarantined: LakeTable, partition: str) -> ContractError:
        """The error for a load whose INSERT refused a row (everything was rolled back): counts, over the rows that
        were being loaded, those breaking each rule, for the error to name them."""
        spec = self.spec
        con = duckdb_connection()
        try:
            con.register("__etl_loading", data.relation(con))
            found = validation.value_violations(con, spec.columns, "__etl_loading")
            if spec.primary_key:
                con.register("__etl_loading_quarantine", quarantined.relation(con))
                found[validation.DUPLICATE_KEY] = validation.loaded_duplicate_keys(
                    con, spec.columns, spec.primary_key, "__etl_loading", "__etl_loading_quarantine"
                )
        finally:
            con.close()
        return self.broken(partition, found)

    def broken(self, partition: str, found: dict[str, int]) -> ContractError:
        """The error naming the rules the rows being loaded broke, and how many rows broke each."""
        broken = (
            ", ".join(f"{rule}: {n}" for rule, n in sorted(found.items()) if n) or "a row refused by the load's guard"
        )
        return ContractError(
            f"{self.table} partition {partition}: the rows being loaded break the contract ({broken}); the load was "
            "rolled back and the warehouse keeps its previous rows. The clean data in the lake does not match its "
            f"validation: re-run validate_{self.spec.dagster_name} for this partition"
        )


@dataclass
class PartitionLoad:
    """What loading one partition did.

    Attributes:
        rows: The partition's rows in the target after the load.
        rows_expected: The lake partition's rows (the target must hold exactly these).
        quarantine_rows: Rows of the quarantine table (``quarantine.<domain>__<name>``) after the load; ``None`` when
            the quarantine was not loaded.
        violations: The contract's rules re-checked on the rows as loaded, by rule; ``None`` without the contract.
        check_seconds: The key re-count's share of the load.
    """

    partition: str
    rows: int
    rows_expected: int
    rows_replaced: int
    seconds: float
    quarantine_rows: int | None = None
    violations: dict[str, int] | None = None
    check_seconds: float = 0.0


def load_partition(
    spec: PipelineSpec,
    target: DuckDBWarehouse | PostgresTarget,
    data: LakeTable,
    partition: str,
    run_id: str,
    quarantined: LakeTable | None = None,
    contract: LoadContract | None = None,
) -> PartitionLoad:
    """Replace ``partition`` of table ``<domain>.<name>`` with the lake's ``data``.

    Args:
        target: The target resource.
        quarantined: The partition's quarantine, for the DuckDB warehouse: then the dataset and its quarantine
            (``quarantine.<domain>__<name>``) are replaced in one transaction under the contract.
        contract: The contract to load under (built from ``spec`` when not given); only with ``quarantined``.

    Raises:
        ContractError: the rows break the contract (the load was rolled back); not retried.
    """
    if quarantined is None:
        result = target.replace_partition(spec.domain, spec.name, data, partition, run_id)
        return PartitionLoad(
            partition=partition,
            rows=result.rows,
            rows_expected=data.num_rows,
            rows_replaced=result.rows_replaced,
            seconds=result.seconds,
        )
    contract = contract or LoadContract(spec)
    checked: dict[str, int] = {}
    check_seconds = [0.0]

    def verify(con: duckdb.DuckDBPyConnection) -> None:
        found, seconds = contract.verify(con, partition)
        checked.update(found)
        check_seconds[0] += seconds

    with no_retry_for_permanent_errors():  # a contract mismatch is not fixed by loading again
        try:
            result, q_result = target.replace_partitions(
                [(spec.domain, spec.name, data), (QUARANTINE_SCHEMA, quarantine_table_name(spec), quarantined)],
                partition,
                run_id,
                guards=contract.guards,
                verify=verify,
            )
        except GuardTripped:
            raise contract.refused(data, quarantined, partition) from None
    return PartitionLoad(
        partition=partition,
        rows=result.rows,
        rows_expected=data.num_rows,
        rows_replaced=result.rows_replaced,
        seconds=result.seconds,
        quarantine_rows=q_result.rows,
        violations=checked,
        check_seconds=check_seconds[0],
    )


def load_held_quarantine(
    spec: PipelineSpec, warehouse: DuckDBWarehouse, quarantined: LakeTable, partition: str, run_id: str
) -> int:
    """Replace ``partition`` of the pipeline's quarantine table (:func:`quarantine_table`) alone, for a run whose quality gate held the load: the dataset
    keeps its previous rows, while the rows that held it are where a user looks for them (the next load that passes
    the gate replaces both together again).

    Returns:
        The partition's rows in the quarantine table after the load.
    """
    (result,) = warehouse.replace_partitions(
        [(QUARANTINE_SCHEMA, quarantine_table_name(spec), quarantined)], partition, run_id
    )
    return result.rows
