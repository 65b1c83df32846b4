"""Reading topics back in tests: a throwaway consumer group from the earliest offset, or every partition
to its high watermark; which partitions a `trainmon process` worker was assigned, from its log."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition

from trainmon import kafka_client
from trainmon.settings import Settings


def consume(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0, settle_s: float = 0.0) -> list[Message]:
    """Messages of `topic` until `expected` arrived (then `settle_s` more, to catch extras) or timeout."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(1000, 0.5) if m.error() is None)
        settle = time.monotonic() + settle_s
        while time.monotonic() < settle:
            messages.extend(m for m in consumer.consume(1000, 0.2) if m.error() is None)
    finally:
        consumer.close()
    return messages


def read_all(settings: Settings, topics: list[str]) -> list:
    """Every message now in `topics`: each partition read from its start up to its high watermark, so
    the count is exact (no 'until N arrived or timeout')."""
    consumer = Consumer(kafka_client.config(settings, **{"group.id": f"t-{uuid.uuid4().hex}",
                                                         "enable.auto.commit": False}))
    try:
        metadata = consumer.list_topics(timeout=30)
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                if high > low:
                    ends[(topic, partition)] = high
        consumer.assign([TopicPartition(topic, partition, 0) for topic, partition in ends])
        messages, deadline = [], time.monotonic() + 120
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(5000, 1.0):
                assert message.error() is None, message.error()
                messages.append(message)
                key = (message.topic(), message.partition())
                if message.offset() + 1 >= ends.get(key, 0):
                    ends.pop(key, None)
        assert not ends, f"partitions not read to their end within 120 s: {ends}"
        return messages
    finally:
        consumer.close()


def metrics_partitions(log: Path, topic: str) -> set[int]:
    """The partitions of `topic` in the worker's latest assignment (Faust logs it as a table at info level,
    runs of partitions shortened: `{0-2, 4}`)."""
    tables = log.read_text(errors="replace").split("Setting newly assigned partitions")
    row = re.search(rf"\|\s*{re.escape(topic)}\s*\|\s*\{{([0-9, -]*)\}}", tables[-1]) if len(tables) > 1 else None
    partitions: set[int] = set()
    for item in row[1].split(",") if row else ():
        first, _, last = item.strip().partition("-")
        if first:
            partitions.update(range(int(first), int(last or first) + 1))
    return partitions
