"""trainmon: watch model training on GPU clusters.

    import trainmon
    run = trainmon.init(project="llm", config={"lr": 3e-4})
    run.log({"loss": loss}, step=step)
    run.finish()

`import trainmon` is cheap: this module and the shared core (contract, settings) import only the
standard library. The SDK (trainmon.agent.sdk), the Kafka client and the GPU library load inside init().
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` alone would double the import time
if TYPE_CHECKING:
    import os
    from typing import Any, Iterable

    from trainmon.agent.sdk import Run

__version__ = "0.1.0"
__all__ = ["init", "Run", "TrainmonWarning", "classification_metrics", "__version__"]


class TrainmonWarning(UserWarning):
    """A bad SDK call (bad metric name or value, bad argument, call after finish): the SDK warns
    once per name and reason, drops what it cannot use, and goes on."""


def init(project: str | None = None, name: str | None = None, config: Any = None, tags: Iterable[str] | None = None,
         *, run_id: str | None = None, rank: int | None = None, world_size: int | None = None,
         local_rank: int | None = None, settings: Any = None, heartbeat_s: float = 1.0,
         spool_dir: str | os.PathLike[str] | None = None, publisher: Any = None) -> Run:
    """Start this process's run and return it; never raises into training.

    project: defaults to $TRAINMON_PROJECT, else "default". name: a human name. config: dict,
    argparse.Namespace or dataclass of hyperparameters. tags: list of str. run_id / rank /
    world_size / local_rank: override what the launcher's environment says (docs/sdk.md, Identity).
    settings: trainmon.settings.Settings (default: trainmon.settings.load()). heartbeat_s: how often
    this rank says it is alive (trainmon.contract.HEARTBEAT_S). spool_dir: root of the disk spool (default $TRAINMON_SPOOL_DIR or
    ~/.cache/trainmon/spool). publisher: an object with publish/flush/close (tests, or to share one).
    """
    from trainmon.agent.sdk import init as _init

    return _init(project, name, config, tags, run_id=run_id, rank=rank, world_size=world_size,
                 local_rank=local_rank, settings=settings, heartbeat_s=heartbeat_s, spool_dir=spool_dir,
                 publisher=publisher)


def __getattr__(attribute: str) -> Any:
    """`trainmon.Run` and `trainmon.classification_metrics` load their modules on first use."""
    if attribute == "Run":
        from trainmon.agent.sdk import Run

        return Run
    if attribute == "classification_metrics":
        from trainmon.agent.classification import classification_metrics  # needs numpy

        return classification_metrics
    raise AttributeError(f"module 'trainmon' has no attribute {attribute!r}")
