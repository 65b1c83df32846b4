"""non_finite: NaN/Inf fires at once, one alert per run and metric however many ranks, clears on a finite value at
another step (a later one, or an earlier one: a restart from a checkpoint)."""

from __future__ import annotations

from tests.unit.alert_streams import T0, Driver, metrics, run_end, spec

NAN = spec("non_finite", "loss_non_finite", severity="critical", selector={"metrics": ["loss", "val_loss"]},
           annotations={"summary": "{metric} is NaN in {run} at step {step}"})


def test_fires_once_for_all_ranks_and_resolves_when_every_rank_is_finite_again() -> None:
    d = Driver(NAN)
    d.send(*(metrics(s, T0 + s, rank=r, loss=2.0 - s / 100) for s in range(5) for r in range(4)))
    assert d.alerts == []
    fired = d.send(*(metrics(5, T0 + 5, rank=r, loss="NaN") for r in range(4)))
    assert [(a["state"], a["severity"], a["labels"]["metric"]) for a in fired] == [("firing", "critical", "loss")]
    assert fired[0]["values"] == {"step": 5, "rank": 0, "ranks": 1}
    assert fired[0]["annotations"]["summary"] == "loss is NaN in r1 at step 5"
    assert "rank" not in fired[0]["labels"]
    d.send(*(metrics(6, T0 + 6, rank=r, loss=1.9) for r in range(3)))  # rank 3 still bad
    assert d.states() == [("loss_non_finite", "firing")]
    resolved = d.send(metrics(6, T0 + 6.5, rank=3, loss=1.9))
    assert [(a["state"], a["ends_at"]) for a in resolved] == [("resolved", T0 + 6.5)]


def test_infinity_and_unwatched_metrics() -> None:
    d = Driver(NAN)
    d.send(metrics(1, T0, grad_norm="Infinity", loss=1.0))  # grad_norm is not selected
    assert d.alerts == []
    d.send(metrics(2, T0 + 1, val_loss="-Infinity"))
    assert d.states() == [("loss_non_finite", "firing")]


def test_any_metric_when_none_selected_and_run_end_resolves() -> None:
    d = Driver(spec("non_finite"))
    d.send(metrics(1, T0, grad_norm="Infinity"))
    assert d.states() == [("non_finite", "firing")]
    d.send(run_end(T0 + 10))
    assert d.states() == [("non_finite", "firing"), ("non_finite", "resolved")]
    d.send(metrics(2, T0 + 11, grad_norm=1.0))
    assert len(d.alerts) == 2


def test_same_step_finite_value_does_not_clear() -> None:
    d = Driver(NAN)
    d.send(metrics(7, T0, loss="NaN"), metrics(7, T0 + 1, loss=1.0))
    assert d.states() == [("loss_non_finite", "firing")]


def test_a_restart_from_a_checkpoint_before_the_nan_resolves_it_and_a_new_nan_pages_again() -> None:
    d = Driver(NAN)
    d.send(*(metrics(s, T0 + s, loss=1.0) for s in range(60)), metrics(60, T0 + 60, loss="NaN"))
    assert d.states() == [("loss_non_finite", "firing")]
    d.send(metrics(50, T0 + 120, loss=0.9))  # the job restarted from its step-50 checkpoint, lower lr
    assert d.states() == [("loss_non_finite", "firing"), ("loss_non_finite", "resolved")]
    fired = d.send(*(metrics(s, T0 + 70 + s, loss=0.9) for s in range(51, 55)), metrics(55, T0 + 126, loss="NaN"))
    assert [(a["state"], a["values"]["step"]) for a in fired] == [("firing", 55)]


def test_clean_stream_fires_nothing() -> None:
    d = Driver(NAN)
    d.send(*(metrics(s, T0 + s, rank=r, loss=1.0 / (s + 1), val_loss=1e308, lr=3e-4)
             for s in range(200) for r in range(2)))
    d.send(metrics(200, T0 + 200, loss=1e308, val_loss=1e308))  # the sum overflows; each value is finite
    assert d.alerts == []
