"""divergence: validation loss rising beyond its own noise while the training loss (its mean between
validation points) falls, or their gap growing, for `patience` validation points in a row; a replay
after a resume neither breaks nor starts a streak; the state is bounded and survives a snapshot."""

from __future__ import annotations

import random
import re

import pytest

from trainmon.agent.simulator import FaultSpec, SimConfig
from trainmon.stream_processors import snapshots
from trainmon.stream_processors.rules import build_rule
from trainmon.stream_processors.rules.divergence import HISTORY
from tests.unit.alert_streams import T0, Driver, metrics, spec
from tests.unit.test_rules_plateau import CLUSTER, shipped_firing

OVERFIT = spec("divergence", "overfitting", annotations={"summary": "{metric} {val:.3f} vs lowest {best:.3f}"})
EVERY = 100  # steps between validation points


class Run:
    """A run's rank 0: 100 noisy training losses per validation point, then the validation loss, each
    at the next second of its own clock; `step` can be set back (a resume)."""

    def __init__(self, d: Driver, seed: int = 0) -> None:
        self.d, self.rng, self.step, self.t = d, random.Random(seed), 0, T0

    def points(self, vals: list[float], train: float = 2.0, fall: float = 0.001) -> list[dict]:
        """One validation point per value; the training loss falls by `fall` per step (4 % noise)."""
        out: list[dict] = []
        for val in vals:
            for _ in range(EVERY):
                self.step, self.t = self.step + 1, self.t + 1
                loss = train * (1 - fall) ** self.step * (1 + 0.04 * self.rng.gauss(0, 1))
                out += self.d.send(metrics(self.step, self.t, loss=loss))
            out += self.d.send(metrics(self.step, self.t + 0.5, val_loss=val))
        return out


def falling(n: int, start: float = 2.0, noise: float = 0.002, seed: int = 1) -> list[float]:
    """A healthy validation curve: down 1 % a point, with a little noise."""
    rng = random.Random(seed)
    return [start * 0.99**i * (1 + noise * rng.gauss(0, 1)) for i in range(n)]


def test_validation_rising_beyond_its_noise_fires_at_patience_and_a_fall_resolves_it() -> None:
    run = Run(Driver(OVERFIT))
    healthy = falling(20)
    assert run.points(healthy) == []
    low = healthy[-1]
    assert run.points([low * 1.02]) == []  # 1 of patience 2 (the noise is 0.2 %: 2 % is 10 widths)
    fired = run.points([low * 1.04])
    assert [a["state"] for a in fired] == ["firing"]
    assert fired[0]["labels"]["metric"] == "val_loss"
    values = fired[0]["values"]
    assert values["evaluations"] == 2 and values["best"] == pytest.approx(low) and values["gap"] > 0
    assert 0 < values["noise"] < 0.01 * low
    assert run.points([low * 1.06]) == []  # still diverging: de-duplicated
    assert [a["state"] for a in run.points([low * 0.99])] == ["resolved"]


def test_validation_noise_alone_does_not_fire() -> None:
    """Validation levels out with 1 % noise while training falls on: its lowest recent point lies some
    noise widths below the rest, so without the noise margin (the control, z 0) two points in a row
    above it come soon."""
    rng = random.Random(7)
    healthy = falling(20)
    flat = [healthy[-1] * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(300)]
    run = Run(Driver(OVERFIT))
    assert run.points(healthy) == [] and run.points(flat) == []
    control = Run(Driver(spec("divergence", params={"z": 0.0})))
    control.points(healthy)
    assert "firing" in {a["state"] for a in control.points(flat)}


def test_a_rise_within_the_noise_does_not_count() -> None:
    rng = random.Random(2)
    healthy = falling(20)
    low = healthy[-1]
    jumpy = [low * (1 + 0.02 * rng.gauss(0, 1)) for _ in range(30)]  # 2 % noise
    run = Run(Driver(OVERFIT))
    assert run.points(healthy) == [] and run.points(jumpy) == []
    assert run.points([low * 1.08, low * 1.09]) == []  # within 6 widths of this noise above its lowest
    assert [a["state"] for a in run.points([low * 1.3, low * 1.35])] == ["firing"]  # far beyond it


def test_rising_validation_with_rising_training_is_not_overfitting() -> None:
    run = Run(Driver(OVERFIT))
    run.points(falling(10))
    assert run.points([2.0, 2.1, 2.2, 2.3], train=3.0, fall=-0.001) == []  # both rise: a learning-rate problem


def test_a_resume_replays_steps_without_breaking_or_starting_a_streak() -> None:
    """One rising point, then a restart from a checkpoint 250 steps back: the replayed steps (their
    validation point back at the lowest value, a higher training loss) are left out, so the next new
    rising point is the second in a row. Taken as they come, the replayed point would break the streak."""
    run = Run(Driver(OVERFIT))
    healthy = falling(20)
    run.points(healthy)
    run.points([healthy[-1] * 1.02])
    run.step -= 250  # the resume: the next step logged is 250 back, on a later clock
    assert run.points([healthy[-1], healthy[-1] * 1.01]) == []  # replayed: steps 1,851 .. 2,050
    assert [a["state"] for a in run.points([healthy[-1] * 1.04])] == ["firing"]

    run = Run(Driver(OVERFIT))  # a healthy run resumed: its replayed points are higher than the last
    run.points(healthy)
    run.step -= 500
    assert run.points(falling(10, start=healthy[-6], seed=3)) == []


def test_late_training_values_still_count() -> None:
    """Values that arrive late (an older event time) with an older step are not a resume."""
    d = Driver(OVERFIT)
    run = Run(d)
    run.points(falling(20))
    low = d.engine.rules[0]._runs["r1"].points[-1].val
    late = [metrics(s, T0 + s - 3, loss=2.0 * 0.999**s) for s in range(run.step - 40, run.step)]  # 3 s late
    d.send(*late)
    assert d.engine.rules[0]._runs["r1"].replay_to is None
    run.points([low * 1.02])
    assert [a["state"] for a in run.points([low * 1.04])] == ["firing"]


def test_gap_mode_fires_on_a_growing_gap() -> None:
    d = Driver(spec("divergence", params={"mode": "gap", "delta": 0.05}))
    points = [(1.0, 1.05), (0.9, 1.0), (0.8, 1.0), (0.7, 1.0)]  # gap 0.05, 0.1, 0.2, 0.3
    for step, (train, val) in enumerate(points):
        d.send(metrics(step, T0 + step, loss=train, val_loss=val))
    assert d.states() == [("divergence", "firing")]


def test_the_state_is_bounded_and_a_snapshot_restores_it() -> None:
    d = Driver(OVERFIT)
    run = Run(d)
    run.points(falling(40))
    rule = d.engine.rules[0]
    assert len(rule._runs["r1"].points) == HISTORY
    restored = Driver(OVERFIT)
    restored.engine.restore(snapshots.loads(snapshots.dumps("g", 0, (1, 1), d.engine.state()), "g", 0)[1])
    low = rule._runs["r1"].points[-1].val
    for driver in (d, restored):
        again = Run(driver, seed=9)
        again.step, again.t = run.step, run.t
        again.points([low * 1.02])
        assert [a["state"] for a in again.points([low * 1.04])] == ["firing"]
    rule.forget("r1")
    assert rule._runs == {}


def test_train_and_val_must_differ() -> None:
    with pytest.raises(ValueError, match="selector.val: must differ"):
        build_rule(spec("divergence", selector={"train": "loss", "val": "loss"}))


@pytest.mark.parametrize("params, message", [
    ({"patience": 0}, "patience: expected a positive integer, got 0"),
    ({"z": -1}, "z: expected a number in 0.0.., got -1"),
    ({"mode": "both"}, "mode: expected one of opposite, gap, either, got 'both'"),
    ({"alpha": 0.1}, "alpha: unknown key"),
])
def test_bad_params_fail_naming_the_key(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        build_rule(spec("divergence", params=params))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("at", [10.0, 30.0])
def test_the_shipped_rule_finds_the_simulators_overfitting_within_a_minute_with_all_hazards(seed: int,
                                                                                          at: float) -> None:
    """Validation points come every ~17 s (100 steps, then a 12 s evaluation): the fault is called at
    its second or third. The clean half hour is test_rules_plateau's."""
    config = SimConfig(**CLUSTER, seed=seed, duration=1800, faults=(FaultSpec("overfitting", "run-2", at),))
    fired = shipped_firing({"overfitting"}, config, at + 60)
    assert fired and {run for _, _, run in fired} == {fired[0][2]} and fired[0][2].endswith("run-2")
