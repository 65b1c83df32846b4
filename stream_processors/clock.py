"""One clock per partition: the time its time-based verdicts, `for` durations and windows run on.

The clock is the time up to which the partition's events have been read, not the worker's wall
clock: after a restart, an outage, a broker failover, a stalled worker or while the pipeline falls
behind by a few seconds, it advances only as fast as events are processed, so no healthy rank looks
silent however short the silence timeouts. Per topic it reads, that time is the newest event time
processed there, or the time of the latest fetch whose high watermark has been processed (the
consumer reports its latest fetch each tick, `fetched`), less `delivery_s` (an agent's event may
reach Kafka that long after its time); the partition's clock is the earliest of
its topics' times, never past the wall clock. So a node that really stops sending is noticed as soon
as Kafka confirms there is nothing more from it, and not before.

Without word from the consumer (unit tests, a consumer that has not fetched yet) a topic from which
nothing new was read for `idle_s` counts as caught up at the wall clock. The partition is live while
its clock is within `live_lag_s` of the wall clock; time-based verdicts are held while it is not. One
host's clock running ahead cannot drag the partition's clock along: event times past the wall clock
count only up to `max_future_s` ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


_FETCHES_KEPT = 32  # unprocessed fetches remembered per topic: half a minute of ticks


@dataclass
class PartitionClock:
    live_lag_s: float = 30.0  # clock this close to the wall clock: the partition is live
    idle_s: float = 2.0  # without word from the consumer: nothing new read for this long is caught up
    max_future_s: float = 5.0
    delivery_s: float = 1.0  # how long after its time an agent's event may reach Kafka
    events: float = 0.0  # newest event time seen (bounded by wall + max_future_s)
    now: float = 0.0  # the partition's current time; never goes back
    # per topic: (event time of the newest event in the last batch read from it, wall time read)
    topics: dict[str, tuple[float, float]] = field(default_factory=dict)
    # per topic: wall time of the latest fetch whose high watermark this partition has processed
    read_through: dict[str, float] = field(default_factory=dict)
    # per topic: (wall time, high watermark) of fetches whose high watermark is not processed yet
    fetches: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    live: bool = False
    live_since: float = 0.0  # the partition's time when it last became live

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots written before per-topic liveness or read-through times restore without them."""
        state.pop("newest_read", None)
        self.__dict__.update({"topics": {}, "read_through": {}, "fetches": {}, "delivery_s": 1.0, **state})

    def observe(self, topic: str, newest: float | None, wall: float) -> None:
        """A batch of `topic` on this partition was read; `newest` is its newest event time (None:
        only replays and re-sends, which the state already has)."""
        if newest is None:
            newest = self.topics.get(topic, (0.0, wall))[0]
        else:
            self.events = max(self.events, min(newest, wall + self.max_future_s))
        self.topics[topic] = (newest, wall)

    def fetched(self, topic: str, at: float, highwater: int, applied: int) -> None:
        """The consumer's latest fetch of `topic` was at wall time `at` and saw `highwater`; `applied`
        is the highest offset processed. Under a steady flow the latest fetch is never processed by
        the next tick, so earlier fetches are remembered until their watermark is: the topic's time
        then follows the fetches a second or two behind, whatever the events' own clocks say. Once
        the consumer has said anything of a topic, only its word moves that topic on."""
        pending = self.fetches.setdefault(topic, [])
        if not pending or at > pending[-1][0]:
            pending.append((at, highwater))
            del pending[:-_FETCHES_KEPT]
        done = [when for when, mark in pending if mark <= applied + 1]
        self.read_through[topic] = max([self.read_through.get(topic, 0.0), *done])
        if done:
            pending[:] = [(when, mark) for when, mark in pending if mark > applied + 1]

    def resumed(self, wall: float) -> None:
        """Restored on another worker: not live until it has read what is waiting on every topic,
        or found nothing there."""
        self.live = False
        self.topics = {topic: (newest, wall) for topic, (newest, _read) in self.topics.items()}
        self.read_through = {}
        self.fetches = {}

    def topic_time(self, topic: str, wall: float) -> float:
        """How far `topic` has been read on this partition, in event time."""
        newest, read = self.topics[topic]
        newest = min(newest, wall + self.max_future_s)
        fetched = self.read_through.get(topic)
        if fetched is not None:
            return max(newest, fetched - self.delivery_s)
        return max(newest, wall) if wall - read >= self.idle_s else newest

    def advance(self, wall: float) -> float:
        """The partition's time at this wall-clock moment; marks whether it is live."""
        if self.events > 0:
            candidate = min([wall] + [self.topic_time(topic, wall) for topic in self.topics])
            was, self.live = self.live, wall - candidate <= self.live_lag_s
            if candidate > self.now:
                self.now = candidate
            if self.live and not was:
                self.live_since = self.now
        return self.now
