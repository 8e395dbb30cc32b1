"""Secrets kept out of everything the platform stores or sends: metadata, error messages, ``ops.errors``, alerts.

Two kinds of secret are removed from text: the userinfo of any URL (``scheme://user:pass@host`` becomes
``scheme://***@host``; a libpq ``password=...`` keyword likewise), and the values of the environment variables that
hold secrets (names ending in one of ``SECRET_NAME_SUFFIXES``, and the passwords inside URL-valued variables), in
plain and percent-encoded spelling. Values are read when ``redact`` is called, so a secret bound with ``EnvVar``
after import is still known.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"
# Environment variables whose whole value is a secret.
SECRET_NAME_SUFFIXES = ("_TOKEN", "_PASSWORD", "_SECRET", "_API_KEY", "_SECRET_ACCESS_KEY", "_CLIENT_SECRET", "_PASSWD")
# Shorter values are not masked: replacing every "ab" in a message would destroy it and hide nothing.
MIN_SECRET_CHARS = 4

_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s@]*@)")
_KEYWORD_RE = re.compile(r"(?i)\b(?P<key>password|passwd|pwd|token|api_key|apikey|secret)(?P<sep>\s*[=:]\s*)"
                         r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&,;]+)")
_BEARER_RE = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=\-]{8,})")


# userinfo up to the last '@' before the path: a password may hold ' ', '#' or '/' that a URL parser would take for
# the end of the authority (libpq quotes such a malformed URL back in its error)
_RAW_PASSWORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^:@/\s]*:(?P<password>.+)@[^@]*$")


def _url_passwords(value: str) -> set[str]:
    found = set()
    try:
        parts = urlsplit(value)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
    except ValueError:
        pass
    raw = _RAW_PASSWORD_RE.match(value.strip())
    if raw:
        found.update({raw.group("password"), unquote(raw.group("password"))})
    return found


def known_secrets(extra: Iterable[str | None] = ()) -> list[str]:
    """Secret values from the environment (and ``extra``), in every spelling a message may carry, longest first."""
    values: set[str] = set()
    for name, value in os.environ.items():
        if not value:
            continue
        if name.upper().endswith(SECRET_NAME_SUFFIXES):
            values.add(value)
        if "://" in value:
            values.update(_url_passwords(value))
    values.update(v for v in extra if v)
    spelled = set()
    for value in values:
        if len(value) >= MIN_SECRET_CHARS:
            spelled.update({value, quote(value, safe=""), quote_plus(value)})
    return sorted(spelled, key=len, reverse=True)


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with URL userinfo, password/token keywords, bearer credentials and known secret values masked.

    Args:
        text: Any message, metadata value or error text.
        extra: Further secret values to mask (a resource's token that did not come from the environment).
    """
    if not text:
        return text
    out = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    out = _KEYWORD_RE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", out)
    out = _BEARER_RE.sub(lambda m: f"{m.group('scheme')} {MASK}", out)
    for secret in known_secrets(extra):
        out = out.replace(secret, MASK)
    return out


def redact_url(url: str) -> str:
    """A URL safe to show: its userinfo masked (``http://***@host/path``), query values with secret names masked."""
    return redact(url)
