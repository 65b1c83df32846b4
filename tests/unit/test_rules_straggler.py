"""straggler: a rank's recent step time (logged step_time_s or derived) above factor x its peers' median
and z robust z-scores above them; stale (dead) ranks left out; named with rank, host and GPU."""

from __future__ import annotations

import math
import random
from typing import Callable

import pytest

from trainmon.stream_processors import snapshots
from trainmon.stream_processors.rules.straggler import Straggler
from tests.unit.alert_streams import T0, Driver, metrics, run_end, spec
from trainmon.contract import envelope, validate

STRAGGLER = spec("straggler", for_s=30, params={"factor": 1.5, "window_s": 60},
                 annotations={"summary": "rank {rank} on {host}: {ratio:.1f}x"})


def step_times(d: Driver, seconds: int, start: float, slow_rank: int | None, ranks: int = 4) -> None:
    """Each rank logs step_time_s once a second; the slow one takes 2x."""
    for i in range(seconds):
        t = start + i
        d.send(*(metrics(int(t - T0), t, rank=r, host=f"node-{r // 2}",
                         step_time_s=(0.8 if r == slow_rank else 0.4) + 0.01 * ((i + r) % 3)) for r in range(ranks)))
        d.tick(t)


def test_slow_rank_fires_after_for_and_resolves_when_it_catches_up() -> None:
    d = Driver(STRAGGLER)
    step_times(d, 60, T0, None)
    assert d.alerts == []
    step_times(d, 60, T0 + 60, slow_rank=2)  # its median turns slow after ~30 s, then `for` 30 s
    assert d.alerts == []
    step_times(d, 5, T0 + 120, slow_rank=2)
    assert [(a["state"], a["labels"]["rank"], a["labels"]["host"]) for a in d.alerts] == [("firing", "2", "node-1")]
    assert d.alerts[0]["annotations"]["summary"] == "rank 2 on node-1: 2.0x"
    step_times(d, 120, T0 + 125, None)  # the window forgets the slow minute
    assert d.states() == [("straggler", "firing"), ("straggler", "resolved")]


def test_step_time_derived_from_steps_and_times() -> None:
    """Unchanged by the new defaults (window_s 20 s, z 3.5): rank 2's peers (ranks 0 and 1) have a
    median of 1.0 s and identical times, so its z is large (the MAD floor) and the ratio exactly 2."""
    d = Driver(spec("straggler", params={"factor": 1.5}))
    for i in range(30):
        d.send(metrics(i, T0 + i, rank=0, loss=1.0), metrics(i, T0 + i, rank=1, loss=1.0),
               metrics(i // 2, T0 + i, rank=2, loss=1.0))  # rank 2 takes 2 s a step
        d.tick(T0 + i)
    assert [(a["state"], a["labels"]["rank"]) for a in d.alerts] == [("firing", "2")]
    assert d.alerts[0]["values"]["ratio"] == 2.0
    d.send(run_end(T0 + 31))
    assert d.states()[-1] == ("straggler", "resolved")


def test_needs_min_ranks() -> None:
    d = Driver(spec("straggler", params={"min_ranks": 3}))
    for i in range(30):
        d.send(metrics(i, T0 + i, rank=0, step_time_s=0.1), metrics(i, T0 + i, rank=1, step_time_s=5.0))
        d.tick(T0 + i)
    assert d.alerts == []


def test_even_ranks_fire_nothing() -> None:
    d = Driver(STRAGGLER)
    step_times(d, 600, T0, None, ranks=16)
    assert d.alerts == []


# --- the robust relative detector: peers, z-score, freshness, naming, detection delay -----------------

SHIPPED = spec("straggler", for_s=Straggler.default_for_s,  # the rule's defaults: the recommended shipped rule
               annotations={"summary": "Rank {rank} of run {run} on {host} GPU {gpu}: {ratio:.1f}x its peers"})


def run_start(t: float, rank: int, local_rank: int | None, host: str, run: str = "r1", ranks: int = 8) -> dict:
    return validate(envelope("run_start", project="p", run=run, rank=rank, host=host, time=t, world_size=ranks,
                             local_rank=local_rank))


def cluster(seconds: float, *, ranks: int = 8, start: float = T0, step_s: float = 0.5, log_every: int = 2,
            logged: bool = True, jitter: float = 0.05, slowdown: Callable[[int, float], float] = lambda r, t: 1.0,
            alive: Callable[[int, float], bool] = lambda r, t: True, seed: int = 1,
            noise: Callable[[random.Random], float] | None = None) -> list[dict]:
    """Metrics of independent ranks (4 per host, GPU = rank % 4) in time order: each step takes step_s x
    slowdown x (1 ± jitter, or 1 + noise()), and every log_every-th step is logged (with step_time_s, the
    last step's time, when `logged`; else the rule derives it)."""
    rng = random.Random(seed)
    out: list[dict] = []
    for r in range(ranks):
        t, step = start, 0
        while True:
            took = step_s * slowdown(r, t) * (1.0 + (noise(rng) if noise else rng.uniform(-jitter, jitter)))
            t, step = t + took, step + 1
            if t >= start + seconds:
                break
            if step % log_every == 0 and alive(r, t):
                values = {"loss": 1.0, **({"step_time_s": took} if logged else {})}
                out.append(metrics(step, t, rank=r, host=f"node-{r // 4}", **values))
    out.sort(key=lambda e: e["time"])
    return out


def drive(d: Driver, events: list[dict], until: float) -> None:
    """Send the events in time order, ticking each whole second in between and up to `until`."""
    tick = math.floor(events[0]["time"]) if events else math.floor(until)
    for event in events:
        while tick <= event["time"]:
            d.tick(tick)
            tick += 1
        d.send(event)
    while tick <= until:
        d.tick(tick)
        tick += 1


def firing(d: Driver) -> list[dict]:
    return [a for a in d.alerts if a["state"] == "firing"]


def test_slow_rank_named_with_host_and_gpu() -> None:
    d = Driver(SHIPPED)
    d.send(*(run_start(T0, r, r % 4, f"node-{r // 4}") for r in range(8)))
    drive(d, cluster(180, slowdown=lambda r, t: 2.0 if r == 6 and t >= T0 + 60 else 1.0), T0 + 180)
    assert [(a["state"], a["labels"]["rank"], a["labels"]["host"], a["labels"]["gpu"]) for a in d.alerts] == [
        ("firing", "6", "node-1", "2")]
    alert = d.alerts[0]
    assert alert["annotations"]["summary"] == "Rank 6 of run r1 on node-1 GPU 2: 2.0x its peers"
    values = alert["values"]
    assert 1.8 < values["ratio"] < 2.2 and 0.45 < values["score"] < 0.55 and values["z"] > 3.5
    assert values["value"] == values["ratio"] * values["median"] and values["score"] == 1 / values["ratio"]


def test_gpu_learnt_from_a_late_run_start_or_from_metrics() -> None:
    """run_start travels on another topic and may be read after the rank's metrics: the alert moves to
    the subject with the GPU (the old one resolves). A local_rank on a metrics event is taken too."""
    d = Driver(spec("straggler"))
    drive(d, cluster(30, ranks=4, slowdown=lambda r, t: 2.0 if r == 1 else 1.0), T0 + 30)
    assert [(a["state"], a["labels"]["rank"], a["labels"].get("gpu")) for a in d.alerts] == [("firing", "1", None)]
    d.send(run_start(T0 + 30, 1, 1, "node-0", ranks=4))
    drive(d, cluster(10, ranks=4, start=T0 + 30, slowdown=lambda r, t: 2.0 if r == 1 else 1.0), T0 + 40)
    assert [(a["state"], a["labels"]["rank"], a["labels"].get("gpu")) for a in d.alerts] == [
        ("firing", "1", None), ("resolved", "1", None), ("firing", "1", "1")]

    d = Driver(spec("straggler"))
    events = cluster(30, ranks=4, slowdown=lambda r, t: 2.0 if r == 2 else 1.0)
    for event in events:
        event["local_rank"] = event["rank"] + 4  # not a contract field of metrics, but tolerated by it
    drive(d, events, T0 + 30)
    assert [(a["state"], a["labels"]["rank"], a["labels"]["gpu"]) for a in d.alerts] == [("firing", "2", "6")]


def test_rank_restarted_on_another_host_is_named_there() -> None:
    """An elastic restart moves rank 1 to node-9 (GPU 0): its alert follows it under the new names."""
    d = Driver(spec("straggler"))
    d.send(*(run_start(T0, r, r, "node-0", ranks=4) for r in range(4)))
    slow = lambda r, t: 2.0 if r == 1 else 1.0  # noqa: E731
    drive(d, cluster(30, ranks=4, slowdown=slow), T0 + 30)
    d.send(run_start(T0 + 30, 1, 0, "node-9", ranks=4))
    moved = [dict(e, host="node-9") if e["rank"] == 1 else e for e in cluster(20, ranks=4, start=T0 + 30,
                                                                               slowdown=slow)]
    drive(d, moved, T0 + 50)
    assert [(a["state"], a["labels"]["host"], a["labels"]["gpu"]) for a in d.alerts] == [
        ("firing", "node-0", "1"), ("resolved", "node-0", "1"), ("firing", "node-9", "0")]


@pytest.mark.parametrize("log_every", [2, 10])  # a step time each second, or each 5 s (fewer per window)
def test_noisy_healthy_ranks_never_fire(log_every: int) -> None:
    """±20 % jitter on every step, a 3x step now and then (1 %), and persistent per-rank offsets of up to
    ±8 % (uneven hardware): 16 ranks for 30 minutes under the shipped defaults fire nothing."""
    offset = {r: 1.0 + 0.08 * math.sin(r) for r in range(16)}
    d = Driver(SHIPPED)
    drive(d, cluster(1800, ranks=16, log_every=log_every, slowdown=lambda r, t: offset[r],
                     noise=lambda rng: 2.0 if rng.random() < 0.01 else rng.uniform(-0.2, 0.2)), T0 + 1800)
    assert d.alerts == [] and d.book.firing() == []


def test_z_score_keeps_a_widely_spread_run_quiet() -> None:
    """Ranks whose step times spread from 0.6 to 1.3 s: one at 1.6 s is 1.7x the median but within the
    run's spread (z ~ 2.2); `factor` alone (z 0) would page it. On a tight run the same rank fires."""
    spread = {r: 0.6 + 0.1 * r for r in range(8)} | {8: 1.6}
    tight = {r: 1.0 for r in range(8)} | {8: 1.6}
    for figures, z, expected in ((spread, 3.5, []), (spread, 0.0, ["8"]), (tight, 3.5, ["8"])):
        d = Driver(spec("straggler", params={"z": z}))
        drive(d, cluster(60, ranks=9, step_s=1.0, log_every=1, jitter=0.0, slowdown=lambda r, t: figures[r]),
              T0 + 60)
        assert [a["labels"]["rank"] for a in firing(d)] == expected, (figures, z)


def test_dead_rank_gets_no_verdict_and_its_alert_clears() -> None:
    """Rank 3, slow and firing, stops logging at +30 s: once its newest step time is window_s (20 s)
    behind the others' it is left out and its alert resolves; nothing fires again."""
    d = Driver(spec("straggler"))
    drive(d, cluster(120, ranks=4, slowdown=lambda r, t: 2.0 if r == 3 else 1.0,
                     alive=lambda r, t: r != 3 or t < T0 + 30), T0 + 120)
    assert d.states() == [("straggler", "firing"), ("straggler", "resolved")]
    assert d.alerts[0]["labels"]["rank"] == "3"
    assert T0 + 50 <= d.alerts[1]["time"] <= T0 + 53


def test_dead_ranks_old_times_make_nobody_a_straggler() -> None:
    """Two of three ranks die with fast times and the survivor runs 2x slower from then on (the run
    slowed; it is no straggler). Compared with the dead ranks' stale times it would fire. For window_s
    after their last step the dead ranks' times are still recent and count: the shipped `for` (15 s)
    outlasts the ~10 s the survivor's window takes to turn slow, so nothing fires even when it slows as
    they die; with `for` 0 it slows once they are stale."""
    for rule, slows_at in ((SHIPPED, T0 + 60), (spec("straggler"), T0 + 90)):
        d = Driver(rule)
        drive(d, cluster(300, ranks=3, slowdown=lambda r, t: 2.0 if t >= slows_at else 1.0,
                         alive=lambda r, t: r == 0 or t < T0 + 60), T0 + 300)
        assert d.alerts == [], rule


def test_min_ranks_counts_only_fresh_ranks() -> None:
    """min_ranks 3 of 3: rank 2, slow, fires; rank 0 stops at +30 s (2 fresh ranks: the alert clears),
    comes back at +100 s (3 again: it fires again)."""
    d = Driver(spec("straggler", params={"min_ranks": 3}))
    drive(d, cluster(160, ranks=3, slowdown=lambda r, t: 2.0 if r == 2 else 1.0,
                     alive=lambda r, t: r != 0 or not T0 + 30 <= t < T0 + 100), T0 + 160)
    assert [(a["state"], a["labels"]["rank"]) for a in d.alerts] == [("firing", "2"), ("resolved", "2"),
                                                                    ("firing", "2")]
    assert T0 + 50 <= d.alerts[1]["time"] <= T0 + 53 and T0 + 100 <= d.alerts[2]["time"] <= T0 + 102


@pytest.mark.parametrize("step_s, log_every, logged", [
    (0.5, 2, True),  # step_time_s once a second
    (0.5, 10, True),  # once every 5 s (every 10 s once slow)
    (0.1, 1, True),  # 10 a second: the 128 kept cover 13 s
    (0.5, 2, False),  # derived from steps and times
    (2.0, 1, True),  # 2 s steps (4 s once slow)
])
def test_detection_within_a_minute_with_the_shipped_defaults(step_s: float, log_every: int, logged: bool) -> None:
    """Rank 5 of 8 turns 2x slower at +120 s: the shipped defaults (window_s 20 s, `for` 15 s) name it
    within 60 s (the old 60 s window and `for: 2m` took ~160 s)."""
    assert Straggler(SHIPPED).window_s == 20 and SHIPPED.for_s == 15
    slow_from = T0 + 120
    d = Driver(SHIPPED)
    d.send(*(run_start(T0, r, r % 4, f"node-{r // 4}") for r in range(8)))
    drive(d, cluster(300, step_s=step_s, log_every=log_every, logged=logged,
                     slowdown=lambda r, t: 2.0 if r == 5 and t >= slow_from else 1.0), T0 + 300)
    alerts = firing(d)
    assert [(a["labels"]["rank"], a["labels"]["host"], a["labels"]["gpu"]) for a in alerts] == [("5", "node-1", "1")]
    assert alerts[0]["time"] - slow_from <= 60, alerts[0]["time"] - slow_from


def test_state_is_plain_picklable_data() -> None:
    """Engine.state() snapshots the rule's `_` fields mid-run; a restored engine carries on and fires."""
    d = Driver(SHIPPED)
    d.send(*(run_start(T0, r, r % 4, f"node-{r // 4}") for r in range(8)))
    events = cluster(90, slowdown=lambda r, t: 2.0 if r == 5 and t >= T0 + 30 else 1.0)
    drive(d, [e for e in events if e["time"] < T0 + 40], T0 + 40)
    version, state = snapshots.loads(snapshots.dumps("g", 0, (1, 1), d.engine.state()), "g", 0)
    restored = Driver(SHIPPED)
    restored.engine.restore(state)
    drive(restored, [e for e in events if e["time"] > T0 + 40], T0 + 90)
    assert [(a["labels"]["rank"], a["labels"]["gpu"]) for a in firing(restored)] == [("5", "1")]


def test_params_are_checked() -> None:
    for params, message in (({"min_ranks": 1}, "min_ranks"), ({"z": -1}, "z"), ({"factor": 0.9}, "factor"),
                            ({"window": 20}, "window")):
        with pytest.raises(ValueError, match=message):
            Straggler(spec("straggler", params=params))
