"""threshold: training metrics and system figures (host and per GPU), ratio_of, `for`, resolve."""

from __future__ import annotations

import re

import pytest

from trainmon.stream_processors.rules import build_rule
from tests.unit.alert_streams import T0, Driver, gpu, metrics, spec, system

GIB = 2**30
GPU_MEMORY = spec("threshold", "gpu_memory_high", for_s=60,
                  selector={"figure": "mem_used_bytes", "scope": "gpu"},
                  params={"ratio_of": "mem_total_bytes", "value": 0.95},
                  annotations={"summary": "GPU {gpu} on {host} at {value:.0%}"})


def node(t: float, used_gib: float) -> dict:
    return system(t, runs=["r1"], gpus=[gpu(0, mem_used_bytes=int(used_gib * GIB), mem_total_bytes=80 * GIB),
                                        gpu(1, mem_used_bytes=10 * GIB, mem_total_bytes=80 * GIB)])


def test_gpu_memory_ratio_fires_after_for_and_resolves() -> None:
    d = Driver(GPU_MEMORY)
    for i in range(59):  # 79 of 80 GiB = 98.75 %, held 58 s: still pending
        assert d.send(node(T0 + i, 79)) == []
    fired = d.send(node(T0 + 60, 79))
    assert [(a["state"], a["labels"]["gpu"]) for a in fired] == [("firing", "0")]
    assert fired[0]["annotations"]["summary"] == "GPU 0 on node-1 at 99%"
    assert fired[0]["values"] == {"value": pytest.approx(79 / 80), "threshold": 0.95}
    assert fired[0]["starts_at"] == T0
    assert d.send(node(T0 + 61, 79)) == []  # de-duplicated
    resolved = d.send(node(T0 + 62, 40))
    assert [(a["state"], a["ends_at"]) for a in resolved] == [("resolved", T0 + 62)]


def test_for_needs_a_confirming_sample_not_just_time() -> None:
    d = Driver(GPU_MEMORY)
    d.send(node(T0, 79))
    assert d.tick(T0 + 59) == [] and d.tick(T0 + 600) == []
    d.send(node(T0 + 601, 79))
    assert [a["state"] for a in d.alerts] == ["firing"]


def test_clean_stream_fires_nothing() -> None:
    d = Driver(GPU_MEMORY)
    for i in range(600):
        d.send(node(T0 + i, 70 + (i % 5)))  # up to 74/80 = 92.5 %
        d.tick(T0 + i)
    assert d.alerts == []


def test_short_spike_below_for_fires_nothing() -> None:
    d = Driver(GPU_MEMORY)
    d.send(*(node(T0 + i, 79) for i in range(30)), node(T0 + 30, 40))
    d.tick(T0 + 200)
    assert d.alerts == []


def test_host_figure_and_training_metric() -> None:
    host = spec("threshold", "host_memory", selector={"figure": "mem_used_percent", "scope": "host"},
                params={"op": ">=", "value": 95})
    loss = spec("threshold", "loss_high", selector={"metric": "loss", "rank": 0}, params={"value": 10})
    d = Driver(host, loss)
    d.send(system(T0, mem_used_percent=96.0), metrics(1, T0, loss=12.0), metrics(1, T0, rank=1, loss=50.0))
    assert sorted((a["rule"], tuple(sorted(a["labels"].items()))) for a in d.alerts) == [
        ("host_memory", (("alertname", "host_memory"), ("host", "node-1"), ("severity", "warning"))),
        ("loss_high", (("alertname", "loss_high"), ("metric", "loss"), ("project", "p"), ("rank", "0"),
                       ("run", "r1"), ("severity", "warning"))),
    ]
    d.send(system(T0 + 1, mem_used_percent=50.0), metrics(2, T0 + 1, lr=0.1), metrics(3, T0 + 2, loss=1.0))
    assert d.states()[2:] == [("host_memory", "resolved"), ("loss_high", "resolved")]


def test_routes_only_the_selected_source() -> None:
    assert build_rule(GPU_MEMORY).consumes == {"system"}
    assert build_rule(spec("threshold", selector={"metric": "loss"}, params={"value": 1})).consumes == {"metrics"}


@pytest.mark.parametrize("selector, params, message", [
    ({}, {"value": 1}, "selector.metric: give exactly one"),
    ({"metric": "loss", "figure": "x"}, {"value": 1}, "selector.metric: give exactly one"),
    ({"metric": "loss"}, {}, "value: required"),
    ({"metric": "loss"}, {"value": 1, "op": "=="}, "op: expected one of >, >=, <, <="),
    ({"figure": "x", "scope": "rack"}, {"value": 1}, "selector.scope: expected one of gpu, host"),
    ({"metric": "loss"}, {"value": "high"}, "value: expected a number"),
])
def test_bad_settings(selector: dict, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_rule(spec("threshold", selector=selector, params=params))


TEMPERATURE = spec("threshold", "gpu_temperature_high", for_s=10, selector={"figure": "temperature_c"},
                   params={"value": 85, "clear": 80})


def hot(t: float, celsius: float) -> dict:
    return system(t, runs=["r1"], gpus=[gpu(0, temperature_c=celsius)])


def test_clear_keeps_a_short_for_from_flapping() -> None:
    d = Driver(TEMPERATURE)
    for i in range(60):  # 84-87 °C: dips below 85 every other second, never back to 80
        d.send(hot(T0 + i, 87 if i % 2 else 84))
    assert d.states() == [("gpu_temperature_high", "firing")]
    assert d.alerts[0]["time"] == T0 + 11  # pending at 1 s, confirmed 10 s later
    d.send(hot(T0 + 60, 80))
    assert d.states() == [("gpu_temperature_high", "firing"), ("gpu_temperature_high", "resolved")]


def test_without_clear_the_same_samples_never_hold_for_ten_seconds() -> None:  # so the test above can fail
    d = Driver(spec("threshold", for_s=10, selector={"figure": "temperature_c"}, params={"value": 85}))
    for i in range(60):
        d.send(hot(T0 + i, 87 if i % 2 else 84))
    assert d.alerts == []


def test_clear_on_the_firing_side_is_refused() -> None:
    with pytest.raises(ValueError, match="clear: 90 is on the firing side"):
        build_rule(spec("threshold", selector={"figure": "temperature_c"}, params={"value": 85, "clear": 90}))
