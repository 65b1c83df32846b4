"""The sink's writes run in a thread of their own, one at a time (stream_processors/write_behind.py): the
processing goes on while ClickHouse inserts, writes land in the order they were made, and whatever
needs the rows written (a snapshot, a revoke, shutdown) waits for the write in flight."""

from __future__ import annotations

import threading
import time

import pytest

from trainmon.stream_processors.sink import ClickHouseSink
from trainmon.settings import Settings
from tests.unit.test_held_inserts import batch
from tests.unit.test_partition_state import make, wall  # noqa: F401 (wall: a fixture)
from tests.unit.test_processing import MemorySink


class HeldSink(MemorySink):
    """Each write blocks until the test lets it go, as a slow insert would."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.go = threading.Semaphore(0), threading.Semaphore(0)
        self.threads: list[str] = []

    def write(self, batch) -> list:
        self.threads.append(threading.current_thread().name)
        self.started.release()
        assert self.go.acquire(timeout=10), "the test never let the write go"
        return super().write(batch)


def threaded(**options):
    proc, _ = make(**options)
    proc.writes = type(proc.writes)(lambda b: proc.sink.write(b))  # the worker's own: a thread of its own
    proc.sink = HeldSink()
    return proc


def in_background(function) -> threading.Thread:
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


def test_events_are_handled_while_a_write_is_in_flight(wall) -> None:
    proc = threaded()
    proc.insert_max_rows = 4
    proc.handle(batch(0) + batch(1))  # 4 values: handed to the write-behind thread
    assert proc.sink.started.acquire(timeout=5)
    proc.handle(batch(2))  # the insert has not returned: the processing goes on
    assert proc.sink.batches == [] and len(proc.held.metric) == 2
    assert proc.sink.threads == ["trainmon-insert_0"]
    proc.sink.go.release()
    proc.sink.go.release()
    proc.flush()
    assert [len(b.metric) for b in proc.sink.batches] == [4, 2]


def test_the_next_write_waits_for_the_one_in_flight_so_writes_land_in_order(wall) -> None:
    proc = threaded()
    proc.insert_max_rows = 2
    proc.handle(batch(0))  # write 1 in flight, held by the sink
    assert proc.sink.started.acquire(timeout=5)
    second = in_background(lambda: proc.handle(batch(1)))  # write 2 must wait for write 1
    second.join(0.3)
    assert second.is_alive(), "a second write started while one was in flight"
    proc.sink.go.release()
    assert proc.sink.started.acquire(timeout=5)  # now write 2 runs
    second.join(5)
    proc.sink.go.release()
    proc.wait_for_writes()
    assert [b.offsets for b in proc.sink.batches] == [{("t.metrics", 0): 0}, {("t.metrics", 0): 1}]


@pytest.mark.parametrize("step", ["snapshot", "revoke", "close"])
def test_snapshots_revokes_and_shutdown_wait_for_the_write_in_flight(wall, step) -> None:
    """A snapshot acks the events it covers: their rows must be in ClickHouse first, also those of
    the write still in flight, or a worker killed right after would lose them."""
    proc = threaded()
    proc.insert_max_rows = 2
    proc.handle(batch(0))
    assert proc.sink.started.acquire(timeout=5)
    proc.insert_max_rows = 100
    proc.handle(batch(1, run="r2"))  # held: written by the step's own flush, after the one in flight
    done: list = []
    worker = in_background(lambda: done.append({"snapshot": proc.snapshot, "close": proc.close,
                                                "revoke": lambda: proc.revoke([0])}[step]()))
    worker.join(0.3)
    assert worker.is_alive() and not done, f"{step} returned before the write in flight was done"
    proc.sink.go.release()
    assert proc.sink.started.acquire(timeout=5)
    proc.sink.go.release()
    worker.join(5)
    assert done and 0 in done[0]
    assert sum(len(b.metric) for b in proc.sink.batches) == 4


def test_rows_refused_in_the_background_are_dead_lettered_with_their_own_messages(wall) -> None:
    proc, _ = make()
    proc.writes = type(proc.writes)(lambda b: proc.sink.write(b))
    proc.sink.write = lambda written: [(("t.metrics", 0, 1), "ClickHouse refused the row: out of range")]
    proc.insert_max_rows = 4
    proc.handle(batch(0) + batch(1))  # written in the background; offset 1 refused
    proc.handle(batch(2))
    proc.snapshot()  # waits, then writes offset 2 (refused again by this sink, but not in that batch)
    ((key, value, headers),) = proc.take_refused()
    assert dict(headers)["trainmon-dlq-offset"] == b"1" and value == batch(1)[0].value
    assert proc.counts["rejected_by_clickhouse"] == 2 and proc.counts["dead_letter.rejected"] == 1


def test_an_error_in_a_background_write_is_raised_by_the_next_wait(wall) -> None:
    proc, _ = make()
    proc.writes = type(proc.writes)(lambda b: proc.sink.write(b))

    def broken(written):
        raise RuntimeError("a bug in the sink")
    proc.sink.write = broken
    proc.insert_max_rows = 2
    proc.handle(batch(0))  # handed over: the error comes with the next wait
    with pytest.raises(RuntimeError, match="a bug in the sink"):
        proc.snapshot()


def test_watermarks_are_read_on_a_client_of_their_own_while_a_write_is_in_flight() -> None:
    """clickhouse-connect's clients hold one ClickHouse session, which refuses a second query while
    one runs (SESSION_IS_LOCKED): skip() reads with another client than the write-behind thread's."""
    in_flight, seen = threading.Event(), []

    class Client:
        def query(self, sql, parameters):
            seen.append(("query", self, in_flight.is_set()))
            return type("Result", (), {"result_rows": [(41, 1)]})()

        def insert_arrow(self, table, data, settings):
            in_flight.set()
            seen.append(("insert", self))
            time.sleep(0.3)

    sink = ClickHouseSink(Settings(), client_factory=lambda settings: Client())
    from trainmon.stream_processors.sink import Batch
    rows = Batch()
    rows.add_metrics({"kind": "metrics", "project": "p", "run": "r", "rank": 0, "host": "h", "step": 1,
                      "time": 1.0, "values": {"loss": 1.0}}, "t.metrics", 0, 7)
    writer = in_background(lambda: sink.write(rows))
    assert in_flight.wait(5)
    assert sink.skip("t.metrics", 1, 41) is True  # at the watermark read: 41
    writer.join(5)
    (insert_client,) = {c for kind, c, *_ in seen if kind == "insert"}
    (query_client,) = {c for kind, c, *_ in seen if kind == "query"}
    assert query_client is not insert_client
