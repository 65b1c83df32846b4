"""Prometheus Alertmanager: POST <url>/api/v2/alerts, the on-call path with its own grouping, silences
and receivers. See docs/routes.md.

A firing alert is sent without `endsAt`: Alertmanager then keeps it firing for its `resolve_timeout`
(5 min by default), and the lifecycle's repeat notifications renew it. A resolved one carries
`endsAt`, which makes Alertmanager resolve it at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stream_processors.routes.base import Request, Route, RouteSpec
from stream_processors.routes.common import (
    JSON_HEADERS,
    check_params,
    check_url,
    dashboard_url,
    json_body,
    resolved_at,
    rfc3339,
)

API_PATH = "/api/v2/alerts"
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def label_name(name: str) -> str:
    """Alertmanager refuses a whole batch over one label name outside [a-zA-Z_][a-zA-Z0-9_]*."""
    name = _INVALID_NAME_CHARS.sub("_", name)
    return f"_{name}" if name[:1].isdigit() else name


class AlertmanagerRoute(Route):
    kind = "alertmanager"

    def __init__(self, spec: RouteSpec) -> None:
        super().__init__(spec)
        check_params(spec.params, required=())
        self.url = check_url(spec.url).rstrip("/") + API_PATH

    def request(self, alert: Mapping[str, Any]) -> Request:
        labels = {label_name(k): v for k, v in alert["labels"].items() if v}  # empty = absent in Prometheus
        for key in ("project", "run"):
            if alert.get(key):
                labels.setdefault(key, alert[key])
        labels["alertname"] = alert["rule"]
        labels["severity"] = alert["severity"]
        entry: dict[str, Any] = {
            "labels": labels,
            "annotations": {label_name(k): v for k, v in (alert.get("annotations") or {}).items()},
            "startsAt": rfc3339(alert["starts_at"]),
        }
        if alert["state"] == "resolved":
            entry["endsAt"] = rfc3339(resolved_at(alert))
        link = dashboard_url(alert)
        if link:
            entry["generatorURL"] = link
        return Request(self.url, json_body([entry]), JSON_HEADERS)
