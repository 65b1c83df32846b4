"""Every GPU of the node through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

One contract GPU entry per device and interval:
`{"index", "uuid", "name", "figures": {...}, "processes": [{"pid", "mem_used_bytes"}], "error"?}`.

| figure               | unit    | NVML call                                                          |
|----------------------|---------|--------------------------------------------------------------------|
| util_percent         | %       | nvmlDeviceGetUtilizationRates().gpu                                 |
| mem_util_percent     | %       | nvmlDeviceGetUtilizationRates().memory (memory controller busy)     |
| mem_used_bytes       | bytes   | nvmlDeviceGetMemoryInfo().used                                      |
| mem_total_bytes      | bytes   | nvmlDeviceGetMemoryInfo().total                                     |
| temperature_c        | °C      | nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)                      |
| power_w              | W       | nvmlDeviceGetPowerUsage (mW)                                        |
| power_limit_w        | W       | nvmlDeviceGetEnforcedPowerLimit (mW)                                |
| sm_clock_mhz         | MHz     | nvmlDeviceGetClockInfo(NVML_CLOCK_SM)                               |
| mem_clock_mhz        | MHz     | nvmlDeviceGetClockInfo(NVML_CLOCK_MEM)                              |
| pcie_tx_bytes_per_s  | bytes/s | nvmlDeviceGetPcieThroughput(TX) (KiB/s, over a 20 ms window)        |
| pcie_rx_bytes_per_s  | bytes/s | nvmlDeviceGetPcieThroughput(RX)                                     |
| throttle_reasons     | bitmask | nvmlDeviceGetCurrentClocksEventReasons (older: ...ThrottleReasons)  |
| throttle_thermal     | 0/1     | SW or HW thermal slowdown bit set                                   |
| throttle_power       | 0/1     | SW power cap or HW power brake bit set                              |
| throttle_hw_slowdown | 0/1     | HW slowdown (clocks halved or worse: heat, power brake or PSU)      |
| ecc_corrected        | count   | nvmlDeviceGetTotalEccErrors(CORRECTED, VOLATILE)                    |
| ecc_uncorrected      | count   | nvmlDeviceGetTotalEccErrors(UNCORRECTED, VOLATILE)                  |

`throttle_hw_slowdown` is extra to docs/events.md: NVML's HW-slowdown bit does not say whether
heat or power caused it, so it belongs in neither of the other two, yet it is the costliest.

A figure the GPU does not support (NVMLError_NotSupported) is left out, and not asked again. An
error meaning the device or driver stopped answering (fallen off the bus, reset required, ...)
ends that GPU's reading for the interval: its entry gets `error` and the figures read before it,
and the other GPUs are read as usual. Without NVML (no library, no driver, no GPU) the collector
logs one line at start and contributes nothing.

Cost: about 15 NVML calls per GPU; each PCIe throughput call WAITS 20 ms inside the driver (that
is how NVML measures it), so pcie=True adds 40 ms of wall time per GPU to every collect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from trainmon.agent.collectors.base import Collector, Figures, Sample
from trainmon.contract import MAX_TEXT_LEN

log = logging.getLogger("trainmon.agent")

# Clock event (throttle) reason bits, nvml.h nvmlClocksEventReason*; an ABI, so fixed here.
SW_POWER_CAP = 0x04
HW_SLOWDOWN = 0x08
SW_THERMAL_SLOWDOWN = 0x20
HW_THERMAL_SLOWDOWN = 0x40
HW_POWER_BRAKE_SLOWDOWN = 0x80
_THERMAL = SW_THERMAL_SLOWDOWN | HW_THERMAL_SLOWDOWN
_POWER = SW_POWER_CAP | HW_POWER_BRAKE_SLOWDOWN

# The device or driver stopped answering: more questions to this GPU now only wait on more failures.
_GONE = ("GpuIsLost", "Unknown", "ResetRequired", "GpuNotFound", "Timeout", "DriverNotLoaded",
         "LibRmVersionMismatch", "Uninitialized")
# This GPU or driver cannot answer this question, now or later.
_UNSUPPORTED = ("NotSupported", "FunctionNotFound")

Query = Callable[[Any, Any], Any]  # (nvml module, device handle) -> answer


def utilization(nvml: Any, handle: Any) -> Figures:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    return {"util_percent": rates.gpu, "mem_util_percent": rates.memory}


def memory(nvml: Any, handle: Any) -> Figures:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {"mem_used_bytes": info.used, "mem_total_bytes": info.total}


def temperature(nvml: Any, handle: Any) -> Figures:
    return {"temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)}


def power(nvml: Any, handle: Any) -> Figures:
    return {"power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000}


def power_limit(nvml: Any, handle: Any) -> Figures:
    return {"power_limit_w": nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000}


def sm_clock(nvml: Any, handle: Any) -> Figures:
    return {"sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)}


def mem_clock(nvml: Any, handle: Any) -> Figures:
    return {"mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)}


def pcie_tx(nvml: Any, handle: Any) -> Figures:
    return {"pcie_tx_bytes_per_s": nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES) * 1024}


def pcie_rx(nvml: Any, handle: Any) -> Figures:
    return {"pcie_rx_bytes_per_s": nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_RX_BYTES) * 1024}


def throttle(nvml: Any, handle: Any) -> Figures:
    # NVML 12.535 renamed "throttle reasons" to "clocks event reasons"; older bindings lack the new name.
    get = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    reasons = (get or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)(handle)
    return {
        "throttle_reasons": reasons,
        "throttle_thermal": int(bool(reasons & _THERMAL)),
        "throttle_power": int(bool(reasons & _POWER)),
        "throttle_hw_slowdown": int(bool(reasons & HW_SLOWDOWN)),
    }


def ecc_corrected(nvml: Any, handle: Any) -> Figures:
    return {"ecc_corrected": nvml.nvmlDeviceGetTotalEccErrors(
        handle, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC)}


def ecc_uncorrected(nvml: Any, handle: Any) -> Figures:
    return {"ecc_uncorrected": nvml.nvmlDeviceGetTotalEccErrors(
        handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)}


def processes(nvml: Any, handle: Any) -> list[dict[str, int]]:
    """GPU memory per pid, summed (a process can hold several contexts); pids whose usage NVML
    cannot see (None, e.g. some containers) are left out, as the contract needs a count."""
    used: dict[int, int] = {}
    for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if process.usedGpuMemory is not None:
            used[process.pid] = used.get(process.pid, 0) + process.usedGpuMemory
    return [{"pid": pid, "mem_used_bytes": mem} for pid, mem in used.items()]


FIGURE_QUERIES: tuple[Query, ...] = (utilization, memory, temperature, power, power_limit, sm_clock, mem_clock,
                                     throttle, ecc_corrected, ecc_uncorrected)
PCIE_QUERIES: tuple[Query, ...] = (pcie_tx, pcie_rx)


def open_nvml(nvml: Any = None) -> Any:
    """The initialised NVML module; raises ImportError or NVMLError when there is none to use."""
    if nvml is None:
        import pynvml as nvml  # lazily: nodes without GPUs and the SDK import path never load it
    nvml.nvmlInit()
    return nvml


@dataclass(slots=True)
class _Gpu:
    index: int
    handle: Any = None  # None until attached, and again after an error, to re-attach
    uuid: str = "unknown"
    name: str | None = None
    unsupported: set[str] = field(default_factory=set)
    error: str | None = None


class GpuCollector(Collector):
    """Per-GPU NVML reads. `nvml` is the pynvml module or a stand-in with the same functions
    (tests pass a fake); `pcie=False` skips the two PCIe calls that wait 20 ms each."""

    name = "gpu"

    def __init__(self, *, nvml: Any = None, pcie: bool = True) -> None:
        self._nvml: Any = None
        self._gpus: list[_Gpu] = []
        self._warned: set[tuple[int, str, str]] = set()
        self._queries = FIGURE_QUERIES + (PCIE_QUERIES if pcie else ())
        try:
            nvml = open_nvml(nvml)
        except ImportError:
            log.warning("GPU collector disabled: the nvidia-ml-py package is not installed")
            return
        except Exception as exc:  # NVMLError: no libnvidia-ml, no driver, no permission
            log.warning("GPU collector disabled: NVML did not start (%s)", exc)
            return
        try:
            gpus = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.warning("GPU collector disabled: NVML could not count GPUs (%s)", exc)
            nvml.nvmlShutdown()
            return
        if gpus == 0:
            log.warning("GPU collector disabled: NVML sees no GPU on this node")
            nvml.nvmlShutdown()
            return
        self._nvml = nvml
        self._gpus = [_Gpu(index) for index in range(gpus)]
        self._gone = tuple(getattr(nvml, f"NVMLError_{name}") for name in _GONE)
        self._unsupported = tuple(getattr(nvml, f"NVMLError_{name}") for name in _UNSUPPORTED)

    @property
    def enabled(self) -> bool:
        return self._nvml is not None

    def collect(self, now: float) -> Sample:
        return Sample(gpus=[self._read(gpu) for gpu in self._gpus])

    def close(self) -> None:
        if self._nvml is not None:
            nvml, self._nvml, self._gpus = self._nvml, None, []
            nvml.nvmlShutdown()

    def _read(self, gpu: _Gpu) -> dict[str, Any]:
        figures: Figures = {}
        gpu_processes = error = None
        try:
            if gpu.handle is None:
                self._attach(gpu)
            for query in self._queries:
                answer = self._ask(gpu, query)
                if answer is not None:
                    figures.update(answer)
            gpu_processes = self._ask(gpu, processes)
        except Exception as exc:  # gone, or a bug: this GPU's reading ends here, the others go on
            nvml_error = isinstance(exc, self._nvml.NVMLError)
            error = (str(exc) if nvml_error else f"{type(exc).__name__}: {exc}")[:MAX_TEXT_LEN]
            gpu.handle = None
            if gpu.error is None:
                log.warning("GPU %d (%s) stopped answering: %s", gpu.index, gpu.uuid, error, exc_info=not nvml_error)
        if error is None and gpu.error is not None:
            log.info("GPU %d (%s) answers again", gpu.index, gpu.uuid)
        gpu.error = error
        entry = {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "figures": figures}
        if gpu_processes is not None:
            entry["processes"] = gpu_processes
        if error is not None:
            entry["error"] = error
        return entry

    def _attach(self, gpu: _Gpu) -> None:
        """Static facts, read once and again after an error (the index may now be another board)."""
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        if uuid != gpu.uuid:
            gpu.unsupported.clear()
        gpu.uuid, gpu.name, gpu.handle = uuid, nvml.nvmlDeviceGetName(handle), handle

    def _ask(self, gpu: _Gpu, query: Query) -> Any:
        """The query's answer, or None where this GPU cannot give it; gone-errors propagate."""
        name = query.__name__
        if name in gpu.unsupported:
            return None
        try:
            return query(self._nvml, gpu.handle)
        except self._unsupported:
            gpu.unsupported.add(name)
        except self._gone:
            raise
        except self._nvml.NVMLError as exc:  # e.g. NoPermission: leave the figure out, say so once
            key = (gpu.index, name, type(exc).__name__)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("GPU %d: %s left out: %s", gpu.index, name, exc)
        return None


def gpu_inventory(nvml: Any = None) -> dict[str, Any]:
    """Static facts for a run's environment record: driver, CUDA driver version, each GPU's index,
    name, UUID and memory. {} where NVML cannot start; a fact NVML refuses is left out."""
    try:
        nvml = open_nvml(nvml)
    except Exception as exc:
        log.debug("no GPU inventory: %s", exc)
        return {}
    try:
        inventory = _facts(nvml, driver_version=nvml.nvmlSystemGetDriverVersion,
                           cuda_driver_version=lambda: _cuda_version(nvml.nvmlSystemGetCudaDriverVersion()))
        count = _facts(nvml, count=nvml.nvmlDeviceGetCount).get("count", 0)
        inventory["gpus"] = [_gpu_facts(nvml, index) for index in range(count)]
        return inventory
    finally:
        nvml.nvmlShutdown()


def _gpu_facts(nvml: Any, index: int) -> dict[str, Any]:
    handle = _facts(nvml, handle=lambda: nvml.nvmlDeviceGetHandleByIndex(index)).get("handle")
    if handle is None:
        return {"index": index}
    return {"index": index, **_facts(nvml, name=lambda: nvml.nvmlDeviceGetName(handle),
                                     uuid=lambda: nvml.nvmlDeviceGetUUID(handle),
                                     mem_total_bytes=lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total)}


def _facts(nvml: Any, **reads: Callable[[], Any]) -> dict[str, Any]:
    """Each read's answer by name; one NVML refuses is logged (debug) and left out."""
    facts = {}
    for key, read in reads.items():
        try:
            facts[key] = read()
        except nvml.NVMLError as exc:
            log.debug("GPU inventory: no %s: %s", key, exc)
    return facts


def _cuda_version(version: int) -> str:
    """NVML's integer 12040 as "12.4", the way nvidia-smi prints it."""
    return f"{version // 1000}.{version % 1000 // 10}"
