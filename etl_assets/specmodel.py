"""What every spec model shares: the frozen, strict pydantic base, the cross-field error and the name check.

The pipeline spec (:mod:`etl_assets.pipelines.spec`) and the source configurations kept next to their sources
(:mod:`etl_assets.resources.api`, ``.sql``, ``.files``) build on this module, which imports neither.
"""

from __future__ import annotations

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
