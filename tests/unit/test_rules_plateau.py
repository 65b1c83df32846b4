"""plateau: no improvement by delta for patience evaluations (or epochs); rank 0 only; resets on improvement."""

from __future__ import annotations

from tests.unit.alert_streams import T0, Driver, metrics, spec

PLATEAU = spec("plateau", "loss_plateau", severity="info", params={"patience": 5, "delta": 0.01},
               annotations={"summary": "{metric} stuck at {value:.2f} (best {best:.2f}) for {evaluations}"})


def test_fires_after_patience_without_improvement_and_resolves_on_improvement() -> None:
    d = Driver(PLATEAU)
    d.send(*(metrics(s, T0 + s, loss=2.0 - 0.1 * s) for s in range(10)))  # improving: 2.0 .. 1.1
    assert d.alerts == []
    d.send(*(metrics(10 + i, T0 + 10 + i, loss=1.1 - 0.005 * (i % 2)) for i in range(4)))  # < delta
    assert d.alerts == []
    fired = d.send(metrics(14, T0 + 14, loss=1.1))
    assert [a["state"] for a in fired] == ["firing"]
    assert fired[0]["annotations"]["summary"] == "loss stuck at 1.10 (best 1.10) for 5"
    assert fired[0]["labels"]["metric"] == "loss" and "rank" not in fired[0]["labels"]
    d.send(metrics(15, T0 + 15, loss=1.1))
    assert d.states() == [("loss_plateau", "firing")]
    resolved = d.send(metrics(16, T0 + 16, loss=1.0))
    assert [a["state"] for a in resolved] == ["resolved"]


def test_only_rank_zero_counts() -> None:
    d = Driver(PLATEAU)
    d.send(*(metrics(s, T0 + s, rank=r, loss=1.0) for s in range(20) for r in range(1, 8)))
    assert d.alerts == []
    d.send(*(metrics(s, T0 + s, rank=0, loss=1.0) for s in range(20)))
    assert d.states() == [("loss_plateau", "firing")]


def test_per_epoch_counts_distinct_epochs() -> None:
    d = Driver(spec("plateau", params={"patience": 3, "per": "epoch", "mode": "max"}, selector={"metric": "acc"}))
    d.send(*(metrics(s, T0 + s, epoch=s / 100, acc=0.5) for s in range(300)))  # epochs 0, 1, 2: flat
    assert d.alerts == []  # 100 logged values each, but only epochs 1 and 2 count as evaluations
    d.send(metrics(300, T0 + 300, epoch=3.0, acc=0.5))  # the third epoch without improvement
    assert d.states() == [("plateau", "firing")]
    d.send(metrics(301, T0 + 301, epoch=3.01, acc=0.6))
    assert d.states() == [("plateau", "firing"), ("plateau", "resolved")]


def test_relative_delta_and_smoothing_on_a_noisy_but_improving_loss_fire_nothing() -> None:
    d = Driver(spec("plateau", params={"patience": 50, "delta": 0.001, "relative": True, "alpha": 0.05}))
    noise = [0.3, -0.2, 0.25, -0.3, 0.1, -0.15]
    d.send(*(metrics(s, T0 + s, loss=3.0 * 0.999**s + noise[s % 6]) for s in range(2000)))
    assert d.alerts == []
