"""Which run an integration logs to: the user's, or one it starts with the framework's config.

The SDK has no public "current run", so a run the user started goes in as `run=`: it is used as it
is, and ending it stays with the user (`with trainmon.init(...)`, `run.finish()`). Without one, the
integration starts a run the first time it needs one, with the framework's config, and leaves its
end to the SDK's exit hooks (finished; crashed on an uncaught exception; killed on SIGTERM): the
frameworks call their "end" hooks after fit and again after each later validate / test / evaluate on
the same logger, so finishing the run there would drop what those log. Only a failure the framework
reports ends it early, as failed.
"""

from __future__ import annotations

import sys
from typing import Any

import trainmon


class RunSource:
    """The run of one integration object. `init_kwargs` go to `trainmon.init` when it starts one."""

    def __init__(self, run: trainmon.Run | None = None, **init_kwargs: Any) -> None:
        self._run = run
        self._owned = run is None
        self._init_kwargs = init_kwargs

    def get(self, config: Any = None) -> trainmon.Run:
        """The run, started now with `config` (the framework's) if there is none yet."""
        if self._run is None:
            kwargs = dict(self._init_kwargs)
            for key, value in distributed_identity().items():
                if kwargs.get(key) is None:  # what the user passed wins
                    kwargs[key] = value
            user_config = kwargs.pop("config", None)
            self._run = trainmon.init(config=config, **kwargs)
            if user_config is not None:  # merged over the framework's: the user's keys win
                self._run.log_config(user_config)
        return self._run

    def log_config(self, config: Any) -> trainmon.Run:
        """The framework's config: in run_start if this starts the run, else a run_meta update."""
        if self._run is None:
            return self.get(config)
        self._run.log_config(config)
        return self._run

    def fail(self) -> None:
        """The framework says training failed: end the run as failed if this source started it."""
        if self._owned and self._run is not None:
            self._run.finish("failed")


def distributed_identity() -> dict[str, int]:
    """Rank and world size from torch.distributed once a framework has set it up. Lightning's own
    launcher sets LOCAL_RANK and WORLD_SIZE but not RANK, so from the environment alone every rank
    would be rank 0 of one process. torch is never imported here."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return {}
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size()}
