"""Ready-made `run.on_alert` callbacks, free of any framework: for plain training loops, and for the
framework integrations to reuse (they map `run.stop_requested` onto their trainer's own stop flag).

    run.on_alert(run.request_stop, rules=STOP_RULES)                    # early stop: NaN, overfitting, plateau
    run.on_alert(save_and_stop(run, lambda: torch.save(state, path)), rules=HARDWARE_RULES)
    run.on_alert(scale_lr(optimizer, 0.5, schedulers=[scheduler]), rules=SPIKE_RULES)   # opt-in

They run in the training thread at the next `run.log` (a safe point: between steps), and act only on
a firing alert, never on its resolve. The rule names are those of the shipped pipeline
(stream_processors/pipeline.yml); a pipeline that renames its rules passes its own names.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Iterable

log = logging.getLogger("trainmon.sdk")

STOP_RULES = ("loss_non_finite", "overfitting", "loss_plateau")  # training goes nowhere good from here
HARDWARE_RULES = ("gpu_hardware_error",)  # uncorrected ECC errors, a GPU fallen off the bus
SPIKE_RULES = ("loss_spike",)

Callback = Callable[[dict[str, Any]], None]


def save_and_stop(run: Any, save: Callable[[], Any]) -> Callback:
    """On the first firing: `save()` a checkpoint inside `run.pause("checkpoint")` (a long write pages
    no one), then `run.request_stop(alert)`; the stop is requested even if the save fails (its error
    is then warned about by the SDK). Not for NaN alerts: that checkpoint would hold the NaN weights."""
    saved = False

    def callback(alert: dict[str, Any]) -> None:
        nonlocal saved
        if alert["state"] != "firing" or saved:
            return
        saved = True
        try:
            with run.pause("checkpoint"):
                save()
        finally:
            run.request_stop(alert)

    return callback


def scale_lr(optimizer: Any, factor: float = 0.5, *, min_lr: float = 0.0, schedulers: Iterable[Any] = ()) -> Callback:
    """On each firing: every param group's "lr" of a torch optimizer (anything with `param_groups`)
    times `factor`, not below `min_lr`; also the `base_lrs` of the given LR schedulers, which would
    otherwise put the old rate back at their next step (LambdaLR, OneCycleLR, cosine). Opt-in: a
    spike is not always the learning rate's fault. Raises ValueError at once for a wrong setup."""
    if not 0.0 < factor or not min_lr >= 0.0:
        raise ValueError(f"scale_lr: factor must be > 0 and min_lr >= 0, got {factor!r}, {min_lr!r}")
    if not hasattr(optimizer, "param_groups"):
        raise ValueError(f"scale_lr: {type(optimizer).__name__} has no param_groups (not a torch optimizer)")
    schedulers = list(schedulers)
    for scheduler in schedulers:
        if not hasattr(scheduler, "base_lrs"):
            raise ValueError(f"scale_lr: {type(scheduler).__name__} has no base_lrs to scale")

    def callback(alert: dict[str, Any]) -> None:
        if alert["state"] != "firing":
            return
        for group in optimizer.param_groups:
            group["lr"] = max(group["lr"] * factor, min_lr)
        for scheduler in schedulers:
            scheduler.base_lrs = [max(lr * factor, min_lr) for lr in scheduler.base_lrs]
        log.warning("trainmon: learning rate x%g after %s (now %s)", factor, alert["rule"],
                    ", ".join(f"{group['lr']:.3g}" for group in optimizer.param_groups))

    return callback


def any_rank(*flags: bool) -> list[bool]:
    """Each flag OR-ed over all ranks, in one all_reduce (MAX) of torch.distributed; the flags as given
    when it is not initialised or has one rank. Every rank must call it at the same point (it is a
    collective): a rank that acts alone on an alert leaves the others waiting in their next
    collective. trainmon never imports torch: a process without it has no other ranks to ask."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return list(flags)
    import torch  # loaded already: torch.distributed is

    # NCCL reduces only CUDA tensors; gloo (and the others) CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]
