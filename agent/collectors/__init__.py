"""The node daemon's collectors, registered in one place.

Adding one: write `agent/collectors/<name>.py` with a `Collector` subclass (keyword-only
constructor options, a cheap collect(now) returning its part of a `Sample`) and add it to
COLLECTORS; `[agent] collectors` (--collectors) then may name it. The daemon builds what that
setting names with `build()`, handing each the options agent/daemon.py build_collectors() takes
from the settings (none for a collector it does not know):

    collectors = build({"host": {}, "processes": {"pids": registry.pids}, "gpu": {"pcie": False}})
    sample = collectors.collect(time.monotonic())
    event = sample.to_event(host=hostname, time=time.time(), interval_s=1.0)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from trainmon.agent.collectors.base import Collector, CollectorSet, Sample
from trainmon.agent.collectors.gpu import GpuCollector, gpu_inventory
from trainmon.agent.collectors.host import HostCollector
from trainmon.agent.collectors.processes import ProcessCollector

COLLECTORS: dict[str, type[Collector]] = {
    "host": HostCollector,
    "processes": ProcessCollector,
    "gpu": GpuCollector,
}


def names(text: str) -> list[str]:
    """The collectors a comma-separated list names (the agent's `collectors` setting), each known, once."""
    listed = [name.strip() for name in text.split(",") if name.strip()]
    if not listed:
        raise ValueError(f"names no collector; known: {', '.join(COLLECTORS)}")
    _refuse_unknown(listed)
    if len(set(listed)) < len(listed):
        raise ValueError(f"names a collector twice: {text!r}")
    return listed


def build(config: Mapping[str, Mapping[str, Any]]) -> CollectorSet:
    """One collector per name in `config`, constructed with that name's options, in config order."""
    _refuse_unknown(config)
    built = CollectorSet([])
    for name, options in config.items():
        try:
            built.collectors.append(COLLECTORS[name](**options))
        except TypeError as exc:  # a misspelt or missing option: name the collector, free the rest
            built.close()
            raise ValueError(f"collector {name}: {exc}") from None
    return built


def _refuse_unknown(listed: Iterable[str]) -> None:
    unknown = [name for name in listed if name not in COLLECTORS]
    if unknown:
        raise ValueError(f"unknown collector(s) {', '.join(unknown)}; known: {', '.join(COLLECTORS)}")


__all__ = ["COLLECTORS", "Collector", "CollectorSet", "GpuCollector", "HostCollector", "ProcessCollector",
           "Sample", "build", "gpu_inventory", "names"]
