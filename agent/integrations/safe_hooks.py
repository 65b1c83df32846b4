"""Framework hooks that never raise into training.

The SDK never raises, but an integration also reads the framework's own objects (logs, arguments,
models, trainers) whose shapes change between releases: a surprise there must cost one warning, not
the training run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from trainmon.agent.sdk import warn

Hook = TypeVar("Hook", bound=Callable[..., Any])
_warned: set[str] = set()  # hooks that failed once already: one warning per hook and process


def never_raises(hook: Hook) -> Hook:
    """`hook` with any exception turned into one TrainmonWarning per hook; it then returns None
    (which every framework here reads as "nothing to change")."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except Exception as exc:
            if hook.__qualname__ not in _warned:
                _warned.add(hook.__qualname__)
                warn(f"{hook.__qualname__} failed (monitoring only; training goes on): {exc!r}")
            return None

    return guarded  # type: ignore[return-value]
