"""The contract over the real broker: topics exist as specified, events keyed and round-tripped."""

from __future__ import annotations

import math
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from trainmon.deploy.topics import create_topics
from tests.kafka_util import consume
from trainmon.contract import Topic, decode, encode, envelope, partition_key, topic_name

pytestmark = pytest.mark.integration


def test_topics_are_created_with_explicit_partitions_and_idempotently(migrated):
    admin = AdminClient({"bootstrap.servers": migrated.bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    for topic in Topic:
        name = topic_name(topic, migrated.kafka_topic_prefix)
        assert name in topics, name
        assert len(topics[name].partitions) == migrated.kafka_partitions
    again = create_topics(migrated, progress=lambda m: None)
    assert not any(state.created for state in again)


def test_broker_does_not_auto_create_topics(migrated):
    producer = Producer({"bootstrap.servers": migrated.bootstrap_servers, "message.timeout.ms": 3000})
    errors = []
    producer.produce(f"{migrated.kafka_topic_prefix}no-such-topic", b"x", on_delivery=lambda e, m: errors.append(e))
    producer.flush(10)
    assert errors and errors[0] is not None


def test_events_round_trip_through_kafka_keyed_by_the_contract(migrated):
    producer = Producer({"bootstrap.servers": migrated.bootstrap_servers, "enable.idempotence": True})
    now = time.time()
    sent = []
    for rank in range(2):
        for step in range(50):
            values = {"loss": math.nan if step == 7 else 1.0 / (step + 1), "lr": 1e-3}
            sent.append(envelope("metrics", project="p", run="run-a" if step % 2 else "run-b", rank=rank,
                                 host=f"node-{rank}", step=step, time=now, values=values))
    topic = topic_name(Topic.METRICS, migrated.kafka_topic_prefix)
    for event in sent:
        producer.produce(topic, encode(event), key=partition_key(event))
    assert producer.flush(30) == 0
    received = consume(migrated, topic, len(sent))
    assert len(received) == len(sent)
    partitions_by_run: dict[str, set[int]] = {}
    decoded = []
    for message in received:
        event = decode(message.value())
        assert message.key() == event["run"].encode()
        partitions_by_run.setdefault(event["run"], set()).add(message.partition())
        decoded.append(event)
    assert all(len(p) == 1 for p in partitions_by_run.values()), partitions_by_run
    nan_events = [e for e in decoded if math.isnan(e["values"]["loss"])]
    assert len(nan_events) == 2
    # per key (run) and rank, steps arrive in the order they were produced
    for run in ("run-a", "run-b"):
        for rank in range(2):
            steps = [e["step"] for e in decoded if e["run"] == run and e["rank"] == rank]
            assert steps == sorted(steps) and steps
