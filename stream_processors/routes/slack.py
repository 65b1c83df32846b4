"""Slack incoming webhooks: POST {text, attachments: [{color, blocks}]} to the webhook URL.

`text` is what notifications and screen readers show; the attachment's colour bar carries the
severity (green once resolved) and its Block Kit sections the details. See docs/routes.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainmon.stream_processors.routes.base import Request, Route, RouteSpec
from trainmon.stream_processors.routes.common import (
    JSON_HEADERS,
    check_params,
    check_url,
    dashboard_url,
    json_body,
    resolved_at,
    rfc3339,
    summary,
)

COLORS = {"critical": "#e01e5a", "warning": "#ecb22e", "info": "#36c5f0", "resolved": "#2eb67d"}
MAX_FIELDS = 10  # Slack's limit per section block


def escape(text: str) -> str:
    """Slack's mrkdwn control characters; everything else passes as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def duration(seconds: float) -> str:
    """'2h 5m', '3m 12s', '40s': how long an alert fired, as people say it."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


class SlackRoute(Route):
    kind = "slack"

    def __init__(self, spec: RouteSpec) -> None:
        super().__init__(spec)
        check_params(spec.params, required=(), optional=("channel",))
        self.url = check_url(spec.url)

    def request(self, alert: Mapping[str, Any]) -> Request:
        rule, severity = alert["rule"], alert["severity"]
        resolved = alert["state"] == "resolved"
        headline = f"RESOLVED: {rule}" if resolved else f"FIRING ({severity}): {rule}"
        lines = [f"*{escape(headline)}*", escape(summary(alert))]
        description = (alert.get("annotations") or {}).get("description")
        if description:
            lines.append(escape(description))
        if resolved:
            lines.append(f"Resolved after {duration(resolved_at(alert) - alert['starts_at'])}.")
        link = dashboard_url(alert)
        if link:
            lines.append(f"<{link}|Open the run in the dashboard>")
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
        fields = [
            {"type": "mrkdwn", "text": f"*{escape(k)}*\n{escape(v)}"} for k, v in sorted(alert["labels"].items())
        ][:MAX_FIELDS]
        if fields:
            blocks.append({"type": "section", "fields": fields})
        started = int(alert["starts_at"])
        since = f"<!date^{started}^Since {{date_short_pretty}} {{time_secs}}|Since {rfc3339(alert['starts_at'])}>"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"{since} · trainmon"}]})
        message: dict[str, Any] = {
            "text": escape(f"[{'RESOLVED' if resolved else 'FIRING'}] {rule}: {summary(alert)}"),
            "attachments": [{"color": COLORS["resolved" if resolved else severity], "blocks": blocks}],
        }
        if "channel" in self.spec.params:
            message["channel"] = self.spec.params["channel"]
        return Request(self.url, json_body(message), JSON_HEADERS)
