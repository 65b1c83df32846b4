"""Prometheus Alertmanager: POST <url>/api/v2/alerts, the on-call path with its own grouping, silences
and receivers. See docs/routes.md.

A firing alert carries an `endsAt` in the future (param `firing_ttl_s`, default 2 h: twice the default
repeat interval) counted from when it is sent, as Prometheus sends its own (counting from the event
time would put it in the past while a backlog is caught up): each repeat notification pushes it further, so the
alert stays firing between repeats (without it, Alertmanager would resolve it after its
`resolve_timeout`, 5 min by default) and still resolves by itself if trainmon stops. A resolved
alert carries the time it resolved, which makes Alertmanager resolve it at once.

An incident's notification (incidents.py) is sent as its members, each with its own labels plus
`incident` (the incident id) and the incident's `cause`/`incident_summary` annotations: Alertmanager
keeps every member's own lifecycle and silences, and a route grouping by `incident` (as trainmon's
own Alertmanager config does) makes them one notification.
"""

from __future__ import annotations

import re
import time
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
)

API_PATH = "/api/v2/alerts"
DEFAULT_FIRING_TTL_S = 7200.0
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def label_name(name: str) -> str:
    """Alertmanager refuses a whole batch over one label name outside [a-zA-Z_][a-zA-Z0-9_]*."""
    name = _INVALID_NAME_CHARS.sub("_", name)
    return f"_{name}" if name[:1].isdigit() else name


class AlertmanagerRoute(Route):
    kind = "alertmanager"

    def __init__(self, spec: RouteSpec) -> None:
        super().__init__(spec)
        params = dict(spec.params)
        ttl = params.pop("firing_ttl_s", DEFAULT_FIRING_TTL_S)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ValueError(f"firing_ttl_s: expected a positive number of seconds, got {ttl!r}")
        check_params(params, required=(), optional=())
        self.firing_ttl_s = float(ttl)
        self.url = check_url(spec.url).rstrip("/") + API_PATH

    def request(self, alert: Mapping[str, Any]) -> Request:
        if "members" not in alert:
            return Request(self.url, json_body([self._entry(alert, alert)]), JSON_HEADERS)
        shared = alert.get("annotations") or {}
        entries = []
        for member in alert["members"]:
            state = "resolved" if alert["state"] == "resolved" else member["state"]
            entries.append(self._entry({
                **member, "state": state, "time": alert["time"], "project": alert.get("project"),
                "run": member["labels"].get("run") or alert.get("run"),
                "labels": {**member["labels"], "incident": alert["incident"]},
                "annotations": {"summary": member.get("summary") or member["rule"], "cause": shared.get("cause", ""),
                                "incident_summary": shared.get("summary", ""),
                                "dashboard_url": shared.get("dashboard_url", "")},
                "ends_at": member.get("ends_at") or (alert.get("ends_at") if state == "resolved" else None),
            }, alert))
        return Request(self.url, json_body(entries), JSON_HEADERS)

    def _entry(self, alert: Mapping[str, Any], sent: Mapping[str, Any]) -> dict[str, Any]:
        """One Alertmanager alert; `sent` is what the dispatcher was given (its time orders repeats)."""
        labels = {label_name(k): v for k, v in alert["labels"].items() if v}  # empty = absent in Prometheus
        for key in ("project", "run"):
            if alert.get(key):
                labels.setdefault(key, alert[key])
        labels["alertname"] = alert["rule"]
        labels["severity"] = alert["severity"]
        entry: dict[str, Any] = {
            "labels": labels,
            "annotations": {label_name(k): v for k, v in (alert.get("annotations") or {}).items() if v},
            "startsAt": rfc3339(alert["starts_at"]),
        }
        if alert["state"] == "resolved":
            entry["endsAt"] = rfc3339(resolved_at(alert))
        else:
            entry["endsAt"] = rfc3339(max(sent["time"], time.time()) + self.firing_ttl_s)
        link = dashboard_url(alert)
        if link:
            entry["generatorURL"] = link
        return entry
