"""Per-partition state without Kafka: snapshots restore exactly, replays and re-sends change nothing,
one bad event stays one dead letter, the clock holds silence verdicts during a backlog, lost runs."""

from __future__ import annotations

import pickle
import zlib

import cramjam
import pytest

from trainmon.stream_processors import processing as processing_module
from trainmon.stream_processors.config import PipelineConfig
from trainmon.stream_processors.processing import Message, Processing
from trainmon.stream_processors.sink import _types as sink_types
from trainmon.stream_processors.snapshots import MAGIC, ZLIB_MAGIC, SnapshotError, loads
from tests.unit.alert_streams import heartbeat, metrics, run_end, spec, system
from tests.unit.test_processing import Dispatcher, MemorySink
from trainmon.contract import encode

T = 1_764_230_400.0
RULES = [spec("non_finite", "loss_nan", selector={"metrics": ["loss"]}),
         spec("plateau", "loss_plateau", params={"patience": 3}),
         spec("heartbeat_lost", "rank_lost", params={"timeout_s": 60})]


@pytest.fixture
def wall(monkeypatch):
    now = [T]
    monkeypatch.setattr(processing_module.time, "time", lambda: now[0])
    return now


def make(snapshots: dict[int, bytes] | None = None, lost_after_s: float = 900.0,
         **options: float) -> tuple[Processing, Dispatcher]:
    pipeline = PipelineConfig(rules=RULES, routes=[], windows_s=[10.0], repeat_interval_s=3600.0,
                              dashboard_url="http://127.0.0.1:8501", path="test")
    dispatcher = Dispatcher()
    loader = (lambda p: [snapshots[p]] if p in snapshots else []) if snapshots is not None else None
    return Processing(pipeline, MemorySink(), dispatcher, lost_after_s=lost_after_s, snapshot_loader=loader,
                      **options), dispatcher


class Feed:
    """Messages with increasing offsets on one partition of the metrics and runs topics."""

    def __init__(self) -> None:
        self.offsets = {"t.metrics": 0, "t.runs": 0}

    def __call__(self, *events: dict) -> list[Message]:
        out = []
        for event in events:
            topic = "t.metrics" if event["kind"] == "metrics" else "t.runs"
            out.append(Message(topic, 0, self.offsets[topic], b"r1", encode(event)))
            self.offsets[topic] += 1
        return out


def run(proc: Processing, messages: list[Message]) -> list[dict]:
    alerts = []
    for message in messages:
        outcome = proc.handle([message])
        alerts += outcome.alerts
    proc.dispatch(alerts)
    return alerts


def plateau_stream(feed: Feed) -> list[Message]:
    return feed(*(metrics(i, T + i, loss=1.0, val_loss=1.0) for i in range(10)))


def test_a_restored_worker_fires_and_resolves_exactly_as_one_that_never_stopped(wall):
    whole, _ = make()
    feed = Feed()
    stream = plateau_stream(feed) + feed(metrics(10, T + 10, loss="NaN"), metrics(11, T + 11, loss=0.5))
    expected = [(a["rule"], a["state"], a["starts_at"]) for a in run(whole, stream)]
    assert ("loss_nan", "firing", T + 10) in expected and ("loss_nan", "resolved", T + 10) in expected

    first, _ = make()
    before = run(first, stream[:11])  # dies after the NaN fired
    snapshot = first.snapshot()
    second, _ = make(snapshot)
    after = run(second, stream[6:])  # the committed offset lagged the snapshot: 6..10 are replayed
    assert second.counts["replayed"] == 5
    assert [(a["rule"], a["state"], a["starts_at"]) for a in before + after] == expected


def test_without_the_snapshot_the_takeover_loses_the_episode(wall):  # so the test above can fail
    feed = Feed()
    stream = plateau_stream(feed) + feed(metrics(10, T + 10, loss="NaN"), metrics(11, T + 11, loss=0.5))
    first, _ = make()
    run(first, stream[:11])
    second, _ = make({})
    assert ("loss_nan", "resolved") not in [(a["rule"], a["state"]) for a in run(second, stream[11:])]


class Kept(MemorySink):
    """ClickHouse across worker restarts: what one worker wrote stays for the next, whose replays of it
    are skipped by offset, as by the sink's watermark."""

    def __init__(self, written: list) -> None:
        super().__init__()
        self.batches = written

    def skip(self, topic: str, partition: int, offset: int) -> bool:
        return any(offset <= batch.offsets.get((topic, partition), -1) for batch in self.batches)


def restart(snapshots: dict[int, bytes], written: list) -> Processing:
    proc, _ = make(snapshots)
    proc.sink = Kept(written)
    return proc


def rows(written: list) -> list[tuple]:
    """Every raw row written: (topic, offset, name) of metric values, (topic, offset, kind) of run events."""
    out = [(t, o, n) for b in written for (t, _, o), n in zip(
        [s for s, c in zip(b.metric.sources(), b.metric.counts) for _ in range(c)], b.metric.names)]
    return out + [(r["src_topic"], r["src_offset"], r["kind"]) for b in written for r in b.rows.get("run_events", ())]


def test_an_alerts_light_snapshot_leaves_raw_rows_held_and_a_restore_writes_each_once(wall):
    """An alert's checkpoint writes the alert's row but not the raw rows (the bulk insert it no longer
    waits for); a crash before they are written leaves them to the next owner, who writes each once
    and sends no alert twice."""
    written: list = []
    feed = Feed()
    stream = feed(*(metrics(i, T + i, loss=1.0, acc=0.5) for i in range(5)), run_end(T + 5, run="r2"),
                  metrics(5, T + 5, loss="NaN"))
    first = restart({}, written)
    first.handle(stream)
    snapshots = first.snapshot(light=True)
    assert [(a["rule"], a["state"]) for a in first.release()[0]] == [("loss_nan", "firing")]
    assert rows(written) == [] and any(b.rows.get("alerts") for b in written)  # dies before the next flush
    second = restart(snapshots, written)
    second.handle(stream)  # nothing was acked: everything is replayed
    second.flush()
    assert second.counts["replayed"] == 7 and second.counts["rewritten"] == 7
    assert second.release() == ([], [])  # the alert was sent: it is in the state, not made again
    expected = [("t.metrics", i, n) for i in range(5) for n in ("loss", "acc")] + [("t.metrics", 5, "loss")]
    assert sorted(rows(written)) == sorted(expected + [("t.runs", 0, "run_end")])
    third = restart(snapshots, written)  # the same snapshot restored once the rows were written: none twice
    third.handle(stream)
    third.flush()
    assert third.counts["rewritten"] == 0 and sorted(rows(written)) == sorted(expected + [("t.runs", 0, "run_end")])


def test_a_second_alert_mid_replay_keeps_the_rows_not_yet_replayed_listed(wall):
    """The next owner is still replaying when another alert's light snapshot is taken: that snapshot
    lists the rows it has re-read and holds and those it has not re-read yet, so a second crash loses
    none of them either."""
    written: list = []
    feed = Feed()
    stream = feed(*(metrics(i, T + i, loss=1.0) for i in range(6)), metrics(6, T + 6, loss="NaN"))
    first = restart({}, written)
    first.handle(stream)
    snapshots = first.snapshot(light=True)
    second = restart(snapshots, written)
    second.handle(stream[:3])  # replayed 0-2, then a light snapshot (another partition's alert, say)
    second.partitions[0].dirty = True
    snapshots = second.snapshot(light=True)
    third = restart(snapshots, written)
    third.handle(stream)
    third.flush()
    assert sorted(rows(written)) == [("t.metrics", i, "loss") for i in range(7)]


def test_a_late_snapshot_of_the_former_owner_never_wins_over_the_new_owner(wall):
    """A worker shutting down can write its last snapshot after the group moved on: it is of an older
    generation, so the next owner restores the current owner's state, whatever the numbers."""
    feed = Feed()
    stream = plateau_stream(feed)
    former, _ = make()
    former.assign([0], generation=3)
    run(former, stream[:4])
    handed = former.snapshot()[0]
    current, _ = make({0: handed})
    current.assign([0], generation=4)
    run(current, stream[4:])
    mine = current.snapshot()[0]
    for _ in range(5):  # late: more snapshots than the new owner has written
        former.partitions[0].dirty = True
        late = former.snapshot()[0]
    assert loads(late, "trainmon-processors", 0)[0] == (3, 6) and loads(mine, "trainmon-processors", 0)[0] == (4, 2)
    nxt, _ = make()
    nxt.snapshot_loader = lambda p: [mine, late]
    nxt.assign([0], generation=5)
    assert nxt.partitions[0].applied == {"t.metrics": 9}


def test_events_whose_rows_clickhouse_has_still_reach_the_windows(wall):
    """A takeover from an older snapshot re-applies events the former owner already wrote: no row twice,
    and the windows still count every event once."""
    proc, _ = make()
    proc.sink.skip = lambda topic, partition, offset: offset < 6  # rows 0..5 already in ClickHouse
    proc.handle(Feed()(*(metrics(i, T + i, loss=1.0) for i in range(10))))
    proc.flush()  # rows are held until a checkpoint or a full insert
    assert sum(len(b.metric) for b in proc.sink.batches) == 4
    proc.partitions[0].windows.catch_up()  # batches aggregate when the windows are next read
    (window,) = [acc for key, acc in proc.partitions[0].windows.open.items() if "loss" in key]
    assert window[0] == 10


def second_the_last_window_closes(proc: Processing, wall: list[float]) -> int:
    """Three events in the window [T, T+10), then nothing more on a partition read to its end: the
    second (of wall time) at which that window is no longer open."""
    wall[0] = T + 3
    proc.handle(Feed()(*(metrics(i, T + 1 + i, loss=1.0) for i in range(3))))
    for second in range(4, 60):
        wall[0] = T + second
        proc.tick({("t.metrics", 0): (3, T + second)})  # offsets 0-2: all read
        if not proc.partitions[0].windows.open:
            return second
    raise AssertionError("the window never closed")


def test_a_quiet_source_closes_its_last_windows_after_window_idle_not_the_default(wall):
    """[processors] window_idle: once the metrics have been quiet that long (20 s by default) their window
    closes on the partition's clock, which runs 1 s behind the fetches, when that passes its end by the
    lateness (2 s here): at T+13 at the soonest."""
    assert second_the_last_window_closes(make(lateness_s=2.0)[0], wall) == 23  # quiet since T+3, for 20 s
    assert second_the_last_window_closes(make(lateness_s=2.0, window_idle_s=5.0)[0], wall) == 13


def test_a_restored_partition_keeps_the_running_workers_window_idle_not_the_snapshots(wall):
    former, _ = make(lateness_s=2.0)  # 20 s
    wall[0] = T + 1
    former.handle(Feed()(metrics(0, T + 1, loss=1.0)))
    taker, _ = make(former.snapshot(), lateness_s=3.0, window_idle_s=5.0)
    taker.assign([0])
    windows = taker.partitions[0].windows
    assert (windows.idle_s, windows.lateness_s, windows.sizes) == (5.0, 3.0, [10.0])
    assert windows.open, "the restored open window"


def test_resent_events_are_dropped_by_producer_and_seq(wall):
    proc, _ = make()
    feed = Feed()
    events = [dict(metrics(i, T + i, loss=1.0 / (i + 1)), producer="p1", seq=i) for i in range(5)]
    proc.handle(feed(*events))
    proc.handle(feed(*events[2:]))  # the spool re-sent 2..4 after a crash: new offsets, same seq
    proc.handle(feed(dict(metrics(5, T + 5, loss=0.1), producer="p2", seq=0)))  # a new incarnation
    proc.flush()  # rows are held until a checkpoint or a full insert
    written = sum(len(b.metric) for b in proc.sink.batches)
    assert proc.counts["resent"] == 3 and written == 6


def test_one_event_that_breaks_a_rule_is_dead_lettered_and_the_rest_goes_on(wall, monkeypatch):
    proc, _ = make()
    feed = Feed()
    from trainmon.stream_processors.rules.plateau import Plateau

    original = Plateau.on_event

    def explode(self, event, now):
        if event["step"] == 3:
            raise OverflowError("boom")
        return original(self, event, now)

    monkeypatch.setattr(Plateau, "on_event", explode)
    outcome = proc.handle(feed(*(metrics(i, T + i, loss=1.0) for i in range(6))))
    (_, _, headers), = outcome.dead_letters
    assert dict(headers)["trainmon-dlq-reason"] == b"internal_error"
    proc.flush()  # rows are held until a checkpoint or a full insert
    assert sum(len(b.metric) for b in proc.sink.batches) == 5


def test_forged_internal_messages_are_dead_lettered(wall):
    proc, _ = make()
    outcome = proc.handle([Message("t.run-hardware", 0, 0, b"r1", b'{"kind":"run_hardware","run":7}'),
                           Message("t.run-hardware", 0, 1, b"r1", b"\xff")], source="run_hardware")
    assert [dict(h)["trainmon-dlq-reason"] for _, _, h in outcome.dead_letters] == [b"wrong_type", b"malformed"]


def test_a_backlog_drained_late_pages_no_healthy_rank(wall):
    """Five minutes of heartbeats from two ranks read ten minutes late, at 1.5x: nobody is silent."""
    proc, dispatcher = make()
    feed = Feed()
    proc.handle(feed(heartbeat(T, rank=0), heartbeat(T, rank=1)))
    proc.tick()
    wall[0] = T + 600  # the worker was down; the backlog is read now
    for second in range(0, 300, 3):
        proc.handle(feed(heartbeat(T + second, rank=0), heartbeat(T + second, rank=1)))
        proc.dispatch(proc.tick().alerts)
        wall[0] += 2
    wall[0] += 3  # caught up: nothing new read for a while
    proc.handle(feed(heartbeat(wall[0] - 1, rank=0), heartbeat(wall[0] - 1, rank=1)))
    proc.dispatch(proc.tick().alerts)
    assert dispatcher.alerts == []


def test_a_restored_partition_judges_no_node_before_it_has_read_that_nodes_backlog(wall):
    """After an outage the new owner may read the metrics backlog before the system samples waiting on
    the same partition: until the system topic has caught up too, the node's last sample (from before
    the outage) says nothing about it."""
    node_rule = [spec("heartbeat_lost", "node_silent", selector={"scope": "node"}, params={"timeout_s": 60})]
    pipeline = PipelineConfig(rules=node_rule, routes=[], windows_s=[10.0], repeat_interval_s=3600.0,
                              dashboard_url="http://127.0.0.1:8501", path="test")
    first = Processing(pipeline, MemorySink(), Dispatcher())
    samples = iter(range(10**6))

    def sample(t: float) -> Message:
        return Message("t.system", 0, next(samples), b"node-1", encode(system(t, runs=["r1"])))

    first.handle([sample(T)])
    first.handle(Feed()(metrics(0, T, loss=1.0)))
    first.tick()
    snapshot = first.snapshot()
    wall[0] = T + 300  # the worker was down for five minutes; the cluster kept training
    dispatcher = Dispatcher()
    second = Processing(pipeline, MemorySink(), dispatcher, snapshot_loader=lambda p: [snapshot[p]])
    feed = Feed()
    feed.offsets["t.metrics"] = 1
    second.handle(feed(*(metrics(s, T + s, loss=1.0) for s in range(1, 300))))  # metrics caught up first
    second.dispatch(second.tick().alerts)
    wall[0] += 0.5
    second.handle([sample(T + s) for s in range(1, 300)])  # then the node's own backlog
    second.dispatch(second.tick().alerts)
    wall[0] += 5
    second.handle([sample(wall[0] - 1)])
    second.dispatch(second.tick().alerts)
    assert dispatcher.alerts == []
    wall[0] += 120  # and a node that really goes silent is still reported
    second.dispatch(second.tick().alerts)
    assert [(a["rule"], a["state"]) for a in dispatcher.alerts] == [("node_silent", "firing")]


def test_a_rank_silent_while_live_is_reported(wall):  # the test above can fail
    proc, dispatcher = make()
    feed = Feed()
    proc.handle(feed(heartbeat(T, rank=0), heartbeat(T, rank=1)))
    for second in range(5, 120, 5):
        wall[0] = T + second
        proc.handle(feed(heartbeat(T + second, rank=0)))
        proc.dispatch(proc.tick().alerts)
    assert [(a["rule"], a["labels"]["rank"]) for a in dispatcher.alerts] == [("rank_lost", "1")]


def test_a_run_without_run_end_is_lost_once_and_evicted(wall):
    proc, dispatcher = make(lost_after_s=300)
    feed = Feed()
    proc.handle(feed(heartbeat(T, rank=0), metrics(1, T, loss="NaN")))  # a NaN alert is firing
    for minute in range(1, 80):
        wall[0] = T + 60 * minute
        proc.dispatch(proc.tick().alerts)
    states = [(a["rule"], a["state"]) for a in dispatcher.alerts]
    assert states.count(("run_lost", "firing")) == 1
    assert ("loss_nan", "resolved") in states and ("rank_lost", "resolved") in states
    proc.flush()  # rows are held until a checkpoint or a full insert
    rows = [row for b in proc.sink.batches for row in b.rows["runs"]]
    assert rows[-1]["status"] == "lost"
    assert proc.partitions[0].size() == 0  # evicted from the run book, every rule and the alert book


def test_memory_is_flat_over_ten_thousand_finished_runs(wall):
    proc, _ = make()
    sizes = []
    for index in range(10_000):
        run_id = f"r{index}"
        wall[0] = T + 10 * index
        proc.handle([Message("t.runs", 0, 2 * index, run_id.encode(), encode(heartbeat(wall[0], run=run_id))),
                     Message("t.runs", 0, 2 * index + 1, run_id.encode(), encode(run_end(wall[0] + 1, run=run_id)))])
        if index % 50 == 0:
            proc.tick()
        if index % 1000 == 999:
            sizes.append(proc.partitions[0].size())
    assert max(sizes[3:]) <= 1.1 * sizes[3], sizes  # after the keep time (1 h = 360 runs) it stays flat


def test_snapshots_refuse_foreign_types_and_other_partitions():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    evil = pickle.dumps({"group": "g", "partition": 0, "version": 1, "state": Evil()})
    for forged in (MAGIC + bytes(cramjam.lz4.compress_block(evil)), ZLIB_MAGIC + zlib.compress(evil)):
        with pytest.raises(SnapshotError, match="posix.system|os.system"):
            loads(forged, "g", 0)
    proc, _ = make()
    proc.handle(Feed()(heartbeat(T)))
    data = proc.snapshot()[0]
    with pytest.raises(SnapshotError, match="another group or partition"):
        loads(data, "trainmon-processors", 1)
    assert loads(data, "trainmon-processors", 0)[0] == (0, 1)


def test_a_snapshot_an_older_worker_wrote_with_zlib_still_restores():
    proc, _ = make()
    proc.handle(Feed()(heartbeat(T)))
    data = proc.snapshot()[0]
    assert data.startswith(MAGIC)
    older = ZLIB_MAGIC + zlib.compress(bytes(cramjam.lz4.decompress_block(data[len(MAGIC):])), 1)
    assert repr(loads(older, "trainmon-processors", 0)) == repr(loads(data, "trainmon-processors", 0))
    restored, _ = make({0: older})
    restored.assign([0])
    assert restored.partitions[0].version == (0, 1) and restored.partitions[0].book.runs


def test_extreme_integers_are_converted_or_dead_lettered_and_other_runs_are_intact(wall):
    proc, _ = make()
    good = [Message("t.metrics", 0, i if i < 2 else i + 3, b"ok", encode(metrics(i, T + i, run="ok", loss=1.0)))
            for i in range(5)]
    big = Message("t.metrics", 0, 2, b"x", encode(metrics(5, T, run="x", count=2**63, ns=1_764_230_400_123_456_789)))
    wide = Message("t.metrics", 0, 3, b"x", b'{"v":1,"kind":"metrics","project":"p","run":"x","rank":0,"host":"h",'
                   b'"time":1764230400,"step":' + b"9" * 4301 + b',"values":{}}')
    rank = Message("t.metrics", 0, 4, b"x", encode({**metrics(1, T, run="x", loss=1.0), "rank": 2**32}))
    outcome = proc.handle(good[:2] + [big, wide, rank] + good[2:])
    assert sorted(dict(h)["trainmon-dlq-reason"] for _, _, h in outcome.dead_letters) == [b"invalid_value", b"malformed"]
    proc.flush()  # rows are held until a checkpoint or a full insert
    (batch,) = proc.sink.batches
    assert len(batch.metric) == 5 + 2 and batch.metric.arrow(sink_types()).num_rows == 7
    assert float(2**63) in batch.metric.values  # converted to the nearest float, written


def test_each_alert_is_released_once_with_the_snapshot_that_records_it_as_sent(wall):
    """An alert made after a snapshot was taken waits for the next one: a crash in between restores a
    state that has not sent it, so it is made again, never lost; one released is in the snapshot."""
    proc, _ = make()
    feed = Feed()
    proc.handle(feed(metrics(0, T, loss="NaN")))
    snapshots, (released, notifications) = proc.snapshot(), proc.release()
    assert [(a["rule"], a["state"]) for a in released] == [("loss_nan", "firing")] and notifications == []
    other = Message("t.metrics", 1, 0, b"r2", encode(metrics(0, T, run="r2", loss="NaN")))
    proc.handle([other])  # after the snapshot: not released with it
    restored, _ = make(snapshots)
    restored.handle(feed(metrics(1, T + 1, loss="NaN")))  # the NaN episode goes on: nothing new to send
    assert restored.release() == ([], [])
    final = proc.revoke([0])  # a rebalance takes partition 0: partition 1 changed too, so it is snapshotted
    assert sorted(final) == [0, 1]
    assert [(a["run"], a["state"]) for a in proc.release()[0]] == [("r2", "firing")]
    assert proc.release() == ([], [])


def test_a_topic_read_ahead_of_the_metrics_backlog_makes_none_of_it_late(wall):
    """After a takeover the runs topic (heartbeats) catches up at once while the metrics backlog takes
    seconds: the training windows close on the metrics' own time, so none of the backlog is late."""
    proc, _ = make()
    feed = Feed()
    wall[0] = T + 60
    proc.handle(feed(heartbeat(T + 59)))  # the runs topic, read up to now
    proc.tick()
    proc.handle(feed(*(metrics(s, T + s, loss=1.0) for s in range(20))))  # the metrics backlog, a minute old
    proc.tick()
    state = proc.partitions[0]
    assert state.windows.late_events == 0
    wall[0] += 30  # no more metrics: their windows close on the partition's clock
    proc.tick()
    proc.flush()  # rows are held until a checkpoint or a full insert
    written = [r for b in proc.sink.batches for r in b.rows["window_aggregates"] if r["name"] == "loss"]
    assert sum(r["count"] for r in written) == 20 and state.windows.late_events == 0


def test_an_upgrade_that_retires_a_rules_state_class_resets_that_rule_and_keeps_the_rest(wall, monkeypatch):
    """A snapshot written by a version whose plateau kept its state in a class this version no longer
    has: the partition's other rules, its alerts and its offsets are restored, the plateau starts afresh."""
    import dataclasses
    import sys
    import types

    from trainmon.stream_processors.snapshots import Retired, dumps

    module = types.ModuleType("trainmon.stream_processors.rules.old_plateau_state")

    @dataclasses.dataclass
    class Track:  # the retired version's per-run state
        best: float = 0.0

    Track.__module__, Track.__qualname__ = module.__name__, "Track"
    module.Track = Track
    monkeypatch.setitem(sys.modules, module.__name__, module)
    proc, _ = make()
    feed = Feed()
    proc.handle(feed(metrics(0, T, loss="NaN")))  # loss_nan fires: its alert is in the book
    state = proc.partitions[0].state()
    plateau = next(rule for rule in proc.partitions[0].engines["run"].rules if rule.spec.name == "loss_plateau")
    fields = state["engines"]["run"]["rules"]["loss_plateau"][1]
    fields[next(iter(fields))] = {"r1": Track(0.5)}
    data = dumps("trainmon-processors", 0, (1, 1), state)
    monkeypatch.delitem(sys.modules, module.__name__)  # the upgrade: the class is gone
    _, loaded = loads(data, "trainmon-processors", 0)
    assert isinstance(next(iter(loaded["engines"]["run"]["rules"]["loss_plateau"][1].values()))["r1"], Retired)
    restored, _ = make({0: data})
    restored.assign([0])
    state = restored.partitions[0]
    assert state.applied == proc.partitions[0].applied  # offsets, book and the other rules kept
    assert [a["rule"] for a in state.engines["run"].book.firing()] == ["loss_nan"]
    fresh = next(rule for rule in state.engines["run"].rules if rule.spec.name == "loss_plateau")
    assert {k: v for k, v in vars(fresh).items() if k.startswith("_")} == {
        k: v for k, v in vars(type(plateau)(plateau.spec)).items() if k.startswith("_")}


def test_a_snapshot_written_before_the_components_moved_inside_trainmon_restores_whole(wall):
    """Snapshots name their classes by module; those of earlier versions say `stream_processors.…`,
    the installed package now says `trainmon.stream_processors.…`. An upgrade must not reset state.
    Those versions wrote zlib (ZLIB_MAGIC)."""
    proc, _ = make()
    feed = Feed()
    proc.handle(feed(metrics(0, T, loss="NaN")))
    record = {"group": "trainmon-processors", "partition": 0, "version": (1, 1), "state": proc.partitions[0].state()}
    body = pickle.dumps(record, protocol=3)  # protocol 3 writes module names as plain text lines
    assert b"ctrainmon.stream_processors." in body
    legacy = ZLIB_MAGIC + zlib.compress(body.replace(b"ctrainmon.stream_processors.", b"cstream_processors."))
    _, loaded = loads(legacy, "trainmon-processors", 0)
    assert loaded["applied"] == proc.partitions[0].state()["applied"]
    restored, _ = make({0: legacy})
    restored.assign([0])
    assert restored.partitions[0].applied == proc.partitions[0].applied
    assert restored.partitions[0].state() == proc.partitions[0].state()


def test_reading_snapshots_waits_for_a_leader_of_a_state_topic_made_moments_ago(monkeypatch):
    """A worker that creates the state topic and reads it at once can be told NOT_LEADER_FOR_PARTITION:
    it waits for the leader instead of dying (seen on a broker that had just started)."""
    import confluent_kafka
    from confluent_kafka import KafkaError, KafkaException

    from trainmon.settings import Settings
    from trainmon.stream_processors.state_topic import latest_snapshots

    answers = [KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)), (5, 5)]
    monkeypatch.setattr(confluent_kafka, "Consumer", StateTopicConsumer(answers, []))
    assert latest_snapshots(Settings(), "t.processor-state", 0, "g", timeout_s=5) == []
    assert answers == []
    answers[:] = [KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))]
    with pytest.raises(KafkaException):  # not a wait: refused for good
        latest_snapshots(Settings(), "t.processor-state", 0, "g", timeout_s=5)


class StateTopicConsumer:
    """confluent_kafka.Consumer for latest_snapshots: watermark answers (an exception is raised) in turn,
    then the tail's messages, or nothing at all (a partition whose leader is away)."""

    def __init__(self, answers: list, messages: list) -> None:
        self.answers, self.messages, self.closed = answers, messages, False
        self.leaders_asked = 0

    def list_topics(self, topic, timeout):
        self.leaders_asked += 1

    def __call__(self, config):
        return self

    def get_watermark_offsets(self, partition, timeout):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def assign(self, partitions) -> None:
        pass

    def poll(self, timeout):
        return self.messages.pop(0) if self.messages else None

    def close(self) -> None:
        self.closed = True


def test_reading_snapshots_waits_out_a_leader_that_died(monkeypatch):
    """A broker SIGKILLed while a worker restores its partitions: the dead leader's offset requests time
    out, then fail once librdkafka drops the broker, and the new leader may not know its high watermark
    yet. Each try is short, the leader is asked for again after each, and they go on until the deadline
    (one 10 s try that timed out crashed the worker: tests/integration/test_kafka_cluster.py)."""
    import confluent_kafka
    from confluent_kafka import KafkaError, KafkaException

    from trainmon.settings import Settings
    from trainmon.stream_processors import state_topic

    failures = [KafkaException(KafkaError(code)) for code in (
        KafkaError._TIMED_OUT, KafkaError._DESTROY_BROKER, KafkaError.OFFSET_NOT_AVAILABLE)]
    fake = StateTopicConsumer([*failures, (5, 5)], [])
    monkeypatch.setattr(confluent_kafka, "Consumer", fake)
    assert state_topic.latest_snapshots(Settings(), "t.processor-state", 0, "g", timeout_s=5) == []
    assert fake.answers == [] and fake.closed and fake.leaders_asked == 3


def test_a_state_tail_not_read_to_its_end_is_an_error_not_fewer_snapshots(monkeypatch):
    """Restoring from the snapshots read so far would restore an older state (or none) and lose what
    the newest one holds: past the deadline the read fails instead."""
    import confluent_kafka

    from trainmon.settings import Settings
    from trainmon.stream_processors import state_topic

    class Message:
        def __init__(self, offset: int) -> None:
            self._offset = offset

        def error(self):
            return None

        def key(self) -> bytes:
            return b"g"

        def value(self) -> bytes:
            return f"snapshot {self._offset}".encode()

        def offset(self) -> int:
            return self._offset

    fake = StateTopicConsumer([(0, 3)], [Message(0), Message(1)])  # offset 2 never comes
    monkeypatch.setattr(confluent_kafka, "Consumer", fake)
    with pytest.raises(TimeoutError, match="not read to its end"):
        state_topic.latest_snapshots(Settings(), "t.processor-state", 0, "g", timeout_s=0.5)
    fake = StateTopicConsumer([(0, 3)], [Message(0), Message(1), Message(2)])
    monkeypatch.setattr(confluent_kafka, "Consumer", fake)
    assert state_topic.latest_snapshots(Settings(), "t.processor-state", 0, "g", timeout_s=5) == [
        b"snapshot 0", b"snapshot 1", b"snapshot 2"]
