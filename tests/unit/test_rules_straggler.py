"""straggler: a rank's recent step time above factor x the run's median (logged step_time_s or derived)."""

from __future__ import annotations

from tests.unit.alert_streams import T0, Driver, metrics, run_end, spec

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
