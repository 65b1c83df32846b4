"""One clock per partition: the time its time-based verdicts, `for` durations and windows run on.

Event time, not the worker's wall clock: after a restart, an outage or while the pipeline falls
behind, the partition's clock advances only as fast as its events are read, so a backlog drained at
1.5x does not make every healthy rank look silent. Once the partition is live again the clock
follows the wall clock, so silence itself is noticed. Live means caught up on every topic the
partition reads (its newest events there are recent, or nothing new has arrived there for a
moment): a restored partition whose metrics backlog is read before its system samples must not
judge the nodes on samples from before the outage. One host's clock running ahead cannot drag the
partition's clock along: event times past the wall clock count only up to `max_future_s` ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PartitionClock:
    live_lag_s: float = 30.0  # newest event this close to the wall clock: the partition is live
    idle_s: float = 2.0  # nothing new read for this long: caught up, whatever the event times
    max_future_s: float = 5.0
    events: float = 0.0  # newest event time seen (bounded by wall + max_future_s)
    now: float = 0.0  # the partition's current time; never goes back
    # per topic: (event time of the newest event in the last batch read from it, wall time read)
    topics: dict[str, tuple[float, float]] = field(default_factory=dict)
    live: bool = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots written before per-topic liveness restore without it."""
        state.pop("newest_read", None)
        self.__dict__.update({"topics": {}, **state})

    def observe(self, topic: str, newest: float | None, wall: float) -> None:
        """A batch of `topic` on this partition was read; `newest` is its newest event time (None:
        only replays and re-sends, which the state already has)."""
        if newest is None:
            newest = self.topics.get(topic, (0.0, wall))[0]
        else:
            self.events = max(self.events, min(newest, wall + self.max_future_s))
        self.topics[topic] = (newest, wall)

    def resumed(self, wall: float) -> None:
        """Restored on another worker: not live until it has read what is waiting on every topic,
        or found nothing there."""
        self.live = False
        self.topics = {topic: (newest, wall) for topic, (newest, _read) in self.topics.items()}

    def advance(self, wall: float) -> float:
        """The partition's time at this wall-clock moment; marks whether it is live."""
        self.live = self.events > 0 and all(wall - read >= self.idle_s or wall - newest <= self.live_lag_s
                                            for newest, read in self.topics.values())
        candidate = wall if self.live else self.events
        if candidate > self.now:
            self.now = candidate
        return self.now
