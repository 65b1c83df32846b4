"""Keras 3: `model.fit(..., callbacks=[TrainmonAlerts(run)])`, trainmon's alerts acting on the fit.

Early stop on the stop rules (NaN loss, overfitting, plateau), the model saved and a stop on a
hardware error, and (opt-in, `lr_factor=`) the learning rate scaled after a loss spike
(docs/integrations.md, "Alerts back into training"). Keras checks `model.stop_training` after every
batch, and one Keras process trains alone, so the callback acts at the batch the alert is delivered
in: no agreement between ranks (a `MultiWorkerMirroredStrategy` job is not covered).

Runs in the training thread (not `async_safe`, unlike `TrainmonCallback`): alert callbacks run only
in the thread of the first `on_alert`, and the save and the learning rate must not change beside a
step. On JAX the weights live outside the model's variables during an epoch: Keras writes them back
whenever a callback reads `self.model` (`jax_state_sync`), and the next step reads them from there, so
the save and the learning rate change go through `self.model` only.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import keras
import trainmon

from trainmon.agent.alert_actions import HARDWARE_RULES, SPIKE_RULES, STOP_RULES, save_and_stop
from trainmon.agent.integrations.safe_hooks import never_raises
from trainmon.agent.sdk import warn

CHECKPOINT_NAME = "trainmon-hardware-error.keras"


class TrainmonAlerts(keras.callbacks.Callback):
    """Acts on `run`'s alerts (a run from `trainmon.init`, or `TrainmonCallback().run`).

    checkpoint_path: where `model.save` writes on a hardware error (a `.keras` file; default
    trainmon-hardware-error.keras in the working directory); lr_factor: scale the optimizer's
    learning rate by this on a spike, not below min_lr; None (the default) leaves it alone."""

    def __init__(self, run: trainmon.Run, *, stop_rules: Iterable[str] = STOP_RULES,
                 hardware_rules: Iterable[str] = HARDWARE_RULES, checkpoint_path: str | os.PathLike[str] | None = None,
                 lr_factor: float | None = None, min_lr: float = 0.0, spike_rules: Iterable[str] = SPIKE_RULES) -> None:
        super().__init__()
        if lr_factor is not None and not 0.0 < lr_factor:
            raise ValueError(f"lr_factor must be > 0, got {lr_factor!r}")
        self._run = run
        self._rules = tuple(stop_rules), tuple(hardware_rules), tuple(spike_rules)
        self._checkpoint_path = os.fspath(checkpoint_path or CHECKPOINT_NAME)
        self._lr_factor, self._min_lr = lr_factor, min_lr
        self._following = False

    @never_raises
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._following:  # a second fit with the same callback: registered already
            return
        self._following = True
        stop_rules, hardware_rules, spike_rules = self._rules
        self._run.on_alert(self._run.request_stop, rules=stop_rules)
        self._run.on_alert(save_and_stop(self._run, self._save), rules=hardware_rules)
        if self._lr_factor is not None:  # opt-in: a spike is not always the learning rate's fault
            self._run.on_alert(self._scale_lr, rules=spike_rules)

    @never_raises
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._run.check_alerts()  # the callbacks above run here, between two steps
        if self._run.stop_requested:  # only then `self.model`: on JAX each read writes the weights back
            self.model.stop_training = True

    def _save(self) -> None:
        self.model.save(self._checkpoint_path)

    def _scale_lr(self, alert: dict[str, Any]) -> None:
        lr = self.model.optimizer.learning_rate
        if not isinstance(lr, keras.Variable):  # a LearningRateSchedule's value, computed at each step
            warn(f"{type(self).__name__}: a learning rate schedule cannot be scaled in place; "
                 f"not scaled after {alert['rule']}")
            return
        lr.assign(max(float(lr.numpy()) * self._lr_factor, self._min_lr))
