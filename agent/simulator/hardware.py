"""Host and GPU figures of a simulated node, with the standard names the node daemon's collectors
use (docs/events.md): an H100 node that is busy while it runs ranks and idle otherwise.

Faults change figures through effects: functions appended to a GPU's or node's list that edit the
figures after they are drawn, so the healthy model needs no knowledge of any fault.
"""

from __future__ import annotations

import random
from typing import Callable

Figures = dict[str, float | int]
Effect = Callable[[Figures, random.Random], None]  # edits one sample's figures in place

GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_MEM_BYTES = 85_520_809_984  # 81,559 MiB, as NVML reports an H100 80GB
POWER_LIMIT_W = 700.0
SM_BOOST_MHZ, SM_IDLE_MHZ, MEM_CLOCK_MHZ = 1980, 345, 2619
GPU_IDLE_MEM_BYTES = 520 * 2**20
HOST_MEM_BYTES = 2 * 2**40
HOST_CPUS = 224
HOST_BASE_MEM_BYTES = 48 * 2**30  # OS, page cache the kernel will not give back, daemons
RANK_HOST_MEM_BYTES = 96 * 2**30  # a rank's pinned buffers and data loader workers
GIB = 2**30


def _clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def gpu_figures(rng: random.Random, busy: bool, mem_fraction: float) -> Figures:
    """One GPU for one interval: 90-99 % busy while a rank trains on it, near idle otherwise."""
    gauss = rng.gauss
    if busy:
        util = round(_clip(95.0 + 2.0 * gauss(0, 1), 88.0, 100.0))
        power = _clip(610.0 + 35.0 * gauss(0, 1), 450.0, POWER_LIMIT_W - 5.0)
        mem = int(GPU_MEM_BYTES * _clip(mem_fraction + 0.004 * gauss(0, 1), 0.05, 0.94))
        return {"util_percent": util, "mem_util_percent": round(_clip(util * 0.55 + 3 * gauss(0, 1), 0, 100)),
                "mem_used_bytes": mem, "mem_total_bytes": GPU_MEM_BYTES,
                "temperature_c": round(38.0 + power / 19.0 + gauss(0, 1)),
                "power_w": round(power, 1), "power_limit_w": POWER_LIMIT_W,
                "sm_clock_mhz": SM_BOOST_MHZ - 15 * int(abs(gauss(0, 1))), "mem_clock_mhz": MEM_CLOCK_MHZ,
                "pcie_tx_bytes_per_s": int(_clip(0.6e9 + 0.2e9 * gauss(0, 1), 0, 60e9)),
                "pcie_rx_bytes_per_s": int(_clip(1.8e9 + 0.4e9 * gauss(0, 1), 0, 60e9)),
                **_HEALTHY}
    return {"util_percent": 0, "mem_util_percent": 0, "mem_used_bytes": GPU_IDLE_MEM_BYTES,
            "mem_total_bytes": GPU_MEM_BYTES, "temperature_c": round(33.0 + gauss(0, 1)),
            "power_w": round(72.0 + 2.0 * gauss(0, 1), 1), "power_limit_w": POWER_LIMIT_W,
            "sm_clock_mhz": SM_IDLE_MHZ, "mem_clock_mhz": MEM_CLOCK_MHZ,
            "pcie_tx_bytes_per_s": 0, "pcie_rx_bytes_per_s": 0, **_HEALTHY}


_HEALTHY: Figures = {"throttle_reasons": 0, "throttle_thermal": 0, "throttle_power": 0, "throttle_hw_slowdown": 0,
                     "ecc_corrected": 0, "ecc_uncorrected": 0}


def host_figures(rng: random.Random, ranks: int, disk_used_percent: float) -> Figures:
    """Node-wide figures: each busy rank costs CPU (data loading), host memory, disk reads and network."""
    gauss = rng.gauss
    cpu = _clip(1.5 + 6.5 * ranks + 1.5 * gauss(0, 1), 0.2, 100.0)
    used = HOST_BASE_MEM_BYTES + ranks * RANK_HOST_MEM_BYTES + int(2 * GIB * gauss(0, 1))
    figures: Figures = {
        "cpu_percent": round(cpu, 1),
        "cpu_core_percent_min": round(_clip(cpu * 0.2, 0, 100), 1),
        "cpu_core_percent_max": round(_clip(cpu * 2.5 + 20 * bool(ranks), 0, 100), 1),
        "cpu_core_percent_stddev": round(cpu * 0.4, 1),
        "cpu_count": HOST_CPUS,
        "load1": round(_clip(cpu / 100 * HOST_CPUS + gauss(0, 1), 0, 1000), 2),
        "load5": round(cpu / 100 * HOST_CPUS, 2),
        "load15": round(cpu / 100 * HOST_CPUS, 2),
        "swap_used_bytes": 0,
        "disk_used_percent": disk_used_percent,
        "disk_read_bytes_per_s": int(_clip(ranks * 180e6 * (1 + 0.15 * gauss(0, 1)), 0, 1e10)),
        "disk_write_bytes_per_s": int(_clip(2e6 + 1e6 * gauss(0, 1), 0, 1e10)),
        "net_rx_bytes_per_s": int(_clip(ranks * 1.1e9 * (1 + 0.1 * gauss(0, 1)), 0, 1e11)),
        "net_tx_bytes_per_s": int(_clip(ranks * 1.1e9 * (1 + 0.1 * gauss(0, 1)), 0, 1e11)),
    }
    set_host_memory(figures, used)
    return figures


def set_host_memory(figures: Figures, used_bytes: int) -> None:
    """The four host-memory figures from one used-bytes reading, kept consistent with each other."""
    used = int(_clip(used_bytes, 0, HOST_MEM_BYTES))
    figures["mem_total_bytes"] = HOST_MEM_BYTES
    figures["mem_used_bytes"] = used
    figures["mem_available_bytes"] = HOST_MEM_BYTES - used
    figures["mem_used_percent"] = round(100.0 * used / HOST_MEM_BYTES, 1)


def process_figures(rng: random.Random) -> Figures:
    """A training process as the daemon's process collector reports it."""
    return {"cpu_percent": round(_clip(160.0 + 30.0 * rng.gauss(0, 1), 20, 800), 1),
            "rss_bytes": int(24 * GIB * (1 + 0.02 * rng.gauss(0, 1))), "threads": 72}
