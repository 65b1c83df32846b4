"""When a worker's periodic checkpoint runs (app.py), apart from those that alerts ask for at once.

A checkpoint writes the held rows before its snapshot (processing.py). On a clock of its own, every
`interval_s`, it fell between the tick's flushes and made an insert more per table: at rest 0.6 instead
of 0.5 a second into `metric_points`, where the views alone cost ClickHouse about 22 ms per insert
whatever its size (docs/benchmarks.md, bench/insert_cost.py). So at rest the tick checkpoints, at
the first tick after the interval that left nothing held, and the timer steps in only if that has not
happened for 1.5 intervals. Busy (FetchPacer), inserts go by row count, not by the tick, and the timer
runs every checkpoint as before: a checkpoint there takes up to a second, which the tick must not
wait for.
"""

from __future__ import annotations

import time
from typing import Callable


class CheckpointCadence:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._began = clock()

    def began(self) -> None:
        """A checkpoint began (any kind)."""
        self._began = self._clock()

    def _since(self) -> float:
        return self._clock() - self._began

    def after_tick(self, all_written: bool, at_rest: bool) -> bool:
        """Whether the tick that just ran checkpoints now."""
        return all_written and at_rest and self._since() >= self.interval_s

    def on_timer(self, at_rest: bool) -> bool:
        """Whether the timer, firing every `interval_s`, checkpoints now."""
        return not at_rest or self._since() >= 1.5 * self.interval_s
