"""How an API source authenticates: the spec's ``auth`` section, the environment variables holding its secrets, and
OAuth2's client-credentials flow (a token fetched, cached, renewed before it expires and once on a 401).

A spec says only which scheme and where (a header's name, the token endpoint, the scopes); every secret comes from the
environment, named after the connection (:func:`auth_env_vars`), so no spec, log or metadata holds one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import Field, model_validator

from etl_assets.errors import PermanentSourceError
from etl_assets.specmodel import SpecFieldError, SpecModel

AuthType = Literal["none", "bearer", "api_key", "basic", "oauth2_client_credentials"]
# A token is renewed this long before the expiry its endpoint announced (at most a tenth of its lifetime), so a page
# request never carries a token that expires on the way.
TOKEN_RENEW_MARGIN_SECONDS = 60.0
# An endpoint that announces no expires_in: a token is kept this long (the common lifetime), then renewed.
DEFAULT_TOKEN_SECONDS = 3600.0
# Of a token endpoint's refusal, the message quotes this much (redacted: such endpoints echo the client's secret).
_TOKEN_ERROR_CHARS = 200


def auth_env_vars(connection: str, auth_type: str) -> dict[str, str]:
    """The environment variables holding ``auth_type``'s credentials for ``connection``, by resource field.

    Every name ends in a suffix :data:`etl_assets.redact.SECRET_NAME_SUFFIXES` knows where the value is a secret, so
    :func:`etl_assets.redact.redact` masks it wherever it turns up.
    """
    prefix = connection.upper()
    return {
        "none": {},
        "bearer": {"token": f"{prefix}_TOKEN"},
        "api_key": {"api_key": f"{prefix}_API_KEY"},
        "basic": {"username": f"{prefix}_USERNAME", "password": f"{prefix}_PASSWORD"},
        "oauth2_client_credentials": {"client_id": f"{prefix}_CLIENT_ID", "client_secret": f"{prefix}_CLIENT_SECRET"},
    }[auth_type]


def _allow_shorthand(schema: dict[str, Any]) -> None:
    """The schema of ``auth``: the object, or its ``type`` alone as a string (``auth: bearer``)."""
    obj = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string", "enum": list(AuthType.__args__)}, obj]
    schema["title"] = obj.get("title", "Auth")
    schema["description"] = obj.pop("description", "")


class Auth(SpecModel):
    """How requests authenticate: ``auth: bearer`` (or ``none``, ``api_key``, ``basic``) alone, or an object with
    ``type`` and the scheme's settings. Secrets come from the environment only: ``<CONNECTION>_TOKEN`` (bearer),
    ``_API_KEY`` (api_key), ``_USERNAME`` and ``_PASSWORD`` (basic), ``_CLIENT_ID`` and ``_CLIENT_SECRET``
    (oauth2_client_credentials)."""

    model_config = SpecModel.model_config | {"json_schema_extra": _allow_shorthand}

    type: AuthType = "none"
    location: Literal["header", "query"] = Field(
        default="header", description="api_key: sent as a request header, or as a query parameter."
    )
    name: str | None = Field(
        default=None, description="api_key: the header's or query parameter's name (default X-API-Key / api_key)."
    )
    token_url: str | None = Field(
        default=None, description="oauth2_client_credentials: the token endpoint's absolute URL."
    )
    scopes: tuple[str, ...] = Field(default=(), description="oauth2_client_credentials: the scopes asked for.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_fields(self) -> Auth:
        owners = {"location": "api_key", "name": "api_key", "token_url": "oauth2_client_credentials"}
        if self.scopes:
            owners["scopes"] = "oauth2_client_credentials"
        for name, owner in owners.items():
            if name in self.model_fields_set and self.type != owner:
                raise SpecFieldError(
                    name,
                    f"`{name}` is a setting of auth type {owner}, and this auth is {self.type}",
                    f"remove `{name}`, or set `type: {owner}`",
                )
        if self.type == "oauth2_client_credentials":
            if not self.token_url:
                raise SpecFieldError(
                    "token_url",
                    "oauth2_client_credentials needs the token endpoint",
                    "set `token_url` to its absolute URL, e.g. https://login.example.com/oauth/token",
                )
            if not self.token_url.startswith(("https://", "http://")):
                raise SpecFieldError(
                    "token_url", f"{self.token_url!r} is not an absolute http(s) URL", "give the full https:// URL"
                )
        if self.name is not None and not self.name.strip():
            raise SpecFieldError("name", "the api key's name is empty", "set `name`, or remove it for the default")
        return self

    def key_name(self) -> str:
        """The api key's header or query parameter name."""
        return self.name or ("X-API-Key" if self.location == "header" else "api_key")


class TokenEndpointUnavailable(httpx.TransportError):
    """The token endpoint answered 429 or 5xx: a transport failure to the request it held up, so it is retried."""


@dataclass
class _Token:
    value: str
    renew_at: float  # time.monotonic()


# Tokens per (token endpoint, client id, scopes), for the process: runs and extractions in one process share them.
_TOKENS: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
_TOKENS_LOCK = threading.RLock()  # re-entered: a token fetch redacts its errors, which reads the cached tokens


def cached_tokens() -> list[str]:
    """Every access token this process holds, for redaction."""
    with _TOKENS_LOCK:
        return [t.value for t in _TOKENS.values()]


class OAuth2ClientCredentials(httpx.Auth):
    """RFC 6749's client-credentials grant: the client id and secret sent with HTTP Basic (section 2.3.1, which
    every server must accept), the token cached per process and renewed before it expires, and once on a 401 (a
    token revoked early); a second 401 is the API's answer."""

    def __init__(
        self,
        connection: str,
        auth: Auth,
        client_id: str,
        client_secret: str,
        timeout: float,
        redact: Callable[[str], str],
    ) -> None:
        assert auth.token_url is not None  # Auth._check_fields
        self.connection, self.token_url, self.scopes = connection, auth.token_url, auth.scopes
        self.client_id, self.client_secret = client_id, client_secret
        self.timeout, self.redact = timeout, redact
        self.key = (self.token_url, client_id, self.scopes)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(stale=token)}"
            yield request

    def token(self, stale: str | None = None) -> str:
        """The cached token, or a new one when it is due for renewal or is ``stale`` (refused with a 401)."""
        with _TOKENS_LOCK:
            cached = _TOKENS.get(self.key)
            if cached is not None and cached.value != stale and time.monotonic() < cached.renew_at:
                return cached.value
            fresh = self._fetch()
            _TOKENS[self.key] = fresh
            return fresh.value

    def _fetch(self) -> _Token:
        env = auth_env_vars(self.connection, "oauth2_client_credentials")
        form = {"grant_type": "client_credentials"}
        if self.scopes:
            form["scope"] = " ".join(self.scopes)
        response = httpx.post(
            self.token_url,
            data=form,
            auth=(self.client_id, self.client_secret),
            headers={"Accept": "application/json", "User-Agent": "etl-assets"},
            timeout=self.timeout,
        )
        where = f"{self.connection}: the token endpoint {self.token_url}"
        if response.status_code == 429 or response.status_code >= 500:
            raise TokenEndpointUnavailable(self.redact(f"{where} answered {response.status_code}"))
        if response.status_code >= 400:
            raise PermanentSourceError(
                self.redact(
                    f"{where} answered {response.status_code} "
                    f"{response.text[:_TOKEN_ERROR_CHARS].replace(chr(10), ' ')}; check {env['client_id']} and "
                    f"{env['client_secret']}, and the spec's `auth.scopes` (now {list(self.scopes)})"
                )
            )
        try:
            body = response.json()
            value, lifetime = body["access_token"], float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)
            if not isinstance(value, str) or not value:
                raise ValueError("access_token is not a string")
        except (ValueError, KeyError, TypeError):
            raise PermanentSourceError(
                f"{where} answered {response.status_code} without an access_token and a numeric expires_in, as "
                "RFC 6749 section 5.1 has it; check `auth.token_url` in the spec"
            ) from None
        margin = min(TOKEN_RENEW_MARGIN_SECONDS, lifetime / 10)
        return _Token(value, time.monotonic() + lifetime - margin)
