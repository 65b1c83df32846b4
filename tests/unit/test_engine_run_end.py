"""A run's end holds for every rule: stragglers sent before it are dropped, a resumed run is watched."""

from __future__ import annotations

from tests.unit.alert_streams import Driver, metrics, run_end, spec

T = 1_764_230_400.0
LOST = spec("heartbeat_lost", "rank_lost", params={"timeout_s": 60})


def test_metrics_read_after_run_end_do_not_make_a_finished_run_silent():
    driver = Driver(LOST)
    driver.tick(T)  # the rule's start-up grace (timeout_s) begins
    driver.send(metrics(1, T + 1, loss=1.0), run_end(T + 2), metrics(2, T + 1.5, loss=0.9))
    assert driver.tick(T + 300) == []
    assert driver.states() == []


def test_without_its_end_the_same_silence_fires():  # the test above can fail
    driver = Driver(LOST)
    driver.tick(T)
    driver.send(metrics(1, T + 1, loss=1.0), metrics(2, T + 1.5, loss=0.9))
    driver.tick(T + 300)
    assert driver.states() == [("rank_lost", "firing")]


def test_a_resumed_run_is_watched_again():
    driver = Driver(LOST)
    driver.tick(T)
    driver.send(metrics(1, T + 1, loss=1.0), run_end(T + 2), metrics(2, T + 100, loss=0.9))
    driver.tick(T + 200)
    assert driver.states() == [("rank_lost", "firing")]


def test_a_late_non_finite_value_of_an_ended_run_does_not_page():
    driver = Driver(spec("non_finite", "nan", severity="critical"))
    driver.send(run_end(T + 2), metrics(5, T + 1, loss="NaN"))
    assert driver.states() == []
