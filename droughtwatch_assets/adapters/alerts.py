"""Alerts to people: a JSON webhook, a Slack incoming webhook and e-mail, any or none of them.

An :class:`Alert` is what went wrong, said once: a kind (``run_failure``, ``check_failure``,
``drift``), a one-line title, a body and a link where the UI shows it. :class:`Destinations`
sends it to every configured destination and reports, per destination, whether it arrived; one
destination that is down never keeps the others from being tried, and never raises.

- Webhook: ``POST`` of the alert as JSON (``kind``, ``title``, ``text``, ``url``, ``details``).
- Slack: an incoming webhook (``https://hooks.slack.com/services/...``) takes ``{"text": ...}``
  in Slack's own markup; a plain HTTP ``POST`` is all it needs, so no Slack SDK is installed.
- E-mail: through ``smtp://[user:password@]host[:port]`` (STARTTLS when the server offers it) or
  ``smtps://`` (TLS from the start), to comma-separated addresses.

Nothing here imports Dagster; the sensors in ``defs/alerts.py`` wrap it.
"""

from __future__ import annotations

import json
import smtplib
import socket
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any

TIMEOUT_S = 10


@dataclass(frozen=True)
class Alert:
    kind: str  # run_failure, check_failure, drift
    title: str
    text: str
    url: str | None = None  # the page in the Dagster UI
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Destinations:
    webhook_url: str | None = None
    slack_webhook_url: str | None = None
    email_to: str | None = None
    email_from: str | None = None
    smtp_url: str | None = None

    @property
    def configured(self) -> list[str]:
        names = []
        if self.webhook_url:
            names.append("webhook")
        if self.slack_webhook_url:
            names.append("slack")
        if self.email_to and self.smtp_url:
            names.append("email")
        return names

    def send(self, alert: Alert) -> dict[str, str]:
        """Send to every configured destination: ``{destination: "sent" or the error}``."""
        outcome: dict[str, str] = {}
        for name in self.configured:
            try:
                getattr(self, f"_send_{name}")(alert)
                outcome[name] = "sent"
            except (OSError, smtplib.SMTPException, ValueError) as error:
                outcome[name] = f"{type(error).__name__}: {error}"
        return outcome

    def _send_webhook(self, alert: Alert) -> None:
        assert self.webhook_url
        _post_json(self.webhook_url, {"source": "droughtwatch", **asdict(alert)})

    def _send_slack(self, alert: Alert) -> None:
        assert self.slack_webhook_url
        link = f"\n<{alert.url}|Open in Dagster>" if alert.url else ""
        _post_json(self.slack_webhook_url, {"text": f"*{alert.title}*\n{alert.text}{link}"})

    def _send_email(self, alert: Alert) -> None:
        assert self.smtp_url and self.email_to
        parts = urllib.parse.urlsplit(self.smtp_url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("the SMTP URL must look like smtp://[user:password@]host[:port]")
        message = EmailMessage()
        message["Subject"] = f"[droughtwatch] {alert.title}"
        message["From"] = self.email_from or f"droughtwatch@{socket.getfqdn()}"
        message["To"] = self.email_to
        message.set_content(alert.text + (f"\n\n{alert.url}" if alert.url else ""))
        if parts.scheme == "smtps":
            server: smtplib.SMTP = smtplib.SMTP_SSL(
                parts.hostname, parts.port or 465, timeout=TIMEOUT_S
            )
        else:
            server = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=TIMEOUT_S)
        with server:
            if parts.scheme == "smtp":
                server.ehlo()
                if server.has_extn("starttls"):
                    server.starttls()
                    server.ehlo()
            if parts.username:
                server.login(
                    urllib.parse.unquote(parts.username),
                    urllib.parse.unquote(parts.password or ""),
                )
            server.send_message(message)


def _post_json(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")
