"""The held rows' inserts on a thread of their own, so that no event, and no alert, waits for ClickHouse.

Under load a worker's processing thread spent up to 0.6 s in one insert (a tick's flush, a full
checkpoint's, or a piece's once 100,000 rows were held), and an alert raised by the next events waited
that long before its rules even ran: the largest part of the alert p99 (docs/benchmarks.md, "Alerts
that wait for no insert"). Here the processing thread hands a flush's rows over and goes on.

What exactly-once needs still holds: the writes run one at a time in the order they were handed over,
so a partition's offset watermark (sink.py) never passes rows not yet written; a snapshot lists the
offsets of the events whose rows are still outstanding, as it lists the held ones, for a replay to write
(processing.py); an event is acked only once the writes handed over before its checkpoint are done
(`barrier`, app.py); and a rebalance or shutdown waits for every write (`wait`). At most
`max_outstanding` writes are handed over and not done: past that `submit` waits, so a ClickHouse slower
than the stream still slows the reading of Kafka, as an inline insert did, instead of piling rows up.
A write that ended in MembershipLost (membership.py) wrote nothing: its own future says so, and so does
every later one of the same generation, so no event behind them is acked; nobody else waiting on the
writes hears of it (the partitions are dropped at the next checkpoint).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterable, Mapping

from trainmon.stream_processors.membership import MembershipLost
from trainmon.stream_processors.sink import Batch, Source

Refused = list[tuple[Any, str]]  # (the message a refused row came from, or None; ClickHouse's reason)


class Inline(Executor):
    """Runs each write as it is handed over: the default, so a caller without a thread for it (the
    tests, the benchmarks' probes) sees its rows written at once."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class WriteBehind:
    def __init__(self, write: Callable[..., list[tuple[Source, str]]], executor: Executor | None = None, *,
                 max_outstanding: int = 2) -> None:
        """write: the sink's, blocking until ClickHouse took the batch; returns the refused rows' sources.
        executor: where writes run, one at a time (the worker passes a thread of one; default inline)."""
        self._write = write
        self._executor = executor or Inline()
        self.max_outstanding = max_outstanding
        self._outstanding: deque[tuple[Future, Batch]] = deque()  # handed over, in order; pruned when done
        self._refused: deque[tuple[Any, str]] = deque()  # filled by the writes as they end (any thread)

    def submit(self, batch: Batch, sources: Mapping[Source, Any], **options: Any) -> None:
        """Hand `batch` over; waits first while `max_outstanding` writes are not done. sources: source ->
        message, for the rows ClickHouse refuses; options: for `write`. Raises what an earlier write
        raised, but MembershipLost."""
        self._prune()
        while len(self._outstanding) >= self.max_outstanding:
            self._wait_oldest()

        def refused(done: Future) -> None:  # in the writing thread, before anyone waiting on it wakes
            if done.exception() is None:
                self._refused.extend((sources.get(source), reason) for source, reason in done.result())

        future = self._executor.submit(self._write, batch, **options)
        future.add_done_callback(refused)
        self._outstanding.append((future, batch))

    def _wait_oldest(self) -> None:
        self._outstanding[0][0].exception()  # waits; _prune raises what it should
        self._prune()

    def _prune(self) -> None:
        while self._outstanding and self._outstanding[0][0].done():
            done = self._outstanding.popleft()[0]
            if not isinstance(done.exception(), MembershipLost):
                done.result()  # a failed write raises here, in the caller's thread

    def busy(self) -> bool:
        """Whether a write handed over is not done yet (they run in order: the last one is)."""
        return not self.barrier().done()

    def barrier(self) -> Future:
        """Done once every write handed over so far is (they run in order: the last one's future)."""
        if self._outstanding:
            return self._outstanding[-1][0]
        done: Future = Future()
        done.set_result([])
        return done

    def wait(self) -> None:
        """Block until every write handed over is done."""
        while self._outstanding:
            self._wait_oldest()

    def sources(self) -> Iterable[Source]:
        """The events whose rows are in writes not known to be done: not surely in ClickHouse yet."""
        for _, batch in list(self._outstanding):
            yield from batch.sources()

    def take_refused(self) -> Refused:
        """The refused rows of the writes done since the last call, with their messages."""
        taken = []
        while self._refused:
            taken.append(self._refused.popleft())
        return taken
