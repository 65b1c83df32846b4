"""The shipped rules on a healthy 2-node, 4-rank run for 20 minutes: nothing fires, not even a pending
alert left behind; then the same run with a NaN loss and a hot GPU fires exactly those two."""

from __future__ import annotations

import statistics

from trainmon.stream_processors.config import load_pipeline
from tests.unit.alert_streams import T0, Driver, gpu, heartbeat, metrics, run_end, run_hardware, system

GIB = 2**30
RANKS = {0: "node-0", 1: "node-0", 2: "node-1", 3: "node-1"}


def node_sample(t: float, host: str, temperature: float = 71.0) -> dict:
    gpus = [gpu(i, util_percent=93.0 + i % 3, mem_used_bytes=61 * GIB, mem_total_bytes=80 * GIB,
                temperature_c=temperature if i == 0 else 68.0, ecc_corrected=2, ecc_uncorrected=0,
                throttle_thermal=0, throttle_power=0, throttle_hw_slowdown=0) for i in range(2)]
    return system(t, host, runs=["r1"], gpus=gpus, mem_used_percent=52.0, disk_used_percent=41.0, cpu_percent=35.0)


def healthy_run(d: Driver, seconds: int, *, nan_at: int | None = None, hot_from: int | None = None) -> None:
    noise = [0.04, -0.03, 0.02, -0.05, 0.01]
    for s in range(seconds):
        t = T0 + s
        for rank, host in RANKS.items():
            loss = "NaN" if s == nan_at else 2.5 * 0.999**s + noise[(s + rank) % 5]
            values = {"loss": loss, "lr": 3e-4, "step_time_s": 0.5 + 0.01 * ((s + rank) % 4)}
            if s % 100 == 99:
                values["val_loss"] = 2.6 * 0.999**s + 0.05
            d.send(metrics(s, t, rank=rank, host=host, epoch=s / 100, **values))
            if s % 5 == 0:
                d.send(heartbeat(t, rank=rank, step=s, host=host))
        for host in ("node-0", "node-1"):
            sample = node_sample(t, host, temperature=90.0 if hot_from is not None and s >= hot_from else 71.0)
            d.send(sample)
            util = statistics.fmean(g["figures"]["util_percent"] for g in sample["gpus"])
            d.send(run_hardware(t, host=host, util=util, gpus=len(sample["gpus"])))
        d.tick(t + 0.5)


def test_healthy_run_fires_nothing() -> None:
    d = Driver(*load_pipeline().rules)
    healthy_run(d, 1200)
    assert d.alerts == []
    assert d.book.tick(T0 + 1200) == [] and d.book.firing() == []
    d.send(*(run_end(T0 + 1201, rank=r) for r in RANKS))
    d.tick(T0 + 1300)
    assert d.alerts == []


def test_nan_loss_and_hot_gpu_fire_those_rules_only() -> None:
    d = Driver(*load_pipeline().rules)
    healthy_run(d, 400, nan_at=200, hot_from=300)
    assert sorted(set(d.states())) == [("gpu_temperature_high", "firing"), ("loss_non_finite", "firing"),
                                       ("loss_non_finite", "resolved")]
