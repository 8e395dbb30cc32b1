"""The ``Pipeline`` component: one pipeline of etl_assets declared in a ``defs.yaml`` document."""

from __future__ import annotations

from pathlib import Path

from dagster import Component, ComponentLoadContext, Definitions
from dagster.components import Scaffolder, ScaffoldRequest, scaffold_with
from dagster.components.component_scaffolding import scaffold_component
from pydantic import BaseModel

from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec


class PipelineScaffolder(Scaffolder):
    """``dg scaffold defs etl_assets.components.Pipeline <domain>/<name>``: a defs.yaml with a valid starter spec (a
    files source, one CSV per day) named after the folder, to edit from there."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        name = request.target_path.name
        domain = request.target_path.parent.name or "default"
        scaffold_component(
            request,
            {
                "name": name,
                "domain": domain,
                "description": f"{name}: replace this starter spec (docs/spec-reference.md).",
                "source": {
                    "kind": "files",
                    "format": "csv",
                    "glob": f"{name}_*.csv",
                    "partition_regex": f"{name}_(?P<partition>\\d{{4}}-\\d{{2}}-\\d{{2}})\\.csv$",
                },
                "partitions": {"type": "daily", "start": "2024-01-01"},
                "columns": [{"name": "id", "type": "BIGINT", "nullable": False}],
                "primary_key": ["id"],
            },
        )


@scaffold_with(PipelineScaffolder)
class Pipeline(Component):
    """A pipeline: a source extracted to the raw lake, validated into a clean view with its quarantine, and
    loaded into its targets; or a transform (a mart) built with SQL from other pipelines' clean data.

    The attributes are the pipeline spec (docs/spec-reference.md). A domain folder holds one ``defs.yaml`` with a
    document per pipeline, separated by ``---``, and the transforms' SQL files beside it.

    The code location (:mod:`etl_assets.definitions`) assembles every pipeline of the project in one pass,
    because a pipeline is checked against the others (duplicate names, ``after``, references, transform inputs,
    cycles) and the domain jobs span them; an invalid one is set aside with its error instead of failing the
    location. Built on its own (a component loaded in a sandbox), it is the code location of this one pipeline.
    """

    def __init__(self, loaded: LoadedSpec):
        self.loaded = loaded

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return PipelineSpec

    @classmethod
    def load(cls, attributes: BaseModel | None, context: ComponentLoadContext) -> Pipeline:
        assert isinstance(attributes, PipelineSpec)
        return cls(LoadedSpec(spec=attributes, path=Path(context.path) / "defs.yaml"))

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        from etl_assets.definitions import build_definitions  # the assembly sits above the component types

        return build_definitions(specs=[self.loaded])
