"""divergence: validation loss rising while smoothed training loss falls (or their gap growing)."""

from __future__ import annotations

import pytest

from stream_processors.rules import build_rule
from tests.unit.alert_streams import T0, Driver, metrics, spec

OVERFIT = spec("divergence", "overfitting", params={"patience": 3},
               annotations={"summary": "{metric} {val:.2f} vs train {train:.2f}"})


def epochs(d: Driver, vals: list[float], start: int = 0) -> list[dict]:
    """One epoch per validation value: 100 noisy, falling training losses, then the validation loss."""
    out = []
    for e, val in enumerate(vals, start=start):
        for i in range(100):
            step = e * 100 + i
            noise = 0.1 if i % 2 else -0.1  # far above the fall per step: the EMA sees the trend
            out += d.send(metrics(step, T0 + step, loss=2.0 * 0.999**step + noise))
        out += d.send(metrics(e * 100 + 99, T0 + e * 100 + 99.5, val_loss=val))
    return out


def test_fires_after_patience_rising_validation_points_and_resolves() -> None:
    d = Driver(OVERFIT)
    assert epochs(d, [2.0, 1.8, 1.6, 1.5]) == []  # both falling
    assert epochs(d, [1.6, 1.7], start=4) == []  # 2 rising points: patience is 3
    fired = epochs(d, [1.8], start=6)
    assert [a["state"] for a in fired] == ["firing"]
    assert fired[0]["labels"]["metric"] == "val_loss"
    assert fired[0]["values"]["evaluations"] == 3 and fired[0]["values"]["gap"] > 0
    assert epochs(d, [1.9], start=7) == []  # still diverging: de-duplicated
    resolved = epochs(d, [1.7], start=8)
    assert [a["state"] for a in resolved] == ["resolved"]


def test_rising_validation_with_rising_training_is_not_overfitting() -> None:
    d = Driver(OVERFIT)
    for e, val in enumerate([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]):  # both rise: a learning-rate problem, not this rule
        d.send(*(metrics(e * 10 + i, T0 + e * 10 + i, loss=1.0 + 0.01 * (e * 10 + i)) for i in range(10)))
        d.send(metrics(e * 10 + 9, T0 + e * 10 + 9.5, val_loss=val))
    assert d.alerts == []


def test_gap_mode_fires_on_a_growing_gap() -> None:
    d = Driver(spec("divergence", params={"mode": "gap", "patience": 2, "delta": 0.05, "alpha": 1.0}))
    points = [(1.0, 1.05), (0.9, 1.0), (0.8, 1.0), (0.7, 1.0)]  # gap 0.05, 0.1, 0.2, 0.3
    for step, (train, val) in enumerate(points):
        d.send(metrics(step, T0 + step, loss=train, val_loss=val))
    assert d.states() == [("divergence", "firing")]


def test_clean_training_fires_nothing() -> None:
    d = Driver(OVERFIT)
    epochs(d, [2.0 - 0.1 * e + (0.02 if e % 2 else 0.0) for e in range(12)])  # wobbly but falling
    assert d.alerts == []


def test_train_and_val_must_differ() -> None:
    with pytest.raises(ValueError, match="selector.val: must differ"):
        build_rule(spec("divergence", selector={"train": "loss", "val": "loss"}))
