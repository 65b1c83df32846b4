"""The publisher with a fake librdkafka: watermark after a kill, seq numbering, drops counted and
warned, the spool failing over to direct produce, the size cap's lost count."""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any

import pytest

import confluent_kafka
from trainmon.agent import publisher as publisher_module
from trainmon.agent.publisher import Publisher, PublisherOptions
from trainmon.agent.spool import Spool
from trainmon import TrainmonWarning
from trainmon.contract import decode, envelope
from trainmon.settings import Settings


class FakeProducer:
    """librdkafka's produce/poll/flush: delivers on poll while `up`; holds up to `capacity`."""

    instances: list[FakeProducer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.up = True
        self.capacity = 100_000
        self.held: list[tuple[str, bytes, bytes, Any]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        FakeProducer.instances.append(self)

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        if len(self.held) >= self.capacity:
            raise BufferError("queue full")
        self.held.append((topic, value, key, on_delivery))

    def poll(self, _timeout: float) -> int:
        if not self.up:
            return 0
        held, self.held = self.held, []
        for topic, value, key, callback in held:
            self.sent.append((topic, key, value))
            callback(None, None)
        return len(held)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return len(self.held)


@pytest.fixture(autouse=True)
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeProducer.instances.clear()
    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)


SETTINGS = Settings(kafka_bootstrap_servers="127.0.0.1:9", kafka_topic_prefix="t.")


def metrics(step: int, producer: str | None = "p1") -> dict:
    return envelope("metrics", project="p", run="r", rank=0, host="h", time=time.time(), step=step,
                    values={"loss": 1.0}, producer=producer)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stale_spool(directory: Path, events: int) -> int:
    """What the old publisher left after SIGKILL while training: delivered segments unlinked, the
    watermark on disk far behind them. Returns the first seq still on disk."""
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=4000, fsync_interval_s=1.0)
    for step in range(events):
        from trainmon.contract import encode, partition_key
        event = metrics(step)
        event["seq"] = step
        spool.append([(0, partition_key(event), encode(event))])
    spool._close_fd()
    spool._lock.close()
    segments = sorted(directory.glob("*.seg"))
    for path in segments[: len(segments) // 2]:
        path.unlink()
    (directory / "acked").write_text("3\n")
    return int(sorted(directory.glob("*.seg"))[0].stem)


def test_a_stale_watermark_from_a_killed_process_no_longer_wedges_flush_and_close(tmp_path):
    first = stale_spool(tmp_path / "spool", 400)
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool")
    assert publisher.stats["replayed"] == 400 - first + 1
    assert publisher.flush(5), publisher.stats
    assert publisher._delivered == set() and not publisher._inflight  # memory does not grow per event
    sent = [decode(value)["seq"] for _topic, _key, value in FakeProducer.instances[-1].sent]
    assert sent == list(range(first - 1, 400))  # everything still on disk, once, in order
    began = time.monotonic()
    publisher.close(timeout_s=5)
    assert time.monotonic() - began < 1.0, "close returns promptly once all is delivered"
    again = Publisher(SETTINGS, spool_dir=tmp_path / "spool")
    assert again.stats["replayed"] == 0 and again.flush(2)
    again.close()


def test_the_watermark_is_written_while_events_keep_flowing(tmp_path):
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool", options=PublisherOptions(linger_s=0.01))
    deadline = time.monotonic() + 2.5
    step = 0
    while time.monotonic() < deadline:
        publisher.publish(metrics(step))
        step += 1
        time.sleep(0.0005)
    acked = int((tmp_path / "spool" / "acked").read_text())
    assert acked > 0, "the delivered watermark reaches the disk while the run logs"
    assert len(publisher._delivered) < 1000
    publisher.close()


def test_events_with_a_producer_get_consecutive_seqs_in_queue_order_across_topics(tmp_path):
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool")
    for step in range(50):
        publisher.publish(metrics(step))
        publisher.publish(envelope("heartbeat", project="p", run="r", rank=0, host="h", time=time.time(),
                                   step=step, producer="p1"))
        publisher.publish(metrics(step, producer="p2"))
    publisher.publish(envelope("system", host="h", time=time.time(), figures={"cpu_percent": 1.0}))
    assert publisher.flush(5)
    publisher.close()
    events = [decode(value) for _topic, _key, value in FakeProducer.instances[-1].sent]
    assert [e["seq"] for e in events if e.get("producer") == "p1"] == list(range(100))
    assert [e["seq"] for e in events if e.get("producer") == "p2"] == list(range(50))
    assert "seq" not in events[-1] and "producer" not in events[-1]  # system samples are not numbered


def test_drops_at_the_full_queue_are_counted_warned_once_then_once_a_minute(tmp_path, caplog, monkeypatch):
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool", options=PublisherOptions(max_queue_events=10))
    gate = publisher_module.threading.Event()
    cycle = publisher._cycle
    publisher._cycle = lambda: (gate.wait(), cycle())  # the background thread is stuck (disk stalled)
    time.sleep(0.1)
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"), pytest.warns(TrainmonWarning, match="dropped"):
        for step in range(25):
            publisher.publish(metrics(step))
    assert publisher.dropped == 15 and publisher.stats["dropped"] == 15
    assert caplog.text.count("memory queue is full") == 1
    now = time.monotonic()
    monkeypatch.setattr(publisher_module.time, "monotonic", lambda: now + 61)
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"):
        publisher.publish(metrics(99))
        publisher.publish(metrics(100))
    assert caplog.text.count("memory queue is full") == 2 and "16 so far" in caplog.text
    monkeypatch.undo()
    gate.set()
    assert publisher.flush(5)
    publisher.close()


def test_a_spool_that_cannot_be_written_falls_back_to_producing_directly(tmp_path, caplog, monkeypatch):
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool")

    def disk_full(records):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publisher.spool, "append", disk_full)
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"):
        for step in range(3000):
            publisher.publish(metrics(step))
        assert publisher.flush(10), publisher.stats
    publisher.close()
    sent = [decode(value)["step"] for _topic, _key, value in FakeProducer.instances[-1].sent]
    assert sent == list(range(3000))
    assert publisher.stats["unspooled"] == 3000 and publisher.dropped == 0
    assert caplog.text.count("cannot write the spool") == 1


def test_direct_events_wait_for_what_was_spooled_before_them(tmp_path, monkeypatch):
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool")
    producer = FakeProducer.instances[-1]
    producer.up = False
    for step in range(100):
        publisher.publish(metrics(step))
    wait_for(lambda: publisher.stats["spooled_events"] == 100)
    append = publisher.spool.append

    def disk_full(records):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publisher.spool, "append", disk_full)
    for step in range(100, 200):
        publisher.publish(metrics(step))
    wait_for(lambda: publisher.stats["unspooled"] == 100)
    monkeypatch.setattr(publisher.spool, "append", append)  # the disk has room again
    for step in range(200, 300):
        publisher.publish(metrics(step))
    producer.up = True
    assert publisher.flush(10), publisher.stats
    publisher.close()
    assert [decode(value)["seq"] for _t, _k, value in producer.sent] == list(range(300))


@pytest.mark.filterwarnings("ignore::trainmon.TrainmonWarning")
def test_with_the_cap_hit_during_an_outage_dropped_is_exactly_what_is_lost(tmp_path):
    options = PublisherOptions(spool_max_bytes=60_000, segment_bytes=10_000, max_queue_events=500)
    publisher = Publisher(SETTINGS, spool_dir=tmp_path / "spool", options=options)
    producer = FakeProducer.instances[-1]
    producer.up, producer.capacity = False, 150  # Kafka down; librdkafka holds 150
    total = 5000
    for step in range(total):  # some are refused at the full memory queue: those count too
        publisher.publish(metrics(step))
        if step % 100 == 0:
            time.sleep(0.002)
    wait_for(lambda: publisher.stats["queued"] == 0)
    time.sleep(0.2)
    publisher.close(timeout_s=0.2)
    lost_here = publisher.dropped
    assert publisher.spool.lost > 0 and publisher.stats["abandoned"] > 0  # both ways of losing were hit

    again = Publisher(SETTINGS, spool_dir=tmp_path / "spool", options=options)
    assert again.flush(10)
    again.close()
    delivered = {decode(value)["seq"] for _t, _k, value in FakeProducer.instances[-1].sent}
    assert len(delivered) + lost_here == total, (len(delivered), lost_here)
