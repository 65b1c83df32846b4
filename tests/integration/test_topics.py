"""`trainmon topics create` over the real broker: every contract and internal topic, co-partitioned,
the state snapshots compacted; a second call changes nothing; existing topics that differ are reported.
A worker's wait for them at start, and its consumer's for their metadata once in the group."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from trainmon.deploy.topics import create_topics, wait_for_topics
from trainmon.stream_processors.copartitioning import CopartitionedAssignor
from trainmon.stream_processors.kafka_consumer import ask_for_missing_topics
from trainmon.stream_processors.internal_topics import COMPACTED, INTERNAL, internal_topic_name
from trainmon.contract import Topic, topic_name

pytestmark = pytest.mark.integration


def fresh(stack):
    """Settings with a prefix of their own, under the session's (which the session drops)."""
    return stack.replace(kafka_topic_prefix=f"{stack.kafka_topic_prefix}{uuid.uuid4().hex[:6]}.")


def configs(admin: AdminClient, name: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = admin.describe_configs([resource], request_timeout=30)[resource].result(timeout=30)
    return {key: entry.value for key, entry in entries.items()}


def test_creates_contract_and_internal_topics_idempotently(stack):
    settings = fresh(stack)
    prefix = settings.kafka_topic_prefix
    contract = {topic_name(topic, prefix) for topic in Topic}
    internal = {internal_topic_name(which, prefix) for which in INTERNAL}
    compacted = {internal_topic_name(which, prefix) for which in COMPACTED}
    assert compacted and compacted < internal and not internal & contract

    messages: list[str] = []
    states = create_topics(settings, progress=messages.append)
    assert {s.name for s in states if s.created} == contract | internal
    assert len(messages) == len(contract | internal)

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    for name in contract | internal:
        assert name in topics, name
        assert len(topics[name].partitions) == settings.kafka_partitions, name
    for name in compacted:
        config = configs(admin, name)
        assert config["cleanup.policy"] == "compact", name
        assert config["max.message.bytes"] == str(64 << 20)
        assert float(config["min.cleanable.dirty.ratio"]) == pytest.approx(0.1)
        assert int(config["segment.ms"]) <= 60 * 60 * 1000
    for name in (internal - compacted) | {topic_name(Topic.METRICS, prefix)}:
        config = configs(admin, name)
        assert config["cleanup.policy"] == "delete", name
        assert config["retention.ms"] == str(3 * 24 * 3600 * 1000), name
    assert configs(admin, topic_name(Topic.DEADLETTER, prefix))["retention.ms"] == str(14 * 24 * 3600 * 1000)

    again = create_topics(settings, progress=lambda message: None)
    assert {s.name for s in again} == contract | internal
    assert not any(s.created for s in again)
    assert all(s.note == "" and s.partitions == settings.kafka_partitions for s in again), again


def test_existing_topics_that_differ_are_reported_not_changed(stack):
    settings = fresh(stack)
    prefix = settings.kafka_topic_prefix
    metrics = topic_name(Topic.METRICS, prefix)
    state = internal_topic_name(next(iter(COMPACTED)), prefix)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    made = admin.create_topics([NewTopic(metrics, num_partitions=settings.kafka_partitions + 1, replication_factor=1),
                                NewTopic(state, num_partitions=settings.kafka_partitions, replication_factor=1)])
    for future in made.values():
        future.result(timeout=30)

    messages: list[str] = []
    states = {s.name: s for s in create_topics(settings, progress=messages.append)}
    assert not states[metrics].created and states[metrics].partitions == settings.kafka_partitions + 1
    assert f"settings say {settings.kafka_partitions}" in states[metrics].note
    assert not states[state].created and "cleanup.policy=delete, should be compact" in states[state].note
    assert any(metrics in m and "partitions, settings say" in m for m in messages), messages
    assert sum(s.created for s in states.values()) == len(Topic) + len(INTERNAL) - 2
    assert len(admin.list_topics(timeout=10).topics[metrics].partitions) == settings.kafka_partitions + 1


def test_a_worker_waits_for_every_topic_at_start_and_says_which_are_missing(stack):
    settings = fresh(stack)
    said: list[str] = []
    waiter = threading.Thread(target=wait_for_topics, args=(settings, said.append, 0.2, 60.0), daemon=True)
    waiter.start()
    time.sleep(2.0)
    assert waiter.is_alive(), "returned although no topic exists"
    assert len(said) == 1 and said[0].startswith("topics: waiting: 9 of 9 topics not in Kafka's metadata yet")
    assert topic_name(Topic.METRICS, settings.kafka_topic_prefix) in said[0] and "trainmon topics create" in said[0]
    create_topics(settings, progress=lambda message: None)
    waiter.join(15)
    assert not waiter.is_alive(), "still waiting after every topic was created"
    assert said[-1] == "topics: all 9 present"


def test_a_topic_created_after_the_group_formed_is_assigned_within_seconds_not_at_the_5_min_refresh(stack):
    """The group's leader assigns nothing of a topic its metadata lacks; aiokafka rebalances when the
    metadata shows the topic, but asks again only every 5 min unless `ask_for_missing_topics` does."""
    name = f"{stack.kafka_topic_prefix}late-{uuid.uuid4().hex[:6]}"

    async def assigned(consumer: AIOKafkaConsumer, seconds: float, ask: bool) -> set:
        deadline, missing = time.monotonic() + seconds, []
        while time.monotonic() < deadline and not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
            if ask:
                missing = ask_for_missing_topics(consumer, missing)
        return consumer.assignment()

    async def scenario() -> tuple[set, set, set]:
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap_servers, group_id=f"late-{uuid.uuid4().hex[:6]}",
                                    partition_assignment_strategy=[CopartitionedAssignor])
        await consumer.start()
        consumer.subscribe([name])  # after start(), as Faust does: start() would wait for the topic, then fail
        try:
            before = await assigned(consumer, 3.0, ask=False)  # joined, with the topic missing
            admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
            admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])[name].result(timeout=30)
            unasked = await assigned(consumer, 6.0, ask=False)
            asked = await assigned(consumer, 20.0, ask=True)
            return before, unasked, asked
        finally:
            await consumer.stop()

    before, unasked, asked = asyncio.run(scenario())
    assert before == set() and unasked == set(), "aiokafka alone picked the new topic up: this guard is moot"
    assert {(tp.topic, tp.partition) for tp in asked} == {(name, p) for p in range(4)}
