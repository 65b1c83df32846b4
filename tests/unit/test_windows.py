"""Rolling windows: exact aggregates per scope, NaN kept out, late data counted, rank spread."""

from __future__ import annotations

import math

import pytest

from trainmon.stream_processors.sink import Batch
from trainmon.stream_processors.windows import Windows
from trainmon.contract import envelope

T0 = 1_764_230_400.0  # on a 5-minute boundary


def metrics_batch(events) -> Batch:
    batch = Batch()
    for offset, event in enumerate(events):
        batch.add_metrics(event, "t", 0, offset)
    return batch


def event(run, rank, step, t, **values):
    return envelope("metrics", project="p", run=run, rank=rank, host="h", step=step, time=t, values=values)


def by_key(rows):
    return {(r["scope"], r["window"], r["run"], r["host"], r["gpu"], r["name"], r["window_start"].timestamp()): r
            for r in rows}


def test_run_windows_pool_ranks_and_skip_non_finite():
    windows = Windows(sizes_s=(10,), lateness_s=0)
    events = [event("r", rank, step, T0 + step, loss=float(step + rank)) for step in range(10) for rank in (0, 1)]
    events.append(event("r", 0, 10, T0 + 9.5, loss=math.nan))
    windows.add_metrics(metrics_batch(events).metric)
    windows.add_metrics(metrics_batch([event("r", 0, 11, T0 + 10, loss=0.0)]).metric)  # moves the watermark
    rows = by_key(windows.close_due())
    row = rows[("run", "10s", "r", "", -1, "loss", T0)]
    values = [float(step + rank) for step in range(10) for rank in (0, 1)]
    assert row["count"] == 20 and row["min"] == 0.0 and row["max"] == 10.0
    assert row["mean"] == pytest.approx(sum(values) / 20)
    assert row["stddev"] == pytest.approx(math.sqrt(sum(v * v for v in values) / 20 - (sum(values) / 20) ** 2))
    assert row["last"] == 10.0  # rank 1 at step 9, the newest finite value
    assert len(rows) == 1, "the window at T0+10 is still open"


def test_windows_of_several_sizes_close_at_their_own_ends():
    windows = Windows(sizes_s=(10, 60), lateness_s=2)
    windows.add_metrics(metrics_batch([event("r", 0, s, T0 + s, loss=1.0) for s in range(0, 75)]).metric)
    rows = windows.close_due()
    assert {(r["window"], r["window_start"].timestamp() - T0) for r in rows} == \
        {("10s", 0), ("10s", 10), ("10s", 20), ("10s", 30), ("10s", 40), ("10s", 50), ("10s", 60), ("1m", 0)}
    assert all(r["count"] == (60 if r["window"] == "1m" else 10) for r in rows)


def test_late_events_for_a_written_window_are_counted_not_merged():
    windows = Windows(sizes_s=(10,), lateness_s=0)
    windows.add_metrics(metrics_batch([event("r", 0, s, T0 + s, loss=1.0) for s in range(25)]).metric)
    assert len(windows.close_due()) == 2
    windows.add_metrics(metrics_batch([event("r", 0, 99, T0 + 1, loss=5.0)]).metric)
    windows.catch_up()  # batches are held until the windows are read
    assert windows.late_events == 1
    assert all(r["max"] == 1.0 for r in windows.close_due(force=True))


def test_rank_spread_of_step_time_for_stragglers():
    windows = Windows(sizes_s=(10,), lateness_s=0)
    events = [event("r", rank, s, T0 + s, step_time_s=1.0 if rank else 3.0) for s in range(10) for rank in range(4)]
    windows.add_metrics(metrics_batch(events).metric)
    rows = [r for r in windows.close_due(force=True) if r["scope"] == "ranks"]
    assert len(rows) == 1
    assert (rows[0]["count"], rows[0]["min"], rows[0]["median"], rows[0]["max"]) == (4, 1.0, 1.0, 3.0)


def test_host_and_gpu_scopes_from_system_samples():
    batch = Batch()
    for s in range(10):
        batch.add_system(envelope("system", host="n1", time=T0 + s, figures={"cpu_percent": 10.0 * s},
                                  gpus=[{"index": 0, "uuid": "G0", "figures": {"util_percent": 50.0}}]), "t", 0, s)
    windows = Windows(sizes_s=(10,), lateness_s=0)
    windows.add_system(batch.system)
    rows = by_key(windows.close_due(force=True))
    assert rows[("host", "10s", "", "n1", -1, "cpu_percent", T0)]["mean"] == pytest.approx(45.0)
    assert rows[("gpu", "10s", "", "n1", 0, "util_percent", T0)]["count"] == 10


def test_batches_held_to_the_next_read_aggregate_as_if_added_one_by_one():
    events = [event(f"r{s % 3}", s % 2, s, T0 + s / 7, loss=float(s % 11), step_time_s=1.0 + s % 5) for s in range(300)]
    events[120] = event("r0", 0, 120, T0 + 30, loss=9.5)  # ahead of the rest: windows close in between
    batches = [metrics_batch(events[i:i + 37]).metric for i in range(0, len(events), 37)]
    held, one_by_one = Windows(sizes_s=(10, 60), lateness_s=1), Windows(sizes_s=(10, 60), lateness_s=1)
    closed_held, closed_one = [], []
    for index, batch in enumerate(batches):
        held.add_metrics(batch, wall=float(index))
        one_by_one.add_metrics(batch, wall=float(index))
        one_by_one.catch_up()
        if index % 3 == 2:  # a tick
            closed_held += held.close_due()
            closed_one += one_by_one.close_due()
        elif index < 2:  # before the first tick nothing is read: everything is still held
            assert held._held and not held.open
    assert held.state() == one_by_one.state() and not held._held
    assert by_key(closed_held) == by_key(closed_one) and len(closed_held) == len(closed_one) > 0
    assert by_key(held.close_due(force=True)) == by_key(one_by_one.close_due(force=True))
    assert "_held" not in held.state()


def test_held_batches_wait_for_a_window_end_and_no_more_than_max_held(monkeypatch):
    """At rest a tick only moves the limits: the values are grouped when a window ends, not every tick."""
    windows = Windows(sizes_s=(10, 60), lateness_s=2)
    first = ("run", "10s", "p", "r", -1, "", -1, "loss", T0)
    for s in range(9):  # a batch a second from T0 + 3, a tick after each
        windows.add_metrics(metrics_batch([event("r", 0, s, T0 + 3 + s, loss=1.0)]).metric, wall=float(s))
        assert windows.close_due(wall=float(s)) == []
        if s:  # the first tick has no limit to start from; the 10 s window ends once the watermark is T0 + 12
            assert windows._held and windows.open[first][0] == 1, f"tick {s}: only the first tick's value merged"
    windows.add_metrics(metrics_batch([event("r", 0, 9, T0 + 12, loss=1.0)]).metric, wall=9.0)
    rows = windows.close_due(wall=9.0)
    assert not windows._held
    assert [(r["window"], r["window_start"].timestamp() - T0, r["count"]) for r in rows] == [("10s", 0, 7)]
    assert {(k[1], k[-1] - T0) for k in windows.open} == {("10s", 10), ("1m", 0)}

    monkeypatch.setattr("trainmon.stream_processors.windows.MAX_HELD", 3)
    windows.add_metrics(metrics_batch([event("r", 0, s, T0 + s, loss=1.0) for s in (13, 14, 15)]).metric, wall=10.0)
    assert windows.close_due(wall=10.0) == [] and not windows._held, "3 values held: aggregated, no window ended"
    assert windows.open[("run", "10s", "p", "r", -1, "", -1, "loss", T0 + 10)][0] == 6  # T0 + 10 to + 15
