"""`trainmon topics create`: the contract's topics and the processors' internal ones, with explicit
partition counts (auto-create is off).

Kafka is the buffer, ClickHouse the record: data topics keep a few days so a processor outage can be
caught up; the dead-letter topic keeps two weeks so bad input can be inspected and replayed.

The processors' internal topics (stream_processors/internal_topics.py) are made here too, with the
same partition count; a worker waits for all of them before it joins its group (`wait_for_topics`).
The state-snapshot topic is compacted (the latest snapshot of each source partition is all that
matters) and takes large messages, as one partition's snapshot can be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from trainmon.stream_processors.internal_topics import COMPACTED, INTERNAL, internal_topic_name
from trainmon.contract import Topic, topic_name
from trainmon import kafka_client
from trainmon.errors import TrainmonError
from trainmon.settings import Settings

DAY_MS = 24 * 3600 * 1000


class TopicsError(TrainmonError):
    """Kafka cannot be asked about its topics: not running, or not with these settings."""

RETENTION_MS = {Topic.DEADLETTER: 14 * DAY_MS, Topic.ALERTS: 14 * DAY_MS}
DEFAULT_RETENTION_MS = 3 * DAY_MS
COMPACTED_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60 * 1000),  # roll often: only closed segments are compacted
    "min.cleanable.dirty.ratio": "0.1",  # compact soon, so a restore reads few stale snapshots
    "max.message.bytes": str(64 << 20),  # one partition's snapshot can be large
    "compression.type": "producer",
}


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool
    note: str = ""


def _admin(settings: Settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka_client.config(settings, log_level=0))


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name -> the config `create_topics` gives it: the contract's topics, then the internal ones."""
    prefix = settings.kafka_topic_prefix
    common = {"compression.type": "producer"}
    if settings.kafka_min_insync_replicas:  # 0: the brokers' min.insync.replicas
        common["min.insync.replicas"] = str(settings.kafka_min_insync_replicas)
    configs = {topic_name(topic, prefix): {"retention.ms": str(RETENTION_MS.get(topic, DEFAULT_RETENTION_MS)),
                                           **common} for topic in Topic}
    for which in INTERNAL:
        configs[internal_topic_name(which, prefix)] = {**COMPACTED_CONFIG, **common} if which in COMPACTED else {
            "retention.ms": str(DEFAULT_RETENTION_MS), **common}
    return configs


# Settings of an existing topic that create_topics compares with what it would have made.
CHECKED_CONFIGS = ("cleanup.policy", "min.insync.replicas")


def not_answering(settings: Settings, exc: Exception, timeout_s: float) -> str:
    """Why Kafka's admin API gave no answer, and what to check."""
    return (f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:g} s ({exc.args[0].str()}), "
            f"connecting with {kafka_client.security(settings)}: check that it runs, and that [kafka] "
            "security_protocol and the credentials match its listener")


def create_topics(settings: Settings, progress: Callable[[str], None] = print, timeout_s: float = 30.0) -> list[TopicState]:
    """Create every topic of the contract and of the processors that is missing, with [kafka] partitions,
    replication_factor and min_insync_replicas (0: the brokers' default); report existing ones that
    differ (partitions, replication, min.insync.replicas, cleanup policy). Existing topics are not altered."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TopicsError(not_answering(settings, exc, timeout_s)) from None
    existing = metadata.topics
    replication = settings.kafka_replication_factor
    if replication < min(3, len(metadata.brokers)):
        progress(f"topics: replication_factor {replication} on {len(metadata.brokers)} brokers: losing one loses "
                 "partitions; set [kafka] replication_factor = 3 and min_insync_replicas = 2")
    wanted = {name: NewTopic(name, num_partitions=settings.kafka_partitions, replication_factor=replication,
                             config=config)
              for name, config in topic_configs(settings).items()}
    missing = [spec for name, spec in wanted.items() if name not in existing]
    there = [name for name in wanted if name in existing]
    states = _existing(admin, there, _settled(admin, existing, there, timeout_s), wanted, replication, timeout_s)
    raced = []
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                states.append(TopicState(name, settings.kafka_partitions, True))
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                raced.append(name)  # made since the metadata was read (another creator, or a stale broker cache)
    if raced:
        fresh = {name: admin.list_topics(topic=name, timeout=timeout_s).topics[name] for name in raced}
        states += _existing(admin, raced, _settled(admin, fresh, raced, timeout_s), wanted, replication, timeout_s)
    for state in sorted(states, key=lambda s: s.name):
        verb = "created" if state.created else "exists"
        progress(f"topics: {state.name} {verb}, {state.partitions} partitions {state.note}".rstrip())
    return states


def wait_for_topics(settings: Settings, progress: Callable[[str], None] = print, poll_s: float = 1.0,
                    say_every_s: float = 10.0) -> None:
    """Return once Kafka lists every topic `create_topics` makes, each with its partitions led.

    A processors worker that joined its group before then would be assigned nothing of a topic missing
    from the broker's metadata until aiokafka's next metadata refresh (5 min), or crash reading a state
    topic that is not there. Workers started beside `trainmon topics create` meet that, and so did
    workers started just after it: in bench/pipeline.py, with 800 topics on its broker, they were told
    the new topics did not exist. Waits as long as it takes, saying what is missing every `say_every_s`."""
    from confluent_kafka import KafkaException

    admin, wanted, timeout_s = _admin(settings), list(topic_configs(settings)), max(poll_s, 5.0)
    said_at = None
    while True:
        try:
            listed = admin.list_topics(timeout=timeout_s).topics
            missing = [name for name in wanted if name not in listed or listed[name].error is not None
                       or not listed[name].partitions or any(p.leader < 0 for p in listed[name].partitions.values())]
            why = (f"{len(missing)} of {len(wanted)} topics not in Kafka's metadata yet ({', '.join(missing)}): "
                   "create them with `trainmon topics create` and the same settings")
        except KafkaException as exc:
            missing, why = wanted, not_answering(settings, exc, timeout_s)
        if not missing:
            if said_at is not None:
                progress(f"topics: all {len(wanted)} present")
            return
        if said_at is None or time.monotonic() - said_at >= say_every_s:
            progress(f"topics: waiting: {why}")
            said_at = time.monotonic()
        time.sleep(poll_s)


def _settled(admin, metadata: dict, names: list[str], timeout_s: float) -> dict:
    """`metadata` with `names` read again until each lists its partitions: a topic made moments before
    (by another process starting, or a test) can be listed before they are, which read as 0 partitions."""
    metadata, deadline = dict(metadata), time.monotonic() + timeout_s

    def unsettled(among: list[str]) -> list[str]:
        return [name for name in among if not metadata[name].partitions or metadata[name].error is not None]

    pending = unsettled(names)
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        for name in pending:
            metadata[name] = admin.list_topics(topic=name, timeout=timeout_s).topics[name]
        pending = unsettled(pending)
    return metadata


def _existing(admin, names: list[str], metadata: dict, wanted: dict, replication: int, timeout_s: float) -> list[TopicState]:
    """States of topics that exist already, with a note for each way they differ from what would be made."""
    states = []
    checked = [n for n in names if any(key in wanted[n].config for key in CHECKED_CONFIGS)]
    have_configs = _configs(admin, checked, timeout_s)
    for name in names:
        spec, partitions = wanted[name], metadata[name].partitions
        have = len(partitions)
        notes = [] if have == spec.num_partitions else [f"has {have} partitions, settings say {spec.num_partitions}"]
        replicas = {len(partition.replicas) for partition in partitions.values()}
        if replicas != {replication}:
            notes.append(f"has replication {'/'.join(map(str, sorted(replicas)))}, settings say {replication}")
        for key in CHECKED_CONFIGS:
            want, found = spec.config.get(key), have_configs.get(name, {}).get(key)
            if want and found and found != want:
                notes.append(f"has {key}={found}, should be {want}")
        states.append(TopicState(name, have, False, "; ".join(notes)))
    return states


def _configs(admin, names: list[str], timeout_s: float) -> dict[str, dict[str, str]]:
    """The CHECKED_CONFIGS of existing topics (those the broker would not describe are left out)."""
    if not names:
        return {}
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource, ResourceType

    found: dict[str, dict[str, str]] = {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        try:
            entries = future.result(timeout=timeout_s)
        except KafkaException:
            continue
        found[resource.name] = {key: entries[key].value for key in CHECKED_CONFIGS
                                if key in entries and entries[key].value is not None}
    return found
