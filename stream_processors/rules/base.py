"""What every alert rule kind implements. One kind per module; the registry is rules/__init__.py.

A rule sees decoded contract events (and, for time-based kinds, clock ticks) and says, per subject,
whether its condition holds now. It does not decide firing/resolved, `for` durations, repeats or
de-duplication: the alert lifecycle (stream_processors/alerts.py) does that for every kind alike.

Rule state lives in the rule object, per subject. The processors keep one engine per Kafka partition
(rules see only their partition's runs or hosts) and drop it when the partition is revoked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping


@dataclass(frozen=True)
class RuleSpec:
    """One entry of the rules file, validated."""

    name: str
    kind: str
    severity: str  # info | warning | critical
    selector: Mapping[str, Any] = field(default_factory=dict)  # which events/subjects, kind-specific keys
    params: Mapping[str, Any] = field(default_factory=dict)  # kind-specific parameters
    for_s: float = 0.0  # the condition must hold this long before the alert fires
    labels: Mapping[str, str] = field(default_factory=dict)  # added to every alert of this rule
    annotations: Mapping[str, str] = field(default_factory=dict)  # templates: {run}, {host}, {value} ...


@dataclass(frozen=True)
class Condition:
    """A rule's verdict on one subject at one moment."""

    subject: Mapping[str, str]  # identifying labels: project, run, rank, host, gpu, metric ...
    active: bool
    at: float  # event time (Unix seconds) the verdict is about
    values: Mapping[str, float] = field(default_factory=dict)  # what triggered it, for the alert


class Rule(ABC):
    kind: ClassVar[str]
    # Which contract kinds this rule wants; the engine routes only those to on_event.
    consumes: ClassVar[frozenset[str]]

    def __init__(self, spec: RuleSpec) -> None:
        """Validate spec.params here; raise ValueError('<param>: <what is wrong>')."""
        self.spec = spec

    @abstractmethod
    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        """A decoded event of one of `consumes` kinds. now: the partition's time when it was read (its
        clock, or the event's time if that is later): silence and stalls are measured in it, so a
        host whose clock runs minutes behind is not taken for silent."""

    def on_live(self, since: float) -> None:
        """The partition became live at `since` (after a start, a takeover or a backlog). What was
        read before was read on a clock that was not yet the partition's (events' own times while
        it caught up, a skewed host's among them): time-based kinds count silence from here."""

    def on_tick(self, now: float) -> Iterable[Condition]:
        """Called about once a second; time-based kinds (heartbeat lost, stall) report here."""
        return ()

    def forget(self, run: str) -> None:
        """The run ended: drop its state (the lifecycle resolves its alerts)."""
