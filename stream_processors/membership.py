"""Whether this worker still holds its partitions: a lease renewed by the consumer group's heartbeats.

A worker frozen past its session timeout (a paused VM, a swap storm, SIGSTOP), or cut off from Kafka
but not from ClickHouse, has had its partitions given to another worker, which restored their state
and re-reads their events from the offset watermarks. Kafka tells the old worker so only at its next
heartbeat, and its tick, which hands the held rows to the inserts, may run first: its rows, snapshots
and alerts would then be a second copy of the new owner's (a zombie; tests/integration/test_faults.py
doubled hundreds of samples before this). So a worker writes to ClickHouse, snapshots and pages only
while its lease holds: `session_timeout - LEASE_MARGIN_S` from the sending of its latest heartbeat
that the coordinator answered (or from the assignment), a time before which the broker cannot have
expired it. Past that, each write waits for the group's word: a heartbeat answered (go on) or the
membership reset (MembershipLost: everything held for those partitions is dropped unwritten and
unacked, as a worker killed then would lose it, and their next owner re-reads it).

The margin covers the time between a write's check and its request reaching ClickHouse, where the
next owner's fence (sink.py) sees it running; a process frozen in exactly that gap is not covered.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("trainmon.processors")
LEASE_MARGIN_S = 1.0
POLL_S = 0.1  # how often a waiting write looks at the coordinator's generation (reset by its own tasks)


class MembershipLost(Exception):
    """The group no longer gives this worker the partitions a write or checkpoint was for."""


class Lease:
    def __init__(self, session_timeout_s: float, *, margin_s: float = LEASE_MARGIN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.valid_s = session_timeout_s - margin_s
        self._clock = clock
        self._generation: int | None = None  # the generation the latest confirmation was for
        self._confirmed_at = float("-inf")  # when that confirmation's request was sent
        self._coordinator: Any = None  # aiokafka's GroupCoordinator, once watched
        self._closing = False
        self._changed = threading.Condition()

    def watch(self, coordinator: Any) -> None:
        """Renewed by each heartbeat the coordinator answers (aiokafka's GroupCoordinator: its
        `_do_heartbeat`, looked up at each beat, returns whether the member is still in the group), and
        judged by its generation, which aiokafka resets when the group no longer knows the member."""
        if not callable(getattr(coordinator, "_do_heartbeat", None)) or not hasattr(coordinator, "generation"):
            raise RuntimeError("aiokafka changed its group coordinator (no _do_heartbeat or generation): trainmon "
                               "cannot tell whether the group still gives this worker its partitions; install "
                               "the version pyproject.toml allows")
        beat = coordinator._do_heartbeat

        async def heartbeat() -> bool:
            generation, sent_at = coordinator.generation, self._clock()
            answered = await beat()
            if answered:
                self.confirmed(generation, sent_at)
            else:
                with self._changed:  # perhaps reset: waiting writes look now
                    self._changed.notify_all()
            return answered

        coordinator._do_heartbeat = heartbeat
        self._coordinator = coordinator

    def confirmed(self, generation: int, sent_at: float) -> None:
        """The group answered, for `generation`, a request sent at `sent_at` (this lease's clock)."""
        with self._changed:
            if self._current() not in (None, generation):
                return  # answered for a generation already gone
            if generation != self._generation:
                self._generation, self._confirmed_at = generation, sent_at
            else:
                self._confirmed_at = max(self._confirmed_at, sent_at)
            self._changed.notify_all()

    def close(self) -> None:
        """Shutting down: writes no longer wait for the group's word (they go on if the lease holds)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def hold(self, generation: int) -> None:
        """Returns while the partitions assigned in `generation` are surely still this worker's; raises
        MembershipLost once they are not, or may not be and the worker is shutting down."""
        waited = None
        with self._changed:
            while True:
                current = self._current()
                if current is not None and current != generation:
                    raise MembershipLost(f"the consumer group moved from generation {generation} to "
                                         f"{current if current >= 0 else 'none (this worker is no longer a member)'}")
                now = self._clock()
                if self._generation == generation and now < self._confirmed_at + self.valid_s:
                    if waited is not None:
                        log.warning("the consumer group confirmed this worker again after %.1f s; writing on",
                                    now - waited)
                    return
                if self._closing:
                    raise MembershipLost("shutting down without word from the consumer group")
                if waited is None:
                    waited = now
                    log.warning("the consumer group has not confirmed this worker (generation %d) in the last "
                                "%g s: writes wait until it does or gives the partitions away", generation,
                                self.valid_s)
                self._changed.wait(POLL_S)

    def _current(self) -> int | None:
        return None if self._coordinator is None else self._coordinator.generation
