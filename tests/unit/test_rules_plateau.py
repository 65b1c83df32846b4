"""plateau: no improvement beyond the metric's own noise over the last 40 % of the run (rank 0 only);
noisy losses that still improve stay quiet, flat ones fire however noisy; resumes and late values are
put at their steps; the state is bounded and survives a snapshot."""

from __future__ import annotations

import math
import random
import re
from typing import Iterable

import pytest

from trainmon.agent.simulator import FaultSpec, SimConfig, published
from trainmon.stream_processors import snapshots
from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.config import load_pipeline
from trainmon.stream_processors.engine import Engine
from trainmon.stream_processors.rules import build_rule
from trainmon.stream_processors.rules.plateau import MAX_BINS, NOISE_VALUES, robust_noise
from tests.unit.alert_streams import T0, Driver, metrics, spec

PLATEAU = spec("plateau", "loss_plateau", severity="info",
               annotations={"summary": "{metric} flat over {steps:.0f} steps ({epochs:.1f} epochs): {value:.3f}"})
STEPS_PER_EPOCH = 500


def curve(step: float) -> float:
    """A training loss shaped like the simulator's: a fast early drop, then a slow power-law tail."""
    return 0.04 + 1.3 * math.exp(-step / 300) + 0.65 / math.sqrt(1 + step / 3000)


def losses(steps: Iterable[int], noise: float, *, flat_from: int | None = None, seed: int = 0) -> list[dict]:
    """Rank 0's metrics at `steps` (one a second), with relative Gaussian noise; flat from `flat_from`."""
    rng = random.Random(seed)
    return [metrics(s, T0 + i, epoch=s / STEPS_PER_EPOCH,
                    loss=curve(s if flat_from is None else min(s, flat_from)) * (1 + noise * rng.gauss(0, 1)))
            for i, s in enumerate(steps)]


def fired_at(d: Driver, events: list[dict]) -> list[tuple[str, int]]:
    """(state, step) of each alert the events raise."""
    return [(a["state"], e["step"]) for e in events for a in d.send(e)]


@pytest.mark.parametrize("noise", [0.01, 0.04, 0.1])
def test_a_noisy_loss_that_still_improves_stays_quiet_and_fires_once_it_is_flat(noise: float) -> None:
    d = Driver(PLATEAU)
    assert fired_at(d, losses(range(20_000), noise)) == []  # still 2 % better per 1,000 steps at the end
    d = Driver(PLATEAU)
    fired = fired_at(d, losses(range(6_000), noise, flat_from=3_000))
    assert fired and fired[0][0] == "firing"
    assert 3_000 < fired[0][1] < 3_000 / (1 - 0.4) + 500  # once the flat part fills most of the 40 % window


@pytest.mark.parametrize("noise, seed", [(0.04, 0), (0.2, 1)])
def test_a_slow_improvement_counts_only_beyond_the_noise(noise: float, seed: int) -> None:
    """loss ~ step^-0.12: about 3 % better from the older to the newer half of any window, just above
    `delta`. Taken without its noise margin (or over fewer values than its noise needs, at 20 %),
    chance makes the newer half look no better now and then."""
    rng = random.Random(seed)
    slow = [metrics(s, T0 + s, loss=(1 + s / 100) ** -0.12 * (1 + noise * rng.gauss(0, 1))) for s in range(20_000)]
    assert fired_at(Driver(PLATEAU), slow) == []


@pytest.mark.parametrize("noise, by_step", [(0.01, 600), (0.04, 600), (0.1, 1_300)])
def test_early_the_window_is_as_long_as_the_noise_needs(noise: float, by_step: int) -> None:
    """At step 300 the run's 40 % is 120 steps: a 1 % or 4 % noise is judged over about 128 values (the
    patience), a 10 % noise over the (3 z noise / delta)^2 = 900 it needs to tell 2 % from none."""
    d = Driver(PLATEAU)
    fired = fired_at(d, losses(range(2_000), noise, flat_from=300))
    assert fired and fired[0][0] == "firing" and 300 < fired[0][1] <= by_step
    alert = d.alerts[0]
    assert alert["labels"]["metric"] == "loss" and "rank" not in alert["labels"]
    values = alert["values"]
    assert values["steps"] >= 128 and values["epochs"] == pytest.approx(values["steps"] / STEPS_PER_EPOCH)
    assert values["value"] == pytest.approx(curve(300), rel=0.05) and values["noise"] > 0
    assert alert["annotations"]["summary"].startswith(f"loss flat over {values['steps']:.0f} steps (")


def test_a_renewed_improvement_resolves_it() -> None:
    d = Driver(PLATEAU)
    fired_at(d, losses(range(1_500), 0.04, flat_from=300))
    assert d.states() == [("loss_plateau", "firing")]
    rng = random.Random(5)
    drop = [metrics(s, T0 + s, loss=curve(300) * (1 - 0.3 * (s - 1_500) / 500) * (1 + 0.04 * rng.gauss(0, 1)))
            for s in range(1_500, 2_000)]  # a learning-rate step: 30 % down over 500 steps
    assert [state for state, _ in fired_at(d, drop)] == ["resolved"]


def test_a_resume_puts_the_replayed_values_at_their_steps() -> None:
    """A restart from a checkpoint 3,000 steps back logs steps 3,000.. again, higher than the last
    ones: kept by step it is the same curve. Taken in the order they come (the control: the same
    values with steps that only go forward) the loss looks stuck and it fires."""
    steps = [*range(6_000), *range(3_000, 9_000)]
    assert fired_at(Driver(PLATEAU), losses(steps, 0.04)) == []
    control = [{**e, "step": i} for i, e in enumerate(losses(steps, 0.04))]
    assert "firing" in {state for state, _ in fired_at(Driver(PLATEAU), control)}


def test_late_values_count_at_their_step() -> None:
    """One node's events come 2-4 s late, each with its own delay: out of order by up to ~40 steps."""
    rng = random.Random(3)
    for flat_from, fires in ((None, False), (2_000, True)):
        events = losses(range(4_000), 0.04, flat_from=flat_from)
        shuffled = sorted(events, key=lambda e: e["step"] + rng.uniform(0, 40))
        assert bool(fired_at(Driver(PLATEAU), shuffled)) == fires


def test_only_rank_zero_counts_and_max_mode_watches_a_rising_metric() -> None:
    d = Driver(PLATEAU)
    d.send(*(metrics(s, T0 + s, rank=r, loss=1.0) for s in range(500) for r in range(1, 4)))
    assert d.alerts == []
    d.send(*(metrics(s, T0 + s, rank=0, loss=1.0) for s in range(500)))
    assert d.states() == [("loss_plateau", "firing")]

    accuracy = spec("plateau", selector={"metric": "accuracy"}, params={"mode": "max"})
    rising = [metrics(s, T0 + s, accuracy=0.9 - 0.8 * math.exp(-s / 1_000)) for s in range(1_000)]
    d = Driver(accuracy)
    d.send(*rising)
    assert d.alerts == []
    d.send(*(metrics(s, T0 + s, accuracy=0.7) for s in range(1_000, 2_000)))
    assert d.states() == [("plateau", "firing")]


def test_non_finite_values_are_not_judged() -> None:
    d = Driver(PLATEAU)
    d.send(*losses(range(300), 0.01), *(metrics(s, T0 + s, loss="NaN") for s in range(300, 2_000)))
    assert d.alerts == []


def test_the_state_is_bounded_and_a_snapshot_restores_it() -> None:
    d = Driver(PLATEAU)
    events = losses(range(40_000), 0.04, flat_from=20_000)
    d.send(*events[:25_000])
    (series,) = d.engine.rules[0]._runs.values()
    assert len(series.bins) <= MAX_BINS and len(series.recent) == NOISE_VALUES
    restored = Driver(PLATEAU)
    restored.engine.restore(snapshots.loads(snapshots.dumps("g", 0, (1, 1), d.engine.state()), "g", 0)[1])
    assert fired_at(d, events[25_000:]) == fired_at(restored, events[25_000:]) != []
    d.engine.rules[0].forget("r1")
    assert d.engine.rules[0]._runs == {}


def test_robust_noise_sees_through_a_trend_a_bend_and_spikes() -> None:
    rng = random.Random(1)
    noise = [rng.gauss(0, 1) for _ in range(2_000)]
    assert robust_noise(noise) == pytest.approx(1.0, rel=0.05)
    bent = [x + (0.05 * i if i < 1_000 else 50 - 0.03 * (i - 1_000)) for i, x in enumerate(noise)]
    spiked = [x + (40 if i % 100 == 0 else 0) for i, x in enumerate(bent)]
    assert robust_noise(spiked) == pytest.approx(1.0, rel=0.1)
    assert robust_noise([1.0, 2.0, 3.0]) == 0.0


@pytest.mark.parametrize("params, message", [
    ({"window": 0.0}, "window: expected a number in 0.05..0.9, got 0.0"),
    ({"window": 1}, "window: expected a number in 0.05..0.9"),
    ({"delta": 0}, "delta: expected a number > 0"),
    ({"delta": -0.1}, "delta: expected a number in 0.0.., got -0.1"),
    ({"z": -1}, "z: expected a number in 0.0.."),
    ({"patience": 0}, "patience: expected a positive integer, got 0"),
    ({"relative": "yes"}, "relative: expected true or false"),
    ({"alpha": 0.05}, "alpha: unknown key (known: mode, window, delta, relative, z, patience)"),
])
def test_bad_params_fail_naming_the_key(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        build_rule(spec("plateau", params=params))


# --- the shipped rule on the simulator's events --------------------------------------------------------

CLUSTER = dict(nodes=2, gpus=4, runs=2, world_size=4, hazards=("all",))  # a run of 4 ranks per node


def shipped_firing(rules: set[str], config: SimConfig, until_s: float) -> list[tuple[float, str, str]]:
    """(seconds since the start, rule, run) of each firing alert of the shipped `rules` over the
    simulation's metrics, read when they are published (late, or from a skewed clock), to `until_s`."""
    engine = Engine([build_rule(r) for r in load_pipeline().rules if r.name in rules], AlertBook(3600.0))
    out = []
    for at, event in published(config, T0):
        if at > T0 + until_s:
            break
        if event["kind"] == "metrics":
            out += [(at - T0, a["rule"], a["run"]) for a in engine.on_event(event, at) if a["state"] == "firing"]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("at", [10.0, 30.0])
def test_the_shipped_rule_finds_the_simulators_plateau_within_a_minute_with_all_hazards(seed: int, at: float) -> None:
    """The simulator's default fault time (10 s) and bench/detection.py's (30 s); its resume is at
    10-20 minutes (the nominal 30-minute run), not in the minute judged here."""
    config = SimConfig(**CLUSTER, seed=seed, duration=1800, faults=(FaultSpec("plateau", "run-1", at),))
    fired = shipped_firing({"loss_plateau"}, config, at + 60)
    assert fired and {run for _, _, run in fired} == {fired[0][2]} and fired[0][2].endswith("run-1")


def test_the_shipped_plateau_and_overfitting_rules_are_quiet_on_a_clean_half_hour_with_all_hazards() -> None:
    """Checkpoints, evaluations, warm-up spikes, 4x loss noise, a resume per run, a late and a skewed
    node; seed 4 has an evaluation in its first 10 s."""
    assert shipped_firing({"loss_plateau", "overfitting"}, SimConfig(**CLUSTER, seed=4, duration=1800), 1800) == []
