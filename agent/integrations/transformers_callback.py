"""Hugging Face transformers: `Trainer(..., callbacks=[TrainmonCallback()])`.

It records the TrainingArguments and the model's config as the run's config, the model, every
`on_log` at `state.global_step` with the fractional `state.epoch`, and evaluations and checkpoints
during training as expected pauses (docs/integrations.md).

Names stay as the Trainer logs them (`loss`, `grad_norm`, `learning_rate`, `eval_loss`, ...): the
processors' rules watch `loss` and `grad_norm` by those names. The Trainer decides in
`on_step_end` / `on_epoch_end` (its `control`) whether it evaluates and saves next, and tells
`on_evaluate` / `on_save` afterwards: the pauses span exactly that. (A checkpoint kept only when
it is the best so far, `save_strategy="best"`, is decided after the evaluation, too late to be
announced: its write is not paused.)

`report_to="trainmon"` is not offered: the Trainer's list of reporters is a plain dict inside
transformers.integrations.integration_utils with no way to add to it short of changing that
module's global, so pass the callback instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trainmon
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainmon.agent.checkpoint_pauses import PHASE as CHECKPOINT
from trainmon.agent.integrations.run_source import RunSource
from trainmon.agent.integrations.safe_hooks import never_raises

EVAL = "eval"


class TrainmonCallback(TrainerCallback):
    """Logs a transformers Trainer's run to trainmon.

    run: a run you started with `trainmon.init` (then yours to finish); without it the callback
    starts one when training begins, with project / name / tags and any other `trainmon.init`
    keyword (settings, run_id, config...)."""

    def __init__(self, project: str | None = None, name: str | None = None, tags: list[str] | None = None, *,
                 run: trainmon.Run | None = None, **init_kwargs: Any) -> None:
        self._source = RunSource(run, project=project, name=name, tags=tags, **init_kwargs)
        self._pauses = contextlib.ExitStack()  # the eval / checkpoint pause under way, if any

    @property
    def run(self) -> trainmon.Run:
        """The trainmon run (started here on first use): to log more to it, or to finish it early."""
        return self._source.get()

    @never_raises
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        config = args.to_dict()
        model_config = getattr(model, "config", None)
        if callable(getattr(model_config, "to_dict", None)):
            config["model_config"] = model_config.to_dict()
        run = self._source.log_config(config)
        if model is not None:
            run.log_model(model)

    @never_raises
    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        values = dict(logs or {})
        epoch = values.pop("epoch", state.epoch)  # fractional: 1.5 is half-way through the second epoch
        self._source.get().log(values, step=state.global_step, epoch=epoch)

    @never_raises
    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._announce(control)

    @never_raises
    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._announce(control)

    @never_raises
    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._pauses.close()
        if control.should_save:  # the Trainer saves right after evaluating
            self._pauses.enter_context(self._source.get().pause(CHECKPOINT))

    @never_raises
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        self._pauses.close()

    @never_raises
    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._pauses.close()  # nothing may stay paused after training

    def _announce(self, control: TrainerControl) -> None:
        """What the Trainer does next after this step or epoch: evaluate first, then save."""
        self._pauses.close()
        if control.should_evaluate:
            self._pauses.enter_context(self._source.get().phase(EVAL))
        elif control.should_save:
            self._pauses.enter_context(self._source.get().pause(CHECKPOINT))
