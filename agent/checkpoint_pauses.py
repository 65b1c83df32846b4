"""Checkpoint saves are expected pauses without the user saying so.

Writing a checkpoint holds a rank for seconds to minutes with its step frozen, and can starve the
SDK's heartbeat thread: exactly what the stall and liveness rules page on. `trainmon.init` wraps
`torch.save` and `torch.distributed.checkpoint.save` (only when torch is already imported: trainmon
never imports it) so that a save runs inside `run.pause("checkpoint")` of every open run of the
process: a heartbeat declaring the phase goes out before the write starts, another after it ends.
`torch.save` to a path or an open file counts; to an in-memory buffer (often per step, and quick)
it changes nothing. `TRAINMON_AUTO_PAUSE=0` turns it off. The rules still page a pause far longer
than the run's usual ones (docs/sdk.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ENV = "TRAINMON_AUTO_PAUSE"
PHASE = "checkpoint"
_MARK = "__trainmon_pauses__"  # set on a wrapper, so a second init does not wrap it again
# module, function, whether every call writes a checkpoint (else: only those given a file)
TARGETS = (("torch", "save", False), ("torch.distributed.checkpoint", "save", True))


def install(runs: Callable[[], Iterable[Any]], environ: Mapping[str, str] = os.environ) -> list[str]:
    """Wrap the save functions of the modules already imported; the names wrapped."""
    if environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    wrapped = []
    for module_name, name, always in TARGETS:
        function = getattr(sys.modules.get(module_name), name, None)
        if callable(function) and not getattr(function, _MARK, False):
            setattr(sys.modules[module_name], name, _pausing(function, runs, always))
            wrapped.append(f"{module_name}.{name}")
    return wrapped


def _to_file(args: tuple, kwargs: Mapping[str, Any]) -> bool:
    """torch.save(obj, f): f a path, or a file object with a name (not an in-memory buffer)."""
    target = args[1] if len(args) > 1 else kwargs.get("f")
    return isinstance(target, (str, bytes, os.PathLike)) or isinstance(getattr(target, "name", None), str)


def _pausing(function: Callable[..., Any], runs: Callable[[], Iterable[Any]], always: bool) -> Callable[..., Any]:
    @functools.wraps(function)
    def save(*args: Any, **kwargs: Any) -> Any:
        if not (always or _to_file(args, kwargs)):
            return function(*args, **kwargs)
        with contextlib.ExitStack() as pauses:
            for run in list(runs()):
                pauses.enter_context(run.pause(PHASE))  # never raises: a monitoring problem only warns
            return function(*args, **kwargs)

    setattr(save, _MARK, True)
    return save
