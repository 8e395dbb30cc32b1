"""Spec errors are complete: each bad input below fails loading as one error that names the file, the line, the field
and the fix (with "did you mean" for a misspelling), in both forms a spec takes, a spec file of $ETL_PIPELINES_DIR and
a Pipeline document of a defs.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets.monitoring.spec_errors import SPEC_ERRORS_SENSOR
from etl_assets.pipelines.spec import SpecError, load_specs_isolated, parse_spec_file, read_defs_folder
from etl_assets.specmodel import closest

SPEC = """\
name: returns
domain: shop
source:
  kind: files
  format: csv
  glob: "returns_*.csv"
partitions: {type: daily, start: 2024-01-01, last: 2024-01-07}  # the shop domain's daily partitions
columns:
  - {name: return_id, type: BIGINT, nullable: false}
  - {name: amount, type: "DECIMAL(10,2)"}
primary_key: [return_id]
"""
COMPONENT_HEAD = "type: etl_assets.components.Pipeline\nattributes:\n"


def changed(old: str | None, new: str) -> str:
    """:data:`SPEC` with ``old`` replaced by ``new`` (``new`` appended when ``old`` is None)."""
    if old is None:
        return SPEC + new
    assert old in SPEC, old
    return SPEC.replace(old, new)


def case(case_id: str, old: str | None, new: str, field: str, problem: str, fix: str, marker: str | None = None):
    """A bad spec: :data:`SPEC` changed, and its one error's field, problem and fix. The error names the line of the
    first line holding ``marker`` (default: the first line of ``new``)."""
    return pytest.param(changed(old, new), marker or new.strip().splitlines()[0], field, problem, fix, id=case_id)


MISSPELT = [
    case("key", "source:", "sourse:", "sourse", "unknown key 'sourse' (did you mean 'source'?)", "rename it to source"),
    case(
        "required-key",
        "name: returns",
        "nmae: returns",
        "nmae",
        "unknown key 'nmae' (did you mean 'name'?)",
        "rename it to name",
    ),
    case(
        "source-kind",
        "kind: files",
        "kind: file",
        "source.kind",
        "does not match any of the expected tags: 'api', 'sql', 'files' (did you mean 'files'?)",
        "set `kind` to files",
    ),
    case(
        "rule",
        "{name: amount, type: ",
        "{name: amount, acepted_values: [1], type: ",
        "columns.1.acepted_values",
        "unknown key 'acepted_values' (did you mean 'accepted_values'?)",
        "rename it to accepted_values",
    ),
    case(
        "type",
        "type: BIGINT",
        "type: INTGER",
        "columns.0.type",
        "unknown column type 'INTGER' (did you mean 'INTEGER'?)",
        "write type: INTEGER",
    ),
    case(
        "enum",
        "type: daily",
        "type: dialy",
        "partitions.type",
        "Input should be 'none', 'daily' or 'hourly' (did you mean 'daily'?)",
        "change it to daily",
    ),
    case(
        "enum-in-a-source",
        "format: csv",
        "format: cvs",
        "source.files.format",
        "(did you mean 'csv'?)",
        "change it to csv",
    ),
    case(
        "list-item",
        None,
        "targets: [duckdb, postgress]\n",
        "targets.1",
        "Input should be 'duckdb' or 'postgres' (did you mean 'postgres'?)",
        "change it to postgres",
    ),
    case(
        "nested-key",
        None,
        "retry: {backof: linear}\n",
        "retry.backof",
        "unknown key 'backof' (did you mean 'backoff'?)",
        "rename it to backoff",
    ),
    case(
        "far-from-any-key",
        None,
        "colour: blue\n",
        "colour",
        "unknown key 'colour'. Fix",
        "remove it or check its spelling against docs/spec-reference.md",
    ),
]

SPLIT_TYPE = [
    case(
        "numeric-in-flow-mapping",
        'type: "DECIMAL(10,2)"',
        "type: NUMERIC(12,2)",
        "columns.1.type",
        "the unquoted type NUMERIC(12,2) was split at its comma (in {...} YAML reads a comma as the end of an entry: "
        "type 'NUMERIC(12' and a key '2)')",
        'quote it: type: "NUMERIC(12,2)"',
        marker="name: amount",
    ),
    case(
        "decimal-with-a-space",
        'type: "DECIMAL(10,2)"',
        "type: DECIMAL(12, 2)",
        "columns.1.type",
        "the unquoted type DECIMAL(12,2) was split at its comma",
        'quote it: type: "DECIMAL(12,2)"',
        marker="name: amount",
    ),
    case(
        "columns-as-a-mapping",
        '  - {name: return_id, type: BIGINT, nullable: false}\n  - {name: amount, type: "DECIMAL(10,2)"}\n',
        "  {amount: NUMERIC(12,2)}\n",
        "columns",
        "`columns` is a mapping here, but the contract is a list of columns, each {name, type, nullable}, and YAML "
        "split the unquoted type NUMERIC(12,2) at its comma",
        'write a list, quoting the type: columns: [{name: amount, type: "NUMERIC(12,2)"}]',
        marker="columns:",
    ),
]


CRON_FIX = (
    "give five fields, minute (0-59) hour (0-23) day-of-month (1-31) month (1-12) day-of-week (0-6, or MON-SUN), "
    'e.g. "0 6 * * *" (06:00 every day) or "30 0 * * 1-5" (00:30 on weekdays)'
)
CRON_TZ = [
    case(
        "cron-out-of-range",
        None,
        "schedule: {cron: '99 99 * * *'}\n",
        "schedule.cron",
        "'99 99 * * *' is not a cron expression Dagster can schedule",
        CRON_FIX,
    ),
    case(
        "cron-february-30",
        None,
        "schedule:\n  cron: 0 0 30 2 *\n",
        "schedule.cron",
        "'0 0 30 2 *' is not a cron expression Dagster can schedule",
        CRON_FIX,
        marker="cron:",
    ),
    case(
        "cron-six-fields",
        None,
        "schedule: {cron: '0 0 6 * * *'}\n",
        "schedule.cron",
        "is not a cron expression Dagster can schedule",
        CRON_FIX,
    ),
    case(
        "automation-cron",
        None,
        "automation: {condition: on_cron, cron: '0 25 * * *'}\n",
        "automation.cron",
        "'0 25 * * *' is not a cron expression Dagster can schedule",
        CRON_FIX,
    ),
    case(
        "schedule-time-zone",
        None,
        "schedule: {cron: '0 6 * * *', timezone: Europe/Parris}\n",
        "schedule.timezone",
        "'Europe/Parris' is not a time zone (did you mean 'Europe/Paris'?)",
        "write timezone: Europe/Paris",
    ),
    case(
        "partitions-time-zone-in-lower-case",
        "last: 2024-01-07}",
        "last: 2024-01-07, timezone: america/new_york}",
        "partitions.timezone",
        "'america/new_york' is not a time zone (did you mean 'America/New_York'?)",
        "write timezone: America/New_York",
    ),
    case(
        "time-zone-far-from-any",
        None,
        "schedule: {cron: '0 6 * * *', timezone: Mars/Olympus_Mons}\n",
        "schedule.timezone",
        "'Mars/Olympus_Mons' is not a time zone. Fix",
        "use an IANA time zone name, e.g. UTC or Europe/Berlin",
    ),
    case(
        "time-zone-path",
        None,
        "schedule: {cron: '0 6 * * *', timezone: ../../etc/passwd}\n",
        "schedule.timezone",
        "'../../etc/passwd' is not a time zone",
        "use an IANA time zone name, e.g. UTC or Europe/Berlin",
    ),
]


OWNER_FIX = "write an email address such as jane@example.com, or a team such as team:data_eng"
CATALOG = [
    case(
        "owner-with-a-space",
        None,
        "owners:\n  - jane@example.com\n  - data team\n",
        "owners.1",
        "'data team' is not an owner Dagster accepts (an email address, or a team as team:<name>)",
        OWNER_FIX,
        marker="- data team",
    ),
    case("owner-team-without-name", None, "owners: ['team:']\n", "owners.0", "'team:' is not an owner", OWNER_FIX),
    case(
        "tag-key",
        None,
        "tags: {cost center: emea}\n",
        "tags.cost center",
        "tag key 'cost center' is not one Dagster accepts (letters, digits, '_', '-' and '.', at most 63 characters, "
        "optionally after a namespace and '/')",
        "rename it, e.g. cost_center",
    ),
    case(
        "tag-key-too-long",
        None,
        f"tags: {{{'k' * 64}: v}}\n",
        f"tags.{'k' * 64}",
        "is not one Dagster accepts",
        f"rename it, e.g. {'k' * 63}",
    ),
    case(
        "tag-value",
        None,
        "tags:\n  tier: gold tier\n",
        "tags.tier",
        "tag value 'gold tier' is not one Dagster accepts (letters, digits, '_', '-' and '.', at most 63 characters, "
        "or empty)",
        "change it, e.g. tier: gold_tier",
        marker="tier:",
    ),
    case(
        "tag-in-dagster-namespace",
        None,
        "tags: {dagster/kind/snowflake: ''}\n",
        "tags.dagster/kind/snowflake",
        "tag key 'dagster/kind/snowflake' is in Dagster's own namespace dagster/",
        "use a key without that prefix, e.g. kind_snowflake",
    ),
    case(
        "tag-value-read-as-a-boolean",
        None,
        "tags: {pii: true}\n",
        "tags.pii",
        "Input should be a valid string",
        'quote it, so YAML reads it as text: "true"',
    ),
    case(
        "tags-as-a-list",
        None,
        "tags: [gold]\n",
        "tags",
        "Input should be a valid dictionary",
        "give a value of the expected type",
    ),
]


def error_of(form: str, text: str, tmp_path: Path, defs_package: tuple[str, Path]) -> tuple[str, str, int]:
    """Load ``text`` in ``form`` (``file`` or ``component``): its error, where it names the spec, and by how many
    lines the spec's own lines are moved in that form."""
    if form == "file":
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(SpecError) as info:
            parse_spec_file(path)
        return str(info.value), f"invalid pipeline spec {path}:\n", 0
    name, folder = defs_package
    (folder / "shop").mkdir()
    path = folder / "shop" / "defs.yaml"
    path.write_text(COMPONENT_HEAD + textwrap.indent(text, "  "))
    found = read_defs_folder(name)
    assert found.loaded == []
    [broken] = found.broken
    return broken.message, f"invalid pipeline spec {path}, line 1:\n", COMPONENT_HEAD.count("\n")


@pytest.mark.parametrize("form", ["file", "component"])
@pytest.mark.parametrize("text, marker, field, problem, fix", MISSPELT + SPLIT_TYPE + CRON_TZ + CATALOG)
def test_a_bad_spec_is_one_error_with_file_line_field_and_fix(
    form: str, text: str, marker: str, field: str, problem: str, fix: str, tmp_path: Path, defs_package
):
    error, head, offset = error_of(form, text, tmp_path, defs_package)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if marker in t) + offset
    assert error.startswith(head)
    assert error.count("\n  field '") == 1, error  # one error, not the confusing pair
    assert f"\n  field '{field}' (line {line}): " in error, error
    assert problem in error
    assert error.endswith(f" Fix: {fix}.")
    assert "Traceback" not in error


def test_an_unquoted_type_in_block_style_is_read_whole_and_numeric_is_decimal(tmp_path: Path):
    path = tmp_path / "returns.yaml"
    path.write_text(
        changed('  - {name: amount, type: "DECIMAL(10,2)"}\n', "  - name: amount\n    type: NUMERIC(12,2)\n")
    )
    assert parse_spec_file(path).spec.columns[1].type == "DECIMAL(12,2)"


@pytest.mark.parametrize("cron", ["0 6 * * *", "30 0 * * 1-5", "*/15 * * * *", "0 0 * * MON", "0 0 L * *", "@daily"])
@pytest.mark.parametrize("zone", ["UTC", "utc", "Europe/Paris", "America/New_York"])
def test_what_dagster_schedules_is_accepted(cron: str, zone: str, tmp_path: Path):
    path = tmp_path / "returns.yaml"
    path.write_text(
        changed("last: 2024-01-07}", f"last: 2024-01-07, timezone: {zone}}}")
        + f"schedule: {{cron: '{cron}', timezone: {zone}}}\n"
    )
    spec = parse_spec_file(path).spec
    assert spec.schedule is not None and (spec.schedule.cron, spec.schedule.timezone) == (cron, zone)
    assert spec.partitions.timezone == zone


def test_a_bad_cron_or_time_zone_is_set_aside_and_the_code_location_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Before the spec refused them, Dagster did when it built the schedule or the partitions: a traceback, and no
    code location at all."""
    good = changed("name: returns", "name: refunds").replace("returns_", "refunds_")
    (tmp_path / "refunds.yaml").write_text(good)
    (tmp_path / "returns.yaml").write_text(changed(None, "schedule: {cron: '0 6 * * *', timezone: Europe/Parris}\n"))
    (tmp_path / "exchanges.yaml").write_text(
        changed("name: returns", "name: exchanges").replace("returns_", "exchanges_")
        + "schedule: {cron: '99 99 * * *'}\n"
    )
    monkeypatch.setenv("ETL_PIPELINES_DIR", str(tmp_path))
    defs = build_definitions()
    assert defs.resolve_job_def(pipeline_job_name(Pipeline("shop", "refunds"))) is not None
    _, broken = load_specs_isolated()
    errors = {b.path.name: b.message for b in broken}
    assert set(errors) == {"returns.yaml", "exchanges.yaml"}
    assert "field 'schedule.timezone' (line 12): 'Europe/Parris' is not a time zone" in errors["returns.yaml"]
    assert "field 'schedule.cron' (line 12): '99 99 * * *' is not a cron expression" in errors["exchanges.yaml"]
    sensor = defs.resolve_sensor_def(SPEC_ERRORS_SENSOR)
    assert sensor is not None


CATALOG_SPEC = changed(
    '{name: amount, type: "DECIMAL(10,2)"}', '{name: amount, type: "NUMERIC(12,2)", description: Refunded}'
) + (
    "description: Returns of shop orders, one file per day.\n"
    "owners: [jane@example.com, 'team:data_eng']\n"
    "tags: {tier: gold, sales/region: emea, reviewed: ''}\n"
)


@pytest.mark.parametrize("form", ["file", "component"])
def test_the_catalog_fields_are_kept_on_the_model(form: str, tmp_path: Path, defs_package):
    if form == "file":
        path = tmp_path / "returns.yaml"
        path.write_text(CATALOG_SPEC)
        spec = parse_spec_file(path).spec
    else:
        name, folder = defs_package
        (folder / "shop").mkdir()
        (folder / "shop" / "defs.yaml").write_text(COMPONENT_HEAD + textwrap.indent(CATALOG_SPEC, "  "))
        found = read_defs_folder(name)
        assert found.broken == []
        [loaded] = found.loaded
        spec = loaded.spec
    assert spec.description == "Returns of shop orders, one file per day."
    assert spec.owners == ["jane@example.com", "team:data_eng"]
    assert spec.tags == {"tier": "gold", "sales/region": "emea", "reviewed": ""}
    assert [(c.name, c.type, c.description) for c in spec.columns] == [
        ("return_id", "BIGINT", None),
        ("amount", "DECIMAL(12,2)", "Refunded"),
    ]


def test_the_catalog_fields_default_to_empty(tmp_path: Path):
    path = tmp_path / "returns.yaml"
    path.write_text(SPEC)
    spec = parse_spec_file(path).spec
    assert (spec.description, spec.owners, spec.tags, spec.columns[0].description) == ("", [], {}, None)


@pytest.mark.parametrize(
    "value, choices, match",
    [
        ("sourse", ["source", "schedule"], "source"),
        ("warn", ["ERROR", "WARN"], "WARN"),  # only the case differs
        ("europe/parris", ["Europe/Paris", "Europe/Prague"], "Europe/Paris"),
        ("colour", ["name", "source", "columns"], None),
    ],
)
def test_closest_is_a_misspelling_or_nothing(value: str, choices: list[str], match: str | None):
    assert closest(value, choices) == match
