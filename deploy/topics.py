"""`trainmon topics create`: the contract's topics with explicit partition counts (auto-create is off).

Kafka is the buffer, ClickHouse the record: data topics keep a few days so a processor outage can be
caught up; the dead-letter topic keeps two weeks so bad input can be inspected and replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trainmon.contract import Topic, topic_name
from trainmon.settings import Settings

DAY_MS = 24 * 3600 * 1000
RETENTION_MS = {Topic.DEADLETTER: 14 * DAY_MS, Topic.ALERTS: 14 * DAY_MS}
DEFAULT_RETENTION_MS = 3 * DAY_MS


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool
    note: str = ""


def _admin(settings: Settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0})


def create_topics(settings: Settings, progress: Callable[[str], None] = print, timeout_s: float = 30.0) -> list[TopicState]:
    """Create every topic of the contract that is missing; report existing ones that differ."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = {
        topic_name(topic, settings.kafka_topic_prefix): NewTopic(
            topic_name(topic, settings.kafka_topic_prefix),
            num_partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            config={
                "retention.ms": str(RETENTION_MS.get(topic, DEFAULT_RETENTION_MS)),
                "compression.type": "producer",
            },
        )
        for topic in Topic
    }
    states = []
    missing = [spec for name, spec in wanted.items() if name not in existing]
    for name, spec in wanted.items():
        if name in existing:
            have = len(existing[name].partitions)
            note = "" if have == spec.num_partitions else f"has {have} partitions, settings say {spec.num_partitions}"
            states.append(TopicState(name, have, False, note))
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                states.append(TopicState(name, settings.kafka_partitions, True))
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won
                    raise
                states.append(TopicState(name, settings.kafka_partitions, False))
    for state in sorted(states, key=lambda s: s.name):
        verb = "created" if state.created else "exists"
        progress(f"topics: {state.name} {verb}, {state.partitions} partitions {state.note}".rstrip())
    return states
