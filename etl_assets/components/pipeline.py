"""The ``Pipeline`` component: one pipeline of etl_assets declared in a ``defs.yaml`` document."""

from __future__ import annotations

from pathlib import Path

from dagster import Component, ComponentLoadContext, Definitions
from pydantic import BaseModel

from etl_assets.pipelines.spec import LoadedSpec, PipelineSpec


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
