"""Reading a partition's latest state snapshots back from the compacted `processor-state` topic.

Snapshots of source partition p go to partition p of the state topic, keyed by consumer group, so
the latest one is among the last few messages there: a takeover reads only the tail, not the topic.
Each read is a short-lived consumer with no group of its own (assign, read to the end, close).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException

from trainmon import kafka_client
from trainmon.settings import Settings

TAIL = 64  # messages read back from the end: other groups' snapshots may share the partition
# One try at the partition's offsets. A leader that died has its requests time out, and the cluster elects
# another within seconds; a single 10 s try outlived neither (a broker SIGKILLed while a worker restored its
# partitions crashed the worker: tests/integration/test_kafka_cluster.py), so short tries until the deadline,
# each after asking who leads the partition now (_refresh_leaders).
ATTEMPT_S = 2.0
log = logging.getLogger("trainmon.processors")
# Errors of a partition whose leader is changing, which librdkafka does not all call retriable: the dead
# leader's request times out, or fails once librdkafka drops that broker; the new one may not know its high
# watermark yet (OFFSET_NOT_AVAILABLE) or its epoch; a topic made moments ago has no leader yet.
_LEADER_CHANGING = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN})


def latest_snapshots(settings: Settings, topic: str, partition: int, group: str, timeout_s: float = 30.0) -> list[bytes]:
    """This group's snapshots among the last TAIL messages of the state topic's partition, oldest first.
    Waits up to `timeout_s` for a leader (being elected, or restarting); raises if the tail cannot be read
    to its end by then, since restoring from fewer snapshots than there are would lose state."""
    from confluent_kafka import Consumer, TopicPartition

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
                waiting = error.retriable() or error.code() in _LEADER_CHANGING
                if not waiting or time.monotonic() > deadline:
                    raise
                if not warned:
                    log.warning("state topic %s[%d]: no offsets from its leader (%s); waiting up to %g s for one",
                                topic, partition, error.str(), timeout_s)
                    warned = True
                _refresh_leaders(consumer, topic)
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


def _refresh_leaders(consumer, topic: str) -> None:
    """Asks the cluster who leads the topic's partitions now. librdkafka sends an offsets request to the
    leader it knows, and a leader SIGKILLed stays that until its metadata is asked for again (every 5 min):
    every try would wait on the dead broker (tests/integration/test_kafka_cluster.py)."""
    try:
        consumer.list_topics(topic, timeout=ATTEMPT_S)
    except KafkaException:
        time.sleep(0.2)  # no broker answered either: the next try asks again
