"""The processors' assignor: partition p of every topic to one worker, as the state per partition needs."""

from __future__ import annotations

import logging

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from trainmon.stream_processors.copartitioning import CopartitionedAssignor, split_partitions

TOPICS = ["t.metrics", "t.system", "t.runs", "trainmon-processors.run-hardware", "trainmon-processors.host-run-ends"]


class Cluster:
    """The one call an assignor makes of aiokafka's ClusterMetadata."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self.partitions.get(topic)
        return None if count is None else set(range(count))


def members(*names: str, topics: list[str] = TOPICS) -> dict[str, ConsumerProtocolMemberMetadata]:
    return {name: CopartitionedAssignor.metadata(topics) for name in names}


def assigned(assignment) -> dict[str, list[tuple[str, int]]]:
    return {member: sorted((topic, p) for topic, partitions in a.assignment for p in partitions)
            for member, a in assignment.items()}


def test_three_workers_on_four_partitions_each_get_whole_partitions_two_one_one():
    cluster = Cluster({topic: 4 for topic in TOPICS})
    result = assigned(CopartitionedAssignor.assign(cluster, members("w-c", "w-a", "w-b")))
    for tps in result.values():
        assert split_partitions(tps, TOPICS) == {}
    numbers = {member: sorted({p for _, p in tps}) for member, tps in result.items()}
    assert numbers == {"w-a": [0, 3], "w-b": [1], "w-c": [2]}
    everything = sorted(tp for tps in result.values() for tp in tps)
    assert everything == sorted((topic, p) for topic in TOPICS for p in range(4))  # each exactly once


def test_the_round_robin_assignor_faust_falls_back_to_splits_partitions():
    """Why the module exists: aiokafka's round-robin, which Faust uses for apps without tables."""
    cluster = Cluster({topic: 4 for topic in TOPICS})
    result = assigned(RoundRobinPartitionAssignor.assign(cluster, members("w-a", "w-b", "w-c")))
    assert any(split_partitions(tps, TOPICS) for tps in result.values())


def test_one_worker_gets_everything_and_extra_workers_idle():
    cluster = Cluster({topic: 2 for topic in TOPICS})
    alone = assigned(CopartitionedAssignor.assign(cluster, members("w")))
    assert len(alone["w"]) == 2 * len(TOPICS)
    crowd = assigned(CopartitionedAssignor.assign(cluster, members("a", "b", "c")))
    assert [len(crowd[m]) for m in "abc"] == [len(TOPICS), len(TOPICS), 0]


def test_a_single_partition_topic_goes_with_partition_zero():
    cluster = Cluster({**{topic: 4 for topic in TOPICS}, "leader": 1})
    result = assigned(CopartitionedAssignor.assign(cluster, members("a", "b", topics=TOPICS + ["leader"])))
    assert ("leader", 0) in result["a"] and ("t.metrics", 0) in result["a"]


def test_a_topic_without_metadata_is_left_out_and_said(caplog):
    cluster = Cluster({topic: 4 for topic in TOPICS[1:]})
    with caplog.at_level(logging.WARNING, logger="trainmon.processors"):
        result = assigned(CopartitionedAssignor.assign(cluster, members("a", "b")))
    assert all(topic != TOPICS[0] for tps in result.values() for topic, _ in tps)
    assert "no partition metadata for topic t.metrics" in caplog.text


def test_a_topic_its_owner_does_not_read_goes_to_a_reader_with_a_warning(caplog):
    group = {**members("a", "b", topics=TOPICS), **members("c", topics=TOPICS[:3])}
    cluster = Cluster({topic: 3 for topic in TOPICS})
    with caplog.at_level(logging.WARNING, logger="trainmon.processors"):
        result = assigned(CopartitionedAssignor.assign(cluster, group))
    assert not any(topic in TOPICS[3:] for topic, _ in result["c"])
    everything = sorted(tp for tps in result.values() for tp in tps)
    assert everything == sorted((topic, p) for topic in TOPICS for p in range(3))
    assert "c does not read trainmon-processors.run-hardware" in caplog.text


def test_split_partitions_names_the_topics_missing_here():
    tps = [("t.metrics", 1), ("t.system", 1), ("t.runs", 2)]
    assert split_partitions(tps, ["t.metrics", "t.system", "t.runs"]) == {1: ["t.runs"], 2: ["t.metrics", "t.system"]}
