"""The collector interface and the merge of one interval's contributions into one `system` event.

Every collector returns a `Sample` holding only its own part (host figures, training processes,
GPUs); `CollectorSet` calls them all with the same clock reading and merges the parts, so the
daemon emits exactly one `system` event per node per interval whatever collectors are enabled.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable

from trainmon.contract import envelope

log = logging.getLogger("trainmon.agent")

Figures = dict[str, float | int]


@dataclass(slots=True)
class Sample:
    """One interval's readings; each collector fills the fields it owns and leaves the rest empty."""

    figures: Figures = field(default_factory=dict)  # node-wide, names carry units
    processes: list[dict[str, Any]] = field(default_factory=list)  # contract `_PROCESS` records
    gpus: list[dict[str, Any]] = field(default_factory=list)  # contract `_GPU` records
    runs: set[str] = field(default_factory=set)  # runs with a live process on this node

    def merge(self, other: Sample) -> None:
        """Add another collector's part; a figure name two collectors both set keeps the later value."""
        self.figures.update(other.figures)
        self.processes.extend(other.processes)
        self.gpus.extend(other.gpus)
        self.runs.update(other.runs)

    def to_event(self, *, host: str, time: float, interval_s: float | None = None) -> dict[str, Any]:
        """The contract's `system` event; empty sections are left out rather than sent empty."""
        return envelope(
            "system",
            host=host,
            time=time,
            interval_s=interval_s,
            runs=sorted(self.runs) or None,
            figures=self.figures,
            processes=self.processes or None,
            gpus=self.gpus or None,
        )


class Collector(ABC):
    """One source of readings. Construction does the one-off work (open libraries, prime counters)
    so that each collect() stays cheap: the daemon's budget is < 1 % of a core at 1 Hz."""

    name: str

    @abstractmethod
    def collect(self, now: float) -> Sample:
        """Read once. `now` is time.monotonic(), taken once per interval by the caller, so every
        rate in one event covers the same span (and tests can choose the span)."""

    def close(self) -> None:
        """Release what the constructor opened; the default has nothing to release."""


class CollectorSet:
    """The collectors the daemon runs. A collector that raises loses its part of this interval
    only; the failure is logged when it starts and when it ends, not every second."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)
        self._failing: set[str] = set()

    def collect(self, now: float) -> Sample:
        sample = Sample()
        for collector in self.collectors:
            try:
                sample.merge(collector.collect(now))
            except Exception:
                if collector.name not in self._failing:
                    self._failing.add(collector.name)
                    log.warning("collector %s failed; its readings are left out until it recovers",
                                collector.name, exc_info=True)
                continue
            if collector.name in self._failing:
                self._failing.discard(collector.name)
                log.info("collector %s recovered", collector.name)
        return sample

    def close(self) -> None:
        for collector in self.collectors:
            try:
                collector.close()
            except Exception:
                log.warning("collector %s failed to close", collector.name, exc_info=True)
