"""Generate the spec's reference from its models: docs/pipeline-spec.schema.json and the field tables of
docs/spec-reference.md.

The JSON schema is for editors.
A plain spec file in ``$ETL_PIPELINES_DIR`` points at it with a first line
``# yaml-language-server: $schema=<path>/docs/pipeline-spec.schema.json``; for the ``defs.yaml`` of the defs folder,
``dg utils configure-editor vscode`` (or ``cursor``) gives editors the schema of every component type, this one's
``attributes`` included. The field tables (one per model: key, type, default, constraints, description) replace
everything after the heading "## Field tables" of docs/spec-reference.md. ``--check`` fails when either committed
file is out of date (``make validate`` runs it in CI).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from etl_assets.pipelines.spec import PipelineSpec

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA_PATH = DOCS / "pipeline-spec.schema.json"
REFERENCE_PATH = DOCS / "spec-reference.md"
TABLES_HEADING = "## Field tables\n"
TABLES_INTRO = """
Generated from the pydantic models by `scripts/spec_schema.py` (`make schema`; `make validate` fails when this
section is out of date): the model docstrings are the section texts and the field descriptions the last column.
Every model forbids unknown keys.

"""


def spec_schema() -> str:
    """The schema's text, as committed."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "etl_assets pipeline spec",
        **PipelineSpec.model_json_schema(),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root`` through its fields, by name."""
    found: dict[str, type[BaseModel]] = {}
    stack: list[object] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            if item.__name__ in found:
                continue
            found[item.__name__] = item
            stack.extend(f.annotation for f in item.model_fields.values())
        else:
            stack.extend(typing.get_args(item))
    return found


def _type_of(p: dict) -> str:
    if "$ref" in p:
        name = p["$ref"].split("/")[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in p:
        return " or ".join(_type_of(x) for x in p["anyOf"] if x.get("type") != "null")
    if "oneOf" in p:
        return " or ".join(_type_of(x) for x in p["oneOf"])
    if "enum" in p:
        return " \\| ".join(f"`{v}`" for v in p["enum"])
    if "const" in p:
        return f"`{p['const']}`"
    kind = p.get("type")
    if kind == "array":
        if "prefixItems" in p:
            return "[" + ", ".join(_type_of(x) for x in p["prefixItems"]) + "]"
        return f"list of {_type_of(p.get('items', {}))}"
    if kind == "object" and isinstance(p.get("additionalProperties"), dict):
        return f"mapping of string to {_type_of(p['additionalProperties'])}"
    if p.get("format") == "date":
        return "date"
    return kind or "any"


def _constraints(p: dict) -> str:
    if "prefixItems" in p:
        return f"exactly {len(p['prefixItems'])} items"
    out = []
    for key, symbol in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
        ("minItems", "items >="),
    ):
        if key in p:
            out.append(f"{symbol} {p[key]:,}" if isinstance(p[key], int) else f"{symbol} {p[key]}")
    out += [c for c in (_constraints(x) for x in p.get("anyOf", [])) if c]
    return ", ".join(out)


def _default(model: type[BaseModel], name: str, required: set[str]) -> str:
    if name in required:
        return "required"
    value = model.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(defaults below)"
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def field_tables() -> str:
    """The markdown field tables: PipelineSpec first, then each model in the order the schema defines them."""
    schema = PipelineSpec.model_json_schema()
    definitions = {"PipelineSpec": schema, **schema.get("$defs", {})}
    models = _models(PipelineSpec)
    out = []
    for name, definition in definitions.items():
        if "properties" not in definition:
            continue
        out.append(f"### {name}\n")
        if definition.get("description"):
            out.append(" ".join(definition["description"].split()).replace("``", "`") + "\n")
        out.append("| key | type | default | constraints | description |")
        out.append("| --- | --- | --- | --- | --- |")
        required = set(definition.get("required", []))
        for key, prop in definition["properties"].items():
            text = " ".join(prop.get("description", "").split()).replace("|", "\\|")
            text = re.sub(r"(?<!`)(<[A-Z_]+>\w*)", r"`\1`", text)  # a placeholder, not an HTML tag
            out.append(
                f"| `{key}` | {_type_of(prop)} | {_default(models[name], key, required)} | "
                f"{_constraints(prop)} | {text} |"
            )
        out.append("")
    return "\n".join(out)


def reference_text() -> str:
    """docs/spec-reference.md with its field tables regenerated."""
    text = REFERENCE_PATH.read_text()
    head = text[: text.index(TABLES_HEADING) + len(TABLES_HEADING)]
    return head + TABLES_INTRO + field_tables()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is out of date")
    args = parser.parse_args()
    outputs = {SCHEMA_PATH: spec_schema(), REFERENCE_PATH: reference_text()}
    if args.check:
        stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]
        for path in stale:
            print(f"{path} is out of date: run `make schema` and commit it", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
