"""One ClickHouse write in flight beside the processing: the processing thread hands the held rows to a
thread of their own and goes on with the next events while ClickHouse inserts them.

Under load a worker's processing thread spent about half its time waiting for its inserts (py-spy on a
worker of `bench/pipeline.py` at 600,000 values/s offered: 47 % waiting for ClickHouse, 16 % building
the inserts, 16 % handling events), while ClickHouse had nothing from that worker to do during the
handling. One write at a time keeps what exactly-once needs: writes land in the order their batches
were made, so a partition's offset watermark (sink.py) never passes rows not yet written; and whoever
needs the rows in ClickHouse (a snapshot, a revoke, shutdown) waits for the write in flight first.
The rows ClickHouse refused come back with the messages their batch came from, for the dead-letter
topic; an exception the write raised is raised by the next `submit` or `wait`.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping

from trainmon.stream_processors.sink import Batch, Source

Refused = list[tuple[Any, str]]  # (the message a refused row came from, or None; ClickHouse's reason)


class WriteBehind:
    def __init__(self, write: Callable[[Batch], list[tuple[Source, str]]], executor: Executor | None = None) -> None:
        """write: the sink's, blocking until ClickHouse took the batch; returns the refused rows' sources.
        executor: where writes run (default: a thread of their own; tests pass one that runs them inline)."""
        self._write = write
        self._thread = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmon-insert")
        self._in_flight: tuple[Future, Mapping[Source, Any]] | None = None

    def submit(self, batch: Batch, sources: Mapping[Source, Any]) -> Refused:
        """Start writing `batch` once the write in flight is done; returns that write's refused rows.
        sources: source -> message, for the rows of `batch` (read once the write is done)."""
        refused = self.wait()
        self._in_flight = (self._thread.submit(self._write, batch), sources)
        return refused

    def wait(self) -> Refused:
        """Block until the write in flight (if any) is done; its refused rows."""
        if self._in_flight is None:
            return []
        future, sources = self._in_flight
        self._in_flight = None
        return [(sources.get(source), reason) for source, reason in future.result()]
