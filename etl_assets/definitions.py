"""The code location: assembles the pipelines of the defs folder, monitoring and recovery, and picks the executor.

Nothing is built at import: Dagster calls the ``@definitions`` loader :func:`defs` when it loads the code location
(``dg dev``, ``dagster dev``, ``dagster job execute -m etl_assets``, a run worker), and the CLI and tests
call :func:`build_definitions` themselves.

The pipelines are ``Pipeline`` components (:mod:`etl_assets.components`) in the defs folder, plus the spec files of
``$ETL_PIPELINES_DIR``; they are validated one by one and then as a set, and built in one pass. An invalid one is set
aside and reported (the sensor ``invalid_pipeline_specs``) while the others and the alerting run, except under
``dagster definitions validate`` / ``dg check defs``, where it fails the check. Before building, the loader refuses a
Dagster instance whose Postgres storage URL would fail on its first event write (:mod:`etl_assets.instance`).
"""

from __future__ import annotations

import logging
import os
import warnings

from dagster import Definitions, definitions

from etl_assets.executors import select_executor
from etl_assets.instance import check_instance_home
from etl_assets.monitoring import build_monitoring
from etl_assets.monitoring.freshness import with_freshness_policies
from etl_assets.monitoring.spec_errors import spec_errors_text
from etl_assets.pipelines.factory import build_pipelines
from etl_assets.pipelines.spec import (
    DEFS_MODULE,
    BrokenSpec,
    LoadedSpec,
    SpecError,
    load_specs_isolated,
    read_defs_folder,
)
from etl_assets.recovery import build_recovery
from etl_assets.settings import current_settings

# set by `dagster definitions validate` (and so `dg check defs`) while it loads the location
VALIDATION_CLI_ENV = "DAGSTER_IS_DEFS_VALIDATION_CLI"

# A domain job mixes API pipelines (one partition per run) with single-run backfills on purpose; Dagster then backfills
# the job one partition per run and says so when it resolves the job. The jobs are resolved once, here, with that one
# warning silenced for the resolution only (no process-wide filter).
_MIXED_BACKFILL_POLICIES = r"Asset job .* materializes assets with varying BackfillPolicies"


def other_components(defs_module: str = DEFS_MODULE) -> tuple[list[Definitions], list[BrokenSpec]]:
    """The definitions of the defs folder's components that are not pipelines (another component type, a Python
    module), each built on its own so that one that fails is set aside with its error, like an invalid pipeline."""
    found = read_defs_folder(defs_module)
    built: list[Definitions] = []
    broken: list[BrokenSpec] = []
    for loc, path in found.others:
        try:
            built.append(found.tree.build_defs_at_path(loc))
        except Exception as exc:  # the component's own error names its file; the others still load
            broken.append(BrokenSpec(path, f"component {path} left out of the code location: {exc}"))
    return built, broken


def build_definitions(specs: list[LoadedSpec] | None = None) -> Definitions:
    """Definitions for ``specs`` (default: the defs folder's pipelines and other components plus the specs of
    ``$ETL_PIPELINES_DIR``, an invalid one set aside).

    Locally every run executes in one process: a fresh interpreter per step costs seconds each (27 s against
    7.8 s for three assets on a 2-core machine). Production (``ETL_ENV=production``) runs steps in parallel
    processes. Monitoring (alerts, error tracking, pipeline
    health) is merged in from :func:`etl_assets.monitoring.build_monitoring`, and recovery (the
    run-worker watchdog, retention of raw inputs) from :func:`etl_assets.recovery.build_recovery`.
    """
    broken: list[BrokenSpec] = []
    components: list[Definitions] = []
    if specs is None:
        # one invalid spec is set aside (and reported by the sensor invalid_pipeline_specs); the others load
        specs, broken = load_specs_isolated()
        components, components_broken = other_components()
        broken += components_broken
        if broken and os.environ.get(VALIDATION_CLI_ENV):
            raise SpecError(spec_errors_text(broken))
        for item in broken:
            logging.getLogger("etl_assets").error(f"pipeline spec left out of the code location: {item.message}")
    built = build_pipelines(specs, os.environ.get)
    env = current_settings().env  # the one rule for ETL_ENV (an unknown value is an error)
    defs = Definitions.merge(
        Definitions(
            assets=with_freshness_policies(specs, built.assets),  # the specs' freshness, as Dagster's policy
            asset_checks=built.asset_checks,
            jobs=built.jobs,
            schedules=built.schedules,
            sensors=built.sensors,
            resources=built.resources,
        ),
        build_monitoring(specs, os.environ.get, broken),
        build_recovery(specs, os.environ.get),
        Definitions(executor=select_executor(env)),  # ETL_EXECUTOR, by default the one ETL_ENV implies
        *components,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MIXED_BACKFILL_POLICIES)
        defs.get_repository_def().get_all_jobs()  # resolved (and cached) now, so later look-ups do not warn
    return defs


# The loader's last result and the environment it was built in. One `dagster asset materialize` loads the location
# six times in one process (workspace, job, run, step...); a code server or run worker never sees the environment
# change, and a reload in the UI starts a new process. A different environment (tests) builds again.
_built: tuple[tuple, Definitions] | None = None


@definitions
def defs() -> Definitions:
    """The code location's definitions, built when Dagster loads it (never when ``etl_assets`` is imported)."""
    global _built
    environment = tuple(sorted(os.environ.items()))
    if _built is None or _built[0] != environment:
        check_instance_home()  # a Dagster storage URL that would fail on the first event write stops the load here
        _built = (environment, build_definitions())
    return _built[1]
