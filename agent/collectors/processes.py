"""CPU and memory of the training processes on this node, and the runs they belong to.

Only the pids the SDK registered are read (three small /proc files each), never the whole process
table. Each record is the contract's process entry:
`{"pid": int, "run": str | None, "figures": {"cpu_percent", "rss_bytes", "threads"}}`.

| figure      | unit    | meaning                                                             |
|-------------|---------|---------------------------------------------------------------------|
| cpu_percent | %       | of ONE core since the previous collect (a 4-thread process can show 400) |
| rss_bytes   | bytes   | resident set size                                                   |
| threads     | threads | OS threads (a growing count hints at leaking data-loader workers)   |

`cpu_percent` needs two readings of the same process: a pid seen for the first time reports no
`cpu_percent` (psutil would say 0.0, which looks like a stall) until the next collect.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import psutil

from trainmon.agent.collectors.base import Collector, Figures, Sample

log = logging.getLogger("trainmon.agent")

Pids = Callable[[], Mapping[int, str | None]]  # pid -> run id (None: not yet known)


class ProcessCollector(Collector):
    """Keeps one psutil.Process per pid between collects, because cpu_percent is a delta against
    that object's previous reading; pids that left the mapping or exited are dropped quietly."""

    name = "processes"

    def __init__(self, *, pids: Pids) -> None:
        self.pids = pids
        self._processes: dict[int, psutil.Process] = {}

    def collect(self, now: float) -> Sample:
        wanted = self.pids()
        for pid in self._processes.keys() - wanted.keys():
            del self._processes[pid]
        sample = Sample()
        for pid, run in wanted.items():
            figures = self._read(pid)
            if figures is None:
                continue
            sample.processes.append({"pid": pid, "run": run, "figures": figures})
            if run:
                sample.runs.add(run)
        return sample

    def _read(self, pid: int) -> Figures | None:
        process = self._processes.get(pid)
        first = process is None
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            with process.oneshot():
                cpu = process.cpu_percent(interval=None)
                figures: Figures = {"rss_bytes": process.memory_info().rss, "threads": process.num_threads()}
        except psutil.NoSuchProcess:  # exited (zombies included): the next registry read drops it
            self._processes.pop(pid, None)
            return None
        except psutil.AccessDenied:
            log.debug("no permission to read training process %d", pid)
            return None
        if not first:
            figures["cpu_percent"] = cpu
        return figures
