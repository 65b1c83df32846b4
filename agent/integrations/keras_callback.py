"""Keras 3: `model.fit(..., callbacks=[TrainmonCallback()])`, on the JAX, torch and TensorFlow backends.

It records fit's settings, the optimizer's config and `model.summary()`; each training batch's logs
at the global step (batches since fit began) with a fractional epoch; each epoch's logs (`val_*`)
at the epoch's last step; validation inside fit as `run.phase("eval")` (docs/integrations.md).

Off the training thread: the callback says `async_safe`, so on the backends where Keras can
(JAX, torch) it runs the batch hook on its own worker threads, where turning the batch's logs into
Python numbers waits for the device instead of the training loop. Keras waits for those threads
before each epoch's end, so the epoch state read there is never stale; with several threads
the batch hooks can run out of order, which is why a step is computed from the batch index, never
counted.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import keras
import trainmon

from trainmon.agent.integrations.run_source import RunSource
from trainmon.agent.integrations.safe_hooks import never_raises

EVAL = "eval"


class TrainmonCallback(keras.callbacks.Callback):
    """Logs a Keras fit to trainmon.

    run: a run you started with `trainmon.init` (then yours to finish); without it the callback
    starts one when training begins, with project / name / tags and any other `trainmon.init`
    keyword (settings, run_id, config...)."""

    async_safe = True  # Keras may run the batch hooks on its worker threads (see the module's doc)

    def __init__(self, project: str | None = None, name: str | None = None, tags: list[str] | None = None, *,
                 run: trainmon.Run | None = None, **init_kwargs: Any) -> None:
        super().__init__()
        self._source = RunSource(run, project=project, name=name, tags=tags, **init_kwargs)
        self._pauses = contextlib.ExitStack()
        self._first_step = 0  # global step of the current epoch's batch 0
        self._epoch = 0
        self._batches = 0  # batches of the current epoch seen so far
        self._batches_lock = threading.Lock()  # batch hooks may run on several threads at once

    @property
    def run(self) -> trainmon.Run:
        """The trainmon run (started here on first use): to log more to it, or to finish it early."""
        return self._source.get()

    @never_raises
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        run = self._source.log_config(self._config())
        run.log_model(self.model, summary=self._summary())

    @never_raises
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch, self._batches = epoch, 0

    @never_raises
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        with self._batches_lock:
            self._batches = max(self._batches, batch + 1)
        steps = self.params.get("steps")
        epoch = self._epoch + (batch + 1) / steps if steps else self._epoch
        self._source.get().log(dict(logs or {}), step=self._first_step + batch, epoch=epoch)

    @never_raises
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        last_step = self._first_step + max(self._batches, 1) - 1
        self._source.get().log(dict(logs or {}), step=last_step, epoch=epoch + 1)
        self._first_step += self._batches

    @never_raises
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._pauses.enter_context(self._source.get().phase(EVAL))

    @never_raises
    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._pauses.close()

    def _config(self) -> dict[str, Any]:
        optimizer = getattr(self.model, "optimizer", None)
        return {"epochs": self.params.get("epochs"), "steps_per_epoch": self.params.get("steps"),
                "backend": keras.backend.backend(), "keras_version": keras.__version__,
                "optimizer": optimizer.get_config() if optimizer is not None else None,
                "loss": getattr(self.model, "loss", None)}  # a name, or an object kept as its string form

    def _summary(self) -> str | None:
        """`model.summary()` as text (None for a model that is not built yet)."""
        lines: list[str] = []
        try:
            self.model.summary(print_fn=lambda text, *args, **kwargs: lines.append(text))
        except ValueError:  # "This model has not yet been built"
            return None
        return "\n".join(lines)
