"""stalled: step frozen far longer than the run's own cadence (at least min_stall_s, stall_s until the
cadence is known) while its GPUs are busy (the NCCL hang), from metrics, heartbeats and the
processors' run_hardware summaries."""

from __future__ import annotations

from tests.unit.alert_streams import T0, Driver, heartbeat, metrics, run_end, run_hardware, spec
from trainmon.contract import envelope, validate

STALLED = spec("stalled", "run_stalled", severity="critical", params={"stall_s": "5m"},
               annotations={"summary": "{run} stuck at step {step}"})


def progress(d: Driver, start: float, seconds: int, step0: int = 0, util: float = 97.0) -> None:
    for i in range(seconds):
        t = start + i
        d.send(metrics(step0 + i, t, loss=1.0), metrics(step0 + i, t, rank=1, host="node-2", loss=1.0),
               run_hardware(t, util=util), run_hardware(t, host="node-2", util=util))
        d.tick(t)


def test_hang_with_busy_gpus_fires_and_resolves_when_steps_advance() -> None:
    d = Driver(STALLED)
    progress(d, T0, 60)
    hang = T0 + 59  # last step 59; from now on only heartbeats (same step) and busy GPUs
    for i in range(1, 400):
        t = hang + i
        d.send(heartbeat(t, step=59), heartbeat(t, rank=1, step=59, host="node-2"),
               run_hardware(t, util=99.0), run_hardware(t, host="node-2", util=95.0))
        d.tick(t)
        if i < 20:
            assert d.alerts == [], i
    assert d.states() == [("run_stalled", "firing")]
    fired = d.alerts[0]  # a step a second: 10 x 1 s, raised to min_stall_s
    assert fired["time"] == hang + 20 and fired["labels"]["run"] == "r1" and fired["project"] == "p"
    assert fired["values"]["step"] == 59 and fired["values"]["gpu_util_percent"] == 97.0
    assert fired["values"]["limit_s"] == 20
    assert fired["annotations"]["summary"] == "r1 stuck at step 59"
    d.send(metrics(60, hang + 400, loss=1.0))
    assert d.states() == [("run_stalled", "firing"), ("run_stalled", "resolved")]


def test_frozen_step_with_idle_gpus_is_not_a_stall() -> None:
    d = Driver(STALLED)
    progress(d, T0, 10)
    for i in range(1, 900):  # e.g. a long evaluation on CPU, or a checkpoint upload
        d.send(heartbeat(T0 + 9 + i, step=9), run_hardware(T0 + 9 + i, util=3.0))
        d.tick(T0 + 9 + i)
    assert d.alerts == []


def test_gpus_going_quiet_clears_and_run_end_forgets() -> None:
    d = Driver(STALLED)
    progress(d, T0, 5)
    d.send(run_hardware(T0 + 400, util=99.0))
    d.tick(T0 + 400)
    assert d.states() == [("run_stalled", "firing")]
    d.send(run_hardware(T0 + 401, util=0.0), run_hardware(T0 + 401, host="node-2", util=0.0))
    d.tick(T0 + 401)
    assert d.states()[-1] == ("run_stalled", "resolved")
    d.send(run_hardware(T0 + 402, util=99.0), run_end(T0 + 402))
    d.tick(T0 + 2000)
    assert len(d.alerts) == 2


def test_healthy_run_fires_nothing() -> None:
    d = Driver(STALLED)
    progress(d, T0, 1200)
    assert d.alerts == []


def test_a_run_stepping_every_two_minutes_gets_twenty() -> None:
    d = Driver(STALLED)
    for k in range(6):  # steps at 0, 120, ... 600; GPUs busy throughout
        t0 = T0 + 120 * k
        d.send(metrics(k, t0, loss=1.0))
        for i in range(0, 120, 5):
            d.send(run_hardware(t0 + i, util=99.0))
            d.tick(t0 + i)
    assert d.alerts == []
    last = T0 + 600
    for i in range(0, 1300, 5):
        d.send(run_hardware(last + i, util=99.0))
        d.tick(last + i)
    assert [(a["state"], a["time"], a["values"]["limit_s"]) for a in d.alerts] == [("firing", last + 1200, 1200)]


def test_the_limit_is_stall_s_until_the_cadence_is_known() -> None:
    d = Driver(STALLED)
    d.send(metrics(0, T0, loss=1.0), metrics(1, T0 + 1, loss=1.0))  # one gap: compiling, warming up
    for i in range(2, 400):
        d.send(run_hardware(T0 + i, util=99.0))
        d.tick(T0 + i)
    assert [(a["state"], a["time"]) for a in d.alerts] == [("firing", T0 + 301)]


def test_samples_that_stopped_say_nothing_about_now() -> None:
    """A node that died mid-step: its last busy sample must not make a stall (node_silent says it)."""
    d = Driver(STALLED)
    progress(d, T0, 60)
    for i in range(1, 100):
        d.send(heartbeat(T0 + 59 + i, step=59))  # heartbeats go on; the GPU samples stop at T0 + 61
        if i <= 2:
            d.send(run_hardware(T0 + 59 + i, util=99.0))
        d.tick(T0 + 59 + i)
    assert d.alerts == []
    d.send(run_hardware(T0 + 160, util=99.0))  # so the test can fail: a fresh busy sample is a stall
    d.tick(T0 + 160)
    assert d.states() == [("run_stalled", "firing")]


def frozen(d: Driver, start: float, seconds: int, step: int, phase: str | None = None) -> None:
    """Both ranks heartbeat at a frozen step with busy GPUs (an evaluation, a checkpoint, or a hang)."""
    for i in range(seconds):
        t = start + i
        d.send(heartbeat(t, step=step, phase=phase), heartbeat(t, rank=1, step=step, host="node-2", phase=phase),
               run_hardware(t, util=99.0), run_hardware(t, host="node-2", util=95.0))
        d.tick(t)


def test_a_declared_evaluation_is_no_stall_and_one_far_longer_than_usual_is() -> None:
    d = Driver(STALLED)
    progress(d, T0, 60)
    start = T0 + 60
    for k in range(3):  # three 60 s evaluations, training in between
        frozen(d, start, 60, step=59 + 30 * k, phase="eval")
        progress(d, start + 60, 30, step0=60 + 30 * k)
        start += 90
    assert d.alerts == []  # 60 s frozen each time, 3x the 20 s limit: declared, so nothing
    frozen(d, start, 200, step=149, phase="eval")  # the 4th: 3 x its usual 60 s is 180 s
    assert [(a["state"], a["time"], a["values"]["limit_s"]) for a in d.alerts] == [("firing", start + 180, 180)]


def test_the_same_evaluation_undeclared_is_a_stall() -> None:  # so the test above can fail
    d = Driver(STALLED)
    progress(d, T0, 60)
    frozen(d, T0 + 60, 60, step=59)
    assert d.states() == [("run_stalled", "firing")]


def test_a_stall_after_a_pause_counts_from_its_end() -> None:
    d = Driver(STALLED)
    progress(d, T0, 60)
    frozen(d, T0 + 60, 100, step=59, phase="checkpoint")
    frozen(d, T0 + 160, 25, step=59)  # the checkpoint ended; training does not come back: a hang
    assert [(a["state"], a["time"]) for a in d.alerts] == [("firing", T0 + 160 + 20)]


def test_a_resume_from_an_earlier_step_is_progress() -> None:
    """A restarted job resumes from its last checkpoint: run_start again, then steps below the old ones."""
    d = Driver(STALLED)
    progress(d, T0, 300)  # up to step 299
    d.send(validate(envelope("run_start", project="p", run="r1", rank=0, host="node-1", time=T0 + 310,
                             world_size=2, config={}, code={}, environment={})))
    progress(d, T0 + 311, 120, step0=200)  # from the checkpoint at step 200
    assert d.alerts == []


def test_a_rank_on_a_host_whose_clock_is_a_minute_behind_is_no_stall() -> None:
    d = Driver(STALLED)
    for i in range(120):  # both ranks step each second; node-2's clock is 60 s behind
        t = T0 + i
        d.send(metrics(i, t, loss=1.0), run_hardware(t, util=97.0))
        d.send(metrics(i, t - 60, rank=1, host="node-2", loss=1.0), run_hardware(t - 60, host="node-2", util=97.0),
               now=t + 0.1)
        d.tick(t + 0.5)
    assert d.alerts == []
