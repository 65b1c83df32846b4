"""What every alert route implements. One route kind per module; the registry is routes/__init__.py.

A route only turns an alert event into the HTTP request its receiver documents. Sending, timeouts,
retries with backoff and recording each attempt are the dispatcher's (stream_processors/delivery.py),
the same for every kind, and never block the stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping


@dataclass(frozen=True)
class RouteSpec:
    """One entry of the `routes:` section of the pipeline file, validated."""

    name: str
    kind: str  # alertmanager | slack | pagerduty | webhook
    url: str
    match: Mapping[str, Any] = field(default_factory=dict)  # e.g. {severity: [critical], rule: [...]}
    params: Mapping[str, Any] = field(default_factory=dict)  # kind-specific: secret, routing_key, channel ...
    timeout_s: float = 5.0
    retries: int = 5
    backoff_s: float = 0.5  # first retry delay, doubled each attempt, capped at 30 s


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: Mapping[str, str]


class Route(ABC):
    kind: ClassVar[str]

    def __init__(self, spec: RouteSpec) -> None:
        """Validate spec.params here; raise ValueError('<param>: <what is wrong>')."""
        self.spec = spec

    @abstractmethod
    def request(self, alert: Mapping[str, Any]) -> Request:
        """The receiver's documented payload for a contract alert event (firing or resolved)."""
