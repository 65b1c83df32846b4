"""Node-wide CPU, memory, disk and network figures from psutil.

| figure                      | unit     | meaning                                                        |
|-----------------------------|----------|----------------------------------------------------------------|
| cpu_percent                 | %        | busy time of all cores since the previous reading (mean of cores) |
| cpu_core_percent_min        | %        | least busy core over the same span                             |
| cpu_core_percent_max        | %        | busiest core (one pegged core = a stuck data loader)          |
| cpu_core_percent_stddev     | %        | spread of the per-core percents (population stddev)           |
| cpu_count                   | cores    | logical cores                                                  |
| load1, load5, load15        | runnable | load averages                                                  |
| mem_used_bytes              | bytes    | psutil `used` (total - free - buffers - cache)                 |
| mem_available_bytes         | bytes    | what new allocations can get without swapping                  |
| mem_total_bytes             | bytes    | physical memory                                                |
| mem_used_percent            | %        | (total - available) / total: the figure that predicts OOM      |
| swap_used_bytes             | bytes    | swap in use                                                    |
| disk_read_bytes_per_s       | bytes/s  | all block devices, since the previous reading                  |
| disk_write_bytes_per_s      | bytes/s  | all block devices, since the previous reading                  |
| disk_used_percent           | %        | of the filesystem holding `disk_path` (default "/"), as df     |
| net_rx_bytes_per_s          | bytes/s  | all interfaces except `lo`, since the previous reading         |
| net_tx_bytes_per_s          | bytes/s  | all interfaces except `lo`, since the previous reading         |

Rates and CPU percents need two readings: the constructor takes the first, so every collect(),
the first included, reports the span since the previous reading. A span of zero or less (a clock
the caller moved backwards) leaves the rate figures out rather than dividing by it.
"""

from __future__ import annotations

import math
import os
import time

import psutil

from trainmon.agent.collectors.base import Collector, Figures, Sample


class HostCollector(Collector):
    """One psutil call per figure group, no per-process walks: ~10 small /proc reads per collect."""

    name = "host"

    def __init__(self, *, disk_path: str = "/", exclude_nics: frozenset[str] = frozenset({"lo"})) -> None:
        self.disk_path = disk_path
        self.exclude_nics = exclude_nics
        psutil.cpu_percent(interval=None, percpu=True)  # psutil keeps the previous CPU times itself
        self._last_now = time.monotonic()
        self._last_disk = self._disk_bytes()
        self._last_net = self._net_bytes()

    def collect(self, now: float) -> Sample:
        figures: Figures = {}
        self._cpu(figures)
        figures["load1"], figures["load5"], figures["load15"] = os.getloadavg()
        memory = psutil.virtual_memory()
        figures["mem_used_bytes"] = memory.used
        figures["mem_available_bytes"] = memory.available
        figures["mem_total_bytes"] = memory.total
        figures["mem_used_percent"] = memory.percent
        figures["swap_used_bytes"] = psutil.swap_memory().used
        figures["disk_used_percent"] = psutil.disk_usage(self.disk_path).percent
        self._rates(now, figures)
        return Sample(figures=figures)

    def _cpu(self, figures: Figures) -> None:
        # One read of /proc/stat: the total is the mean of the cores instead of a second call.
        cores = psutil.cpu_percent(interval=None, percpu=True)
        mean = sum(cores) / len(cores)
        figures["cpu_percent"] = mean
        figures["cpu_core_percent_min"] = min(cores)
        figures["cpu_core_percent_max"] = max(cores)
        figures["cpu_core_percent_stddev"] = math.sqrt(sum((c - mean) ** 2 for c in cores) / len(cores))
        figures["cpu_count"] = len(cores)

    def _rates(self, now: float, figures: Figures) -> None:
        disk, net = self._disk_bytes(), self._net_bytes()
        span = now - self._last_now
        if span > 0:
            if disk is not None and self._last_disk is not None:
                figures["disk_read_bytes_per_s"] = max(0, disk[0] - self._last_disk[0]) / span
                figures["disk_write_bytes_per_s"] = max(0, disk[1] - self._last_disk[1]) / span
            # Per interface, so one that vanishes or resets costs nothing instead of a negative rate.
            rx = tx = 0
            for nic, (nic_rx, nic_tx) in net.items():
                before = self._last_net.get(nic)
                if before is not None:
                    rx += max(0, nic_rx - before[0])
                    tx += max(0, nic_tx - before[1])
            figures["net_rx_bytes_per_s"] = rx / span
            figures["net_tx_bytes_per_s"] = tx / span
        self._last_now, self._last_disk, self._last_net = now, disk, net

    @staticmethod
    def _disk_bytes() -> tuple[int, int] | None:
        counters = psutil.disk_io_counters()  # None on a machine without block devices
        return None if counters is None else (counters.read_bytes, counters.write_bytes)

    def _net_bytes(self) -> dict[str, tuple[int, int]]:
        return {
            nic: (c.bytes_recv, c.bytes_sent)
            for nic, c in psutil.net_io_counters(pernic=True).items()
            if nic not in self.exclude_nics
        }
