"""The node daemon's collectors, registered in one place.

Adding one: write `agent/collectors/<name>.py` with a `Collector` subclass (keyword-only
constructor options, a cheap collect(now) returning its part of a `Sample`) and add it to
COLLECTORS. The daemon builds what its config names with `build()`:

    collectors = build({"host": {}, "processes": {"pids": registry.pids}, "gpu": {"pcie": False}})
    sample = collectors.collect(time.monotonic())
    event = sample.to_event(host=hostname, time=time.time(), interval_s=1.0)
"""

from __future__ import annotations

from typing import Any, Mapping

from trainmon.agent.collectors.base import Collector, CollectorSet, Sample
from trainmon.agent.collectors.gpu import GpuCollector, gpu_inventory
from trainmon.agent.collectors.host import HostCollector
from trainmon.agent.collectors.processes import ProcessCollector

COLLECTORS: dict[str, type[Collector]] = {
    "host": HostCollector,
    "processes": ProcessCollector,
    "gpu": GpuCollector,
}


def build(config: Mapping[str, Mapping[str, Any]]) -> CollectorSet:
    """One collector per name in `config`, constructed with that name's options, in config order."""
    unknown = [name for name in config if name not in COLLECTORS]
    if unknown:
        raise ValueError(f"unknown collector(s) {', '.join(unknown)}; known: {', '.join(COLLECTORS)}")
    built = CollectorSet([])
    for name, options in config.items():
        try:
            built.collectors.append(COLLECTORS[name](**options))
        except TypeError as exc:  # a misspelt or missing option: name the collector, free the rest
            built.close()
            raise ValueError(f"collector {name}: {exc}") from None
    return built


__all__ = ["COLLECTORS", "Collector", "CollectorSet", "GpuCollector", "HostCollector", "ProcessCollector",
           "Sample", "build", "gpu_inventory"]
