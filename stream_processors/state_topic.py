"""Reading a partition's latest state snapshots back from the compacted `processor-state` topic.

Snapshots of source partition p go to partition p of the state topic, keyed by consumer group, so
the latest one is among the last few messages there: a takeover reads only the tail, not the topic.
Each read is a short-lived consumer with no group of its own (assign, read to the end, close).
"""

from __future__ import annotations

import logging

from trainmon import kafka_client
from trainmon.settings import Settings

TAIL = 64  # messages read back from the end: other groups' snapshots may share the partition
# One try at the partition's offsets. A leader that died has its requests time out, and the cluster elects
# another within seconds; a single 10 s try outlived neither (a broker SIGKILLed while a worker restored its
# partitions crashed the worker: tests/integration/test_kafka_cluster.py), so short tries until the deadline.
ATTEMPT_S = 2.0
log = logging.getLogger("trainmon.processors")


def latest_snapshots(settings: Settings, topic: str, partition: int, group: str, timeout_s: float = 30.0) -> list[bytes]:
    """This group's snapshots among the last TAIL messages of the state topic's partition, oldest first.
    Waits up to `timeout_s` for a leader (being elected, or restarting); raises if the tail cannot be read
    to its end by then, since restoring from fewer snapshots than there are would lose state."""
    import time

    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer(kafka_client.config(
        settings, **{"group.id": f"{group}-state-reader", "enable.auto.commit": False, "enable.partition.eof": True,
                     "log_level": 0, "fetch.message.max.bytes": 67108864, "receive.message.max.bytes": 134217728}))
    try:
        deadline, warned = time.monotonic() + timeout_s, False
        while True:  # a state topic made moments ago, or a leader that died: wait for one, not crash
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=ATTEMPT_S)
                break
            except KafkaException as exc:
                error = exc.args[0]
                waiting = error.retriable() or error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                                                KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT)
                if not waiting or time.monotonic() > deadline:
                    raise
                if not warned:
                    log.warning("state topic %s[%d]: no offsets from its leader (%s); waiting up to %g s for one",
                                topic, partition, error.str(), timeout_s)
                    warned = True
                time.sleep(0.2)
        if high <= low:
            return []
        consumer.assign([TopicPartition(topic, partition, max(low, high - TAIL))])
        found, deadline, key = [], time.monotonic() + timeout_s, group.encode()
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    return found
                continue
            if message.key() == key and message.value():
                found.append(message.value())
            if message.offset() >= high - 1:
                return found
        raise TimeoutError(f"state topic {topic}[{partition}]: not read to its end (offset {high}) in {timeout_s:g} s; "
                           "the partition's state is not restored from part of its snapshots")
    finally:
        consumer.close()
