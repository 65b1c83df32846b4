"""Host and process collectors on this machine, the registry, and the merged event against the contract."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from trainmon.agent.collectors import COLLECTORS, Collector, CollectorSet, Sample, build
from trainmon.agent.collectors.host import HostCollector
from trainmon.agent.collectors.processes import ProcessCollector
from trainmon.contract import decode, encode

T = 1_764_230_400.25

HOST_FIGURES = {
    "cpu_percent", "cpu_core_percent_min", "cpu_core_percent_max", "cpu_core_percent_stddev", "cpu_count",
    "load1", "load5", "load15", "mem_used_bytes", "mem_available_bytes", "mem_total_bytes", "mem_used_percent",
    "swap_used_bytes", "disk_used_percent", "disk_read_bytes_per_s", "disk_write_bytes_per_s",
    "net_rx_bytes_per_s", "net_tx_bytes_per_s",
}
RATES = {"disk_read_bytes_per_s", "disk_write_bytes_per_s", "net_rx_bytes_per_s", "net_tx_bytes_per_s"}


def round_trip(event: dict) -> dict:
    return decode(encode(event))


# --- host ------------------------------------------------------------------------------------------


def test_host_figures_are_sane() -> None:
    collector = HostCollector()
    sum(range(200_000))  # some CPU time between the readings
    collector.collect(time.monotonic())
    time.sleep(0.05)
    figures = collector.collect(time.monotonic()).figures

    expected = HOST_FIGURES if psutil.disk_io_counters() else HOST_FIGURES - {"disk_read_bytes_per_s",
                                                                              "disk_write_bytes_per_s"}
    assert set(figures) == expected
    assert figures["mem_total_bytes"] == psutil.virtual_memory().total
    assert figures["cpu_count"] == psutil.cpu_count()
    for name in ("cpu_percent", "cpu_core_percent_min", "cpu_core_percent_max", "mem_used_percent",
                 "disk_used_percent"):
        assert 0 <= figures[name] <= 100, name
    assert figures["cpu_core_percent_min"] <= figures["cpu_percent"] <= figures["cpu_core_percent_max"]
    assert figures["cpu_core_percent_stddev"] >= 0
    assert 0 < figures["mem_used_bytes"] <= figures["mem_total_bytes"]
    assert figures.keys() & RATES and all(figures[name] >= 0 for name in figures.keys() & RATES)
    assert figures["load1"] >= 0


def test_host_rates_come_from_deltas_per_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    nics = {"lo": (0, 0), "eth0": (1000, 500), "ib0": (0, 0)}
    disk = SimpleNamespace(read_bytes=0, write_bytes=0)

    def net_io_counters(pernic: bool) -> dict:
        return {nic: SimpleNamespace(bytes_recv=rx, bytes_sent=tx) for nic, (rx, tx) in nics.items()}

    monkeypatch.setattr(psutil, "net_io_counters", net_io_counters)
    monkeypatch.setattr(psutil, "disk_io_counters", lambda: disk)
    collector = HostCollector()
    start = time.monotonic()

    nics.update(lo=(10**9, 10**9), eth0=(3000, 1500))
    del nics["ib0"]
    disk.read_bytes, disk.write_bytes = 4096, 8192
    figures = collector.collect(start + 2).figures
    assert figures["net_rx_bytes_per_s"] == pytest.approx(1000, rel=1e-3)  # lo left out, the vanished ib0 costs nothing
    assert figures["net_tx_bytes_per_s"] == pytest.approx(500, rel=1e-3)
    assert figures["disk_read_bytes_per_s"] == pytest.approx(2048, rel=1e-3)
    assert figures["disk_write_bytes_per_s"] == pytest.approx(4096, rel=1e-3)

    nics.update(eth0=(10, 10), ib0=(7, 7))  # a counter reset and an interface that (re)appeared
    figures = collector.collect(start + 3).figures
    assert figures["net_rx_bytes_per_s"] == 0 and figures["net_tx_bytes_per_s"] == 0

    assert RATES.isdisjoint(collector.collect(start + 3).figures)  # no time passed: no rate


def test_host_without_block_devices_leaves_disk_rates_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "disk_io_counters", lambda: None)
    collector = HostCollector()
    figures = collector.collect(time.monotonic() + 1).figures
    assert "disk_read_bytes_per_s" not in figures and "net_rx_bytes_per_s" in figures


# --- processes -------------------------------------------------------------------------------------


def test_process_collector_reads_own_pid() -> None:
    me = os.getpid()
    collector = ProcessCollector(pids=lambda: {me: "r1"})
    first = collector.collect(time.monotonic())
    [record] = first.processes
    assert record["pid"] == me and record["run"] == "r1"
    assert "cpu_percent" not in record["figures"]  # no previous reading yet
    assert record["figures"]["rss_bytes"] > 0
    assert record["figures"]["threads"] >= 1
    assert first.runs == {"r1"}

    sum(range(200_000))
    [record] = collector.collect(time.monotonic()).processes
    assert record["figures"]["cpu_percent"] >= 0


def test_process_collector_skips_vanished_pids() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pids = {child.pid: "r1", os.getpid(): "r2"}
    collector = ProcessCollector(pids=lambda: pids)
    assert {p["pid"] for p in collector.collect(time.monotonic()).processes} == {child.pid, os.getpid()}

    child.kill()
    child.wait()
    sample = collector.collect(time.monotonic())
    assert [p["pid"] for p in sample.processes] == [os.getpid()]
    assert sample.runs == {"r2"}
    assert collector.collect(time.monotonic()).processes[0]["pid"] == os.getpid()  # asking again: no error


def test_process_collector_forgets_unregistered_pids_and_allows_unknown_run() -> None:
    pids: dict[int, str | None] = {os.getpid(): None}
    collector = ProcessCollector(pids=lambda: pids)
    sample = collector.collect(time.monotonic())
    assert sample.processes[0]["run"] is None and sample.runs == set()
    pids.clear()
    assert collector.collect(time.monotonic()).processes == []
    pids[os.getpid()] = "r1"
    [record] = collector.collect(time.monotonic()).processes
    assert "cpu_percent" not in record["figures"]  # a new object, so a new first reading


# --- registry, merge and the contract ----------------------------------------------------------------


class Boom(Collector):
    name = "boom"

    def __init__(self) -> None:
        self.fail = True

    def collect(self, now: float) -> Sample:
        if self.fail:
            raise RuntimeError("boom")
        return Sample(figures={"boom": 1})


def test_registry_builds_every_collector_and_the_event_passes_the_contract() -> None:
    assert set(COLLECTORS) == {"host", "processes", "gpu"}
    collectors = build({"host": {}, "processes": {"pids": lambda: {os.getpid(): "r1"}}, "gpu": {}})
    try:
        collectors.collect(time.monotonic())
        event = collectors.collect(time.monotonic()).to_event(host="node-1", time=T, interval_s=1.0)
    finally:
        collectors.close()
    assert event["kind"] == "system" and event["runs"] == ["r1"]
    assert "gpus" not in event  # no GPU on this machine: the GPU collector is disabled, not failing
    assert round_trip(event) == event


def test_build_rejects_unknown_collectors_and_options() -> None:
    with pytest.raises(ValueError, match="unknown collector.*nope.*known: host"):
        build({"nope": {}})
    with pytest.raises(ValueError, match="collector processes:"):
        build({"host": {}, "processes": {}})


def test_a_failing_collector_costs_only_its_part(caplog: pytest.LogCaptureFixture) -> None:
    boom = Boom()
    collectors = CollectorSet([boom, HostCollector()])
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        for _ in range(3):
            sample = collectors.collect(time.monotonic())
            assert "cpu_percent" in sample.figures and "boom" not in sample.figures
        boom.fail = False
        assert collectors.collect(time.monotonic()).figures["boom"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "collector boom failed; its readings are left out until it recovers",
        "collector boom recovered",
    ]


def test_merge_keeps_each_part() -> None:
    sample = Sample(figures={"a": 1}, runs={"r1"})
    sample.merge(Sample(figures={"b": 2.5}, processes=[{"pid": 1, "figures": {}}], runs={"r2"}))
    sample.merge(Sample(gpus=[{"index": 0, "uuid": "GPU-0", "figures": {}}]))
    event = sample.to_event(host="node-1", time=T)
    assert event["figures"] == {"a": 1, "b": 2.5} and event["runs"] == ["r1", "r2"]
    assert len(event["processes"]) == 1 and len(event["gpus"]) == 1
    assert round_trip(event) == event
    empty = Sample().to_event(host="node-1", time=T)
    assert set(empty) == {"v", "kind", "host", "time", "figures"} and round_trip(empty) == empty
