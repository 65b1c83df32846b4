"""The processing path without Kafka: run_end reaches the node rules through its host re-keying."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from trainmon.stream_processors import processing as processing_module
from trainmon.stream_processors.config import PipelineConfig
from trainmon.stream_processors.processing import Message, Processing
from tests.unit.alert_streams import run_end, spec, system
from trainmon.contract import encode

T = 1_764_230_400.0


class MemorySink:
    """The ClickHouse sink at its narrow boundary: nothing written yet, batches kept."""

    def __init__(self) -> None:
        self.batches, self.written_values, self.skipped_events = [], 0, 0
        self.refused: Counter[str] = Counter()

    def skip(self, topic: str, partition: int, offset: int) -> bool:
        return False

    def write(self, batch) -> list:
        self.batches.append(batch)
        return []

    def forget(self, partitions) -> None:
        pass


class Dispatcher:
    def __init__(self) -> None:
        self.alerts: list[dict] = []

    def submit(self, alert: dict) -> None:
        self.alerts.append(alert)


@pytest.fixture
def clock(monkeypatch):
    now = [T]
    monkeypatch.setattr(processing_module.time, "time", lambda: now[0])
    return now


def processing() -> tuple[Processing, Dispatcher]:
    rules = [spec("heartbeat_lost", "node_silent", selector={"scope": "node"}, params={"timeout_s": 30})]
    pipeline = PipelineConfig(rules=rules, routes=[], windows_s=[10.0], repeat_interval_s=3600.0,
                              dashboard_url="http://127.0.0.1:8501", path="test")
    dispatcher = Dispatcher()
    return Processing(pipeline, MemorySink(), dispatcher), dispatcher


def message(topic: str, partition: int, offset: int, event: dict) -> Message:
    return Message(topic, partition, offset, b"k", encode(event))


def test_a_node_whose_run_ended_is_not_reported_silent(clock):
    proc, dispatcher = processing()
    proc.handle([message("t.system", 2, 0, system(T + 1, host="node-1", runs=["r1"]))])
    proc.tick()
    outcome = proc.handle([message("t.runs", 0, 0, run_end(T + 2, run="r1"))])
    assert [e["host"] for e in outcome.host_run_ends] == ["node-1"]
    forwarded = [Message("t.host-run-ends", 2, 0, b"node-1", encode(e)) for e in outcome.host_run_ends]
    proc.handle(forwarded, source="host_run_ends")
    clock[0] = T + 300
    proc.dispatch(proc.tick().alerts)
    assert dispatcher.alerts == []


def test_without_the_forwarded_end_the_silent_node_fires(clock):  # so the test above can fail
    proc, dispatcher = processing()
    proc.handle([message("t.system", 2, 0, system(T + 1, host="node-1", runs=["r1"]))])
    proc.tick()
    proc.handle([message("t.runs", 0, 0, run_end(T + 2, run="r1"))])
    clock[0] = T + 300
    proc.dispatch(proc.tick().alerts)
    assert [(a["rule"], a["state"]) for a in dispatcher.alerts] == [("node_silent", "firing")]


def test_bad_bytes_become_dead_letters_and_good_ones_flow(clock):
    proc, _ = processing()
    outcome = proc.handle([Message("t.system", 0, 7, b"k", b"\xff not json"),
                           message("t.system", 0, 8, system(T + 1, host="node-2", runs=[]))])
    (key, value, headers), = outcome.dead_letters
    assert value == b"\xff not json" and dict(headers)["trainmon-dlq-offset"] == b"7"
    assert proc.counts["dead_letter.malformed"] == 1 and proc.counts["system"] == 1
    assert json.loads(encode(system(T, host="x")))["host"] == "x"


def test_silence_is_judged_only_on_what_kafka_says_was_read(clock):
    """A backlog Kafka reports (high watermark past what was processed) holds the node rule however
    long the wall clock runs; once the watermark is processed the partition is live again, and a
    silence counts from then."""
    proc, dispatcher = processing()
    proc.handle([message("t.system", 2, 0, system(T + 1, host="node-1", runs=["r1"]))])
    for second in range(2, 120):
        clock[0] = T + second
        proc.dispatch(proc.tick({("t.system", 2): (5, T + second)}).alerts)  # offsets 1-4 unread
    assert dispatcher.alerts == []
    clock[0] = T + 121
    proc.dispatch(proc.tick({("t.system", 2): (1, T + 121)}).alerts)  # all read: node-1 said nothing
    assert dispatcher.alerts == []  # live again only now: silence counts from here (Rule.on_live)
    clock[0] = T + 152
    proc.dispatch(proc.tick({("t.system", 2): (1, T + 152)}).alerts)
    assert [(a["rule"], a["state"]) for a in dispatcher.alerts] == [("node_silent", "firing")]


def test_a_host_90_s_behind_is_not_silent_when_the_partition_first_goes_live(clock):
    """Before the partition's clock runs, a skewed host's events are read at their own (old) times;
    when the clock goes live it must not judge them on those (bench/detection.py: 4 false
    rank_heartbeat_lost for the run on the skewed node, at start only)."""
    proc, dispatcher = processing()
    for second in range(40):
        clock[0] = T + second
        proc.handle([message("t.system", 2, second, system(T + second - 90, host="node-1", runs=["r1"]))])
        proc.dispatch(proc.tick({("t.system", 2): (second + 1, T + second)}).alerts)
    assert dispatcher.alerts == []
    clock[0] = T + 80  # and it still counts when the host does go quiet
    proc.dispatch(proc.tick({("t.system", 2): (40, T + 80)}).alerts)
    assert [(a["rule"], a["state"]) for a in dispatcher.alerts] == [("node_silent", "firing")]
