"""What every spec model shares: the frozen, strict pydantic base, the cross-field error, the name check and the
"did you mean" match for a misspelt key or value.

The pipeline spec (:mod:`etl_assets.pipelines.spec`) and the source configurations kept next to their sources
(:mod:`etl_assets.resources.api`, ``.sql``, ``.files``) build on this module, which imports neither.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from etl_assets.sqlutil import MAX_IDENTIFIER_LENGTH, is_identifier

IDENTIFIER_LIMIT = f"{MAX_IDENTIFIER_LENGTH} characters, Postgres's identifier limit"


class SpecModel(BaseModel):
    """A part of a pipeline spec: unknown fields are refused and a validated value is never changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecFieldError(ValueError):
    """A rule across fields broke: names the field to change and how."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(problem)
        self.field, self.problem, self.fix = field, problem, fix


# difflib's similarity a misspelling reaches: two swapped letters of a short word score 0.67 (cvs: csv), a different
# word sharing a stem less ('colour' against 'columns': 0.62).
_CLOSE_ENOUGH = 0.65


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The choice ``value`` is most likely a misspelling of, compared ignoring case; None when none is close.

    Args:
        value: What the spec says (a key, an enumerated value, a type, a time zone).
        choices: What it may say instead.
    """
    by_folded = {choice.casefold(): choice for choice in choices}
    if value.casefold() in by_folded:  # only the case differs
        return by_folded[value.casefold()]
    matches = difflib.get_close_matches(value.casefold(), list(by_folded), n=1, cutoff=_CLOSE_ENOUGH)
    return by_folded[matches[0]] if matches else None


def did_you_mean(match: str | None) -> str:
    """The suggestion a message carries after the problem: `` (did you mean 'x'?)``, or nothing without a match."""
    return f" (did you mean {match!r}?)" if match is not None else ""


def checked_name(
    value: str, max_length: int = MAX_IDENTIFIER_LENGTH, why: str = f"SQL names are held to {IDENTIFIER_LIMIT}"
) -> str:
    """Check that ``value`` is a plain identifier of at most ``max_length`` characters.

    Args:
        why: Why the limit is ``max_length``, for the message.

    Raises:
        SpecFieldError: the name is too long, or has characters (a space, a trailing line break) SQL cannot take bare.
    """
    if len(value) > max_length:
        raise SpecFieldError(
            "",
            f"{value!r} is {len(value)} characters long; the maximum is {max_length} ({why})",
            f"shorten it to at most {max_length} characters",
        )
    if not is_identifier(value):
        raise SpecFieldError(
            "",
            f"{value!r} is not a valid name",
            "use only letters, digits and underscores (no spaces or line breaks), starting with a letter",
        )
    return value


def identifier(value: str) -> str:
    """Field validator: a plain identifier (a connection's name, say) within SQL's limit."""
    return checked_name(value)
