"""Write the JSON schema of a pipeline spec (generated from the models) for editors: docs/pipeline-spec.schema.json.

A plain spec file in ``$ETL_PIPELINES_DIR`` points at it with a first line
``# yaml-language-server: $schema=<path>/docs/pipeline-spec.schema.json``; for the ``defs.yaml`` of the defs folder,
``dg utils configure-editor vscode`` (or ``cursor``) gives editors the schema of every component type, this one's
``attributes`` included. ``--check`` fails when the committed file is out of date (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from etl_assets.pipelines.spec import PipelineSpec

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "pipeline-spec.schema.json"


def spec_schema() -> str:
    """The schema's text, as committed."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "etl_assets pipeline spec",
              **PipelineSpec.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is out of date")
    args = parser.parse_args()
    text = spec_schema()
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is out of date: run `make schema` and commit it", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
