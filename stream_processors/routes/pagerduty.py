"""PagerDuty Events API v2: trigger and resolve, de-duplicated by the alert's fingerprint.

The default URL is PagerDuty's public endpoint; tests always set a loopback one. See docs/routes.md.
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
    rfc3339,
    summary,
)

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = {"critical": "critical", "warning": "warning", "info": "info"}
MAX_SUMMARY = 1024  # PagerDuty truncates longer summaries itself; we cut first so the cut is ours


class PagerDutyRoute(Route):
    kind = "pagerduty"

    def __init__(self, spec: RouteSpec) -> None:
        super().__init__(spec)
        check_params(spec.params, required=("routing_key",))
        self.url = check_url(spec.url or EVENTS_URL)
        self.routing_key = spec.params["routing_key"]

    def request(self, alert: Mapping[str, Any]) -> Request:
        event: dict[str, Any] = {"routing_key": self.routing_key, "dedup_key": alert["fingerprint"]}
        if alert["state"] == "resolved":  # the documented resolve event: no payload
            event["event_action"] = "resolve"
            return Request(self.url, json_body(event), JSON_HEADERS)
        labels = alert["labels"]
        payload: dict[str, Any] = {
            "summary": summary(alert)[:MAX_SUMMARY],
            "source": labels.get("host") or alert.get("run") or labels.get("run") or "trainmon",
            "severity": SEVERITIES[alert["severity"]],
            "timestamp": rfc3339(alert["starts_at"]),
            "class": alert["rule"],
            "custom_details": {
                "labels": dict(labels),
                "annotations": dict(alert.get("annotations") or {}),
                "values": dict(alert.get("values") or {}),
            },
        }
        if alert.get("project"):
            payload["group"] = alert["project"]
        event.update(event_action="trigger", payload=payload, client="trainmon")
        link = dashboard_url(alert)
        if link:
            event["client_url"] = link
            event["links"] = [{"href": link, "text": "Run in the trainmon dashboard"}]
        return Request(self.url, json_body(event), JSON_HEADERS)
