"""Hugging Face transformers: `Trainer(callbacks=[TrainmonAlertsCallback(run), ...])`, alerts acting on training.

Early stop on the stop rules (NaN loss, overfitting, plateau), a checkpoint and a stop on a hardware
error, and (opt-in, `lr_factor=`) the learning rate scaled after a loss spike (docs/integrations.md,
"Alerts back into training"). The Trainer does not synchronise `control.should_training_stop`
across processes, so every `sync_every` optimizer steps all ranks OR their flags with one
torch.distributed all-reduce (`alert_actions.any_rank`; nothing on one process) and act alike.

The checkpoint is the Trainer's own (`control.should_save`: `<output_dir>/checkpoint-<step>` with
model, optimizer, scheduler and RNG states), so `resume_from_checkpoint` continues from it. List
this callback before `TrainmonCallback`: that one announces the save as a checkpoint pause only
when it sees `should_save` already set at the same step.
"""

from __future__ import annotations

from typing import Any, Iterable

import trainmon
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainmon.agent.alert_actions import HARDWARE_RULES, SPIKE_RULES, STOP_RULES, any_rank, scale_lr
from trainmon.agent.integrations.alert_flags import AGREED_SPIKE, AlertFlags
from trainmon.agent.integrations.safe_hooks import never_raises
from trainmon.agent.sdk import warn


class TrainmonAlertsCallback(TrainerCallback):
    """Acts on `run`'s alerts (a run from `trainmon.init`, or `TrainmonCallback().run`).

    lr_factor: scale the optimizer's learning rate (and the scheduler's base rates) by this on a
    spike, not below min_lr; None (the default) leaves it alone."""

    def __init__(self, run: trainmon.Run, *, stop_rules: Iterable[str] = STOP_RULES,
                 hardware_rules: Iterable[str] = HARDWARE_RULES, lr_factor: float | None = None, min_lr: float = 0.0,
                 spike_rules: Iterable[str] = SPIKE_RULES, sync_every: int = 50) -> None:
        self._run = run
        self._flags = AlertFlags(stop_rules=stop_rules, hardware_rules=hardware_rules, spike_rules=spike_rules,
                                 lr_factor=lr_factor, sync_every=sync_every)
        self._min_lr = min_lr

    @never_raises
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self._flags.follow(self._run)  # here: train()'s thread is the training thread

    @never_raises
    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        self._run.check_alerts()  # the safe point: the Trainer logs only every logging_steps
        if not self._flags.due(state.global_step):
            return
        decision = self._flags.agree(lambda flags: any_rank(*flags))
        try:
            if decision.scale_lr:
                scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper holds it
                schedulers = [scheduler] if hasattr(scheduler, "base_lrs") else []
                if scheduler is not None and not schedulers:
                    warn(f"{type(scheduler).__name__} has no base_lrs: it may put the old learning rate back")
                scale_lr(optimizer, self._flags.lr_factor, min_lr=self._min_lr, schedulers=schedulers)(AGREED_SPIKE)
            if decision.save:
                control.should_save = True  # the Trainer saves next, on every process (collective-safe)
        finally:  # a failure above still stops
            if decision.stop:
                control.should_training_stop = True
