"""The held rows' inserts on a thread of their own (write_behind.py): the processing goes on while
ClickHouse inserts, writes land in order, at most two are outstanding, rows held while one runs grow to
three times the row limit, a checkpoint's events wait for their rows (`written`), and a snapshot taken
with rows in flight lists them, so a crash loses none and doubles none."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from trainmon.stream_processors.sink import Batch
from trainmon.stream_processors.write_behind import WriteBehind
from tests.unit.alert_streams import metrics
from tests.unit.test_partition_state import T, Feed, Kept, make, rows, wall  # noqa: F401 (wall: a fixture)

WAIT_S = 5.0  # a gate never opened fails the test after this long instead of hanging it


class Gate:
    """A write that waits until the test opens the gate: ClickHouse busy with a long insert."""

    def __init__(self) -> None:
        self.open, self.started, self.done = threading.Event(), threading.Event(), []

    def __call__(self, batch: Batch) -> list:
        self.started.set()
        assert self.open.wait(WAIT_S), "the gate was never opened"
        self.done.append(batch)
        return list(getattr(batch, "refuse", []))


def named(*sources: tuple[str, int, int]) -> Batch:
    batch = Batch()
    batch.rows["run_events"] = [{"src_topic": t, "src_partition": p, "src_offset": o} for t, p, o in sources]
    return batch


@pytest.fixture
def thread():
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


def test_two_writes_are_handed_over_without_waiting_and_land_in_order(thread) -> None:
    gate = Gate()
    writes = WriteBehind(gate, thread)
    first, second = named(("t", 0, 1)), named(("t", 0, 2))
    started = time.monotonic()
    writes.submit(first, {})
    writes.submit(second, {})
    assert time.monotonic() - started < 1.0 and gate.started.wait(WAIT_S)
    barrier = writes.barrier()
    assert not barrier.done() and list(writes.sources()) == [("t", 0, 1), ("t", 0, 2)]
    gate.open.set()
    barrier.result(WAIT_S)
    assert gate.done == [first, second]
    writes.wait()
    assert list(writes.sources()) == [] and writes.barrier().done()


def test_a_third_write_waits_while_two_are_outstanding(thread) -> None:
    """A ClickHouse slower than the stream slows the reading, as an inline insert did: rows do not pile up."""
    gate = Gate()
    writes = WriteBehind(gate, thread)
    writes.submit(named(("t", 0, 1)), {})
    writes.submit(named(("t", 0, 2)), {})
    third = threading.Thread(target=writes.submit, args=(named(("t", 0, 3)), {}))
    third.start()
    third.join(0.5)
    assert third.is_alive(), "handed over a third write while two were outstanding"
    gate.open.set()
    third.join(WAIT_S)
    assert not third.is_alive()
    writes.wait()
    assert [list(b.sources()) for b in gate.done] == [[("t", 0, 1)], [("t", 0, 2)], [("t", 0, 3)]]


def test_refused_rows_come_back_with_their_messages_once_the_write_is_done(thread) -> None:
    gate = Gate()
    writes = WriteBehind(gate, thread)
    batch = named(("t", 0, 1), ("t", 0, 2))
    batch.refuse = [(("t", 0, 2), "out of range")]
    writes.submit(batch, {("t", 0, 1): "message 1", ("t", 0, 2): "message 2"})
    assert writes.take_refused() == []  # not done yet
    gate.open.set()
    writes.barrier().result(WAIT_S)
    assert writes.take_refused() == [("message 2", "out of range")] and writes.take_refused() == []


def test_a_failed_write_raises_in_the_thread_that_hands_over_the_next(thread) -> None:
    def broken(batch: Batch) -> list:
        raise ValueError("a bug in the sink")

    writes = WriteBehind(broken, thread)
    writes.submit(named(("t", 0, 1)), {})
    wait([writes.barrier()], WAIT_S)
    with pytest.raises(ValueError, match="a bug in the sink"):
        writes.submit(named(("t", 0, 2)), {})


def gated(snapshots: dict[int, bytes], written: list, gate: Gate, executor: ThreadPoolExecutor, **options):
    """A worker whose inserts run on `executor` and wait for `gate` before they land in `written`."""
    proc, _ = make(snapshots, writes=executor, **options)
    proc.sink = Kept(written)
    kept_write = proc.sink.write

    def write(batch: Batch) -> list:
        gate(batch)
        return kept_write(batch)

    proc.sink.write = write
    return proc


def test_a_checkpoint_waits_for_no_insert_and_its_snapshot_lists_the_rows_in_flight(wall, thread) -> None:
    """Rows in flight when the worker dies are written by the next owner, once; rows that landed
    before it died are not written again."""
    written: list = []
    feed, gate = Feed(), Gate()
    stream = feed(*(metrics(i, T + i, loss=1.0) for i in range(6)))
    first = gated({}, written, gate, thread)
    first.handle(stream[:3])
    first.flush()  # a tick's insert, in flight
    assert gate.started.wait(WAIT_S)
    started = time.monotonic()
    first.handle(stream[3:])  # handled while ClickHouse inserts
    snapshots = first.snapshot()  # a full checkpoint: hands 3-5 over too, waits for neither
    assert time.monotonic() - started < 1.0 and not first.written().done()
    second, _ = make(snapshots)
    second.sink = Kept(written)
    second.handle(stream)  # died with both writes in flight; nothing acked: all replayed
    second.flush()
    assert second.counts["rewritten"] == 6 and sorted(rows(written)) == [("t.metrics", i, "loss") for i in range(6)]
    gate.open.set()  # the dead worker's thread, let go


def test_rows_that_landed_before_the_crash_are_not_written_again(wall, thread) -> None:
    written: list = []
    feed, gate = Feed(), Gate()
    stream = feed(*(metrics(i, T + i, loss=1.0) for i in range(4)))
    first = gated({}, written, gate, thread)
    first.handle(stream)
    snapshots = first.snapshot()
    assert 0 in snapshots and not first.written().done()
    gate.open.set()
    first.written().result(WAIT_S)  # landed; the events were not acked yet when it died
    second, _ = make(snapshots)
    second.sink = Kept(written)
    second.handle(stream)
    second.flush()
    assert second.counts["replayed"] == 4 and second.counts["rewritten"] == 0
    assert sorted(rows(written)) == [("t.metrics", i, "loss") for i in range(4)]


def test_a_revoke_waits_for_every_write(wall, thread) -> None:
    """The next owner reads the offset watermarks at once: every row must be in ClickHouse by then."""
    written: list = []
    feed, gate = Feed(), Gate()
    first = gated({}, written, gate, thread)
    first.handle(feed(metrics(0, T, loss=1.0)))
    first.flush()
    assert gate.started.wait(WAIT_S)
    threading.Timer(0.3, gate.open.set).start()
    first.revoke([0])
    assert rows(written) == [("t.metrics", 0, "loss")]


def test_rows_held_while_an_insert_runs_grow_to_three_times_the_row_limit(wall, thread) -> None:
    """A worker behind the stream writes fewer, larger inserts; one keeping up writes at the row limit."""
    written: list = []
    feed, gate = Feed(), Gate()
    stream = feed(*(metrics(i, T + i, loss=1.0) for i in range(20)))
    first = gated({}, written, gate, thread, insert_max_rows=4)
    first.handle(stream[:4])  # the row limit, nothing in flight: handed over
    assert gate.started.wait(WAIT_S)
    first.handle(stream[4:8])
    assert first.held.values == 4 and len(list(first.writes.sources())) == 4  # held while the insert runs
    first.handle(stream[8:16])  # three times the limit held: handed over behind the running insert
    assert first.held.values == 0 and len(list(first.writes.sources())) == 16
    gate.open.set()
    first.written().result(WAIT_S)
    first.handle(stream[16:])  # nothing in flight again: the row limit
    first.written().result(WAIT_S)
    assert [len(batch.metric) for batch in written] == [4, 12, 4]
    assert sorted(rows(written)) == [("t.metrics", i, "loss") for i in range(20)]
