"""heartbeat_lost: a rank (any run event) or a node running a job (system samples) silent for timeout_s."""

from __future__ import annotations

import pytest

from trainmon.stream_processors.snapshots import dumps, loads
from tests.unit.alert_streams import T0, Driver, heartbeat, metrics, run_end, run_hardware, spec, system
from trainmon.contract import envelope, validate

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


# --- a dead process inside a declared pause: the node's process list (run_hardware `pids`) ---------------


def run_start(t: float, rank: int, pid: int | None, host: str = "node-1") -> dict:
    return validate(envelope("run_start", project="p", run="r1", rank=rank, host=host, time=t, world_size=2,
                             pid=pid))


def listing(t: float, *pids: int, host: str = "node-1") -> dict:
    """The processors' run_hardware summary of a sample from `host` listing these pids of run r1."""
    return {**run_hardware(t, host=host), "pids": list(pids)}


def two_ranks(d: Driver, pid: int | None = 101, seconds: int = 10) -> None:
    """Ranks 0 (pid 100) and 1 (`pid`) on node-1 beat every second and their node's 1 s samples list both."""
    d.send(run_start(T0, 0, 100), run_start(T0, 1, pid))
    for i in range(seconds):
        d.send(heartbeat(T0 + i, rank=0), heartbeat(T0 + i, rank=1), listing(T0 + i + 0.5, 100, 101))
        d.tick(T0 + i + 0.6)


def firing_ranks(d: Driver) -> list[tuple[str, float, float, float]]:
    return [(a["labels"]["rank"], a["time"], a["values"]["timeout_s"], a["values"]["process_gone"])
            for a in d.alerts if a["state"] == "firing"]


def test_a_rank_dead_inside_an_evaluation_is_found_once_its_node_no_longer_lists_its_process() -> None:
    d = Driver(FAST)
    two_ranks(d)
    d.send(heartbeat(T0 + 10, rank=0, phase="eval"), heartbeat(T0 + 10, rank=1, phase="eval"),
           listing(T0 + 10.5, 100, 101))
    for i in range(11, 40):  # rank 1 dies at T0 + 10.8: its process leaves the sample at T0 + 11.5
        d.send(heartbeat(T0 + i, rank=0, phase="eval"), listing(T0 + i + 0.5, 100))
        d.tick(T0 + i + 0.6)
    assert firing_ranks(d) == [("1", T0 + 12.6, 2.0, 1.0)]  # 1.8 s after it died: 2 beats missed


def test_a_paused_rank_whose_process_is_still_listed_gets_the_paused_timeout() -> None:
    d = Driver(FAST)
    two_ranks(d)
    d.send(heartbeat(T0 + 10, rank=0, phase="checkpoint"), heartbeat(T0 + 10, rank=1, phase="checkpoint"))
    for i in range(10, 40):  # rank 1's checkpoint write holds the GIL: no beat, but its process lives
        d.send(heartbeat(T0 + i, rank=0, phase="checkpoint"), listing(T0 + i + 0.5, 100, 101))
        d.tick(T0 + i + 0.6)
    assert firing_ranks(d) == [("1", T0 + 30.6, 20.0, 0.0)]


@pytest.mark.parametrize("pid, pids", [(None, (100,)), (101, None)], ids=["no pid in run_start", "no process list"])
def test_without_pids_a_dead_paused_rank_keeps_the_paused_timeout(pid: int | None, pids: tuple | None) -> None:
    d = Driver(FAST)
    two_ranks(d, pid=pid)
    d.send(heartbeat(T0 + 10, rank=0, phase="eval"), heartbeat(T0 + 10, rank=1, phase="eval"))
    for i in range(11, 40):  # rank 1 died at T0 + 10.8
        sample = run_hardware(T0 + i + 0.5) if pids is None else listing(T0 + i + 0.5, *pids)
        d.send(heartbeat(T0 + i, rank=0, phase="eval"), sample)
        d.tick(T0 + i + 0.6)
    assert firing_ranks(d) == [("1", T0 + 30.6, 20.0, 0.0)]


def test_samples_taken_before_the_ranks_latest_event_say_nothing_of_now() -> None:
    """Two samples without its pid, read late but taken before its last heartbeat: not a death."""
    d = Driver(FAST)
    two_ranks(d)
    d.send(heartbeat(T0 + 10, rank=0, phase="checkpoint"), heartbeat(T0 + 10, rank=1, phase="checkpoint"))
    d.send(listing(T0 + 9.7, 100), listing(T0 + 9.9, 100), now=T0 + 10.2)
    for i in range(10, 29):  # rank 1 alive, its checkpoint holds the GIL
        d.send(heartbeat(T0 + i, rank=0, phase="checkpoint"))
        d.tick(T0 + i + 0.6)
    assert d.alerts == []


def test_a_pid_its_node_never_listed_says_nothing() -> None:
    """The SDK could not register with the node daemon: its samples never list the rank's pid."""
    d = Driver(FAST)
    d.send(run_start(T0, 0, 100), run_start(T0, 1, 101))
    for i in range(10):
        d.send(heartbeat(T0 + i, rank=0), heartbeat(T0 + i, rank=1), listing(T0 + i + 0.5, 100))
        d.tick(T0 + i + 0.6)
    d.send(heartbeat(T0 + 10, rank=1, phase="checkpoint"))
    for i in range(10, 40):  # its checkpoint holds the GIL: no beat, process alive but never listed
        d.send(heartbeat(T0 + i, rank=0), listing(T0 + i + 0.5, 100))
        d.tick(T0 + i + 0.6)
    assert firing_ranks(d) == [("1", T0 + 30.6, 20.0, 0.0)]


def test_a_restarted_rank_is_watched_by_its_new_pid() -> None:
    d = Driver(FAST)
    two_ranks(d)
    # Rank 1 restarts at T0 + 10.2: its old process is gone, the new one (pid 202) starts at T0 + 11 and
    # beats from T0 + 14 on; the node lists it from its sample at T0 + 12.5.
    d.send(listing(T0 + 10.5, 100), heartbeat(T0 + 10, rank=0))
    d.tick(T0 + 10.6)
    d.send(run_start(T0 + 11, 1, 202), listing(T0 + 11.5, 100))  # not registered yet: not listed
    d.tick(T0 + 11.6)
    for i in range(12, 30):
        d.send(heartbeat(T0 + i, rank=0), listing(T0 + i + 0.5, 100, 202), *(
            [heartbeat(T0 + i, rank=1)] if i >= 14 else []))
        d.tick(T0 + i + 0.6)
    assert d.alerts == []
    d.send(heartbeat(T0 + 30, rank=0, phase="eval"), heartbeat(T0 + 30, rank=1, phase="eval"))
    for i in range(31, 40):  # and the new process dies inside an evaluation
        d.send(heartbeat(T0 + i, rank=0, phase="eval"), listing(T0 + i + 0.5, 100))
        d.tick(T0 + i + 0.6)
    assert firing_ranks(d) == [("1", T0 + 32.6, 2.0, 1.0)]


def test_a_sign_of_life_after_the_samples_that_missed_the_pid_withdraws_the_verdict() -> None:
    d = Driver(FAST)
    two_ranks(d)
    d.send(heartbeat(T0 + 10, rank=1, phase="eval"), listing(T0 + 10.5, 100), listing(T0 + 11.5, 100))
    d.send(heartbeat(T0 + 11.8, rank=1, phase="eval"))  # alive after all: the process list was wrong
    for i in range(12, 40):  # then quiet in its evaluation, and the samples list no processes
        d.send(heartbeat(T0 + i, rank=0), run_hardware(T0 + i + 0.5))
        d.tick(T0 + i + 0.6)
    assert firing_ranks(d) == [("1", T0 + 32.6, 20.0, 0.0)]


def test_the_process_watch_survives_a_snapshot_and_an_older_snapshot_restores() -> None:
    d = Driver(FAST)
    two_ranks(d)
    state = loads(dumps("g", 0, (1, 1), d.engine.state()), "g", 0)[1]
    restored = Driver(FAST)
    restored.engine.restore(state)
    restored.send(heartbeat(T0 + 10, rank=0, phase="eval"), heartbeat(T0 + 10, rank=1, phase="eval"))
    for i in range(11, 20):
        restored.send(heartbeat(T0 + i, rank=0, phase="eval"), listing(T0 + i + 0.5, 100))
        restored.tick(T0 + i + 0.6)
    assert firing_ranks(restored) == [("1", T0 + 12.6, 2.0, 1.0)]
    fields = state["rules"]["rank_lost"][1]  # a snapshot from before pids: none of their fields
    del fields["_pids_on"]
    for seen in fields["_seen"].values():
        for name in ("pid", "pid_host", "listed", "missing", "said", "sampled"):
            del seen.__dict__[name]
    old = Driver(FAST)
    old.engine.restore(state)
    old.send(heartbeat(T0 + 10, rank=0, phase="eval"), heartbeat(T0 + 10, rank=1, phase="eval"))
    for i in range(11, 40):
        old.send(heartbeat(T0 + i, rank=0, phase="eval"), listing(T0 + i + 0.5, 100))
        old.tick(T0 + i + 0.6)
    assert firing_ranks(old) == [("1", T0 + 30.6, 20.0, 0.0)]
