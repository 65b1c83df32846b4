"""Rows are held for ClickHouse (issue 13: cost at rest): many batches, one insert once the oldest row
has waited insert_max_delay_s; a
snapshot always writes them first; a full hold writes at once; refused rows' dead
letters wait for the checkpoint that sends them before the acks."""

from __future__ import annotations

from trainmon.contract import DLQ_DETAIL, DLQ_OFFSET, DLQ_REASON, Topic, encode
from trainmon.stream_processors.processing import Message
from tests.unit.alert_streams import gpu, metrics, system
from tests.unit.test_partition_state import T, make, wall  # noqa: F401 (wall: a fixture)


def batch(offset: int, run: str = "r1") -> list[Message]:
    return [Message("t.metrics", 0, offset, b"k", encode(metrics(offset, T + offset, run=run, loss=1.0, acc=0.5)))]


def sample(offset: int, topic: str = "t.system") -> list[Message]:
    event = system(T + offset, gpus=[gpu(0, util_percent=90.0)], cpu_percent=5.0)
    return [Message(topic, 0, offset, b"node-1", encode(event))]


def written(proc) -> list[tuple[int, int, int]]:
    """(metric values, hardware values, gpus rows) of each insert so far."""
    return [(len(b.metric), len(b.system), len(b.rows.get("gpus", ()))) for b in proc.sink.batches]


def test_held_batches_become_one_insert_once_the_oldest_has_waited(wall) -> None:
    proc, _ = make()
    for offset in range(20):  # twenty batches, as a quiet topic delivers them within 0.1 s each
        proc.handle(batch(offset))
    proc.tick()
    wall[0] += 1.0
    proc.tick()
    assert proc.sink.batches == []  # the oldest has waited 1 s of insert_max_delay_s = 1.5
    wall[0] += 1.0
    proc.tick()
    (written,) = proc.sink.batches
    assert len(written.metric) == written.values == 40  # 20 events x 2 values
    wall[0] += 5.0
    proc.tick()
    assert len(proc.sink.batches) == 1  # nothing held: no empty insert


def test_a_snapshot_writes_the_held_rows_first(wall) -> None:
    proc, _ = make()
    proc.handle(batch(0))
    proc.handle(batch(1))
    snapshots = proc.snapshot()
    assert 0 in snapshots  # the state covering offsets 0 and 1...
    assert [len(b.metric) for b in proc.sink.batches] == [4]  # ...only once their rows are written
    proc.sink.batches.clear()
    proc.snapshot()
    assert proc.sink.batches == []  # nothing held: no empty insert


def test_a_revoke_and_a_close_write_the_held_rows(wall) -> None:
    proc, _ = make()
    proc.handle(batch(0))
    proc.revoke([0])
    assert [len(b.metric) for b in proc.sink.batches] == [2]
    proc, _ = make()
    proc.handle(batch(0))
    proc.close()
    assert sum(len(b.metric) for b in proc.sink.batches) == 2


def test_a_full_hold_is_written_without_waiting(wall) -> None:
    proc, _ = make()
    proc.insert_max_rows = 10
    for offset in range(4):  # 2 values each: 8 held
        proc.handle(batch(offset))
    assert proc.sink.batches == []
    proc.handle(batch(4))  # 10: written now, not at the checkpoint
    assert [len(b.metric) for b in proc.sink.batches] == [10] and not proc.held


def test_hardware_rows_due_wait_for_the_training_rows_flush_unless_none_are_held(wall) -> None:
    """Hardware rows written at their own tick made a training insert more (the held training rows
    went with them): at rest 3 inserts into metric_points per 5 s instead of 1 per 2 s."""
    proc, _ = make()  # insert_max_delay_s 1.5, hardware_insert_max_delay_s 4.5
    proc.handle(sample(0))
    for second in range(1, 8):
        wall[0] += 1.0
        if second >= 4:
            proc.handle(batch(second))  # training rows held from 4 s: due at the tick of 6 s
        proc.tick()
        if second == 5:  # the hardware rows due (4.5 s), the training rows not yet: both wait
            assert written(proc) == []
    assert written(proc) == [(6, 2, 1)]  # together at 6 s (the training rows of 4-6 s); those of 7 s held
    proc, _ = make()
    proc.handle(sample(0))
    for _ in range(5):
        wall[0] += 1.0
        proc.tick()
    assert written(proc) == [(0, 2, 1)], "no training rows held: the hardware rows alone, when due"


def test_refused_rows_wait_for_the_checkpoint_as_dead_letters(wall) -> None:
    proc, _ = make()
    refused_source = ("t.metrics", 0, 1)
    proc.sink.write = lambda written: [(refused_source, "ClickHouse refused the row: out of range")]
    proc.handle(batch(0) + batch(1))
    assert proc.take_refused() == []  # held: nothing written, nothing refused yet
    proc.snapshot()
    ((key, value, headers),) = proc.take_refused()
    assert dict(headers)["trainmon-dlq-reason"] == b"rejected" and dict(headers)["trainmon-dlq-offset"] == b"1"
    assert proc.take_refused() == [] and proc.counts["dead_letter.rejected"] == 1


def test_hardware_rows_wait_longer_than_training_rows_and_a_snapshot_writes_both(wall) -> None:
    proc, _ = make()  # insert_max_delay_s 1.5, hardware_insert_max_delay_s 4.5
    for second in range(6):
        proc.handle(batch(second))
        proc.handle(sample(second))
        proc.tick()
        if second == 2:  # the training rows of seconds 0-2 written; the hardware rows and their offsets held
            assert written(proc) == [(6, 0, 0)] and proc.sink.batches[0].offsets == {("t.metrics", 0): 2}
        wall[0] += 1.0
    # at 5 s the hardware rows (2 values and a gpus row a sample) are due too: one write
    assert written(proc) == [(6, 0, 0), (6, 12, 6)]
    assert proc.sink.batches[1].offsets == {("t.metrics", 0): 5, ("t.system", 0): 5}
    proc.handle(sample(6))
    proc.snapshot()
    assert written(proc)[-1] == (0, 2, 1)


def test_an_event_on_another_kinds_topic_is_dead_lettered_and_the_rest_written_as_usual(wall) -> None:
    """A system event on the metrics topic would put hardware rows in a partition whose watermark the
    metrics' inserts move, ahead of the held hardware rows (a worker killed between the two loses
    them), and its host's state under a run's key: the contract refuses it (check_topic)."""
    proc, _ = make(topics={"t.metrics": Topic.METRICS, "t.system": Topic.SYSTEM})
    stray = sample(1, topic="t.metrics")
    outcome = proc.handle([*batch(0), *stray, *batch(2)])
    ((key, value, headers),) = outcome.dead_letters
    assert (key, value) == (stray[0].key, stray[0].value), "the original message, untouched"
    assert (dict(headers)[DLQ_REASON], dict(headers)[DLQ_OFFSET]) == (b"wrong_topic", b"1")
    assert b"belongs on the system topic, not metrics" in dict(headers)[DLQ_DETAIL]
    proc.handle(sample(0))  # on its own topic: taken, held with the hardware rows
    wall[0] += 2.0
    proc.tick()
    assert written(proc) == [(4, 0, 0)] and proc.sink.batches[0].offsets == {("t.metrics", 0): 2}
    assert proc.held_hardware.offsets == {("t.system", 0): 0}


def test_a_tick_says_whether_it_left_rows_held(wall) -> None:
    """The checkpoint at rest waits for a tick that left nothing held (checkpoint_cadence.py)."""
    proc, _ = make()
    proc.handle(batch(0))
    proc.handle(sample(0))
    wall[0] += 2.0
    assert not proc.tick().all_written  # the training rows written, the hardware rows held
    wall[0] += 3.0
    assert proc.tick().all_written  # the hardware rows due: both written
    assert proc.tick().all_written  # nothing came
    proc.handle(batch(1))
    assert not proc.tick().all_written
