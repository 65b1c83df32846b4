"""One clock per partition: the time its time-based verdicts, `for` durations and windows run on.

Event time, not the worker's wall clock: after a restart, an outage or while the pipeline falls
behind, the partition's clock advances only as fast as its events are read, so a backlog drained at
1.5x does not make every healthy rank look silent. Once the partition is live again (its newest
events are recent, or nothing new has arrived for a moment) the clock follows the wall clock, so
silence itself is noticed. One host's clock running ahead cannot drag the partition's clock along:
event times past the wall clock count only up to `max_future_s` ahead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PartitionClock:
    live_lag_s: float = 30.0  # newest event this close to the wall clock: the partition is live
    idle_s: float = 2.0  # nothing new read for this long: caught up, whatever the event times
    close_idle_s: float = 20.0  # windows follow the wall clock only after this long without data
    max_future_s: float = 5.0
    events: float = 0.0  # newest event time seen (bounded by wall + max_future_s)
    now: float = 0.0  # the partition's current time; never goes back
    last_read: float = 0.0  # wall time a message of this partition was last read
    newest_read: float = 0.0  # event time of the newest event in the last batch read
    live: bool = False

    def observe(self, newest: float, wall: float) -> None:
        """A batch of this partition was read; `newest` is its newest event time."""
        bounded = min(newest, wall + self.max_future_s)
        if bounded > self.events:
            self.events = bounded
        self.newest_read, self.last_read = newest, wall

    def window_time(self, wall: float) -> float:
        """What windows close on: the event time while events are arriving (so a backlog, a rebalance
        pause or a takeover never makes the partition's own data late), its time once long idle."""
        return self.events if wall - self.last_read < self.close_idle_s else self.now

    def resumed(self, wall: float) -> None:
        """Restored on another worker: not live until it has read what is waiting, or found nothing."""
        self.last_read, self.live = wall, False

    def advance(self, wall: float) -> float:
        """The partition's time at this wall-clock moment; marks whether it is live."""
        self.live = self.events > 0 and (wall - self.last_read >= self.idle_s
                                         or wall - self.newest_read <= self.live_lag_s)
        candidate = wall if self.live else self.events
        if candidate > self.now:
            self.now = candidate
        return self.now
