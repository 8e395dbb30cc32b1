"""Pipeline health: ``ops/pipeline_health``, computed from the Dagster instance over a trailing window.

Per pipeline (spec):

* ``runs``, ``succeeded``, ``failed`` and ``success_rate``: executions of the pipeline's steps in finished runs
  of the window. A run of a multi-pipeline job (``shop_daily``) counts once for each pipeline whose steps it
  ran; a pipeline whose steps were all skipped (an upstream failed) is not counted for that run.
* ``p50_seconds``, ``p95_seconds``: wall time of successful executions, from the first step's start to the
  last step's end (run step stats).
* ``rows_loaded`` and ``records_per_hour``: ``dagster/row_count`` of the pipeline's target assets
  (``<domain>/warehouse_<name>``, ``<domain>/postgres_<name>``) materialized in the window, and that over the window's hours.
* ``failures_<class>``: errors recorded in ``ops.errors`` in the window, by class.
* ``freshness_lag_minutes``: now minus the latest materialization of a target asset; ``max_lag_minutes`` from
  the spec's ``freshness``.

Results go to the warehouse table ``ops.pipeline_health`` (replaced each time), to the asset's metadata as a
markdown table, and to a chart at ``$ETL_DATA_DIR/reports/pipeline_health.png``.
"""

import base64
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    ScheduleDefinition,
    TimeWindowPartitionsDefinition,
    asset,
    define_asset_job,
)
from pydantic import Field

from etl_assets.keys import target_key
from etl_assets.monitoring.error_tracking import (
    ERROR_CLASSES,
    OPS_SCHEMA,
    ErrorStore,
    ensure_error_tables,
    pipeline_for_asset,
    pipeline_for_job,
    read_error_counts,
    step_asset_keys,
)
from etl_assets.monitoring.freshness import data_time_of, partitions_complete
from etl_assets.monitoring.warehouse_io import warehouse_session
from etl_assets.pipelines.policy import partitions_def_for
from etl_assets.resources.targets import WAREHOUSE_POOL, DuckDBWarehouse
from etl_assets.settings import current_settings
from etl_assets.sqlutil import qualified, quote_ident

HEALTH_KEY = AssetKey(["ops", "pipeline_health"])
HEALTH_TABLE = "pipeline_health"
HEALTH_JOB = "pipeline_health_job"
HEALTH_SCHEDULE = "pipeline_health_schedule"
ROW_COUNT = "dagster/row_count"
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
PAGE = 1000


@dataclass(frozen=True)
class PipelineInfo:
    """What health needs to know about one pipeline.

    Attributes:
        name: The spec name.
        targets: Its target assets (``<domain>/warehouse_<name>``, ``<domain>/postgres_<name>``).
        max_lag_minutes: The spec's ``freshness.max_lag_minutes``, if declared.
        partitions_def: Its time partitions: the freshness lag is then that of the newest loaded partition's data.
    """

    name: str
    targets: tuple[AssetKey, ...]
    max_lag_minutes: int | None = None
    partitions_def: TimeWindowPartitionsDefinition | None = None


@dataclass
class PipelineHealth:
    """One row of ``ops.pipeline_health``."""

    pipeline: str
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    success_rate: float | None = None
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    rows_loaded: int = 0
    records_per_hour: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    last_success_at: datetime | None = None
    freshness_lag_minutes: float | None = None
    max_lag_minutes: int | None = None
    complete: bool = False  # its partitions end, and the last is loaded: never stale (freshness.partitions_complete)

    @property
    def stale(self) -> bool:
        """True when the pipeline declares a max lag and is past it (or never loaded), unless it is complete."""
        if self.max_lag_minutes is None or self.complete:
            return False
        return self.freshness_lag_minutes is None or self.freshness_lag_minutes > self.max_lag_minutes


def _run_records(instance: DagsterInstance, since: datetime) -> list:
    """Finished runs created since ``since``, all pages."""
    records, cursor = [], None
    while True:
        page = instance.get_run_records(RunsFilter(created_after=since, statuses=FINISHED), limit=PAGE, cursor=cursor)
        records += page
        if len(page) < PAGE:
            return records
        cursor = page[-1].dagster_run.run_id


def _executions(
    instance: DagsterInstance, run_records: Sequence, names: Sequence[str]
) -> dict[str, list[tuple[bool, float | None]]]:
    """``{pipeline: [(succeeded, seconds or None)]}``: one entry per run that executed the pipeline's steps."""
    plans: dict[str, dict[str, list[AssetKey]]] = {}
    out: dict[str, list[tuple[bool, float | None]]] = defaultdict(list)
    for record in run_records:
        run = record.dagster_run
        plan_id = run.execution_plan_snapshot_id or ""
        if plan_id not in plans:
            plans[plan_id] = step_asset_keys(instance, run) if plan_id else {}
        steps_by_pipeline = defaultdict(list)
        for stat in instance.get_run_step_stats(run.run_id):
            keys = plans[plan_id].get(stat.step_key) or []
            owner = next((p for p in (pipeline_for_asset(k, names) for k in keys) if p), None)
            if owner:
                steps_by_pipeline[owner].append(stat)
        if not steps_by_pipeline:
            owner = pipeline_for_job(run.job_name, names)
            if owner in names and run.status != DagsterRunStatus.SUCCESS:
                out[owner].append((False, None))  # failed before any step of it started
            continue
        for owner, stats in steps_by_pipeline.items():
            statuses = {s.status.value if s.status else "IN_PROGRESS" for s in stats}
            if statuses == {"SKIPPED"}:
                continue
            if statuses <= {"SUCCESS", "SKIPPED"} and "SUCCESS" in statuses:
                starts = [s.start_time for s in stats if s.start_time]
                ends = [s.end_time for s in stats if s.end_time]
                out[owner].append((True, max(ends) - min(starts) if starts and ends else None))
            else:
                out[owner].append((False, None))
    return out


def _rows_loaded(instance: DagsterInstance, targets: Iterable[AssetKey], since: datetime) -> int:
    total = 0
    for key in targets:
        cursor = None
        while True:
            result = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, after_timestamp=since.timestamp()), limit=PAGE, cursor=cursor
            )
            for record in result.records:
                value = record.asset_materialization.metadata.get(ROW_COUNT) if record.asset_materialization else None
                total += int(getattr(value, "value", 0) or 0)
            if not result.has_more:
                break
            cursor = result.cursor
    return total


def _last_success(instance: DagsterInstance, targets: Iterable[AssetKey]) -> datetime | None:
    stamps = [e.timestamp for e in (instance.get_latest_materialization_event(k) for k in targets) if e is not None]
    return datetime.fromtimestamp(max(stamps), UTC) if stamps else None


def compute_health(
    instance: DagsterInstance,
    pipelines: Sequence[PipelineInfo],
    window: timedelta,
    error_counts: dict[tuple[str, str], int],
    now: datetime | None = None,
) -> list[PipelineHealth]:
    """Health per pipeline over the window ending ``now``.

    Args:
        instance: The Dagster instance to read runs, step stats and materializations from.
        pipelines: The pipelines to report on.
        window: The trailing window.
        error_counts: ``{(pipeline, error_class): n}`` from ``ops.errors`` for the same window.
        now: The window's end (default: the current time).
    """
    now = now or datetime.now(UTC)
    since = now - window
    names = [p.name for p in pipelines]
    executions = _executions(instance, _run_records(instance, since), names)
    hours = window.total_seconds() / 3600
    rows = []
    for info in pipelines:
        runs = executions.get(info.name, [])
        ok = [seconds for success, seconds in runs if success]
        durations = [s for s in ok if s is not None]
        loaded = _rows_loaded(instance, info.targets, since)
        last = _last_success(instance, info.targets)
        # the lag of the data itself, as freshness_check measures it: a 2024 partition loaded today is not fresh
        stamps = [data_time_of(instance, key, info.partitions_def)[0] for key in info.targets]
        data_time = max((t for t in stamps if t is not None), default=None)
        rows.append(
            PipelineHealth(
                pipeline=info.name,
                runs=len(runs),
                succeeded=len(ok),
                failed=len(runs) - len(ok),
                success_rate=round(len(ok) / len(runs), 4) if runs else None,
                p50_seconds=round(float(np.percentile(durations, 50)), 3) if durations else None,
                p95_seconds=round(float(np.percentile(durations, 95)), 3) if durations else None,
                rows_loaded=loaded,
                records_per_hour=round(loaded / hours, 6) if hours else 0.0,
                failures={c: error_counts.get((info.name, c), 0) for c in ERROR_CLASSES},
                last_success_at=last,
                freshness_lag_minutes=round((now - data_time).total_seconds() / 60, 2) if data_time else None,
                max_lag_minutes=info.max_lag_minutes,
                complete=partitions_complete(data_time, info.partitions_def),
            )
        )
    return rows


_HEALTH_COLUMNS = [
    ("computed_at", "TIMESTAMPTZ"),
    ("window_hours", "DOUBLE"),
    ("pipeline", "VARCHAR"),
    ("runs", "INTEGER"),
    ("succeeded", "INTEGER"),
    ("failed", "INTEGER"),
    ("success_rate", "DOUBLE"),
    ("p50_seconds", "DOUBLE"),
    ("p95_seconds", "DOUBLE"),
    ("rows_loaded", "BIGINT"),
    ("records_per_hour", "DOUBLE"),
    *[(f"failures_{c}", "INTEGER") for c in ERROR_CLASSES],
    ("last_success_at", "TIMESTAMPTZ"),
    ("freshness_lag_minutes", "DOUBLE"),
    ("max_lag_minutes", "INTEGER"),
    ("stale", "BOOLEAN"),
]


def write_health_table(
    warehouse: DuckDBWarehouse,
    rows: Sequence[PipelineHealth],
    window: timedelta,
    computed_at: datetime,
    wait_seconds: float = 120.0,
) -> None:
    """Replace the contents of ``ops.pipeline_health`` with ``rows``, in one short transaction."""
    table = qualified(OPS_SCHEMA, HEALTH_TABLE)
    values = [
        [
            computed_at,
            window.total_seconds() / 3600,
            r.pipeline,
            r.runs,
            r.succeeded,
            r.failed,
            r.success_rate,
            r.p50_seconds,
            r.p95_seconds,
            r.rows_loaded,
            r.records_per_hour,
            *[r.failures.get(c, 0) for c in ERROR_CLASSES],
            r.last_success_at,
            r.freshness_lag_minutes,
            r.max_lag_minutes,
            r.stale,
        ]
        for r in rows
    ]
    with warehouse_session(warehouse, wait_seconds=wait_seconds) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            ensure_error_tables(con)  # so ops.errors and ops.error_summary can be queried before any failure
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                + ", ".join(f"{quote_ident(n)} {t}" for n, t in _HEALTH_COLUMNS)
                + ")"
            )
            con.execute(f"DELETE FROM {table}")
            if values:
                con.executemany(
                    f"INSERT INTO {table} ({', '.join(quote_ident(n) for n, _ in _HEALTH_COLUMNS)})"
                    f" VALUES ({', '.join('?' for _ in _HEALTH_COLUMNS)})",
                    values,
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def _fmt_rate(value: float) -> str:
    """A rate with the digits it needs: ``12,345``, ``42.5``, ``0.0714`` (a few rows a week are not 0 an hour)."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def health_markdown(rows: Sequence[PipelineHealth], window: timedelta) -> str:
    """The health rows as a markdown table (the asset's ``summary`` metadata)."""
    hours = window.total_seconds() / 3600
    lines = [
        f"Trailing {hours:g} h.",
        "",
        "| pipeline | runs | success | p50 | p95 | rows/h | failures by class | freshness lag | max lag |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        failures = ", ".join(f"{c} {n}" for c, n in r.failures.items() if n) or "none"
        rate = _fmt(r.success_rate * 100 if r.success_rate is not None else None, "%")
        lag = _fmt(r.freshness_lag_minutes, " min") + (" **stale**" if r.stale else " (complete)" if r.complete else "")
        lines.append(
            f"| {r.pipeline} | {r.runs} | {rate} | {_fmt(r.p50_seconds, ' s')} | {_fmt(r.p95_seconds, ' s')} "
            f"| {_fmt_rate(r.records_per_hour)} | {failures} | {lag} | {_fmt(r.max_lag_minutes, ' min', 0)} |"
        )
    return "\n".join(lines)


def render_chart(rows: Sequence[PipelineHealth], window: timedelta, computed_at: datetime, path: Path) -> Path:
    """Draw the health chart (success rate, durations, records per hour, freshness lag) to a PNG at ``path``.

    The file is written under a temporary name and renamed, so a reader never sees half a PNG.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = [r.pipeline for r in rows]
    y = np.arange(len(rows))
    height = max(3.0, 0.45 * len(rows) + 1.6)
    fig, axes = plt.subplots(1, 5, figsize=(21, height), sharey=True)
    try:
        ax = axes[0]
        ax.barh(
            y,
            [(r.success_rate or 0) * 100 for r in rows],
            color=[
                "#2e7d32" if (r.success_rate or 0) >= 0.95 else "#f9a825" if (r.success_rate or 0) >= 0.8 else "#c62828"
                for r in rows
            ],
        )
        ax.set_xlim(0, 100)
        ax.set_title("success rate (%)")
        for i, r in enumerate(rows):
            label, color = (
                ("no runs", "#757575")
                if r.success_rate is None
                else (f"{r.succeeded}/{r.runs} ok", "black" if r.failed == 0 else "#c62828")
            )
            ax.text(
                1.5,
                i,
                label,
                va="center",
                fontsize=8,
                color=color,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1},
            )

        ax = axes[1]
        left = np.zeros(len(rows))
        for cls, color in zip(ERROR_CLASSES, ("#ffb300", "#8e24aa", "#1e88e5", "#e53935"), strict=True):
            counts = np.array([r.failures.get(cls, 0) for r in rows], dtype=float)
            ax.barh(y, counts, left=left, color=color, label=cls)
            left += counts
        ax.set_title("failures by class (ops.errors)")
        ax.legend(loc="best", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)

        ax = axes[2]
        ax.barh(y - 0.2, [r.p50_seconds or 0 for r in rows], height=0.4, label="p50", color="#1565c0")
        ax.barh(y + 0.2, [r.p95_seconds or 0 for r in rows], height=0.4, label="p95", color="#90caf9")
        ax.set_title("duration of successful runs (s)")
        ax.legend(loc="best", fontsize=8)

        ax = axes[3]
        ax.barh(y, [r.records_per_hour for r in rows], color="#6a1b9a")
        ax.set_title("records loaded per hour")

        ax = axes[4]
        ax.barh(
            y, [r.freshness_lag_minutes or 0 for r in rows], color=["#c62828" if r.stale else "#00897b" for r in rows]
        )
        limits = [(i, r.max_lag_minutes) for i, r in enumerate(rows) if r.max_lag_minutes is not None]
        if limits:
            ax.scatter(
                [m for _, m in limits],
                [i for i, _ in limits],
                marker="|",
                s=300,
                color="black",
                label="max lag",
                zorder=3,
            )
            ax.legend(loc="best", fontsize=8)
        for i, r in enumerate(rows):
            if r.freshness_lag_minutes is None:
                ax.text(0, i, " never loaded", va="center", fontsize=8, color="#c62828" if r.stale else "#757575")
        ax.set_title("freshness lag (min)")

        axes[0].set_yticks(y, names)
        axes[0].invert_yaxis()
        for ax in axes:
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(
            f"Pipeline health, trailing {window.total_seconds() / 3600:g} h — "
            f"{computed_at.strftime('%Y-%m-%d %H:%M UTC')}"
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fig.savefig(tmp, dpi=110, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path


def embedded_png(path: Path, alt: str) -> str:
    """Markdown showing the PNG at ``path`` inline (a data URI), so the asset page displays it."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"


def figures_metadata(rows: Sequence[PipelineHealth]) -> dict[str, float]:
    """Each pipeline's figures as numeric metadata (``<pipeline>.success_rate``, ...), which Dagster plots over the
    asset's materializations; a figure with no value this time is left out rather than recorded as 0."""
    out: dict[str, float] = {}
    for r in rows:
        figures = {
            "success_rate": r.success_rate,
            "p50_seconds": r.p50_seconds,
            "p95_seconds": r.p95_seconds,
            "records_per_hour": r.records_per_hour,
            "freshness_lag_minutes": r.freshness_lag_minutes,
        }
        out.update({f"{r.pipeline}.{name}": float(v) for name, v in figures.items() if v is not None})
        out[f"{r.pipeline}.runs"] = float(r.runs)
    return out


class PipelineHealthConfig(Config):
    """Run config of ``ops/pipeline_health``."""

    window_hours: float = Field(
        default=168.0, gt=0, description="Length of the trailing window, in hours (default 7 days)."
    )


def build_health(pipelines: Sequence[PipelineInfo]):
    """The ``ops/pipeline_health`` asset, its job and its hourly schedule (stopped by default)."""
    infos = list(pipelines)

    @asset(
        key=HEALTH_KEY,
        group_name="ops",
        kinds={"duckdb", "python"},
        pool=WAREHOUSE_POOL,  # it writes ops.pipeline_health: the warehouse's single writer slot
        description="Per pipeline over a trailing window: success rate, p50/p95 duration, records per hour, "
        "failures by class and freshness lag. Table ops.pipeline_health; the chart is shown here (and kept in "
        "$ETL_DATA_DIR/reports/pipeline_health.png); each pipeline's figures are plotted over time.",
    )
    def pipeline_health(
        context: AssetExecutionContext, config: PipelineHealthConfig, warehouse: DuckDBWarehouse
    ) -> MaterializeResult:
        now = datetime.now(UTC)
        window = timedelta(hours=config.window_hours)
        if not ErrorStore(warehouse, wait_seconds=60).flush():
            context.log.warning("warehouse busy: spooled error records stay pending")
        counts = read_error_counts(warehouse, now - window)
        rows = compute_health(context.instance, infos, window, counts, now)
        write_health_table(warehouse, rows, window, now)
        chart = render_chart(rows, window, now, current_settings().data_dir / "reports" / "pipeline_health.png")
        return MaterializeResult(
            metadata={
                "summary": MetadataValue.md(health_markdown(rows, window)),
                # the UI renders an image in Markdown metadata; a file path would only be text to a browser
                "chart": MetadataValue.md(embedded_png(chart, "pipeline health")),
                "chart_path": MetadataValue.path(str(chart)),
                **figures_metadata(rows),
                "table": f"{OPS_SCHEMA}.{HEALTH_TABLE}",
                "window_hours": config.window_hours,
                "pipelines": len(rows),
                "stale_pipelines": MetadataValue.json([r.pipeline for r in rows if r.stale]),
                "dagster/row_count": len(rows),
            }
        )

    job = define_asset_job(
        HEALTH_JOB, selection=AssetSelection.assets(HEALTH_KEY), description="Refreshes ops/pipeline_health."
    )
    schedule = ScheduleDefinition(
        name=HEALTH_SCHEDULE,
        job=job,
        cron_schedule="0 * * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description="Refreshes ops/pipeline_health every hour.",
    )
    return pipeline_health, job, schedule


def pipeline_infos(specs) -> list[PipelineInfo]:
    """:class:`PipelineInfo` for each loaded spec."""
    return [
        PipelineInfo(
            name=s.spec.ref,
            targets=tuple(target_key(t, s.spec) for t in s.spec.targets),
            max_lag_minutes=s.spec.freshness.max_lag_minutes if s.spec.freshness else None,
            partitions_def=partitions_def_for(s.spec),
        )
        for s in specs
    ]
