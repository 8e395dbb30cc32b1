"""The small part of JSONPath an API spec needs: where the records, the cursor, the total or the next link are.

A path walks from the answer's root through object keys and list indexes: ``data``, ``data.items``,
``$.results[*]``, ``$['page-info'].next``, ``pages[0].records``. ``$`` (the root) is optional; a key is a name of
letters, digits, ``_`` and ``-``, or any text in quotes inside brackets; ``[N]`` is a list index; a trailing ``[*]``
means "the list itself" (``$.results[*]`` and ``results`` select the same records), so the dlt spelling works.

Why not a JSONPath library (jsonpath-ng and the like): filters, recursive descent, slices and unions select many
values from many places, and a records selector must name exactly one list, and a cursor exactly one value, for the
client to know what a page is. This subset is all of what that allows, is checked when the spec loads (a library
would report a bad path only on the first page), and costs a dict lookup per step on every page.
"""

from __future__ import annotations

import re
from functools import lru_cache

from etl_assets.specmodel import SpecFieldError

# one step: .name, ['quoted'] or ["quoted"], [N], or a final [*]
_STEP_RE = re.compile(
    r"""\.?(?P<name>[A-Za-z0-9_\-]+)|\[(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<index>[0-9]+)|(?P<star>\*))\]"""
)

Path = tuple[str | int, ...]
MISSING = object()
"""What :func:`select` answers for a path the document does not have (``null`` is a value, ``None``)."""


@lru_cache(maxsize=256)
def compile_path(text: str) -> Path:
    """The steps of ``text``: keys (``str``) and list indexes (``int``).

    Raises:
        ValueError: ``text`` is not in the subset described in this module's docstring; the message says why.
    """
    rest = text.strip()
    if rest.startswith("$"):
        rest = rest[1:]
    steps: list[str | int] = []
    pos = 0
    while pos < len(rest):
        match = _STEP_RE.match(rest, pos)
        if match is None or (match.group("name") and pos > 0 and rest[pos] != "."):
            raise ValueError(
                f"JSONPath {text!r} cannot be read at {rest[pos:]!r} (filters, '..' and slices are not supported: a "
                "path names one value)"
            )
        if match.group("star") is not None:
            if match.end() != len(rest):
                raise ValueError(
                    f"JSONPath {text!r}: [*] may only end the path (it selects the list itself); a path must name "
                    "one value, not one per element"
                )
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            steps.append(next(g for g in (match.group("name"), match.group("sq"), match.group("dq")) if g is not None))
        pos = match.end()
    return tuple(steps)


def checked_path(text: str) -> str:
    """Field validator: ``text`` if it is a path :func:`compile_path` reads.

    Raises:
        SpecFieldError: it is not, with how to write it.
    """
    try:
        compile_path(text)
    except ValueError as exc:
        raise SpecFieldError(
            "",
            str(exc),
            "write keys joined by dots, as data.items or $.results[*], ['a key'] for a key with other characters "
            "and [N] for a list index",
        ) from None
    return text


def select(document: object, path: Path) -> object:
    """The value at ``path`` in ``document``, or :data:`MISSING` where a key or index is not there."""
    value = document
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return MISSING
        elif not isinstance(value, dict) or step not in value:
            return MISSING
        value = value[step]  # pyright: ignore[reportArgumentType, reportCallIssue, reportIndexIssue]
    return value
