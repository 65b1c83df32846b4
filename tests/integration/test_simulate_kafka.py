"""The simulator through the real broker: a short simulation arrives complete, in order and
contract-valid, and `trainmon simulate` stopped by SIGINT ends its runs "killed"."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from trainmon.agent.publisher import Publisher
from trainmon.agent.simulator import FaultSpec, SimConfig, Simulation
from tests.kafka_util import read_all
from trainmon.contract import Topic, decode, topic_name
from trainmon.settings import Settings, env_name

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Counting:
    """The real publisher, counting what it accepted by kind."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.kinds: Counter[str] = Counter()

    @property
    def stats(self) -> dict[str, int]:
        return self.publisher.stats

    def publish(self, event: dict) -> bool:
        accepted = self.publisher.publish(event)
        self.kinds[event["kind"]] += accepted
        return accepted

    def close(self, timeout_s: float = 5.0) -> None:
        self.publisher.close(timeout_s)


def arrived(settings: Settings, topic: Topic, mine: Callable[[dict], bool], want: int, timeout_s: float = 30.0) -> list[dict]:
    """This test's events on `topic` (other tests of the session share it), once `want` are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = [event for event in map(decode, (m.value() for m in read_all(
            settings, [topic_name(topic, settings.kafka_topic_prefix)]))) if mine(event)]
        if len(events) >= want or time.monotonic() >= deadline:
            return events
        time.sleep(0.5)


def test_a_short_simulation_arrives_complete(migrated: Settings, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    config = SimConfig(nodes=2, gpus=2, runs=2, duration=3.0, interval=0.5, heartbeat=1.0, project=f"it-{tag}",
                       prefix=f"it{tag}", faults=(FaultSpec.parse("nan@run-1:1.5"),))
    sink = Counting(Publisher(migrated, spool_dir=tmp_path / "spool", client_id="it-simulate"))
    simulation = Simulation(migrated, config, sink=sink)
    tally = simulation.run(threading.Event())
    assert sink.publisher.flush(30.0), sink.stats
    sink.close()
    assert tally.refused == 0 and sum(sink.kinds.values()) == tally.events
    assert sink.kinds["metrics"] >= 4 * 50 and sink.kinds["system"] >= 2 * 5

    ours = lambda event: event.get("project") == config.project  # noqa: E731
    metrics = arrived(migrated, Topic.METRICS, ours, sink.kinds["metrics"])
    assert len(metrics) == sink.kinds["metrics"]
    for run in simulation.cluster.runs:
        for rank in range(2):
            steps = [e["step"] for e in metrics if e["run"] == run.id and e["rank"] == rank]
            assert steps == list(range(len(steps))), "every step once, in order"
    nan_run, other = (run.id for run in simulation.cluster.runs)
    bad = [math.isnan(e["values"]["loss"]) for e in metrics if e["run"] == nan_run and e["rank"] == 0]
    assert 0 < bad.index(True) and all(bad[bad.index(True):]), "finite, then NaN from the fault on"
    assert not any(math.isnan(e["values"]["loss"]) for e in metrics if e["run"] == other)

    lifecycle = arrived(migrated, Topic.RUNS, ours, sink.kinds["run_start"] + sink.kinds["heartbeat"] + sink.kinds["run_end"])
    kinds = Counter(e["kind"] for e in lifecycle)
    assert kinds == {"run_start": 4, "heartbeat": sink.kinds["heartbeat"], "run_end": 4}
    assert all(e["config"] and e["environment"] and e["world_size"] == 2 for e in lifecycle if e["kind"] == "run_start")
    assert {e["status"] for e in lifecycle if e["kind"] == "run_end"} == {"killed"}

    samples = arrived(migrated, Topic.SYSTEM, lambda e: e["host"].startswith(config.prefix), sink.kinds["system"])
    assert len(samples) == sink.kinds["system"]
    assert {e["host"] for e in samples} == {f"{config.prefix}-node-01", f"{config.prefix}-node-02"}
    assert all(len(e["gpus"]) == 2 and len(e["runs"]) == 1 for e in samples)


def test_the_command_stops_on_sigint_and_ends_its_runs_killed(migrated: Settings, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           env_name("kafka_bootstrap_servers"): migrated.bootstrap_servers,
           env_name("kafka_topic_prefix"): migrated.kafka_topic_prefix}
    command = [sys.executable, "-m", "trainmon.cli", "simulate", "--nodes", "1", "--gpus", "2", "--runs", "1",
               "--project", f"it-{tag}", "--prefix", f"it{tag}", "--spool-dir", str(tmp_path / "spool"),
               "--rate-report", "--duration", "60"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "SIGINT received" in err and "metric values" in err and "refused 0" in err

    ends = arrived(migrated, Topic.RUNS, lambda e: e["project"] == f"it-{tag}" and e["kind"] == "run_end", 2)
    assert sorted((e["rank"], e["status"]) for e in ends) == [(0, "killed"), (1, "killed")]
