"""What several route kinds share: parameter checks, RFC 3339 times, the alert's summary and link.

Kept apart from base.py (the interface) so each route module stays only its receiver's payload.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

JSON_HEADERS = {"Content-Type": "application/json"}


def check_params(params: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Refuse unknown keys (a typo must not silently disable signing) and missing or empty required ones."""
    known = (*required, *optional)
    for key in params:
        if key not in known:
            raise ValueError(f"{key}: unknown parameter (known: {', '.join(known) or 'none'})")
    for key in known:
        value = params.get(key)
        if key in required and value is None:
            raise ValueError(f"{key}: required")
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key}: must be a non-empty string")


def check_url(url: str, what: str = "url") -> str:
    """An absolute http(s) URL, so a bad one fails when the pipeline file is loaded, not at 3 a.m."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: expected an absolute http:// or https:// URL, got {url!r}")
    return url


def rfc3339(unix_s: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds, e.g. 2025-11-27T08:00:00.125Z."""
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def resolved_at(alert: Mapping[str, Any]) -> float:
    """When a resolved alert ended: `ends_at`, else the time the resolve was decided."""
    return alert.get("ends_at") or alert["time"]


def dashboard_url(alert: Mapping[str, Any]) -> str | None:
    """The run's dashboard link, which the alert lifecycle puts in the annotations."""
    return (alert.get("annotations") or {}).get("dashboard_url") or None


def summary(alert: Mapping[str, Any]) -> str:
    """The one-line text a human sees first: the rule's summary annotation, else rule and labels."""
    text = (alert.get("annotations") or {}).get("summary")
    if text:
        return text
    labels = ", ".join(f"{k}={v}" for k, v in sorted(alert["labels"].items()))
    return f"{alert['rule']} ({labels})" if labels else alert["rule"]


def json_body(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
