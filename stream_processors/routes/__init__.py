"""Alert routes, registered in one place: kind -> class. Adding a kind is one module plus one line here."""

from __future__ import annotations

from collections.abc import Mapping

from trainmon.stream_processors.routes.alertmanager import AlertmanagerRoute
from trainmon.stream_processors.routes.base import Request, Route, RouteSpec
from trainmon.stream_processors.routes.pagerduty import PagerDutyRoute
from trainmon.stream_processors.routes.slack import SlackRoute
from trainmon.stream_processors.routes.webhook import WebhookRoute

ROUTE_KINDS: Mapping[str, type[Route]] = {
    cls.kind: cls for cls in (AlertmanagerRoute, SlackRoute, PagerDutyRoute, WebhookRoute)
}

__all__ = ["ROUTE_KINDS", "Request", "Route", "RouteSpec", "build_route"]


def _check_match(match: Mapping[str, object]) -> None:
    """`key: value` or `key: [values]`, all strings, as delivery.matches() reads them."""
    for key, expected in match.items():
        values = expected if isinstance(expected, (list, tuple)) else [expected]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"match.{key}: expected a non-empty string or a non-empty list of strings")


def build_route(spec: RouteSpec) -> Route:
    """The route for one validated spec; ValueError('<key>: <what is wrong>') for bad kind, url or params."""
    cls = ROUTE_KINDS.get(spec.kind)
    if cls is None:
        raise ValueError(f"kind: unknown route kind {spec.kind!r} (known: {', '.join(ROUTE_KINDS)})")
    for key, bound, ok in (
        ("timeout_s", "> 0", spec.timeout_s > 0),
        ("retries", ">= 0", spec.retries >= 0),
        ("backoff_s", ">= 0", spec.backoff_s >= 0),
    ):
        if not ok:
            raise ValueError(f"{key}: must be {bound}, got {getattr(spec, key)!r}")
    _check_match(spec.match)
    return cls(spec)
