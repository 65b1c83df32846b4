"""A local 3-node Kafka cluster (`trainmon services start --kafka-brokers 3`) losing a partition leader
under load: a training process logs 200,000 events through the SDK while the broker leading its
metrics partition is SIGKILLed and restarted, and a processors worker writes them to ClickHouse.
Afterwards every event is in Kafka exactly once, read back and counted by the SDK's (producer, seq),
metric_points holds each step once, and the producer's longest delivery stall is printed. And a
takeover's read of the state snapshots the moment their partition's leader is SIGKILLed.

The cluster (ports 23092/23093, +100 per node) and ClickHouse (23123/23124) run on their own ports and
home under a tmp dir, and are stopped at the end whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests.conftest import _unavailable
from tests.kafka_util import read_all
from tests.integration.test_processors import pipeline_file, scalar, start_worker, stop, wait_until
from tests.receivers import Receiver
from trainmon import kafka_client
from trainmon.clickhouse import connect
from trainmon.contract import Topic, decode, topic_name
from trainmon.deploy.services import start_all, stop_all
from trainmon.deploy.services.kafka import KafkaService
from trainmon.deploy.migrate import migrate
from trainmon.deploy.topics import create_topics
from trainmon.settings import Settings, environment
from trainmon.stream_processors.internal_topics import STATE, internal_topic_name
from trainmon.stream_processors.state_topic import latest_snapshots

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EVENTS = 200_000
RATE = 5_000  # events/s: 40 s of logging, so the kill and the restart both land mid-stream


@contextmanager
def running(settings: Settings, names: list[str]) -> Iterator[Settings]:
    """The local services `names` as these settings describe them, started here and stopped at the end,
    whatever happened."""
    began = time.monotonic()
    try:
        start_all(settings, names, progress=print)
    except Exception as exc:  # ServiceError names the fix (Java, Maven, a taken port)
        stop_all(settings, names, progress=print)
        _unavailable(str(exc))
    print(f"{', '.join(names)}: healthy {time.monotonic() - began:.1f}s after start "
          f"({settings.services_kafka_brokers} Kafka node(s))")
    try:
        yield settings
    finally:
        began = time.monotonic()
        stop_all(settings, names, progress=print)
        print(f"{', '.join(names)}: stopped in {time.monotonic() - began:.1f}s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Settings]:
    settings = Settings(
        services_home=str(tmp_path_factory.mktemp("kafka-cluster") / "home"),
        services_kafka_port=23092,  # nodes on 23092, 23192, 23292; controllers on 23093, 23193, 23293
        services_kafka_controller_port=23093,
        services_kafka_brokers=3,
        kafka_topic_prefix=f"cluster-{uuid.uuid4().hex[:6]}.",
        kafka_partitions=6,
        kafka_replication_factor=3,
        kafka_min_insync_replicas=2,
        services_clickhouse_http_port=23123,
        services_clickhouse_tcp_port=23124,
        clickhouse_database="cluster_test",
    )
    with running(settings, ["kafka", "clickhouse"]):
        create_topics(settings, progress=lambda message: None)
        migrate(settings, progress=lambda message: None)
        yield settings


def test_the_cluster_has_three_nodes_and_topics_at_replication_3_min_isr_2(cluster: Settings) -> None:
    assert cluster.bootstrap_servers.split(",") == ["127.0.0.1:23092", "127.0.0.1:23192", "127.0.0.1:23292"]
    admin = AdminClient(kafka_client.config(cluster))
    metadata = admin.list_topics(timeout=30)
    assert sorted(metadata.brokers) == [1, 2, 3]
    metrics = topic_name(Topic.METRICS, cluster.kafka_topic_prefix)
    mine = [name for name in metadata.topics if name.startswith(cluster.kafka_topic_prefix)]
    assert metrics in mine
    for name in mine:
        assert {len(p.replicas) for p in metadata.topics[name].partitions.values()} == {3}, name
    resource = ConfigResource(ResourceType.TOPIC, metrics)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["min.insync.replicas"].value == "2"

    messages: list[str] = []
    assert not any(state.created or state.note for state in create_topics(cluster, progress=messages.append))
    lower = create_topics(cluster.replace(kafka_replication_factor=1, kafka_min_insync_replicas=1),
                          progress=messages.append)
    assert all("has replication 3, settings say 1" in s.note and "min.insync.replicas=2, should be 1" in s.note
               for s in lower), lower
    assert any(m.startswith("topics: replication_factor 1 on 3 brokers: losing one loses partitions") for m in messages)


TRAINER = textwrap.dedent("""
    import json, sys, threading, time
    import trainmon

    run_id, spool, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    run = trainmon.init(project="failover", run_id=run_id, spool_dir=spool)  # settings from TRAINMON_*
    publisher = run._publisher
    if "delivered" not in publisher.stats:
        sys.exit("the SDK's publisher did not start (see its warning above)")
    stall = {"s": 0.0, "began": 0.0}
    done = threading.Event()

    def watch():
        # The longest time during which events were waiting and Kafka acknowledged none of them.
        last, since = -1, time.monotonic()
        while not done.is_set():
            stats, now = publisher.stats, time.monotonic()
            if stats["delivered"] != last:
                last, since = stats["delivered"], now
            elif stats["published"] > stats["delivered"] and now - since > stall["s"]:
                stall.update(s=now - since, began=time.time() - (now - since))
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    began = time.monotonic()
    for step in range(count):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        if step % 50 == 49:  # a training loop's pace, not a benchmark's
            time.sleep(max(0.0, began + (step + 1) / rate - time.monotonic()))
    logged = time.monotonic() - began
    flushed = publisher.flush(180)
    done.set()
    run.finish()
    print(json.dumps({"flushed": flushed, "logged_s": logged, "stall_s": stall["s"],
                      "stall_began": stall["began"], "stats": publisher.stats}), flush=True)
""")


def trainer_env(settings: Settings) -> dict[str, str]:
    """A training script's environment: the settings as TRAINMON_* variables, as a job would get them."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **environment(settings)}


def filled_partition(settings: Settings, topic: str, timeout_s: float = 60.0) -> int:
    """The one partition of `topic` that holds data, once it does (a run's events are keyed by run id)."""
    consumer = Consumer(kafka_client.config(settings, **{"group.id": f"t-{uuid.uuid4().hex}"}))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            filled = [p for p in partitions if consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]]
            if filled:
                assert len(filled) == 1, filled
                return filled[0]
            time.sleep(0.5)
    finally:
        consumer.close()
    raise AssertionError(f"nothing arrived in {topic} within {timeout_s:.0f}s")


def leader_of(settings: Settings, topic: str, partition: int) -> KafkaService:
    metadata = AdminClient(kafka_client.config(settings)).list_topics(topic, timeout=30)
    return KafkaService(settings, metadata.topics[topic].partitions[partition].leader)


def raft_role(node: KafkaService) -> str:
    """The node's last KRaft state from its log ("Leader": the active controller, whose loss costs an election
    before the dead broker is fenced). confluent-kafka has no DescribeMetadataQuorum to ask instead."""
    states = re.findall(r"\] Completed transition to (\w+)", node.logfile.read_text(errors="replace"))
    return states[-1] if states else "unknown"


def under_replicated(settings: Settings) -> int:
    """How many partitions of our topics have a replica out of sync."""
    metadata = AdminClient(kafka_client.config(settings)).list_topics(timeout=30)
    return sum(len(p.isrs) < len(p.replicas) for name, topic in metadata.topics.items()
               if name.startswith(settings.kafka_topic_prefix) for p in topic.partitions.values())


def test_200k_sdk_events_survive_a_partition_leader_sigkill_and_restart_exactly_once(cluster, tmp_path) -> None:
    settings, run_id = cluster, f"failover-{uuid.uuid4().hex[:6]}"
    metrics = topic_name(Topic.METRICS, settings.kafka_topic_prefix)
    client = connect(settings)
    with Receiver([200] * 10) as receiver:
        worker = start_worker(settings, pipeline_file(tmp_path, receiver.url), f"failover-{run_id}",
                              tmp_path / "worker.log")
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER, run_id, str(tmp_path / "spool"), str(EVENTS),
                                    str(RATE)], cwd=ROOT, env=trainer_env(settings), stdout=subprocess.PIPE, text=True)
        try:
            partition = filled_partition(settings, metrics)
            time.sleep(5)  # well into the stream
            victim = leader_of(settings, metrics, partition)
            role = raft_role(victim)
            rss_mb = {node.name: psutil.Process(node.pid()).memory_info().rss >> 20
                      for node in KafkaService.configured(settings)}
            pid, killed_at = victim.pid(), time.time()
            os.kill(pid, signal.SIGKILL)
            print(f"SIGKILLed {victim.name} (pid {pid}), leader of {metrics}[{partition}], KRaft {role}; "
                  f"RSS before (MB): {rss_mb}")
            time.sleep(8)
            restarted = time.monotonic()
            victim.start(progress=print)
            print(f"{victim.name} healthy again {time.monotonic() - restarted:.1f}s after its restart")

            out, _ = trainer.communicate(timeout=300)
            assert trainer.returncode == 0, out
            report = json.loads(out.strip().splitlines()[-1])
            wait_until(lambda: under_replicated(settings) == 0, 120, "the restarted broker back in every ISR")
            in_sync_s = time.monotonic() - restarted

            points = "SELECT count(), uniqExact(step) FROM metric_points WHERE run = {r:String}"
            ends = "SELECT count() FROM run_events WHERE run = {r:String} AND kind = 'run_end'"

            def all_written() -> bool:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                return scalar(client, points, r=run_id) >= EVENTS and scalar(client, ends, r=run_id) == 1

            wait_until(all_written, 300, "every point and the run's end in ClickHouse")
            time.sleep(3)  # an event written twice would be in by now
            written = client.query(points, parameters={"r": run_id}).result_rows[0]
            assert (written, scalar(client, ends, r=run_id)) == ((EVENTS, EVENTS), 1)
        finally:
            if trainer.poll() is None:
                trainer.kill()
                trainer.wait(10)
            stop(worker)

    stats, stall = report["stats"], report["stall_s"]
    print(f"logged {EVENTS} events in {report['logged_s']:.1f}s; longest delivery stall {stall:.2f}s, beginning "
          f"{report['stall_began'] - killed_at:+.2f}s from the SIGKILL; {victim.name} back in every ISR "
          f"{in_sync_s:.1f}s after its restart; metric_points (rows, steps) {written}; publisher stats {stats}")
    assert report["flushed"] is True
    assert stats["dropped"] == 0 and stats["spooled_events"] == 0

    topics = [topic_name(topic, settings.kafka_topic_prefix) for topic in (Topic.METRICS, Topic.RUNS)]
    mine = [event for event in map(decode, (m.value() for m in read_all(settings, topics))) if event["run"] == run_id]
    copies = Counter((event["producer"], event["seq"]) for event in mine)
    assert len({producer for producer, _ in copies}) == 1
    assert max(copies.values()) == 1, f"duplicated: {[key for key, n in copies.items() if n > 1][:10]}"
    assert sorted(seq for _, seq in copies) == list(range(len(copies))), "a seq is missing: an event was lost"
    assert len(copies) == stats["published"] == stats["delivered"]
    steps = Counter(event["step"] for event in mine if event["kind"] == "metrics")
    assert len(steps) == EVENTS and set(steps.values()) == {1}
    print(f"read back from Kafka: {dict(Counter(event['kind'] for event in mine))}; {len(copies)} (producer, seq) "
          "pairs, each once")
    assert 0 < stall < 10, "delivery stalled longer than the 3 s broker session and a controller election take"


def test_snapshots_are_read_back_whole_from_a_state_partition_whose_leader_was_just_sigkilled(
        cluster, caplog) -> None:
    """A takeover restores a partition's state from the tail of the state topic (state_topic.py). Read the
    moment that partition's leader is SIGKILLed, nobody leads it until the cluster fences the dead broker
    (3 s broker session) and elects another: the read must wait for the new leader and return every
    snapshot of its group, oldest first, not crash the worker or restore from fewer."""
    settings, group = cluster, f"restore-{uuid.uuid4().hex[:6]}"
    state, partition = internal_topic_name(STATE, settings.kafka_topic_prefix), 1
    sent = [f"{group} snapshot {n}".encode() * 50 for n in range(5)]
    producer = Producer(kafka_client.config(settings, acks="all"))
    for value in sent:
        producer.produce(state, value, key=group.encode(), partition=partition)
        producer.produce(state, b"another group's", key=b"another-group", partition=partition)
    assert producer.flush(30) == 0
    assert latest_snapshots(settings, state, partition, group) == sent

    victim = leader_of(settings, state, partition)
    os.kill(victim.pid(), signal.SIGKILL)
    began = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="trainmon.processors"):
            read = latest_snapshots(settings, state, partition, group)
        waited_s = time.monotonic() - began
        new_leader = leader_of(settings, state, partition)
    finally:
        victim.start(progress=print)  # the module's last test: nothing waits for it to catch up
    print(f"SIGKILLed {victim.name}, leader of {state}[{partition}]; snapshots read back {waited_s:.1f}s later "
          f"from node {new_leader.node_id}")
    assert "waiting up to" in caplog.text, "the read never met the dead leader: the test proves nothing"
    assert new_leader.node_id != victim.node_id
    assert read == sent
