"""PyTorch Lightning: `Trainer(callbacks=[TrainmonAlerts(run)])`, trainmon's alerts acting on the fit.

Early stop on the stop rules (NaN loss, overfitting, plateau), a checkpoint and a stop on a hardware
error, and (opt-in, `lr_factor=`) the learning rate scaled after a loss spike (docs/integrations.md,
"Alerts back into training"). Every rank agrees first, every `sync_every` optimizer steps and at each
validation's end, with the strategy's own `reduce_boolean_decision` (one all-reduce per flag; a no-op
on one device), so all ranks stop, save and scale at the same step (agent/integrations/alert_flags.py).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import trainmon
from lightning.pytorch import Callback, LightningModule, Trainer

from trainmon.agent.alert_actions import HARDWARE_RULES, SPIKE_RULES, STOP_RULES, scale_lr
from trainmon.agent.integrations.alert_flags import AGREED_SPIKE, AlertFlags
from trainmon.agent.integrations.safe_hooks import never_raises

CHECKPOINT_NAME = "trainmon-hardware-error.ckpt"


class TrainmonAlerts(Callback):
    """Acts on `run`'s alerts (a run from `trainmon.init`, or `TrainmonLogger().experiment`).

    checkpoint_path: where a hardware error's checkpoint goes (default `<default_root_dir>/`
    trainmon-hardware-error.ckpt); lr_factor: scale every optimizer's learning rate (and its
    schedulers' base rates) by this on a spike, not below min_lr; None (the default) leaves it alone."""

    def __init__(self, run: trainmon.Run, *, stop_rules: Iterable[str] = STOP_RULES,
                 hardware_rules: Iterable[str] = HARDWARE_RULES, checkpoint_path: str | os.PathLike[str] | None = None,
                 lr_factor: float | None = None, min_lr: float = 0.0, spike_rules: Iterable[str] = SPIKE_RULES,
                 sync_every: int = 50) -> None:
        self._run = run
        self._flags = AlertFlags(stop_rules=stop_rules, hardware_rules=hardware_rules, spike_rules=spike_rules,
                                 lr_factor=lr_factor, sync_every=sync_every)
        self._checkpoint_path = checkpoint_path
        self._min_lr = min_lr
        self._synced_step = -1  # with gradient accumulation, several batches end at one global step

    @never_raises
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flags.follow(self._run)  # here: fit's thread is the training thread

    @never_raises
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._run.check_alerts()  # the safe point: Lightning may log only every few steps
        step = trainer.global_step
        if self._flags.due(step) and step != self._synced_step:
            self._synced_step = step
            self._act(trainer)

    @never_raises
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":  # every rank validates here at once
            self._act(trainer)

    def _act(self, trainer: Trainer) -> None:
        decision = self._flags.agree(
            lambda flags: [trainer.strategy.reduce_boolean_decision(flag, all=False) for flag in flags])
        try:
            if decision.scale_lr:
                self._scale_lr(trainer)
            if decision.save:  # every rank calls it: the strategy decides who writes (collective in FSDP/DeepSpeed)
                path = self._checkpoint_path or os.path.join(trainer.default_root_dir, CHECKPOINT_NAME)
                trainer.save_checkpoint(path)
        finally:  # a failed save still stops: the GPU is broken either way
            if decision.stop:
                trainer.should_stop = True

    def _scale_lr(self, trainer: Trainer) -> None:
        configs = trainer.lr_scheduler_configs
        for optimizer in trainer.optimizers:
            schedulers = [c.scheduler for c in configs if c.scheduler.optimizer is optimizer]
            scale_lr(optimizer, self._flags.lr_factor, min_lr=self._min_lr, schedulers=schedulers)(AGREED_SPIKE)
