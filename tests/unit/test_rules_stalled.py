"""stalled: step frozen for stall_s while the run's GPUs are busy (the NCCL hang), from metrics,
heartbeats and the processors' run_hardware summaries."""

from __future__ import annotations

from tests.unit.alert_streams import T0, Driver, heartbeat, metrics, run_end, run_hardware, spec

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
        if i < 300:
            assert d.alerts == [], i
    assert d.states() == [("run_stalled", "firing")]
    fired = d.alerts[0]
    assert fired["time"] == hang + 300 and fired["labels"]["run"] == "r1" and fired["project"] == "p"
    assert fired["values"]["step"] == 59 and fired["values"]["gpu_util_percent"] == 97.0
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
