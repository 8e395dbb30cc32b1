"""Alerts and where they go: a JSON-lines file, a generic webhook and Slack (through dagster-slack).

Every alert goes to every configured sink. The file sink is always on (``$ETL_DATA_DIR/alerts/alerts.jsonl``
unless ``ETL_ALERT_FILE`` names another file); the webhook sink is on when ``ETL_ALERT_WEBHOOK_URL`` is set;
Slack when both ``SLACK_BOT_TOKEN`` and ``ETL_ALERT_SLACK_CHANNEL`` are. All of them are bound with
``EnvVar``, so neither the webhook URL (which often embeds a secret) nor the token appear in config, logs or
error messages.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
from dagster import ConfigurableResource, EnvVar, get_dagster_logger

from etl_assets.redact import redact
from etl_assets.settings import current_settings

DEFAULT_UI_BASE_URL = "http://127.0.0.1:3000"
RUN_FAILURE = "run_failure"
CHECK_FAILURE = "check_failure"


class AlertDeliveryError(RuntimeError):
    """A sink could not deliver an alert. The message never holds the webhook URL or a token."""


@dataclass(frozen=True)
class Alert:
    """One alert, as written to the JSON-lines file and posted to the webhook.

    Attributes:
        kind: ``run_failure`` or ``check_failure``.
        title: One line for a person.
        text: What happened and what to look at.
        url: Link into the Dagster UI (the run, or the asset's checks).
        run_id: The run concerned, if any.
        job: Its job name.
        pipeline: The pipeline (spec) concerned.
        asset: The asset concerned (``shop/warehouse_orders``).
        partition: The partition, if any.
        error_class: For run failures: transient, permanent, data_quality or infrastructure.
        check: For check failures: the check name.
        severity: ``ERROR`` or ``WARN``.
        occurred_at: When it happened (ISO 8601, UTC).
        dedupe_key: Identifies the event this alert is about (the same event never alerts twice).
    """

    kind: str
    title: str
    text: str
    url: str
    run_id: str = ""
    job: str = ""
    pipeline: str = ""
    asset: str = ""
    partition: str = ""
    error_class: str = ""
    check: str = ""
    severity: str = "ERROR"
    occurred_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    dedupe_key: str = ""

    def to_json(self) -> dict:
        """The alert as a JSON-serializable dict."""
        return asdict(self)


def redacted_alert(alert: Alert) -> Alert:
    """``alert`` with URL userinfo, tokens and known secret values masked in every text field (title, text, ...)."""
    return replace(
        alert,
        **{f.name: redact(getattr(alert, f.name)) for f in fields(alert) if isinstance(getattr(alert, f.name), str)},
    )


def run_url(base_url: str, run_id: str) -> str:
    """Link to a run in the Dagster UI: ``<base>/runs/<run_id>``."""
    return f"{base_url.rstrip('/')}/runs/{run_id}"


def asset_checks_url(base_url: str, asset_path: list[str]) -> str:
    """Link to an asset's checks in the Dagster UI."""
    return f"{base_url.rstrip('/')}/assets/{'/'.join(quote(p, safe='') for p in asset_path)}?view=checks"


def _redacted_host(url: str) -> str:
    """Only the scheme and host of a URL: safe to show in logs (the path or query may hold a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class JsonLinesSink:
    """Appends each alert as one JSON line (the file is the alert history the other sinks mirror).

    Args:
        path: The file; its directory is created.
    """

    name = "jsonl"

    def __init__(self, path: Path):
        self.path = path

    def send(self, alert: Alert) -> None:
        """Append ``alert`` and fsync, so an alert that was reported sent survives a crash."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(alert.to_json(), sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write with O_APPEND: lines from concurrent writers do not interleave
            os.fsync(fd)
        finally:
            os.close(fd)


class WebhookSink:
    """POSTs each alert as JSON; retries with exponential backoff and full jitter on 5xx, 429 and timeouts.

    Args:
        url: The webhook URL (never logged; only its host is).
        timeout_seconds: Per-attempt timeout.
        max_attempts: Attempts before giving up.
        backoff_seconds: First backoff ceiling; doubles each attempt.
        sleep: Sleep function (tests pass a fast one).
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        timeout_seconds: float = 5.0,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``.

        Raises:
            AlertDeliveryError: a 4xx answer (not retried), or every attempt failed.
        """
        host = _redacted_host(self.url)
        last = ""
        with httpx.Client(timeout=self.timeout_seconds, headers={"User-Agent": "etl-assets-alerts"}) as client:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    response = client.post(self.url, json=alert.to_json())
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    last = type(exc).__name__
                else:
                    if response.status_code < 300:
                        return
                    if response.status_code < 500 and response.status_code not in (408, 429):
                        raise AlertDeliveryError(
                            f"webhook {host} refused the alert with HTTP {response.status_code}; check ETL_ALERT_WEBHOOK_URL"
                        )
                    last = f"HTTP {response.status_code}"
                if attempt < self.max_attempts:
                    self.sleep(random.uniform(0, self.backoff_seconds * 2 ** (attempt - 1)))
        raise AlertDeliveryError(f"webhook {host}: {self.max_attempts} attempts failed, last with {last}")


class SlackSink:
    """Posts each alert to a Slack channel with ``dagster_slack.SlackResource``.

    Args:
        token: The bot token (from ``EnvVar("SLACK_BOT_TOKEN")``; never logged).
        channel: Channel name or id.
        api_url: Slack API base URL; only set for a Slack-compatible gateway or a test double.
    """

    name = "slack"

    def __init__(self, token: str, channel: str, api_url: str | None = None):
        self.token = token
        self.channel = channel
        self.api_url = api_url

    def send(self, alert: Alert) -> None:
        """Post ``alert``.

        Raises:
            AlertDeliveryError: Slack refused the message or could not be reached.
        """
        from dagster_slack import SlackResource
        from slack_sdk.errors import SlackApiError

        client = SlackResource(token=self.token).get_client()
        if self.api_url:
            client.base_url = self.api_url.rstrip("/") + "/"
        text = f":rotating_light: *{alert.title}*\n{alert.text}\n<{alert.url}|Open in Dagster>"
        try:
            client.chat_postMessage(channel=self.channel, text=text, unfurl_links=False)
        except SlackApiError as exc:
            raise AlertDeliveryError(f"slack refused the alert: {exc.response.get('error', 'unknown error')}") from None
        except Exception as exc:  # network errors from urllib inside slack_sdk
            raise AlertDeliveryError(f"slack could not be reached: {type(exc).__name__}") from None


@dataclass(frozen=True)
class DeliveryReport:
    """Which sinks took an alert and which failed (with a message safe to log)."""

    delivered: list[str]
    failed: dict[str, str]


class AlertSinks(ConfigurableResource):
    """The configured alert sinks (resource key ``alerting``).

    Attributes:
        ui_base_url: Base URL of the Dagster UI for links (``ETL_UI_BASE_URL``).
        jsonl_path: The alerts file; empty means ``$ETL_DATA_DIR/alerts/alerts.jsonl`` (``ETL_ALERT_FILE``).
        webhook_url: Generic webhook receiving each alert as a JSON POST (``ETL_ALERT_WEBHOOK_URL``).
        webhook_timeout_seconds: Per-attempt timeout of the webhook.
        webhook_max_attempts: Attempts on 5xx, 408, 429 and timeouts before giving up.
        webhook_backoff_seconds: First backoff ceiling (doubles per attempt, full jitter).
        slack_token: Slack bot token (``SLACK_BOT_TOKEN``).
        slack_channel: Slack channel (``ETL_ALERT_SLACK_CHANNEL``).
        slack_api_url: Slack API base URL override (``ETL_ALERT_SLACK_API_URL``; normally unset).
    """

    ui_base_url: str = DEFAULT_UI_BASE_URL
    jsonl_path: str = ""
    webhook_url: str | None = None
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 4
    webhook_backoff_seconds: float = 0.5
    slack_token: str | None = None
    slack_channel: str | None = None
    slack_api_url: str | None = None

    def alerts_file(self) -> Path:
        """Where the JSON-lines sink writes."""
        if self.jsonl_path:
            return Path(self.jsonl_path).expanduser().resolve()
        return current_settings().data_dir / "alerts" / "alerts.jsonl"

    def sinks(self) -> list:
        """The sinks in delivery order: the file first (it never depends on the network)."""
        sinks: list = [JsonLinesSink(self.alerts_file())]
        if self.webhook_url:
            sinks.append(
                WebhookSink(
                    self.webhook_url,
                    self.webhook_timeout_seconds,
                    self.webhook_max_attempts,
                    self.webhook_backoff_seconds,
                )
            )
        if self.slack_token and self.slack_channel:
            sinks.append(SlackSink(self.slack_token, self.slack_channel, self.slack_api_url))
        return sinks

    def send(self, alert: Alert) -> DeliveryReport:
        """Deliver ``alert`` to every sink, with secrets masked in its text fields (:func:`redacted_alert`); a
        failing sink does not keep the others from getting it."""
        log = get_dagster_logger()
        alert = redacted_alert(alert)
        delivered, failed = [], {}
        for sink in self.sinks():
            try:
                sink.send(alert)
                delivered.append(sink.name)
            except AlertDeliveryError as exc:
                failed[sink.name] = str(exc)
                log.error(f"alert {alert.dedupe_key or alert.title}: {exc}")
            except OSError as exc:
                failed[sink.name] = f"{type(exc).__name__}: {exc.strerror or exc}"
                log.error(f"alert {alert.dedupe_key or alert.title}: {sink.name} sink failed: {failed[sink.name]}")
            except Exception as exc:  # noqa: BLE001 - one broken sink must not stop the others
                # Only the type: the message of an unexpected error could quote the URL or a header.
                failed[sink.name] = f"unexpected {type(exc).__name__}"
                log.error(f"alert {alert.dedupe_key or alert.title}: {sink.name} sink failed: {failed[sink.name]}")
        return DeliveryReport(delivered, failed)


def build_alert_sinks(env: Callable[[str], str | None]) -> AlertSinks:
    """The ``alerting`` resource, binding each setting that is present in the environment with ``EnvVar``.

    Args:
        env: Looks up whether a variable is set (``os.environ.get``); only names are bound, values are read
            when the resource is initialized.
    """

    def bound(name: str):
        return EnvVar(name) if env(name) else None

    slack_ready = bool(env("SLACK_BOT_TOKEN")) and bool(env("ETL_ALERT_SLACK_CHANNEL"))
    settings = {
        "ui_base_url": bound("ETL_UI_BASE_URL") or DEFAULT_UI_BASE_URL,
        "jsonl_path": bound("ETL_ALERT_FILE") or "",
        "webhook_url": bound("ETL_ALERT_WEBHOOK_URL"),
        "slack_token": EnvVar("SLACK_BOT_TOKEN") if slack_ready else None,
        "slack_channel": EnvVar("ETL_ALERT_SLACK_CHANNEL") if slack_ready else None,
        "slack_api_url": bound("ETL_ALERT_SLACK_API_URL"),
    }
    return AlertSinks(**settings)
