"""Secrets kept out of everything the platform stores or sends: metadata, error messages, ``ops.errors``, alerts.

Two kinds of secret are removed from text: the userinfo of any URL (``scheme://user:pass@host`` becomes
``scheme://***@host``; a libpq ``password=...`` keyword likewise), and the values of the environment variables that
hold secrets (names ending in one of ``SECRET_NAME_SUFFIXES``, and the passwords inside URL-valued variables), in
plain and percent-encoded spelling. Values are read when ``redact`` is called, so a secret bound with ``EnvVar``
after import is still known.

Besides :func:`redact`: :func:`redact_metadata` for Dagster metadata, :func:`scrub_exception` for an exception and
its cause chain (Dagster stores the chain in the event log), :func:`is_clean` to test a text, and
:func:`userinfo_needs_encoding` to refuse a URL whose password a driver would misparse and quote in pieces (a piece
of a secret is beyond any redaction).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"
# Environment variables whose whole value is a secret.
SECRET_NAME_SUFFIXES = ("_TOKEN", "_PASSWORD", "_SECRET", "_API_KEY", "_SECRET_ACCESS_KEY", "_CLIENT_SECRET", "_PASSWD")
# Shorter values are not masked: replacing every "ab" in a message would destroy it and hide nothing.
MIN_SECRET_CHARS = 4

# userinfo: a user name (no '/'), then optionally ':' and a password up to the last '@' of the word, so a password
# holding '/', '#', '?' or '@' that a URL parser would cut short is masked whole; without a ':' the user name alone
_USERINFO_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s@'\"<>]*:[^\s'\"<>]*@|[^/?#\s@'\"<>:]*@)"
)
_KEYWORD_RE = re.compile(
    r"(?i)\b(?P<key>password|passwd|pwd|token|api_key|apikey|secret)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&,;]+)"
)
_BEARER_RE = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=\-]{8,})")


# userinfo up to the last '@' before the path: a password may hold ' ', '#' or '/' that a URL parser would take for
# the end of the authority (libpq quotes such a malformed URL back in its error)
_RAW_PASSWORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^:@/\s]*:(?P<password>.+)@[^@]*$")


def url_secrets(value: str) -> set[str]:
    """The password of URL ``value`` in the spellings a message may carry (empty when it has none)."""
    return _url_passwords(value)


def _url_passwords(value: str) -> set[str]:
    found = set()
    try:
        parts = urlsplit(value)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
    except ValueError:  # urlsplit refuses it (a bad port, brackets): the raw pattern below still finds the password
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


# Characters a URL's userinfo cannot carry unencoded: each makes a parser (libpq, SQLAlchemy, httpx) end the
# user name or password early and take the rest for the host, port or path, and then quote that back in its error.
_USERINFO_BREAKERS = set(" \t\r\n#/?@[]\\")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# (no "password:" in it: redact would take what follows for a password)
ENCODING_HINT = (
    "percent-encode the characters a URL reserves in the user name and password, such as @ as %40, : as %3A, "
    "/ as %2F, # as %23, ? as %3F, space as %20 and % as %25 "
    "(python3 -c \"import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=''))\" 'the-password')"
)


def userinfo_needs_encoding(url: str) -> bool:
    """True when the user name or password of ``url`` holds a character that must be percent-encoded.

    Such a URL is read differently by different parsers: libpq takes ``pa/ss`` of ``postgresql://u:pa/ss@h/db``
    for a port and quotes ``"pa"`` back in its error. Refusing it before connecting keeps that fragment of the
    password out of every message (``redact`` masks whole secrets only, never a fragment).
    """
    if "://" not in url:
        return False
    rest = url.split("://", 1)[1]
    if rest.startswith("/") or "@" not in rest:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return True
    netloc = parts.netloc
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        return any(c in _USERINFO_BREAKERS for c in userinfo) or bool(_PERCENT_RE.search(userinfo))
    # no '@' in the authority, one after it: a '/', '?' or '#' in the password ended the authority early
    # ("u:pa" then "/ss@host"); a host with a numeric port ("host:5432/db?x=a@b") is a plain URL
    if netloc.endswith("]") or ":" not in netloc:
        return False
    return not netloc.rpartition(":")[2].isdigit()


def redact_metadata(metadata: Mapping[str, object], extra: Iterable[str | None] = ()) -> dict[str, object]:
    """``metadata`` with every text value redacted: plain strings and Dagster text, url, path, markdown and JSON
    values.

    Other values (numbers, tables, asset keys) are kept as they are.
    """
    from dagster import MetadataValue
    from dagster._core.definitions.metadata import (
        JsonMetadataValue,
        MarkdownMetadataValue,
        PathMetadataValue,
        TextMetadataValue,
        UrlMetadataValue,
    )

    extra = list(extra)

    def clean_json(value):
        if isinstance(value, str):
            return redact(value, extra)
        if isinstance(value, Mapping):
            return {redact(str(k), extra) if isinstance(k, str) else k: clean_json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean_json(v) for v in value]
        return value

    out: dict[str, object] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            out[key] = redact(value, extra)
        elif isinstance(value, TextMetadataValue):
            out[key] = MetadataValue.text(redact(value.value or "", extra))
        elif isinstance(value, UrlMetadataValue):
            out[key] = MetadataValue.url(redact(value.value or "", extra))
        elif isinstance(value, PathMetadataValue):
            out[key] = MetadataValue.path(redact(str(value.value), extra))
        elif isinstance(value, MarkdownMetadataValue):
            out[key] = MetadataValue.md(redact(value.value or "", extra))
        elif isinstance(value, JsonMetadataValue):
            out[key] = MetadataValue.json(clean_json(value.value))
        elif isinstance(value, (Mapping, list, tuple)):
            out[key] = clean_json(value)
        else:
            out[key] = value
    return out


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ is treated as unsafe
        return "\0unprintable"


def _scrub_one(exc: BaseException, extra: list) -> bool:
    """Redact ``exc``'s message (its ``args``) and notes in place; True when its text is clean afterwards."""
    text = _text_of(exc)
    notes = getattr(exc, "__notes__", None)
    if notes:
        try:
            exc.__notes__ = [redact(n, extra) if isinstance(n, str) else n for n in notes]
        except Exception:  # noqa: BLE001
            return False
    if is_clean(text, extra):
        return True
    try:
        exc.args = tuple(redact(a, extra) if isinstance(a, str) else a for a in exc.args)
    except Exception:  # noqa: BLE001 - read-only args: the caller replaces the exception
        return False
    return is_clean(_text_of(exc), extra)


def is_clean(text: str, extra: Iterable[str | None] = ()) -> bool:
    """True when ``text`` shows no secret ``redact`` would mask (masks already in it, quoted or not, are fine)."""
    if "\0unprintable" in text:
        return False
    if any(secret in text for secret in known_secrets(extra)):
        return False
    if any(m.group("userinfo") != f"{MASK}@" for m in _USERINFO_RE.finditer(text)):
        return False
    if any(not m.group("value").strip("'\"").startswith(MASK) for m in _KEYWORD_RE.finditer(text)):
        return False
    return _BEARER_RE.search(text) is None


def scrub_exception(exc: BaseException, extra: Iterable[str | None] = ()) -> BaseException:
    """An exception safe to record: ``exc`` itself with secrets masked in its message and those of its causes.

    Dagster stores a failed step's exception with its whole cause and context chain in the event log. Each
    exception of the chain has its message redacted in place; one whose text cannot be cleaned that way (a
    driver error formatting its message from other attributes) is cut from the chain, with everything behind it.
    When ``exc`` itself cannot be cleaned, a :class:`RedactedError` carrying its redacted text and traceback is
    returned instead (raise that).
    """
    extra = list(extra)
    _clean_chain(exc, extra, {id(exc)}, 0)
    if _scrub_one(exc, extra):
        return exc
    replacement = RedactedError(f"{type(exc).__name__}: {redact(_text_of(exc), extra)}")
    replacement.__traceback__ = exc.__traceback__
    replacement.__cause__ = exc.__cause__
    replacement.__suppress_context__ = True
    return replacement


def _clean_chain(node: BaseException, extra: list, seen: set[int], depth: int) -> None:
    for attr in ("__cause__", "__context__"):
        child = getattr(node, attr)
        if child is None or (attr == "__context__" and node.__suppress_context__):
            continue
        if id(child) not in seen and depth < 50 and _scrub_one(child, extra):
            seen.add(id(child))
            _clean_chain(child, extra, seen, depth + 1)
            continue
        setattr(node, attr, None)  # cannot be cleaned (or a cycle): dropped with what is behind it
        if attr == "__context__":
            node.__suppress_context__ = True


class RedactedError(RuntimeError):
    """Stands in for an exception whose message held a secret and could not be cleaned in place."""
