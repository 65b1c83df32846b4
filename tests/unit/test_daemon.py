"""The node daemon: ticks on a fake clock with a fake publisher, and `trainmon agent` as a subprocess."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trainmon.agent.collectors import Collector, CollectorSet, Sample
from trainmon.agent.daemon import Daemon, Snapshot, build_collectors, default_host, default_spool_dir
from trainmon.agent.registry import register
from trainmon.cli import build_parser
from trainmon.contract import decode, encode
from trainmon.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TRAINMON = [sys.executable, "-c", "import sys; from trainmon.cli import main; sys.exit(main())"]
WALL_OFFSET = 1_764_230_400.0  # the fake wall clock is this plus the fake monotonic one


class FakeClock:
    """Waiting moves time forward instantly; collectors may move it to simulate their cost."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # the host collector's first reading used the real clock
        self.start = self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_OFFSET + self.now - self.start

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        if not stop.is_set():
            self.now += seconds
        return stop.is_set()


class FakePublisher:
    def __init__(self, accept: bool = True, raises: bool = False) -> None:
        self.events: list[dict] = []
        self.accept, self.raises = accept, raises
        self.closed_with: float | None = None
        self.on_publish = lambda: None

    def publish(self, event: dict[str, Any]) -> bool:
        self.on_publish()
        if self.raises:
            raise RuntimeError("broken publisher")
        self.events.append(event)
        return self.accept

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed_with = timeout_s

    @property
    def stats(self) -> dict[str, int]:
        return {"published": len(self.events)}


class CostlyCollector(Collector):
    """Advances the fake clock by `costs[i]` on its i-th collect (0 beyond the list)."""

    name = "costly"

    def __init__(self, clock: FakeClock, costs: list[float] | None = None, fail: bool = False) -> None:
        self.clock, self.costs, self.fail = clock, costs or [], fail
        self.calls = 0
        self.closed = False

    def collect(self, now: float) -> Sample:
        cost = self.costs[self.calls] if self.calls < len(self.costs) else 0.0
        self.calls += 1
        self.clock.now += cost
        if self.fail:
            raise OSError("sensor gone")
        return Sample(figures={"costly_calls": self.calls})

    def close(self) -> None:
        self.closed = True


def daemon_with(*collectors: Collector, clock: FakeClock, publisher: FakePublisher | None = None,
                interval: float = 1.0, runs_fn=dict) -> tuple[Daemon, FakePublisher]:
    publisher = publisher or FakePublisher()
    daemon = Daemon(CollectorSet(collectors), publisher, host="node-1", interval=interval, runs_fn=runs_fn,
                    clock=clock, close_timeout_s=3.0)
    return daemon, publisher


def offsets(events: list[dict]) -> list[float]:
    return [round(event["time"] - WALL_OFFSET, 9) for event in events]


# --- the loop on a fake clock ---------------------------------------------------------------------------


def test_n_ticks_make_n_valid_events_tagged_with_the_registered_runs() -> None:
    me, parent = os.getpid(), os.getppid()
    snapshot = Snapshot(lambda: {me: "run-b", parent: "run-a"})
    clock = FakeClock()
    daemon = Daemon(build_collectors(Settings(agent_gpu=False), pids=snapshot.last), FakePublisher(), host="node-1",
                    interval=1.0, runs_fn=snapshot.refresh, clock=clock)
    daemon.run(threading.Event(), duration=5)

    events = daemon.publisher.events
    assert len(events) == 5 and daemon.stats.samples == 5
    for event in events:
        decoded = decode(encode(event))
        assert decoded["kind"] == "system" and decoded["host"] == "node-1" and decoded["interval_s"] == 1.0
        assert decoded["runs"] == ["run-a", "run-b"]
        assert {p["pid"]: p["run"] for p in decoded["processes"]} == {me: "run-b", parent: "run-a"}
        assert "gpus" not in decoded and "cpu_percent" in decoded["figures"]
    # the reading discarded at start means even the first sample has the process CPU figure
    assert all("cpu_percent" in p["figures"] for p in events[0]["processes"])


def test_runs_without_a_known_run_id_are_not_tagged() -> None:
    clock = FakeClock()
    daemon, publisher = daemon_with(CostlyCollector(clock), clock=clock, runs_fn=lambda: {1: None, 2: "r"})
    daemon.run(threading.Event(), duration=1)
    assert publisher.events[0]["runs"] == ["r"]


def test_ticks_stay_on_the_grid_whatever_collection_costs() -> None:
    clock = FakeClock()
    collector = CostlyCollector(clock, costs=[0.0, 0.3, 0.45, 0.1, 0.49, 0.2])
    daemon, publisher = daemon_with(collector, clock=clock, interval=0.5)
    daemon.run(threading.Event(), duration=2.5)
    assert offsets(publisher.events) == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert daemon.stats.skipped_ticks == 0


def test_an_overrun_skips_missed_ticks_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    # collect #0 is the discarded reading at start; #2 (the 2nd tick) overruns by 2.5 intervals, #5 by 1.2
    collector = CostlyCollector(clock, costs=[0, 0, 2.5, 0, 0, 1.2])
    daemon, publisher = daemon_with(collector, clock=clock)
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        daemon.run(threading.Event(), duration=10)
    assert offsets(publisher.events) == [1, 2, 5, 6, 7, 9, 10]
    assert daemon.stats.skipped_ticks == 3
    assert sum("overran" in r.message for r in caplog.records) == 1
    assert sum("over half" in r.message for r in caplog.records) == 1  # slow collection, said once
    assert "--no-pcie" in next(r.message for r in caplog.records if "over half" in r.message)


def test_a_failing_collector_does_not_stop_ticks(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    good, bad = CostlyCollector(clock), CostlyCollector(clock, fail=True)
    bad.name = "bad"
    daemon, publisher = daemon_with(bad, good, clock=clock)
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"):
        daemon.run(threading.Event(), duration=4)
    assert len(publisher.events) == 4
    assert all(event["figures"]["costly_calls"] >= 1 for event in publisher.events)
    assert sum("collector bad failed" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("publisher", [FakePublisher(accept=False), FakePublisher(raises=True)],
                         ids=["refuses", "raises"])
def test_a_failing_publisher_does_not_stop_ticks(publisher: FakePublisher, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    collector = CostlyCollector(clock)
    daemon, _ = daemon_with(collector, clock=clock, publisher=publisher)
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"):
        daemon.run(threading.Event(), duration=3)
    assert collector.calls == 4  # the discarded first reading and three ticks
    assert daemon.stats.publish_failed == 3 and daemon.stats.samples == 0
    assert sum("publisher did not accept" in r.message for r in caplog.records) == 1
    assert publisher.closed_with == 3.0


def test_a_failing_registry_leaves_runs_out_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    answers = iter([RuntimeError("corrupt"), RuntimeError("corrupt"), {7: "r1"}, {7: "r1"}])

    def registry() -> dict[int, str]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    daemon, publisher = daemon_with(CostlyCollector(clock), clock=clock, runs_fn=registry)
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        daemon.run(threading.Event(), duration=3)
    assert [event.get("runs") for event in publisher.events] == [None, ["r1"], ["r1"]]
    assert sum("run registry failed" in r.message for r in caplog.records) == 1
    assert sum("run registry reads again" in r.message for r in caplog.records) == 1


def test_stop_ends_the_loop_and_closes_collectors_then_publisher() -> None:
    clock = FakeClock()
    collector = CostlyCollector(clock)
    stop = threading.Event()
    daemon, publisher = daemon_with(collector, clock=clock)
    publisher.on_publish = lambda: len(publisher.events) == 2 and stop.set()  # like SIGTERM mid-tick
    daemon.run(stop)
    assert len(publisher.events) == 3  # the tick in progress completes, the next one does not start
    assert collector.closed and publisher.closed_with == 3.0


def test_real_time_ticks_do_not_drift() -> None:
    """Real clock, 50 ms interval, 20 ms collection: the k-th sample at start + k * interval."""

    class Sleepy(Collector):
        name = "sleepy"

        def collect(self, now: float) -> Sample:
            time.sleep(0.02)
            return Sample(figures={"x": 1})

    publisher = FakePublisher()
    daemon = Daemon(CollectorSet([Sleepy()]), publisher, host="node-1", interval=0.05)
    daemon.run(threading.Event(), duration=1.0)
    times = [event["time"] for event in publisher.events]
    assert len(times) + daemon.stats.skipped_ticks == 20
    first = times[0]
    # wall clock and monotonic clock agree over a second; lateness never accumulates
    lateness = [t - first - round((t - first) / 0.05) * 0.05 for t in times]
    assert max(abs(x) for x in lateness) < 0.025, lateness
    assert abs((times[-1] - first) - round((times[-1] - first) / 0.05) * 0.05) < 0.025


# --- collectors the daemon builds -------------------------------------------------------------------------


class NoGpuNvml:
    """NVML that starts but sees no GPU, like a CPU node with the driver installed."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 0


def test_no_gpu_runs_without_the_gpu_part_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        collectors = build_collectors(Settings(), pids=dict, nvml=NoGpuNvml())
        daemon = Daemon(collectors, FakePublisher(), host="cpu-node", interval=1.0, clock=FakeClock())
        daemon.run(threading.Event(), duration=3)
    assert [c.name for c in collectors.collectors] == ["host", "processes"]
    assert len(daemon.publisher.events) == 3
    assert all("gpus" not in event and event["figures"]["cpu_count"] >= 1 for event in daemon.publisher.events)
    gpu_lines = [r.message for r in caplog.records if "GPU" in r.message]
    assert gpu_lines == ["GPU collector disabled: NVML sees no GPU on this node"]


def test_no_gpu_option_does_not_load_nvml(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        collectors = build_collectors(Settings(agent_gpu=False), pids=dict)
    assert [c.name for c in collectors.collectors] == ["host", "processes"]
    assert [r.message for r in caplog.records if "GPU" in r.message] == [
        "GPU collector off (--no-gpu or [agent] gpu = false)"]


def test_defaults_for_host_and_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINMON_HOST", "k8s-node-3")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_host() == "k8s-node-3"
    assert default_spool_dir("a/b c") == tmp_path / "trainmon" / "spool" / "agent-a_b_c"


# --- the command ---------------------------------------------------------------------------------------------


def agent_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINMON_")}
    # nothing listens on port 1: the publisher spools; the run registry is the test's own
    env.update(TRAINMON_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", XDG_CACHE_HOME=str(tmp_path / "cache"),
               TRAINMON_REGISTRY_DIR=str(tmp_path / "registry"), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    return env


@pytest.mark.parametrize("no_gpu", [True, False], ids=["no-gpu", "gpu-if-any"])
def test_once_prints_one_valid_system_event(tmp_path: Path, no_gpu: bool) -> None:
    register({"run": "run-x"}, tmp_path / "registry")  # this test process plays a training process
    command = [*TRAINMON, "agent", "--once", "--interval", "0.2", "--host", "check-node"] + ["--no-gpu"] * no_gpu
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=agent_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    event = decode(done.stdout.encode())
    assert event["kind"] == "system" and event["host"] == "check-node" and event["interval_s"] == 0.2
    assert "cpu_percent" in event["figures"] and "net_rx_bytes_per_s" in event["figures"]
    assert event["runs"] == ["run-x"] and [p["pid"] for p in event["processes"]] == [os.getpid()]
    assert "starting: host=check-node" in done.stderr and "nothing published" in done.stderr
    if no_gpu:
        assert "GPU collector off (--no-gpu" in done.stderr and "gpus" not in event
    elif "gpus" not in event:  # this machine has no GPU (or no NVML): the GPU part says so, once
        assert done.stderr.count("GPU collector disabled") == 1
    assert not (tmp_path / "cache" / "trainmon" / "spool").exists()


def test_sigterm_stops_at_the_next_tick_and_keeps_undelivered_events_spooled(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    agent = subprocess.Popen([*TRAINMON, "agent", "--interval", "0.1", "--no-gpu", "--spool-dir", str(spool)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=agent_env(tmp_path),
                             cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not any(spool.glob("*.seg")) and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    assert out == ""
    assert "kafka=127.0.0.1:1" in err and f"spool={spool}" in err
    assert "stopped after" in err and "stay in" in err
    assert sum(path.stat().st_size for path in spool.glob("*.seg")) > 0


def test_help_lists_every_option_with_help_text() -> None:
    parser = build_parser()
    agent = parser._subparsers._group_actions[0].choices["agent"]  # type: ignore[union-attr]
    text = agent.format_help()
    options = [a for a in agent._actions if a.option_strings and a.dest != "help"]
    assert {s for o in options for s in o.option_strings} == {
        "--interval", "--host", "--collectors", "--gpu", "--no-gpu", "--pcie", "--no-pcie", "--disk-path",
        "--spool-dir", "--once", "--duration"}
    for option in options:
        assert option.help and option.option_strings[0] in text
    assert "--config" in text  # the global option, named in the epilog


@pytest.mark.parametrize("bad", [["--interval", "0"], ["--interval", "-1"], ["--duration", "nan"],
                                 ["--interval", "soon"]])
def test_bad_seconds_are_refused_by_the_parser(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", *bad])


def test_a_missing_disk_path_fails_at_start(tmp_path: Path) -> None:
    done = subprocess.run([*TRAINMON, "agent", "--once", "--no-gpu", "--disk-path", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60, env=agent_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "--disk-path" in done.stderr and "no such file" in done.stderr
    assert json.loads(done.stdout or "null") is None
