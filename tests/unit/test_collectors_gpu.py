"""The GPU collector against a fake NVML: normal GPUs, a lost GPU, unsupported figures, no NVML."""

from __future__ import annotations

import logging
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from trainmon.agent.collectors import build
from trainmon.agent.collectors.gpu import (
    HW_POWER_BRAKE_SLOWDOWN,
    HW_SLOWDOWN,
    HW_THERMAL_SLOWDOWN,
    SW_POWER_CAP,
    SW_THERMAL_SLOWDOWN,
    GpuCollector,
    gpu_inventory,
)
from trainmon.contract import decode, encode

T = 1_764_230_400.25
GIB = 2**30


class FakeGpu:
    """One device: what each NVML function answers, and which functions raise instead."""

    def __init__(self, index: int, **fail: BaseException) -> None:
        self.index = index
        self.uuid = f"GPU-0000000{index}-fake"
        self.fail = fail  # NVML function name -> exception it raises
        self.throttle = SW_POWER_CAP | HW_THERMAL_SLOWDOWN
        self.processes = [
            SimpleNamespace(pid=100 + index, usedGpuMemory=GIB),
            SimpleNamespace(pid=100 + index, usedGpuMemory=GIB),  # a second context of the same process
            SimpleNamespace(pid=999, usedGpuMemory=None),  # usage hidden from NVML
        ]


class FakeNvml:
    """The pynvml functions the collector calls; the error classes and constants are pynvml's own."""

    def __init__(self, gpus: list[FakeGpu], init_error: BaseException | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialised = 0
        self.calls: list[tuple[str, int]] = []

    def _answer(self, function: str, gpu: FakeGpu, value: Any) -> Any:
        self.calls.append((function, gpu.index))
        if function in gpu.fail:
            raise gpu.fail[function]
        return value

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        return self._answer("nvmlDeviceGetHandleByIndex", gpu, gpu)

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return self._answer("nvmlDeviceGetUUID", gpu, gpu.uuid)

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return self._answer("nvmlDeviceGetName", gpu, "NVIDIA H100 80GB HBM3")

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        return self._answer("nvmlDeviceGetUtilizationRates", gpu, SimpleNamespace(gpu=97, memory=41))

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        return self._answer("nvmlDeviceGetMemoryInfo", gpu, SimpleNamespace(used=70 * GIB, total=80 * GIB,
                                                                             free=10 * GIB))

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._answer("nvmlDeviceGetTemperature", gpu, 71)

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        return self._answer("nvmlDeviceGetPowerUsage", gpu, 612_345)

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:
        return self._answer("nvmlDeviceGetEnforcedPowerLimit", gpu, 700_000)

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, clock: int) -> int:
        return self._answer("nvmlDeviceGetClockInfo", gpu, {pynvml.NVML_CLOCK_SM: 1980,
                                                            pynvml.NVML_CLOCK_MEM: 2619}[clock])

    def nvmlDeviceGetPcieThroughput(self, gpu: FakeGpu, counter: int) -> int:
        return self._answer("nvmlDeviceGetPcieThroughput", gpu, {pynvml.NVML_PCIE_UTIL_TX_BYTES: 1000,
                                                                 pynvml.NVML_PCIE_UTIL_RX_BYTES: 2000}[counter])

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        return self._answer("nvmlDeviceGetCurrentClocksEventReasons", gpu, gpu.throttle)

    def nvmlDeviceGetTotalEccErrors(self, gpu: FakeGpu, error_type: int, counter: int) -> int:
        assert counter == pynvml.NVML_VOLATILE_ECC
        counts = {pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: 3, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 0}
        return self._answer("nvmlDeviceGetTotalEccErrors", gpu, counts[error_type])

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:
        return self._answer("nvmlDeviceGetComputeRunningProcesses", gpu, gpu.processes)


for _name in dir(pynvml):
    if _name.startswith(("NVML_", "NVMLError")):
        setattr(FakeNvml, _name, getattr(pynvml, _name))

ALL_FIGURES = {
    "util_percent": 97, "mem_util_percent": 41, "mem_used_bytes": 70 * GIB, "mem_total_bytes": 80 * GIB,
    "temperature_c": 71, "power_w": 612.345, "power_limit_w": 700.0, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619,
    "pcie_tx_bytes_per_s": 1000 * 1024, "pcie_rx_bytes_per_s": 2000 * 1024,
    "throttle_reasons": SW_POWER_CAP | HW_THERMAL_SLOWDOWN, "throttle_thermal": 1, "throttle_power": 1,
    "throttle_hw_slowdown": 0, "ecc_corrected": 3, "ecc_uncorrected": 0,
}


def event_of(gpus: list[dict]) -> dict:
    event = {"v": 1, "kind": "system", "host": "node-1", "time": T, "figures": {}, "gpus": gpus}
    assert decode(encode(event)) == event
    return event


def test_two_gpus_report_every_figure() -> None:
    nvml = FakeNvml([FakeGpu(0), FakeGpu(1)])
    collector = GpuCollector(nvml=nvml)
    assert collector.enabled and nvml.initialised == 1
    gpus = collector.collect(0.0).gpus
    event_of(gpus)
    assert [g["index"] for g in gpus] == [0, 1]
    for gpu in gpus:
        assert gpu["uuid"] == f"GPU-0000000{gpu['index']}-fake" and gpu["name"] == "NVIDIA H100 80GB HBM3"
        assert gpu["figures"] == ALL_FIGURES
        assert gpu["processes"] == [{"pid": 100 + gpu["index"], "mem_used_bytes": 2 * GIB}]
        assert "error" not in gpu

    nvml.calls.clear()
    collector.collect(1.0)
    assert ("nvmlDeviceGetUUID", 0) not in nvml.calls  # static facts are cached
    collector.close()
    assert nvml.initialised == 0 and collector.collect(2.0).gpus == []


def test_a_lost_gpu_reports_an_error_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    lost = FakeGpu(0, nvmlDeviceGetTemperature=pynvml.NVMLError_GpuIsLost())
    collector = GpuCollector(nvml=FakeNvml([lost, FakeGpu(1)]))
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        for now in (0.0, 1.0):
            gpu0, gpu1 = collector.collect(now).gpus
            event_of([gpu0, gpu1])
            assert gpu0["error"] == "GPU is lost" and gpu0["uuid"] == lost.uuid
            assert gpu0["figures"] == {"util_percent": 97, "mem_util_percent": 41,  # read before it was lost
                                       "mem_used_bytes": 70 * GIB, "mem_total_bytes": 80 * GIB}
            assert "processes" not in gpu0
            assert gpu1["figures"] == ALL_FIGURES and "error" not in gpu1
        lost.fail.clear()  # reset, answers again
        gpu0, _ = collector.collect(2.0).gpus
    assert gpu0["figures"] == ALL_FIGURES and "error" not in gpu0
    assert [r.getMessage() for r in caplog.records] == [
        f"GPU 0 ({lost.uuid}) stopped answering: GPU is lost",  # once, not every interval
        f"GPU 0 ({lost.uuid}) answers again",
    ]


def test_a_gpu_lost_before_its_first_reading_still_gets_an_entry() -> None:
    nvml = FakeNvml([FakeGpu(0, nvmlDeviceGetHandleByIndex=pynvml.NVMLError_Unknown()), FakeGpu(1)])
    gpu0, gpu1 = GpuCollector(nvml=nvml).collect(0.0).gpus
    event_of([gpu0, gpu1])
    assert gpu0 == {"index": 0, "uuid": "unknown", "name": None, "figures": {}, "error": "Unknown Error"}
    assert gpu1["figures"] == ALL_FIGURES


def test_an_unexpected_exception_is_confined_to_its_gpu() -> None:
    broken = FakeGpu(0, nvmlDeviceGetPowerUsage=ZeroDivisionError("division by zero"))
    gpu0, gpu1 = GpuCollector(nvml=FakeNvml([broken, FakeGpu(1)])).collect(0.0).gpus
    event_of([gpu0, gpu1])
    assert gpu0["error"] == "ZeroDivisionError: division by zero" and "temperature_c" in gpu0["figures"]
    assert "error" not in gpu1


def test_unsupported_figures_are_left_out_and_not_asked_again() -> None:
    gpu = FakeGpu(0, nvmlDeviceGetTotalEccErrors=pynvml.NVMLError_NotSupported(),
                  nvmlDeviceGetPcieThroughput=pynvml.NVMLError_NotSupported(),
                  nvmlDeviceGetComputeRunningProcesses=pynvml.NVMLError_FunctionNotFound())
    nvml = FakeNvml([gpu])
    collector = GpuCollector(nvml=nvml)
    [entry] = collector.collect(0.0).gpus
    event_of([entry])
    unsupported = {"ecc_corrected", "ecc_uncorrected", "pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"}
    assert entry["figures"] == {k: v for k, v in ALL_FIGURES.items() if k not in unsupported}
    assert "error" not in entry and "processes" not in entry
    nvml.calls.clear()
    collector.collect(1.0)
    asked = {function for function, _ in nvml.calls}
    assert asked.isdisjoint({"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetPcieThroughput",
                             "nvmlDeviceGetComputeRunningProcesses"})


def test_other_nvml_errors_leave_the_figure_out_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    denied = FakeGpu(0, nvmlDeviceGetEnforcedPowerLimit=pynvml.NVMLError_NoPermission())
    collector = GpuCollector(nvml=FakeNvml([denied]))
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        for now in (0.0, 1.0):
            [entry] = collector.collect(now).gpus
            assert "power_limit_w" not in entry["figures"] and "power_w" in entry["figures"]
            assert "error" not in entry
    assert [r.getMessage() for r in caplog.records] == ["GPU 0: power_limit left out: Insufficient Permissions"]


def test_throttle_bits_split_into_figures() -> None:
    assert (SW_POWER_CAP, HW_SLOWDOWN, SW_THERMAL_SLOWDOWN, HW_THERMAL_SLOWDOWN, HW_POWER_BRAKE_SLOWDOWN) == (
        pynvml.nvmlClocksEventReasonSwPowerCap, pynvml.nvmlClocksEventReasonHwSlowdown,
        pynvml.nvmlClocksEventReasonSwThermalSlowdown, pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown)
    gpu = FakeGpu(0)
    collector = GpuCollector(nvml=FakeNvml([gpu]))
    for reasons, thermal, power, slowdown in [
        (pynvml.nvmlClocksEventReasonNone, 0, 0, 0),
        (pynvml.nvmlClocksEventReasonGpuIdle, 0, 0, 0),
        (SW_THERMAL_SLOWDOWN, 1, 0, 0),
        (HW_POWER_BRAKE_SLOWDOWN, 0, 1, 0),
        (HW_SLOWDOWN, 0, 0, 1),
    ]:
        gpu.throttle = reasons
        figures = collector.collect(0.0).gpus[0]["figures"]
        assert (figures["throttle_reasons"], figures["throttle_thermal"], figures["throttle_power"],
                figures["throttle_hw_slowdown"]) == (reasons, thermal, power, slowdown)


def test_older_bindings_use_the_throttle_reasons_name() -> None:
    class OldNvml(FakeNvml):
        nvmlDeviceGetCurrentClocksEventReasons = None

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, gpu: FakeGpu) -> int:
            return self._answer("nvmlDeviceGetCurrentClocksThrottleReasons", gpu, HW_SLOWDOWN)

    [entry] = GpuCollector(nvml=OldNvml([FakeGpu(0)])).collect(0.0).gpus
    assert entry["figures"]["throttle_reasons"] == HW_SLOWDOWN


def test_pcie_can_be_switched_off() -> None:
    nvml = FakeNvml([FakeGpu(0)])
    [entry] = GpuCollector(nvml=nvml, pcie=False).collect(0.0).gpus
    assert "pcie_tx_bytes_per_s" not in entry["figures"]
    assert "nvmlDeviceGetPcieThroughput" not in {function for function, _ in nvml.calls}


# --- no NVML: one log line, no GPUs, the rest of the daemon runs ---------------------------------------


def disabled(caplog: pytest.LogCaptureFixture, **options: Any) -> str:
    with caplog.at_level(logging.DEBUG, logger="trainmon.agent"):
        collector = GpuCollector(**options)
        assert not collector.enabled
        assert collector.collect(0.0).gpus == [] and collector.collect(1.0).gpus == []
        collector.close()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    return record.getMessage()


def test_init_failure_disables_the_collector(caplog: pytest.LogCaptureFixture) -> None:
    message = disabled(caplog, nvml=FakeNvml([FakeGpu(0)], init_error=pynvml.NVMLError_DriverNotLoaded()))
    assert message == "GPU collector disabled: NVML did not start (Driver Not Loaded)"


def test_missing_nvml_library_disables_the_collector(caplog: pytest.LogCaptureFixture) -> None:
    message = disabled(caplog, nvml=FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound()))
    assert message == "GPU collector disabled: NVML did not start (NVML Shared Library Not Found)"


def test_missing_python_package_disables_the_collector(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert disabled(caplog) == "GPU collector disabled: the nvidia-ml-py package is not installed"


def test_no_gpus_disables_the_collector_and_shuts_nvml_down(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([])
    assert disabled(caplog, nvml=nvml) == "GPU collector disabled: NVML sees no GPU on this node"
    assert nvml.initialised == 0


def test_the_real_pynvml_without_a_driver_disables_the_collector(caplog: pytest.LogCaptureFixture) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML")
    assert disabled(caplog).startswith("GPU collector disabled: NVML did not start")
    assert gpu_inventory() == {}


# --- inventory and the whole event -------------------------------------------------------------------


def test_gpu_inventory() -> None:
    nvml = FakeNvml([FakeGpu(0), FakeGpu(1, nvmlDeviceGetHandleByIndex=pynvml.NVMLError_GpuIsLost())])
    assert gpu_inventory(nvml) == {
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "gpus": [
            {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": FakeGpu(0).uuid, "mem_total_bytes": 80 * GIB},
            {"index": 1},
        ],
    }
    assert nvml.initialised == 0
    assert gpu_inventory(FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound())) == {}


def test_the_event_from_all_collectors_passes_the_contract() -> None:
    lost = FakeGpu(1, nvmlDeviceGetClockInfo=pynvml.NVMLError_GpuIsLost())
    collectors = build({"host": {}, "processes": {"pids": lambda: {os.getpid(): "r1"}},
                        "gpu": {"nvml": FakeNvml([FakeGpu(0), lost])}})
    try:
        for _ in range(2):
            event = collectors.collect(time.monotonic()).to_event(host="node-1", time=T, interval_s=1.0)
            assert decode(encode(event)) == event
    finally:
        collectors.close()
    assert [g.get("error") for g in event["gpus"]] == [None, "GPU is lost"]
    assert {"cpu_percent", "mem_used_bytes"} <= event["figures"].keys() and event["processes"][0]["run"] == "r1"
