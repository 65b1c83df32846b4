"""PyTorch Lightning: `Trainer(logger=TrainmonLogger())`.

It records the hyperparameters as the run's config, each `log_metrics` at Lightning's step with
the `epoch` Lightning adds as the event's epoch, `log_graph` as the model, checkpoint saves as
expected pauses, and ends a run it started as failed on `finalize("failed")` (docs/integrations.md).

Every rank logs its own metrics (the SDK keeps config and model from rank 0 only), unlike
Lightning's built-in loggers, so the processors can compare ranks. Checkpoints: Lightning
serialises with torch.save into memory and writes the bytes with fsspec, which the SDK's automatic
torch.save pause does not see, so the logger wraps the trainer's `save_checkpoint` (found through
the module Lightning hands to `log_graph`; with `Trainer(enable_autolog_hparams=False)` Lightning
does not call it: call `logger.log_graph(model)` yourself once `fit` has attached the model, e.g. in
the module's `on_fit_start`).
"""

from __future__ import annotations

import functools
from argparse import Namespace
from typing import Any, Callable, Mapping

import trainmon
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch.nn import Module

from trainmon.agent.checkpoint_pauses import PHASE as CHECKPOINT
from trainmon.agent.integrations.run_source import RunSource
from trainmon.agent.integrations.safe_hooks import never_raises

_PAUSED = "__trainmon_checkpoint_pause__"  # marks a trainer's save_checkpoint already wrapped


class TrainmonLogger(Logger):
    """A Lightning logger writing to a trainmon run.

    run: a run you started with `trainmon.init` (then yours to finish); without it the logger
    starts one when Lightning sets up, with project / name / tags and any other `trainmon.init`
    keyword (settings, run_id, config...)."""

    def __init__(self, project: str | None = None, name: str | None = None, tags: list[str] | None = None, *,
                 run: trainmon.Run | None = None, **init_kwargs: Any) -> None:
        super().__init__()
        self._source = RunSource(run, project=project, name=name, tags=tags, **init_kwargs)

    @property
    def experiment(self) -> trainmon.Run:
        """The trainmon run (Lightning creates it through this during setup)."""
        return self._source.get()

    @property
    def name(self) -> str:
        """The project: Lightning's default checkpoint folder is <root>/<name>/<version>/checkpoints."""
        return self.experiment.project

    @property
    def version(self) -> str:
        """The run id, the same on every rank."""
        return self.experiment.id

    @never_raises
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self._source.log_config(params)

    @never_raises
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = dict(metrics)
        epoch = values.pop("epoch", None)  # Lightning adds the current epoch as a metric: it is the event's epoch
        self.experiment.log(values, step=step, epoch=epoch)

    @never_raises
    def log_graph(self, model: Module, input_array: Any = None) -> None:
        self.experiment.log_model(model)
        if isinstance(model, LightningModule):
            try:
                trainer = model.trainer
            except RuntimeError:  # not attached to a Trainer (yet): no saves to watch
                return
            _pause_during_saves(trainer, lambda: self.experiment)

    @never_raises
    def finalize(self, status: str) -> None:
        # "success" comes after every fit / validate / test: the run stays open for the next one
        if status == "failed":
            self._source.fail()


def _pause_during_saves(trainer: Any, run: Callable[[], trainmon.Run]) -> None:
    """Make `trainer.save_checkpoint` (on this trainer only) an expected pause of the run."""
    save = getattr(trainer, "save_checkpoint", None)  # Fabric's stand-in trainer has none
    if save is None or getattr(save, _PAUSED, False):
        return

    @functools.wraps(save)
    def save_checkpoint(*args: Any, **kwargs: Any) -> Any:
        with run().pause(CHECKPOINT):  # never raises: a monitoring problem only warns
            return save(*args, **kwargs)

    setattr(save_checkpoint, _PAUSED, True)
    trainer.save_checkpoint = save_checkpoint
