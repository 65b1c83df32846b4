"""One run read from another tool, and its contract events."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from trainmon.contract import envelope

DEFAULT_HOST = "imported"  # where the source does not say which machine the run was on


@dataclass
class ImportedRun:
    """A run as read: identity, its run_start fields, its points and how it ended.

    points: (name, step, time in Unix seconds, value); several values of one name at one step (a
    restarted run logging a step again) keep the newest, as the metric_points table does.
    status: the contract's run_end status, or None where the source does not know (no run_end is
    sent: the run is then taken for lost at its last point, like a run that went silent)."""

    project: str
    run: str
    source: str  # where it was read from, for messages and the run's `code.imported_from`
    started: float  # Unix seconds
    host: str = DEFAULT_HOST
    name: str | None = None
    user: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    code: dict[str, Any] = field(default_factory=dict)
    points: list[tuple[str, int, float, float]] = field(default_factory=list)
    status: str | None = None
    ended: float | None = None  # Unix seconds; default: its last point

    def latest(self) -> dict[tuple[str, int], tuple[float, float]]:
        """(name, step) -> (time, value) of the newest value logged there."""
        kept: dict[tuple[str, int], tuple[float, float]] = {}
        for name, step, when, value in self.points:
            seen = kept.get((name, step))
            if seen is None or when >= seen[0]:
                kept[(name, step)] = (when, value)
        return kept

    def events(self) -> Iterator[dict[str, Any]]:
        """run_start, the metrics events (one per step and wall time, values of the names logged
        then), run_end: ordered by time, as they happened."""
        identity = {"project": self.project, "run": self.run, "rank": 0, "host": self.host}
        kept = self.latest()
        grouped: dict[tuple[int, float], dict[str, float]] = {}
        for (name, step), (when, value) in kept.items():
            grouped.setdefault((step, when), {})[name] = value
        last = max((when for _, when in grouped), default=self.started)
        yield envelope("run_start", **identity, time=self.started, world_size=1, name=self.name, user=self.user,
                       config=self.config or None, tags=self.tags or None,
                       code={"imported_from": self.source, **self.code})
        for (step, when), values in sorted(grouped.items(), key=lambda item: (item[0][1], item[0][0])):
            yield envelope("metrics", **identity, time=when, step=step, values=values)
        if self.status is not None:
            last_step = max((step for _, step in kept), default=None)
            yield envelope("run_end", **identity, time=max(self.ended or last, self.started), status=self.status,
                           step=last_step)


def number(text: str) -> Any:
    """A parameter logged as text, typed where the text is exactly a number or a boolean (so the
    dashboard's compare view can plot it), else the text as it was."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "_" in text:  # int() and float() take "1_000": a name-like text, not a number someone wrote
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text
