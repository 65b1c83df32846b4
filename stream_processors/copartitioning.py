"""Partition p of every topic the processors read goes to one worker: one owner per partition's state.

A partition's state (runs, rules, windows) is fed by partition p of metrics, system, runs and the
re-keyed internal topics; a worker that read only some of them would restore the same snapshot as
another and write windows from part of the events. Faust 0.15 uses its own co-partitioning assignor
only when an app has changelog tables or standby replicas, and aiokafka's round-robin otherwise
(faust-streaming PR #402): with 5 topics of 4 partitions and 3 workers, round-robin splits every
partition's topics. The processors' consumer (kafka_consumer.py) uses `CopartitionedAssignor` instead.

The assignment is not sticky: on every rebalance (eager protocol) each worker snapshots and drops all
its partitions' state and restores what it is assigned, so keeping a partition on its worker would
save nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = logging.getLogger("trainmon.processors")


class CopartitionedAssignor(AbstractPartitionAssignor):
    """Partition numbers dealt round-robin to the members (sorted by id): 4 over 3 gives 2, 1, 1.

    A topic its partition's owner does not subscribe to (only while workers of different versions
    share the group) goes to a subscriber instead, with a warning: that partition is then split."""

    name = "trainmon-copartitioned"
    version = 0

    @classmethod
    def assign(cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        subscribers: dict[str, list[str]] = defaultdict(list)
        for member in sorted(members):
            for topic in members[member].subscription:
                subscribers[topic].append(member)
        partitions: dict[str, list[int]] = {}
        for topic in sorted(subscribers):
            found = cluster.partitions_for_topic(topic)
            if found is None:
                log.warning("no partition metadata for topic %s: not assigned in this generation", topic)
                continue
            partitions[topic] = sorted(found)
        numbers = sorted({p for found in partitions.values() for p in found})
        ordered = sorted(members)
        owner = {p: ordered[i % len(ordered)] for i, p in enumerate(numbers)}
        assignment: dict[str, dict[str, list[int]]] = {member: defaultdict(list) for member in members}
        for topic, found in partitions.items():
            for p in found:
                member = owner[p]
                if member not in subscribers[topic]:
                    member = subscribers[topic][p % len(subscribers[topic])]
                    log.warning("%s does not read %s: partition %d of it goes to %s, the rest of "
                                "partition %d to %s", owner[p], topic, p, member, p, owner[p])
                assignment[member][topic].append(p)
        return {member: ConsumerProtocolMemberAssignment(cls.version, sorted(topics.items()), b"")
                for member, topics in assignment.items()}

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Nothing to keep: the assignment depends on the members alone."""


def split_partitions(assigned: Iterable[tuple[str, int]], topics: Iterable[str]) -> dict[int, list[str]]:
    """Partitions assigned here without all of `topics`: {partition: the topics missing}. Empty when
    the assignment is co-partitioned, as the assignor above makes it."""
    by_partition: dict[int, set[str]] = defaultdict(set)
    for topic, partition in assigned:
        by_partition[partition].add(topic)
    wanted = set(topics)
    return {p: sorted(wanted - got) for p, got in sorted(by_partition.items()) if wanted - got}
