"""Runs a command starts in this process, recorded as runs of the code location: the UI then lists them on the
Overview timeline and each job's page, as it does the runs it launched itself.

``JobDefinition.execute_in_process`` records a run with no origin: the Runs list shows it, but the timeline and the
Jobs page group runs by the code location and repository they came from (``remote_job_origin`` and the
``.dagster/repository`` tag), so those views left the demo's runs out. Here the run is created with the origin of
the location ``workspace.yaml`` serves (name ``etl_assets``, repository ``__repository__``), then executed in this
process with Dagster's own ``execute_run`` on the job in memory, as ``execute_in_process`` does. Dagster has no public
call for a run with an origin that runs in the caller's process; the internals used (``create_run_for_job``,
``execute_run``, ``InMemoryJob``) are the ones those public calls are made of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions
    from dagster._core.execution.job_execution_result import JobExecutionResult

# The code location's name in workspace.yaml and for `-m etl_assets`, and the attribute that loads it.
LOCATION_NAME = "etl_assets"
LOCATION_MODULE, LOCATION_ATTRIBUTE = "etl_assets", "code_location"
REPOSITORY_NAME = "__repository__"


class LocationRunner:
    """Executes jobs of ``defs`` (the code location's definitions, as the caller built them) in this process, each
    run carrying the location's origin.

    The job runs as Dagster's in-process ``execute_in_process`` runs it (an in-memory job, so the definitions are not
    loaded a second time); only the run's record differs.
    """

    def __init__(self, defs: Definitions, working_directory: str | None = None):
        self.defs = defs
        self.working_directory = working_directory or os.getcwd()

    def _origin(self, job_name: str):
        from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        location = InProcessCodeLocationOrigin(
            loadable_target_origin=LoadableTargetOrigin(
                module_name=LOCATION_MODULE, attribute=LOCATION_ATTRIBUTE, working_directory=self.working_directory
            ),
            location_name=LOCATION_NAME,
        )
        return RemoteRepositoryOrigin(location, REPOSITORY_NAME).get_job_origin(job_name)

    def execute(
        self,
        instance: DagsterInstance,
        job_name: str,
        partition: str | None = None,
        run_config: Mapping | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> JobExecutionResult:
        """Run ``job_name`` (one ``partition`` of it, when given) to the end; a failed run is returned, not raised."""
        from dagster._core.definitions.job_base import InMemoryJob
        from dagster._core.execution.api import execute_run
        from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

        job_def = self.defs.resolve_job_def(job_name)
        origin = self._origin(job_name)
        run_tags = {
            **(tags or {}),
            **(job_def.get_tags_for_partition_key(partition, selected_asset_keys=None) if partition else {}),
            REPOSITORY_LABEL_TAG: origin.repository_origin.get_label(),
        }
        run = instance.create_run_for_job(
            job_def=job_def, run_config=run_config, tags=run_tags, remote_job_origin=origin
        )
        return execute_run(InMemoryJob(job_def), run, instance, raise_on_error=False)
