"""Run state: one run across ranks, worst final status, metadata merged, snapshots throttled."""

from __future__ import annotations

import json

from trainmon.stream_processors.runs import RunBook, raw_event_row
from trainmon.contract import envelope

T = 1_764_230_400.0


def ev(kind, rank, t, **fields):
    return envelope(kind, project="p", run="r", rank=rank, host=f"node-{rank // 8}", time=T + t, **fields)


def test_a_multi_node_run_is_one_run_with_its_ranks_and_hosts():
    book = RunBook()
    for rank in range(16):
        book.observe(ev("run_start", rank, 0, world_size=16, local_rank=rank % 8, config={"lr": 0.1}))
    book.observe(ev("run_meta", 0, 1, datasets=[{"name": "c4", "version": "v1"}], config={"batch": 32}))
    runs, ranks = book.snapshots(T + 2, force=True)
    assert len(runs) == 1 and len(ranks) == 16
    assert runs[0]["hosts"] == ["node-0", "node-1"] and runs[0]["world_size"] == 16
    assert json.loads(runs[0]["config"]) == {"lr": 0.1, "batch": 32}
    assert json.loads(runs[0]["datasets"]) == [{"name": "c4", "version": "v1"}]
    assert runs[0]["status"] == "running"


def test_status_is_finished_only_when_every_rank_finished_and_worst_wins():
    book = RunBook()
    for rank in range(2):
        book.observe(ev("run_start", rank, 0, world_size=2))
    book.observe(ev("run_end", 0, 5, status="finished"))
    assert book.snapshots(T + 6, force=True)[0][0]["status"] == "running"
    book.observe(ev("run_end", 1, 6, status="finished"))
    assert book.snapshots(T + 7, force=True)[0][0]["status"] == "finished"
    book.observe(ev("run_end", 1, 7, status="failed"))
    row = book.snapshots(T + 8, force=True)[0][0]
    assert row["status"] == "failed" and row["ended_at"] is not None


def test_heartbeats_are_throttled_into_one_snapshot():
    book = RunBook(snapshot_every_s=5)
    book.observe(ev("run_start", 0, 0, world_size=1))
    book.snapshots(T, force=True)
    for t in range(1, 5):
        book.observe(ev("heartbeat", 0, t, step=t * 10))
    assert book.snapshots(T + 4) == ([], [])
    runs, ranks = book.snapshots(T + 7)
    assert len(runs) == 1 and ranks[0]["last_step"] == 40


def test_runs_whose_progress_moved_at_different_times_are_written_together_once_a_period():
    """Each write is an insert per table: runs on phases of their own made one each (issue 13)."""
    book = RunBook(snapshot_every_s=15)
    writes = []
    for second in range(46):  # three runs reporting steps every second, each from its own start
        for n, start in enumerate((1, 6, 11)):
            if second >= start:
                book.observe(envelope("heartbeat", project="p", run=f"r{n}", rank=0, host="node-0",
                                      time=T + second, step=second))
        runs, _ = book.snapshots(T + second)
        if runs:
            writes.append((second, sorted(r["run"] for r in runs)))
    # each run's lifecycle would be written at once; progress only: at 15, 30 and 45 s, all runs together
    assert writes == [(15, ["r0", "r1", "r2"]), (30, ["r0", "r1", "r2"]), (45, ["r0", "r1", "r2"])]


def test_raw_lifecycle_rows_keep_the_event_as_sent():
    event = ev("run_start", 0, 0, world_size=1, code={"commit": "abc"})
    assert json.loads(raw_event_row(event)["payload"])["code"] == {"commit": "abc"}


def test_events_the_sdk_dropped_add_up_per_rank_across_its_processes_and_per_run():
    book = RunBook()
    for rank in range(2):
        book.observe(ev("run_start", rank, 0, world_size=2))
    book.observe(ev("heartbeat", 0, 1, producer="a", dropped=5))
    book.observe(ev("heartbeat", 0, 2, producer="a", dropped=7))  # cumulative per producer
    book.observe(ev("heartbeat", 0, 3, producer="a", dropped=6))  # read out of order: never goes back
    book.observe(ev("heartbeat", 0, 4, producer="b", dropped=3))  # the rank's process restarted
    book.observe(ev("heartbeat", 1, 4, producer="c", dropped=1))
    book.observe(ev("heartbeat", 1, 5))  # an older SDK: no count, nothing changes
    runs, ranks = book.snapshots(T + 6, force=True)
    assert [r["events_dropped"] for r in ranks] == [10, 1]
    assert runs[0]["events_dropped"] == 11
