"""Plain torch: `trainmon.torch.watch(model, optimizer)` measures training without a framework.

Every `every_n_steps` optimizer steps it logs, at that step (optimizer steps since `watch`, from 0):
`grad_norm` (the gradients the optimizer applies, after clipping and AMP unscaling), `update_norm`
(what the step changed), `step_time_s`, `samples_per_s`, `tokens_per_s` (since the last report), and
once CUDA is in use `cuda_memory_allocated_bytes`, `cuda_memory_reserved_bytes`,
`cuda_memory_peak_bytes` of this rank's device (docs/integrations.md).

The names are the processors': `grad_norm` feeds the spike rule, `step_time_s` the straggler rule.

Off the hot path: between reports a step costs two Python calls (the optimizer hooks) and a
forward one (counting inputs); nothing waits for the device. At a report the norms are computed
on the device as the training's own work is (queued, not waited for), a CUDA event is recorded
behind them, and a reporter thread waits for that event, reads the numbers and calls `run.log`.
The update norm needs the parameters as they were before the step: one extra parameter-sized copy
for the duration of that step (`update_norm=False` spares it). On CPU the norms are computed in the
hook itself: CPU work cannot be queued.

The steps it logs are explicit: log your own values with `step=` too, since an automatic step
follows the last explicit one (docs/sdk.md).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import trainmon

from trainmon.agent.integrations.run_source import RunSource
from trainmon.agent.integrations.safe_hooks import never_raises

log = logging.getLogger("trainmon.sdk")

PENDING_REPORTS = 8  # reports waiting for the device; past that a report is skipped, never waited for
TOKEN_DTYPES = (torch.int32, torch.int64)  # token ids; float inputs are features, not tokens


@dataclass
class _Report:
    step: int
    on_device: dict[str, torch.Tensor]  # 0-dim tensors, possibly not computed yet
    ready: torch.cuda.Event | None  # recorded after them on the training stream (None on CPU)
    numbers: dict[str, float | int]  # read on the host already: rates, CUDA memory counters


class Watch:
    """The hooks `watch` put on one model and optimizer; `remove()` takes them off."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: trainmon.Run,
                 every_n_steps: int, update_norm: bool) -> None:
        self._run = run
        self._optimizer = optimizer
        self._every = every_n_steps
        self._update_norm = update_norm
        self._steps = 0  # optimizer steps taken since watch()
        self._sampling = False  # this step is measured
        self._before: list[torch.Tensor] = []  # parameters before the measured step
        self._grad_norm: torch.Tensor | None = None
        self._window_start: float | None = None  # perf_counter at the step the current window began
        self._window_steps = 0
        self._samples = self._tokens = 0  # training inputs seen in the current window
        self._reports: queue.Queue[_Report | None] = queue.Queue(PENDING_REPORTS)
        self._reporter = threading.Thread(target=self._report_loop, name="trainmon-torch-watch", daemon=True)
        self._reporter.start()
        atexit.register(self.remove)  # before the SDK's exit hook ends the run: the last report still lands
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step),
                         model.register_forward_pre_hook(self._count_inputs, with_kwargs=True)]

    @property
    def run(self) -> trainmon.Run:
        """The run it logs to."""
        return self._run

    def remove(self, timeout_s: float = 5.0) -> None:
        """Take the hooks off and let the reporter send what it holds (waiting at most timeout_s)."""
        atexit.unregister(self.remove)
        if not self._handles:
            return  # removed already
        for handle in self._handles:
            handle.remove()
        self._handles = []
        try:
            self._reports.put(None, timeout=timeout_s)
        except queue.Full:
            return  # the reporter is stuck on the device: leave it, it is a daemon thread
        self._reporter.join(timeout_s)

    # --- on the training thread -------------------------------------------------------------------

    def _parameters(self) -> list[torch.Tensor]:
        return [p for group in self._optimizer.param_groups for p in group["params"] if p.requires_grad]

    @never_raises
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._sampling = (self._steps + 1) % self._every == 0
        if not self._sampling:
            return
        parameters = self._parameters()
        grads = [p.grad for p in parameters if p.grad is not None]
        self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if self._update_norm:
            self._before = [p.detach().clone() for p in parameters]

    @never_raises
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._steps += 1
        now = time.perf_counter()
        if self._window_start is None:  # the first step: the set-up before it is not training time
            self._start_window(now)
        else:
            self._window_steps += 1
        if not self._sampling:
            return
        on_device: dict[str, torch.Tensor] = {}
        if self._grad_norm is not None:
            on_device["grad_norm"] = self._grad_norm
        if self._before:
            changes = [before.sub_(p.detach()) for before, p in zip(self._before, self._parameters())]
            on_device["update_norm"] = torch.nn.utils.get_total_norm(changes)
        numbers = self._rates(now) | _cuda_memory()
        ready = None
        if any(tensor.is_cuda for tensor in on_device.values()):
            ready = torch.cuda.Event()
            ready.record()  # on the current stream, behind the norms
        self._grad_norm, self._before = None, []
        try:
            self._reports.put_nowait(_Report(self._steps - 1, on_device, ready, numbers))
        except queue.Full:
            log.debug("trainmon.torch.watch: reporter behind, report of step %d skipped", self._steps - 1)
        self._start_window(now)

    def _rates(self, now: float) -> dict[str, float]:
        elapsed = now - (self._window_start or now)
        if elapsed <= 0 or not self._window_steps:  # a report at the very first step: no window yet
            return {}
        rates = {"step_time_s": elapsed / self._window_steps}
        if self._samples:
            rates["samples_per_s"] = self._samples / elapsed
        if self._tokens:
            rates["tokens_per_s"] = self._tokens / elapsed
        return rates

    def _start_window(self, now: float) -> None:
        self._window_start, self._window_steps, self._samples, self._tokens = now, 0, 0, 0

    @never_raises
    def _count_inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation inside the loop is not training throughput
        batch = kwargs.get("input_ids")  # Hugging Face models are called with keywords
        if not isinstance(batch, torch.Tensor):
            batch = next((a for a in itertools.chain(args, kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if batch is None or batch.dim() == 0:
            return
        self._samples += batch.shape[0]
        if batch.dtype in TOKEN_DTYPES:
            self._tokens += batch.numel()

    # --- on the reporter thread -------------------------------------------------------------------

    def _report_loop(self) -> None:
        while (report := self._reports.get()) is not None:
            self._send(report)

    @never_raises
    def _send(self, report: _Report) -> None:
        if report.ready is not None:
            report.ready.synchronize()  # waits here, not in the training loop
        values: dict[str, float | int] = {name: tensor.item() for name, tensor in report.on_device.items()}
        self._run.log(values | report.numbers, step=report.step)


def _cuda_memory() -> dict[str, int]:
    """This rank's device memory as torch.cuda counts it (host-side counters: no device sync).
    Nothing before CUDA is in use: asking would initialise it."""
    if not torch.cuda.is_initialized():
        return {}
    return {"cuda_memory_allocated_bytes": torch.cuda.memory_allocated(),
            "cuda_memory_reserved_bytes": torch.cuda.memory_reserved(),
            "cuda_memory_peak_bytes": torch.cuda.max_memory_allocated()}


def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, every_n_steps: int = 100,
          update_norm: bool = True, run: trainmon.Run | None = None, project: str | None = None,
          name: str | None = None, tags: list[str] | None = None, **init_kwargs: Any) -> Watch:
    """Log grad and update norms, step time, throughput and CUDA memory every `every_n_steps`
    optimizer steps (see the module's doc), and record the model and the optimizer's hyperparameters
    (config). run: a run you started (then yours to finish); without it one starts now."""
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        # a bug in the script: seen at once, before training starts
        raise ValueError(f"every_n_steps must be an int >= 1, got {every_n_steps!r}")
    source = RunSource(run, project=project, name=name, tags=tags, **init_kwargs)
    optimizer_class = type(optimizer)
    active = source.log_config({"optimizer": f"{optimizer_class.__module__}.{optimizer_class.__qualname__}",
                                **optimizer.defaults})
    active.log_model(model)
    return Watch(model, optimizer, active, every_n_steps, update_norm)
