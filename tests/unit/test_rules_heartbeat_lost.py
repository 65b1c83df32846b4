"""heartbeat_lost: a rank (any run event) or a node running a job (system samples) silent for timeout_s."""

from __future__ import annotations

import pytest

from tests.unit.alert_streams import T0, Driver, heartbeat, metrics, run_end, spec, system

RANK = spec("heartbeat_lost", "rank_lost", severity="critical", params={"timeout_s": "1m"},
            annotations={"summary": "rank {rank} of {run} on {host} silent {silent_s:.0f}s"})
NODE = spec("heartbeat_lost", "node_silent", selector={"scope": "node"}, params={"timeout_s": 60})


def test_silent_rank_fires_and_resolves_when_heard_again() -> None:
    d = Driver(RANK)
    for i in range(0, 300, 5):
        d.send(heartbeat(T0 + i, rank=0), metrics(i, T0 + i, rank=1, host="node-2", loss=1.0))
        d.tick(T0 + i)
    for i in range(300, 400, 5):  # rank 1 dies at T0 + 295
        d.send(heartbeat(T0 + i, rank=0))
        d.tick(T0 + i)
    assert d.states() == [("rank_lost", "firing")]
    fired = d.alerts[0]
    assert fired["time"] == T0 + 360 and fired["labels"]["rank"] == "1" and fired["labels"]["host"] == "node-2"
    assert fired["annotations"]["summary"] == "rank 1 of r1 on node-2 silent 65s"
    d.send(heartbeat(T0 + 400, rank=1, host="node-2"))
    assert d.states() == [("rank_lost", "firing"), ("rank_lost", "resolved")]


def test_ended_run_is_forgotten() -> None:
    d = Driver(RANK)
    d.tick(T0)
    d.send(heartbeat(T0 + 1), heartbeat(T0 + 1, rank=1), run_end(T0 + 2, rank=0), run_end(T0 + 2, rank=1))
    d.tick(T0 + 1000)
    assert d.alerts == []


def test_run_end_resolves_a_lost_rank() -> None:
    d = Driver(RANK)
    d.tick(T0)
    d.send(heartbeat(T0 + 1, rank=3))
    d.tick(T0 + 100)
    d.send(run_end(T0 + 101, rank=0))
    assert d.states() == [("rank_lost", "firing"), ("rank_lost", "resolved")]


def test_silent_node_during_a_job_fires_idle_node_does_not() -> None:
    d = Driver(NODE)
    for i in range(100):
        d.send(system(T0 + i, "busy", runs=["r1"]), system(T0 + i, "idle"))
        d.tick(T0 + i)
    d.send(system(T0 + 100, "done", runs=["r2"]), system(T0 + 101, "done"))  # its job ended
    d.tick(T0 + 300)
    assert [(a["state"], a["labels"]["host"]) for a in d.alerts] == [("firing", "busy")]
    assert "run" not in d.alerts[0]
    d.send(system(T0 + 301, "busy", runs=["r1"]))
    assert d.states()[-1] == ("node_silent", "resolved")


def test_no_reports_while_catching_up_after_start() -> None:
    """While the partition is not live its clock is the event time and silence is not judged."""
    d = Driver(RANK)
    d.send(heartbeat(T0 - 600))  # a backlog from before the processors started
    d.tick(T0 - 600, live=False)
    d.send(heartbeat(T0 - 590), heartbeat(T0 + 10))
    d.tick(T0 + 30)
    assert d.alerts == []


def test_a_held_tick_judges_nothing_even_far_behind() -> None:  # the test above can fail
    d = Driver(RANK)
    d.send(heartbeat(T0 - 600))
    assert d.tick(T0, live=False) == []
    assert [a["state"] for a in d.tick(T0)] == ["firing"]


def test_steady_heartbeats_fire_nothing() -> None:
    d = Driver(RANK, NODE)
    for i in range(0, 1800, 5):
        d.send(*(heartbeat(T0 + i, rank=r, step=i) for r in range(8)), system(T0 + i, runs=["r1"]))
        d.tick(T0 + i)
    assert d.alerts == []


FAST = spec("heartbeat_lost", "rank_lost", params={"timeout_s": 60})  # missed 5, min_timeout_s 5: defaults


def test_a_rank_beating_every_second_is_lost_after_five_missed_beats() -> None:
    d = Driver(FAST)
    for i in range(30):
        d.send(heartbeat(T0 + i, rank=0), heartbeat(T0 + i, rank=1, host="node-2"))
        d.tick(T0 + i + 0.5)
    for i in range(30, 60):  # rank 1's last beat was at T0 + 29
        d.send(heartbeat(T0 + i, rank=0))
        d.tick(T0 + i + 0.5)
    fired = [a for a in d.alerts if a["state"] == "firing"]
    assert [(a["labels"]["rank"], a["time"]) for a in fired] == [("1", T0 + 34.5)]
    assert fired[0]["values"]["timeout_s"] == 5.0


def test_one_late_beat_does_not_stretch_or_trip_the_cadence() -> None:
    d = Driver(FAST)
    times = [T0 + i for i in range(20)] + [T0 + 23.5] + [T0 + 24 + i for i in range(20)]  # 3.5 s late once
    for t in times:
        d.send(heartbeat(t, rank=0))
        d.tick(t + 0.5)
    assert d.alerts == []


def test_a_node_sampled_every_ten_seconds_gets_fifty() -> None:
    d = Driver(spec("heartbeat_lost", "node_silent", selector={"scope": "node"}, params={"timeout_s": "2m"}))
    for i in range(0, 100, 10):
        d.send(system(T0 + i, "slow", runs=["r1"]))
        d.tick(T0 + i + 1)
    d.tick(T0 + 90 + 45)
    assert d.alerts == []  # 45 s silent: not yet
    d.tick(T0 + 90 + 51)
    assert [(a["state"], a["values"]["timeout_s"]) for a in d.alerts] == [("firing", 50.0)]


def test_metrics_alone_keep_the_fixed_timeout() -> None:
    """A producer without heartbeats: its metrics' cadence says nothing about evaluation pauses."""
    d = Driver(FAST)
    for i in range(100):
        d.send(metrics(i, T0 + i * 0.1, loss=1.0))
    d.tick(T0 + 9.9 + 30)
    assert d.alerts == []
    d.tick(T0 + 9.9 + 61)
    assert d.states() == [("rank_lost", "firing")]


def test_min_timeout_above_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="min_timeout_s"):
        Driver(spec("heartbeat_lost", params={"timeout_s": 4}))


def test_a_declared_checkpoint_gets_the_paused_timeout() -> None:
    d = Driver(FAST)
    for i in range(10):
        d.send(heartbeat(T0 + i, rank=0))
        d.tick(T0 + i + 0.5)
    d.send(heartbeat(T0 + 10, rank=0, phase="checkpoint"))  # then nothing: the write holds the GIL
    d.tick(T0 + 29)
    assert d.alerts == []
    d.tick(T0 + 31)
    assert [(a["state"], a["values"]["timeout_s"]) for a in d.alerts] == [("firing", 20.0)]


def test_a_node_whose_clock_is_two_minutes_behind_is_not_silent() -> None:
    d = Driver(spec("heartbeat_lost", "node_silent", selector={"scope": "node"}))
    for i in range(120):  # samples stamped 120 s in the past, read as they are sent
        d.send(system(T0 + i - 120, "behind", runs=["r1"]), now=T0 + i + 0.2)
        d.tick(T0 + i + 0.5)
    assert d.alerts == []
    d.tick(T0 + 119.2 + 6)  # and when it stops, 5 of its beats later
    assert d.states() == [("node_silent", "firing")]


def test_a_stale_heartbeat_read_late_does_not_end_a_declared_pause() -> None:
    """Found by bench/detection.py with the late_delivery hazard: a node's events read 2-4 s late and
    out of order; the heartbeat sent before the checkpoint, read after the one declaring it, took the
    rank out of its pause, and the checkpoint's starved heartbeats then paged it as lost."""
    d = Driver(FAST)
    for i in range(10):
        d.send(heartbeat(T0 + i, rank=0), now=T0 + i + 2)
        d.tick(T0 + i + 2.5)
    d.send(heartbeat(T0 + 10.5, rank=0, phase="checkpoint"), now=T0 + 12.6)
    d.send(heartbeat(T0 + 10, rank=0), now=T0 + 13.9)  # sent before the checkpoint began, read after
    for t in (T0 + 16, T0 + 20):  # no heartbeat for 4 s: the checkpoint holds the GIL
        d.tick(t)
    d.send(heartbeat(T0 + 14.5, rank=0, phase="checkpoint"), now=T0 + 18.5)
    d.tick(T0 + 21)
    assert d.alerts == []
