"""`model.fit(callbacks=[TrainmonAlerts(run)])` on real Keras fits (a tiny regressor, JAX backend, CPU), its
alerts handed to the run's follower by a fake alerts source (tests/unit/test_sdk_alerts.py) at a chosen
batch: the fit stops at that batch's end (one Keras process: no agreement to wait for), a hardware
error saves the current model first, a spike scales the learning rate once (only when asked to),
nothing happens without alerts, and a failure only warns.

JAX because it is the backend where the weights live outside the model's variables during an epoch:
a save or a learning rate change that bypasses Keras's write-back saves stale weights or is undone."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks.helpers import require
from tests.frameworks.alert_fixtures import STEP_S, alerting, no_warnings, run, steps_bound  # noqa: F401 (fixtures)
from tests.unit.test_sdk_alerts import HOST, Feed, alert, feed, read  # noqa: F401 (feed: a fixture)

os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras reads it once, at its import
require("jax")
keras = require("keras")
np = require("numpy")

import trainmon  # noqa: E402
from trainmon import TrainmonWarning  # noqa: E402
from trainmon.agent.integrations.keras_alerts import TrainmonAlerts  # noqa: E402

assert keras.backend.backend() == "jax", "keras was imported with another backend before this module"

STEPS, AT = 12, 5  # batches of the fit, the batch whose alerts arrive
LR = 0.01


class Probe(keras.callbacks.Callback):
    """Has the follower read `alerts` when batch AT starts; counts the batches taken."""

    def __init__(self, run: trainmon.Run, feed: Feed, alerts: tuple[dict[str, Any], ...]) -> None:
        super().__init__()
        self.run, self.feed, self.alerts = run, feed, alerts
        self.batches = 0

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch == AT and self.alerts:
            read(self.run, self.feed, *self.alerts)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches += 1


def fit(run: trainmon.Run, feed: Feed, *alerts: dict[str, Any], **options: Any) -> tuple[keras.Model, int]:
    """One epoch of up to STEPS batches: the model and the batches taken."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    x = np.random.default_rng(0).normal(size=(4 * STEPS, 4)).astype("float32")
    probe = Probe(run, feed, alerts)
    model.fit(x, x.sum(axis=1, keepdims=True), batch_size=4, epochs=1, verbose=0,
              callbacks=[probe, TrainmonAlerts(run, **options)])
    return model, probe.batches


def learning_rate(model: keras.Model) -> float:
    return float(model.optimizer.learning_rate.numpy())


def test_a_stop_alert_ends_the_fit_at_that_batch(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    _, batches = fit(run, feed, alert("loss_non_finite"), checkpoint_path=tmp_path / "hw.keras")
    assert batches == AT + 1 and run.stop_reason["rule"] == "loss_non_finite"
    assert not (tmp_path / "hw.keras").exists(), "a NaN is no reason to save: the weights hold it"


def test_a_hardware_error_saves_the_current_model_then_stops(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    path = tmp_path / "hw.keras"
    model, batches = fit(run, feed, alert("gpu_hardware_error", run=None, host=HOST), checkpoint_path=path)
    assert batches == AT + 1
    saved = keras.saving.load_model(path)
    for mine, theirs in zip(model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(mine, theirs)  # the weights it stopped with, not the epoch's first


def test_a_spike_scales_the_learning_rate_once_and_only_when_asked(run: trainmon.Run, feed: Feed) -> None:
    spike = alert("loss_spike", severity="warning")
    model, batches = fit(run, feed, spike)
    assert learning_rate(model) == pytest.approx(LR) and batches == STEPS

    model, batches = fit(run, feed, dict(spike, starts_at=2000.0), lr_factor=0.5)
    assert learning_rate(model) == pytest.approx(LR / 2) and batches == STEPS, "kept to the end, once, no stop"


def test_without_alerts_nothing_happens(run: trainmon.Run, feed: Feed, tmp_path: Path) -> None:
    model, batches = fit(run, feed, lr_factor=0.5, checkpoint_path=tmp_path / "hw.keras")
    assert batches == STEPS and learning_rate(model) == pytest.approx(LR)
    assert not run.stop_requested and not (tmp_path / "hw.keras").exists()


def test_a_failing_hook_warns_once_and_the_fit_goes_on(run: trainmon.Run, feed: Feed,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("a safe point that failed")

    monkeypatch.setattr(run, "check_alerts", broken)
    with pytest.warns(TrainmonWarning, match="on_train_batch_end failed") as caught:
        _, batches = fit(run, feed)
    assert batches == STEPS and len([w for w in caught if issubclass(w.category, TrainmonWarning)]) == 1


# --- end to end: a NaN loss, the real alert, the fit ends ------------------------------------------

NAN_AT = 30  # the batch whose loss turns NaN


class Slow(keras.callbacks.Callback):
    """Each batch takes STEP_S more, like a real step; counts the batches."""

    batches = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        time.sleep(STEP_S)
        self.batches += 1


@pytest.mark.integration
def test_an_injected_nan_ends_the_fit_through_the_real_alert(alerting, tmp_path: Path) -> None:
    """Real Kafka and a `trainmon process` worker: the fit ends within the alert's latency in steps."""
    from trainmon.agent.integrations.keras_callback import TrainmonCallback

    run = trainmon.init("e2e", run_id=f"keras-nan-{uuid.uuid4().hex[:6]}", settings=alerting,
                        spool_dir=tmp_path / "spool")
    try:
        limit = steps_bound(NAN_AT, 1)
        x = np.random.default_rng(0).normal(size=(4 * 3 * limit, 4)).astype("float32")
        y = x.sum(axis=1, keepdims=True)
        x[4 * NAN_AT:] = np.nan  # batch NAN_AT on: the loss (Keras's running mean) is NaN from there
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        slow = Slow()
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
                  callbacks=[slow, TrainmonCallback(run=run), TrainmonAlerts(run)])
        assert run.stop_requested
        assert (run.stop_reason["rule"], run.stop_reason["values"]["step"]) == ("loss_non_finite", NAN_AT)
        print(f"keras: NaN at batch {NAN_AT}, stopped after {slow.batches} batches (bound {limit})")
        assert NAN_AT < slow.batches <= limit
    finally:
        run.finish()
