"""Checks of the spec values that are handed to Dagster: cron expressions and time zones.

Each refuses, when the spec loads, what Dagster would refuse when the definitions are built (an error there takes
the whole code location down with a traceback), and says what a valid value looks like. Where Dagster has a public
definition that validates the value, it is asked; only the messages are the platform's own.
"""

from __future__ import annotations

import warnings
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dagster import DagsterInvalidDefinitionError, ScheduleDefinition

from etl_assets.specmodel import SpecFieldError, closest, did_you_mean

CRON_FIX = (
    "give five fields, minute (0-59) hour (0-23) day-of-month (1-31) month (1-12) day-of-week (0-6, or MON-SUN), "
    'e.g. "0 6 * * *" (06:00 every day) or "30 0 * * 1-5" (00:30 on weekdays)'
)
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
