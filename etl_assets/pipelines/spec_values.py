"""Checks of the spec values that are handed to Dagster: cron expressions, time zones, asset owners and tags.

Each refuses, when the spec loads, what Dagster would refuse when the definitions are built (an error there takes
the whole code location down with a traceback), and says what a valid value looks like. Where Dagster has a public
definition that validates the value, it is asked; only the messages are the platform's own.
"""

from __future__ import annotations

import re
import warnings
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dagster import AssetSpec, DagsterInvalidDefinitionError, ScheduleDefinition

from etl_assets.specmodel import SpecFieldError, closest, did_you_mean

CRON_FIX = (
    "give five fields, minute (0-59) hour (0-23) day-of-month (1-31) month (1-12) day-of-week (0-6, or MON-SUN), "
    'e.g. "0 6 * * *" (06:00 every day) or "30 0 * * 1-5" (00:30 on weekdays)'
)
# Dagster keeps this tag namespace for its own tags: dagster/kind/* are the asset kinds, which the platform sets from
# the source and the targets, and others steer runs. An asset definition takes them, so the spec refuses them itself.
DAGSTER_TAG_PREFIX = "dagster/"
TAG_RULE = "letters, digits, '_', '-' and '.', at most 63 characters"
_NOT_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_PROBE = "spec_check"  # the name of the throwaway definitions that ask Dagster


def checked_cron(value: str) -> str:
    """Field validator: a cron expression Dagster can schedule (a schedule's, or an ``on_cron`` automation's).

    Raises:
        SpecFieldError: Dagster refuses it (not five fields, a value out of its field's range, February 30th).
    """
    # Dagster's own check is the one that runs when the schedule is built (ScheduleDefinition), so it decides. It
    # warns of a step wider than its field (*/90 in the minutes) there, so the warning is not repeated here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ScheduleDefinition(name=_PROBE, cron_schedule=value, job_name=_PROBE)
        except DagsterInvalidDefinitionError:
            raise SpecFieldError("", f"{value!r} is not a cron expression Dagster can schedule", CRON_FIX) from None
    return value


def checked_timezone(value: str) -> str:
    """Field validator: a time zone Dagster can load (an IANA name such as ``Europe/Paris``).

    Raises:
        SpecFieldError: no such time zone, with the closest name when it looks like a misspelling.
    """
    # Dagster loads a time zone with zoneinfo, and takes "utc" besides the zone names (dagster._time.get_timezone).
    if value == "utc":
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ValueError, OSError: not a zone's key (a path, a folder)
        match = closest(value, available_timezones())
        raise SpecFieldError(
            "",
            f"{value!r} is not a time zone{did_you_mean(match)}",
            f"write timezone: {match}" if match else "use an IANA time zone name, e.g. UTC or Europe/Berlin",
        ) from None
    return value


def _dagster_accepts(owners: list[str] | None = None, tags: dict[str, str] | None = None) -> bool:
    """Whether Dagster accepts these asset owners and tags (the asset definition refuses the others)."""
    try:
        AssetSpec(key=_PROBE, owners=owners, tags=tags)
    except DagsterInvalidDefinitionError:
        return False
    return True


def checked_owners(values: list[str]) -> list[str]:
    """Field validator: asset owners as Dagster takes them, each an email address or ``team:<name>``.

    Raises:
        SpecFieldError: an owner Dagster refuses, naming its index.
    """
    for index, owner in enumerate(values):
        if not _dagster_accepts(owners=[owner]):
            raise SpecFieldError(
                str(index),
                f"{owner!r} is not an owner Dagster accepts (an email address, or a team as team:<name>)",
                "write an email address such as jane@example.com, or a team such as team:data_eng",
            )
    return values


def _tag_example(text: str) -> str:
    """``text`` with what a tag cannot hold turned into ``_``, as an example for the fix (empty when that is still
    no valid tag)."""
    candidate = _NOT_TAG_CHARS.sub("_", text).strip("_")[:63]
    return candidate if candidate and _dagster_accepts(tags={candidate: candidate}) else ""


def checked_tags(values: dict[str, str]) -> dict[str, str]:
    """Field validator: asset tags as Dagster takes them (its strict rules for definition tags).

    Raises:
        SpecFieldError: a key or a value Dagster refuses, or a key in Dagster's own ``dagster/`` namespace, naming
            the key.
    """
    for key, value in values.items():
        if key.startswith(DAGSTER_TAG_PREFIX):
            problem = f"tag key {key!r} is in Dagster's own namespace {DAGSTER_TAG_PREFIX}"
            example = _tag_example(key.removeprefix(DAGSTER_TAG_PREFIX))
            fix = "use a key without that prefix" + (f", e.g. {example}" if example else "")
        elif not _dagster_accepts(tags={key: ""}):
            problem = f"tag key {key!r} is not one Dagster accepts ({TAG_RULE}, optionally after a namespace and '/')"
            example = _tag_example(key)
            fix = f"rename it, e.g. {example}" if example else f"rename it, using only {TAG_RULE}"
        elif not _dagster_accepts(tags={"key": value}):
            problem = f"tag value {value!r} is not one Dagster accepts ({TAG_RULE}, or empty)"
            example = _tag_example(value)
            fix = f"change it, e.g. {key}: {example}" if example else f"change it, using only {TAG_RULE}"
        else:
            continue
        raise SpecFieldError(key, problem, fix)
    return values
