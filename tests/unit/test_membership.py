"""The lease that keeps a worker the group gave away from writing (membership.py): writes go on while
the latest answered heartbeat is fresh, wait once it is not, go on at the next answer and end in
MembershipLost once the group has reset the member; a frozen worker's held rows are never written and
nothing behind them is acked. tests/integration/test_faults.py freezes a real worker past its session."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from trainmon.stream_processors.membership import Lease, MembershipLost
from tests.unit.test_held_inserts import batch
from tests.unit.test_partition_state import make, wall  # noqa: F401 (wall: a fixture)
from tests.unit.test_processing import MemorySink

SESSION_S = 6.0
WAIT_S = 5.0  # a write that never ends fails the test after this long instead of hanging it


class Coordinator:
    """aiokafka's GroupCoordinator at its narrow boundary: a generation, and a heartbeat whose answer the
    test sets (None: the group no longer knows the member, which resets the generation as aiokafka does)."""

    def __init__(self, generation: int = 1) -> None:
        self.generation, self.answer = generation, True

    async def _do_heartbeat(self) -> bool:
        if self.answer is None:
            self.generation = -1
            return False
        return self.answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched(generation: int = 1) -> tuple[Lease, Coordinator, Clock]:
    clock, coordinator = Clock(), Coordinator(generation)
    lease = Lease(SESSION_S, clock=clock)
    lease.watch(coordinator)
    lease.confirmed(generation, clock.now)  # as at an assignment
    return lease, coordinator, clock


def holding(lease: Lease, generation: int = 1) -> tuple[threading.Thread, list]:
    """hold() in a thread of its own, as the insert thread calls it; the list gets its outcome."""
    outcome: list = []

    def run() -> None:
        try:
            lease.hold(generation)
            outcome.append("held")
        except MembershipLost as exc:
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_writes_go_on_while_the_latest_answered_heartbeat_was_sent_within_the_session_less_the_margin() -> None:
    lease, coordinator, clock = watched()
    clock.now += 3.0
    asyncio.run(coordinator._do_heartbeat())  # sent at +3 s, answered
    clock.now += lease.valid_s - 0.01  # 5 s after that send: the broker cannot have expired the member
    lease.hold(1)
    assert lease.valid_s == SESSION_S - 1.0


def test_an_answer_counts_from_when_its_heartbeat_was_sent_not_from_when_it_came() -> None:
    lease, coordinator, clock = watched()
    slow = Coordinator.__dict__["_do_heartbeat"]

    async def answered_late(self) -> bool:  # the broker took 2 s to answer
        clock.now += 2.0
        return await slow(self)
    coordinator._do_heartbeat = answered_late.__get__(coordinator)
    lease.watch(coordinator)
    clock.now += 1.0
    asyncio.run(coordinator._do_heartbeat())  # sent at +1 s, answered at +3 s
    clock.now = 1000.0 + 1.0 + lease.valid_s + 0.01
    thread, outcome = holding(lease)
    thread.join(0.3)
    assert outcome == [], "valid for valid_s from the send, not from the answer"
    coordinator.answer = None
    asyncio.run(coordinator._do_heartbeat())
    thread.join(WAIT_S)
    assert isinstance(outcome[0], MembershipLost)


def test_a_lapsed_lease_waits_and_goes_on_at_the_next_answered_heartbeat() -> None:
    lease, coordinator, clock = watched()
    clock.now += lease.valid_s + 0.5  # frozen: no heartbeat sent for that long
    thread, outcome = holding(lease)
    thread.join(0.3)
    assert outcome == [] and thread.is_alive()
    asyncio.run(coordinator._do_heartbeat())  # still a member after all
    thread.join(WAIT_S)
    assert outcome == ["held"]


def test_a_lapsed_lease_ends_in_membership_lost_once_the_group_resets_the_member() -> None:
    lease, coordinator, clock = watched()
    clock.now += lease.valid_s + 0.5
    thread, outcome = holding(lease)
    thread.join(0.3)
    assert outcome == []
    coordinator.answer = None
    started = time.monotonic()
    asyncio.run(coordinator._do_heartbeat())  # UnknownMemberId: aiokafka resets the generation
    thread.join(WAIT_S)
    assert isinstance(outcome[0], MembershipLost) and "no longer a member" in str(outcome[0])
    assert time.monotonic() - started < 1.0


def test_a_generation_the_group_has_moved_on_from_is_refused_at_once_even_while_fresh() -> None:
    lease, coordinator, _ = watched(generation=4)
    coordinator.generation = 5  # rejoined; the write was handed over in generation 4
    with pytest.raises(MembershipLost, match="from generation 4 to 5"):
        lease.hold(4)
    lease.confirmed(4, 2000.0)  # a late answer for the old generation changes nothing
    with pytest.raises(MembershipLost):
        lease.hold(4)


def test_shutting_down_gives_up_on_a_lapsed_lease_and_not_on_a_fresh_one() -> None:
    lease, _, clock = watched()
    lease.close()
    lease.hold(1)  # fresh: the final writes go on
    clock.now += lease.valid_s + 0.5
    with pytest.raises(MembershipLost, match="shutting down"):
        lease.hold(1)


def test_a_waiting_write_gives_up_when_shutdown_begins() -> None:
    lease, _, clock = watched()
    clock.now += lease.valid_s + 0.5
    thread, outcome = holding(lease)
    thread.join(0.3)
    lease.close()
    thread.join(WAIT_S)
    assert isinstance(outcome[0], MembershipLost)


def test_a_coordinator_that_changed_is_refused_with_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="pyproject.toml"):
        Lease(SESSION_S).watch(object())


class AdmittingSink(MemorySink):
    """The sink's contract for `admit`: called before each insert; what it raises ends the write."""

    def write(self, batch, admit=None) -> list:
        if admit is not None:
            admit()
        return super().write(batch)


def test_a_frozen_worker_writes_none_of_its_held_rows_acks_none_and_drops_its_partitions(wall) -> None:
    lease, coordinator, clock = watched(generation=1)
    inserts = ThreadPoolExecutor(max_workers=1)
    try:
        proc, _ = make(writes=inserts, lease=lease)
        proc.sink = AdmittingSink()
        proc.assign([0], generation=1)
        proc.handle(batch(0))
        proc.flush()
        proc.written().result(WAIT_S)
        assert len(proc.sink.batches) == 1
        proc.handle(batch(1))
        clock.now += lease.valid_s + 2.0  # SIGSTOPped here, resumed past its session
        proc.flush()  # the tick's hand-over, before the first heartbeat after the resume
        written = proc.written()
        time.sleep(0.3)
        assert not written.done(), "the insert waits for the group's word"
        coordinator.answer = None
        asyncio.run(coordinator._do_heartbeat())  # the group gave the partitions away
        with pytest.raises(MembershipLost):
            written.result(WAIT_S)  # app.py acks a checkpoint's events only once this succeeds
        assert len(proc.sink.batches) == 1, "the held rows were not written beside the new owner's"
        proc.handle(batch(2))
        proc.flush()  # a later write of the lost generation: refused as well, and not raised here
        with pytest.raises(MembershipLost):
            proc.written().result(WAIT_S)
        with pytest.raises(MembershipLost):
            proc.hold_membership()  # what app.py's checkpoint asks first: then it calls lose()
        proc.lose("test")
        assert proc.partitions == {} and not proc.held and proc.release() == ([], [])
        assert proc.counts["membership.lost"] == 1 and len(proc.sink.batches) == 1
    finally:
        inserts.shutdown(wait=True)


def test_the_sink_asks_before_every_insert_retries_included_and_a_lost_membership_refuses_no_row(monkeypatch) -> None:
    from trainmon.settings import Settings
    from trainmon.stream_processors import sink as sink_module

    monkeypatch.setattr(sink_module.time, "sleep", lambda seconds: None)
    sink = sink_module.ClickHouseSink(Settings(), client_factory=lambda settings: None)
    asked, tried = [], []

    def admit() -> None:
        asked.append(len(tried))
        if len(asked) == 3:
            raise MembershipLost("the group moved on")

    def insert(rows: list) -> None:
        tried.append(rows)
        raise ConnectionRefusedError("ClickHouse restarting")  # transient: retried

    row = {"src_topic": "t", "src_partition": 0, "src_offset": 7}
    with pytest.raises(MembershipLost):  # not a refused row: nothing dead-lettered, the event not acked
        sink._guarded("run_events", [row], sink_module._admitted(insert, admit), sink_module._halves,
                      sink_module._row_sources)
    assert asked == [0, 1, 2] and len(tried) == 2
