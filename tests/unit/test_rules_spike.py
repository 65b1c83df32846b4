"""spike: robust z-score of a value against its rank's recent window; quiet through warm-up and a noisy
decay, fires on a jump, clears with hysteresis; state survives a snapshot and is dropped at run end."""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from typing import Iterator

import pytest

from trainmon.stream_processors.rules import build_rule
from trainmon.stream_processors.rules.spike import _Track
from trainmon.stream_processors.snapshots import dumps, loads
from tests.unit.alert_streams import T0, Driver, metrics, run_end, spec
from tests.unit.test_rules_shipped import RANKS, healthy_run

SPIKE = spec("spike", "loss_spike", annotations={
    "summary": "{metric} spike in run {run} (rank {rank} on {host}): {value:.3g}, median {median:.3g}, z {z:.1f}"})


def steady(steps: int, *, start: int = 0, run: str = "r1", rank: int = 0, seed: int = 1,
           **spikes: dict[int, float]) -> Iterator[dict]:
    """A trained-in run: loss about 2 and grad norm about 1 with gaussian noise; `spikes` multiplies a
    metric at given steps, e.g. loss={300: 10.0}."""
    rng = random.Random(seed)
    for s in range(start, start + steps):
        values = {"loss": 2.0 * 0.9999**s + rng.gauss(0, 0.02), "grad_norm": 1.0 + rng.gauss(0, 0.05)}
        for name, at in spikes.items():
            values[name] *= at.get(s, 1.0)
        yield metrics(s, T0 + s, run=run, rank=rank, **values)


def warmup_run(steps: int, ranks: int = 4) -> Iterator[dict]:
    """The start of a run: a steep loss and grad-norm drop, with 3x loss and 10x grad-norm spikes at
    steps 12, 30 and 45 (inside the first 50 values), then a slow, noisy decay."""
    rng = random.Random(7)
    for s in range(steps):
        for r in range(ranks):
            loss = 8 * math.exp(-s / 20) + 2 * 0.999**s + rng.gauss(0, 0.03)
            grad = 6 * math.exp(-s / 15) + 1.0 + rng.gauss(0, 0.05)
            if s in (12, 30, 45):
                loss, grad = loss * 3, grad * 10
            yield metrics(s, T0 + s, rank=r, host=f"node-{r // 2}", loss=loss, grad_norm=grad)


def fired(d: Driver) -> list[tuple[str, str, str]]:
    """(state, metric, rank) of every alert so far."""
    return [(a["state"], a["labels"]["metric"], a["labels"]["rank"]) for a in d.alerts]


def test_warm_up_and_a_noisy_decay_fire_nothing_but_a_later_spike_does() -> None:
    d = Driver(SPIKE)
    d.send(*warmup_run(2000))
    assert d.alerts == []
    d.send(metrics(2000, T0 + 2000, rank=2, host="node-1", loss=25.0, grad_norm=1.0))
    assert fired(d) == [("firing", "loss", "2")]  # the rule is live on this stream
    # and the warm-up spikes were kept quiet by min_points alone: without it they page on every rank
    early = Driver(spec("spike", params={"min_points": 10}))
    early.send(*warmup_run(50))
    assert {metric for state, metric, _ in fired(early) if state == "firing"} == {"loss", "grad_norm"}


def test_a_single_10x_spike_fires_once_and_resolves_at_the_next_normal_value() -> None:
    d = Driver(SPIKE)
    d.send(*steady(300))
    assert d.alerts == []
    d.send(*steady(50, start=300, seed=2, loss={300: 10.0}))
    assert d.states() == [("loss_spike", "firing"), ("loss_spike", "resolved")]
    firing, resolved = d.alerts
    assert firing["time"] == T0 + 300 and resolved["ends_at"] == T0 + 301
    assert {k: firing["labels"][k] for k in ("project", "run", "rank", "host", "metric")} == {
        "project": "p", "run": "r1", "rank": "0", "host": "node-1", "metric": "loss"}
    values = firing["values"]
    assert values["value"] > 19 and 1.9 < values["median"] < 2.1 and values["z"] > 100
    assert firing["annotations"]["summary"].startswith("loss spike in run r1 (rank 0 on node-1): 19.")


def test_alerts_carry_exact_statistics_of_the_values_before_the_spike() -> None:
    """Cached statistics only pre-screen: a verdict change is judged on the window as it is."""
    d = Driver(SPIKE)
    events = list(steady(600, loss={237: 10.0, 389: 6.0, 501: 12.0}))
    d.send(*events)
    losses = [e["values"]["loss"] for e in events]
    firing = [a for a in d.alerts if a["state"] == "firing"]
    assert [a["time"] for a in firing] == [T0 + 237, T0 + 389, T0 + 501]
    for alert in firing:
        step = int(alert["time"] - T0)
        window = losses[step - 200:step]
        median = statistics.median(window)
        mad = statistics.median(abs(v - median) for v in window)
        assert alert["values"]["median"] == median
        assert alert["values"]["z"] == pytest.approx((losses[step] - median) / (1.4826 * max(mad, 0.01 * median)))


def test_median_and_mad_match_the_definition_on_odd_even_and_tied_windows() -> None:
    rule = build_rule(spec("spike", params={"min_mad_ratio": 0.0}))
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(20, 200)
        kind = rng.randrange(3)
        values = ([rng.choice([1.0, 2.0, 2.5]) for _ in range(n)] if kind == 0 else [3.0] * n if kind == 1
                  else [rng.gauss(0, 1) ** 3 for _ in range(n)])
        track = _Track({}, deque(values, maxlen=200))
        rule._recompute(track)
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        assert track.median == median
        assert track.scale == pytest.approx(1.4826 * max(mad, 1e-12), rel=1e-12), (values, mad)


def test_the_host_label_follows_a_rank_that_moved_but_not_during_an_alert() -> None:
    d = Driver(SPIKE)
    d.send(*steady(300))
    d.send(metrics(300, T0 + 300, host="node-9", loss=20.0), metrics(301, T0 + 301, host="node-7", loss=20.0))
    d.send(metrics(302, T0 + 302, host="node-7", loss=2.0), metrics(303, T0 + 303, host="node-7", loss=20.0))
    assert [(a["state"], a["labels"]["host"]) for a in d.alerts] == [
        ("firing", "node-9"), ("resolved", "node-9"), ("firing", "node-7")]


def test_hysteresis_keeps_it_active_until_below_half_the_threshold() -> None:
    # A flat series: the MAD is 0, so the floor sets the scale: 1.4826 * 0.01 * 1.0, z = (x - 1) / 0.014826.
    d = Driver(SPIKE)
    d.send(*(metrics(s, T0 + s, loss=1.0) for s in range(100)))
    d.send(metrics(100, T0 + 100, loss=1.001))  # z 0.07: a rounding difference is not a spike
    assert d.alerts == []
    d.send(metrics(101, T0 + 101, loss=1.2))  # z 13.5
    assert d.states() == [("loss_spike", "firing")]
    assert d.alerts[0]["values"]["z"] == pytest.approx(0.2 / (1.4826 * 0.01))
    d.send(metrics(102, T0 + 102, loss=1.06), metrics(103, T0 + 103, loss=1.08))  # z 4.0, 5.4: below 6, above 3
    assert d.states() == [("loss_spike", "firing")]
    d.send(metrics(104, T0 + 104, loss=1.03))  # z 2.0
    assert d.states() == [("loss_spike", "firing"), ("loss_spike", "resolved")]
    d.send(metrics(105, T0 + 105, loss=1.08))  # z 5.4 once more: under the threshold to fire again
    assert len(d.alerts) == 2


def test_grad_norm_spike_fires_on_its_own_and_before_the_loss() -> None:
    d = Driver(SPIKE)
    d.send(*steady(300))
    d.send(*steady(3, start=300, seed=2, grad_norm={300: 10.0, 301: 8.0, 302: 9.0}))  # the loss stays put
    assert fired(d) == [("firing", "grad_norm", "0")]
    d.send(*steady(10, start=303, seed=3, grad_norm={303: 12.0}, loss={303: 4.0}))  # then the loss follows
    assert [(a["labels"]["metric"], a["time"]) for a in d.alerts if a["state"] == "firing"] == [
        ("grad_norm", T0 + 300), ("loss", T0 + 303)]
    assert sorted(fired(d)) == [("firing", "grad_norm", "0"), ("firing", "loss", "0"),
                                ("resolved", "grad_norm", "0"), ("resolved", "loss", "0")]


def test_rank_selector_metrics_and_direction() -> None:
    d = Driver(spec("spike", selector={"rank": 1, "metrics": "grad_norm"}, params={"direction": "both"}))
    for rank in (0, 1):
        d.send(*steady(200, rank=rank, seed=rank))
        d.send(*steady(4, start=200, rank=rank, seed=9, loss={200: 10.0}, grad_norm={201: 10.0, 203: 0.01}))
    # rank 0 is not watched, nor the loss; the grad-norm jump and (with direction: both) its collapse are
    assert fired(d) == [("firing", "grad_norm", "1"), ("resolved", "grad_norm", "1"), ("firing", "grad_norm", "1")]
    assert d.alerts[2]["time"] == T0 + 203 and d.alerts[2]["values"]["z"] < -6
    up = Driver(spec("spike", selector={"metrics": ["grad_norm"]}))
    up.send(*steady(200), *steady(2, start=200, seed=9, grad_norm={201: 0.01}))
    assert up.alerts == []  # direction: up ignores the collapse
    up.send(*steady(1, start=202, seed=9, grad_norm={202: 10.0}))
    assert fired(up) == [("firing", "grad_norm", "0")]


def test_a_lasting_jump_becomes_the_new_normal() -> None:
    """Values of a spike go into the window: a level that stays clears once it is half the window."""
    d = Driver(SPIKE)
    d.send(*steady(300), *steady(300, start=300, seed=2, loss={s: 3.0 for s in range(300, 600)}))
    assert fired(d) == [("firing", "loss", "0"), ("resolved", "loss", "0")]
    assert d.alerts[0]["time"] == T0 + 300 and d.alerts[1]["ends_at"] == T0 + 400  # 100 of 200 values new


def test_non_finite_values_are_skipped() -> None:
    d = Driver(SPIKE)
    d.send(*steady(300))
    d.send(metrics(300, T0 + 300, loss="NaN", grad_norm="Infinity"), metrics(301, T0 + 301, loss="-Infinity"))
    assert d.alerts == []
    (rule,) = d.engine.rules
    assert [len(t.window) for t in rule._runs["r1"].values()] == [200, 200]
    assert [max(t.window) for t in rule._runs["r1"].values()] < [3.0, 2.0]  # no inf got in
    d.send(metrics(302, T0 + 302, loss=20.0))
    assert fired(d) == [("firing", "loss", "0")]


@pytest.mark.parametrize("selector, params, error", [
    ({}, {"window": 10}, r"^window: expected an integer in 20\.\.1000, got 10$"),
    ({}, {"window": 5000}, r"^window: "),
    ({}, {"window": 20.5}, r"^window: expected a positive integer"),
    ({}, {"min_points": 5}, r"^min_points: expected an integer in 10\.\.window \(200\), got 5$"),
    ({}, {"window": 40, "min_points": 50}, r"^min_points: .*\(40\), got 50$"),
    ({}, {"z": 0.5}, r"^z: expected a number in 1\.0\.\., got 0\.5$"),
    ({}, {"z": "six"}, r"^z: expected a number"),
    ({}, {"direction": "down"}, r"^direction: expected one of up, both, got 'down'$"),
    ({}, {"min_mad_ratio": -0.1}, r"^min_mad_ratio: "),
    ({}, {"thresold": 6}, r"^thresold: unknown key"),
    ({"metrics": []}, {}, r"^selector\.metrics: "),
    ({"rank": -1}, {}, r"^selector\.rank: expected an integer >= 0, got -1$"),
    ({"metric": "loss"}, {}, r"^selector\.metric: unknown key"),
])
def test_bad_params_name_the_key(selector: dict, params: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_rule(spec("spike", selector=selector, params=params))


def test_defaults() -> None:
    rule = build_rule(spec("spike"))
    assert (rule.metrics, rule.rank, rule.window, rule.min_points, rule.z, rule.up_only, rule.min_mad_ratio) == (
        ("loss", "grad_norm"), None, 200, 50, 6.0, True, 0.01)


def test_state_survives_a_snapshot_mid_alert() -> None:
    before = Driver(SPIKE)
    before.send(*steady(300), *steady(1, start=300, seed=2, loss={300: 10.0}))
    assert before.states() == [("loss_spike", "firing")]
    data = dumps("g", 0, (1, 1), before.engine.state())  # through the restricted unpickler, as on a takeover
    after = Driver(SPIKE)
    after.engine.restore(loads(data, "g", 0)[1])
    rest = list(steady(30, start=301, seed=3, grad_norm={320: 10.0}))
    before.send(*rest)
    after.send(*rest)
    assert fired(after) == [("resolved", "loss", "0"), ("firing", "grad_norm", "0"), ("resolved", "grad_norm", "0")]
    assert [(a["state"], a["fingerprint"], a["values"]) for a in after.alerts] == [
        (a["state"], a["fingerprint"], a["values"]) for a in before.alerts[1:]]
    fresh = Driver(SPIKE)  # without the windows, the same tail is only warm-up
    fresh.send(*rest)
    assert fresh.alerts == []


def test_a_restored_window_takes_a_changed_window_param() -> None:
    before = Driver(SPIKE)
    before.send(*steady(300))
    after = Driver(spec("spike", "loss_spike", params={"window": 100}))
    after.engine.restore(loads(dumps("g", 0, (1, 1), before.engine.state()), "g", 0)[1])
    after.send(*steady(20, start=300, seed=2, loss={310: 10.0}))
    assert fired(after) == [("firing", "loss", "0"), ("resolved", "loss", "0")]
    (rule,) = after.engine.rules
    assert {len(t.window) for t in rule._runs["r1"].values()} == {100}


def test_run_end_forgets_the_run_only() -> None:
    d = Driver(SPIKE)
    d.send(*steady(300, run="r1"), *steady(300, run="r2"))
    (rule,) = d.engine.rules
    assert set(rule._runs) == {"r1", "r2"}
    d.send(run_end(T0 + 300, run="r1"))
    assert set(rule._runs) == {"r2"} and set(d.engine.state()["rules"]["loss_spike"][1]["_runs"]) == {"r2"}
    d.send(*steady(1, start=301, run="r1", loss={301: 10.0}), *steady(1, start=301, run="r2", loss={301: 10.0}))
    assert [(a["run"], a["state"]) for a in d.alerts] == [("r2", "firing")]  # r1 starts over: warm-up


def test_memory_per_subject_is_bounded() -> None:
    d = Driver(spec("spike", params={"window": 20, "min_points": 10}))
    d.send(*steady(500))
    (rule,) = d.engine.rules
    assert [len(t.window) for t in rule._runs["r1"].values()] == [20, 20]


def test_recommended_shipped_entry_is_quiet_on_the_shipped_healthy_run() -> None:
    """The entry proposed for pipeline.yml (rank 0: one alert per run, not one per rank), on the healthy
    run of test_rules_shipped, and on the same run with a loss spike on every rank."""
    entry = spec("spike", "loss_spike", selector={"metrics": ["loss", "grad_norm"], "rank": 0},
                 params={"window": 200, "min_points": 50, "z": 6, "direction": "up"})
    d = Driver(entry)
    healthy_run(d, 1200)
    assert d.alerts == []
    d.send(*(metrics(1200, T0 + 1200, rank=r, host=h, loss=25.0) for r, h in RANKS.items()))
    assert fired(d) == [("firing", "loss", "0")]
