"""hardware_errors: ECC counters rising, throttle flags, a GPU that stopped answering; one alert per check."""

from __future__ import annotations

import pytest

from trainmon.stream_processors.rules import build_rule
from tests.unit.alert_streams import T0, Driver, gpu, spec, system

CRITICAL = spec("hardware_errors", "gpu_hardware_error", severity="critical",
                selector={"checks": ["ecc_uncorrected", "error"]}, params={"window_s": "10m"},
                annotations={"summary": "GPU {gpu} on {host}: {check}"})
DEGRADED = spec("hardware_errors", "gpu_degraded", selector={"checks": ["ecc_corrected", "throttle_thermal"]},
                params={"corrected_threshold": 10, "window_s": 60})


def node(t: float, **figures: float) -> dict:
    healthy = {"ecc_uncorrected": 0, "ecc_corrected": 3, "throttle_thermal": 0, "throttle_power": 0}
    return system(t, gpus=[gpu(0, **{**healthy, **figures}), gpu(1, **healthy)])


def test_uncorrected_ecc_fires_at_once_and_resolves_after_the_window() -> None:
    d = Driver(CRITICAL)
    d.send(node(T0), node(T0 + 1))
    fired = d.send(node(T0 + 2, ecc_uncorrected=1))
    assert [(a["state"], a["severity"], a["labels"]["gpu"], a["labels"]["check"]) for a in fired] == [
        ("firing", "critical", "0", "ecc_uncorrected")]
    assert fired[0]["values"] == {"value": 1, "increase": 1}
    assert fired[0]["annotations"]["summary"] == "GPU 0 on node-1: ecc_uncorrected"
    d.send(*(node(T0 + 3 + i, ecc_uncorrected=1) for i in range(598)))
    assert d.states() == [("gpu_hardware_error", "firing")]
    d.send(node(T0 + 603, ecc_uncorrected=1))
    assert d.states() == [("gpu_hardware_error", "firing"), ("gpu_hardware_error", "resolved")]


def test_gpu_fallen_off_the_bus() -> None:
    d = Driver(CRITICAL)
    d.send(system(T0, gpus=[gpu(0, error="GPU is lost"), gpu(1, ecc_uncorrected=0)]))
    assert [(a["labels"]["check"], a["values"]) for a in d.alerts] == [("error", {"value": 1})]
    d.send(system(T0 + 1, gpus=[gpu(0, ecc_uncorrected=0)]))
    assert d.states()[-1] == ("gpu_hardware_error", "resolved")


def test_corrected_over_threshold_and_thermal_throttle_are_separate_alerts() -> None:
    d = Driver(DEGRADED)
    d.send(node(T0), node(T0 + 1, ecc_corrected=8))  # +5: tolerated
    assert d.alerts == []
    d.send(node(T0 + 2, ecc_corrected=20, throttle_thermal=1))  # +17 within the minute
    assert sorted(a["labels"]["check"] for a in d.alerts) == ["ecc_corrected", "throttle_thermal"]
    d.send(node(T0 + 3, ecc_corrected=20))
    assert d.states()[-1] == ("gpu_degraded", "resolved")  # the throttle
    d.send(node(T0 + 63, ecc_corrected=20))
    assert [a["labels"]["check"] for a in d.alerts if a["state"] == "resolved"] == ["throttle_thermal",
                                                                                      "ecc_corrected"]


def test_counter_reset_is_not_an_error() -> None:
    d = Driver(CRITICAL)
    d.send(node(T0, ecc_uncorrected=5), node(T0 + 1, ecc_uncorrected=0), node(T0 + 2, ecc_uncorrected=0))
    assert d.alerts == []


def test_healthy_gpus_fire_nothing() -> None:
    d = Driver(CRITICAL, DEGRADED)
    d.send(*(node(T0 + i, ecc_corrected=3 + i // 100) for i in range(3600)))  # a slow trickle: 1 per 100 s
    assert d.alerts == []


def test_unknown_check() -> None:
    with pytest.raises(ValueError, match=r"selector.checks: unknown 'ecc' \(known: ecc_uncorrected"):
        build_rule(spec("hardware_errors", selector={"checks": ["ecc"]}))


THROTTLED = spec("hardware_errors", "gpu_throttled", for_s=10, selector={"checks": ["throttle_thermal"]},
                 params={"clear_s": 10})


def test_throttling_on_and_off_fires_after_for_and_clears_after_clear_s() -> None:
    d = Driver(THROTTLED)
    for i in range(30):  # held down 2 s of every 3
        d.send(node(T0 + i, throttle_thermal=0 if i % 3 == 2 else 1))
    assert [(a["state"], a["labels"]["check"], a["time"]) for a in d.alerts] == [("firing", "throttle_thermal", T0 + 10)]
    for i in range(30, 45):
        d.send(node(T0 + i))
    assert d.states()[-1] == ("gpu_throttled", "resolved")
    assert d.alerts[-1]["time"] == T0 + 38  # last set at 28 (i % 3 == 1): clear once 10 s have passed


def test_without_clear_s_the_same_flapping_never_fires() -> None:  # so the test above can fail
    d = Driver(spec("hardware_errors", for_s=10, selector={"checks": ["throttle_thermal"]}))
    for i in range(30):
        d.send(node(T0 + i, throttle_thermal=0 if i % 3 == 2 else 1))
    assert d.alerts == []
