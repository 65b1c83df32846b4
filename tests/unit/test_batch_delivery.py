"""The consumer's batch delivery (kafka_consumer.py): what Faust's per-message loop guaranteed must
hold for a whole fetched batch: order, no record below the read offset, and nothing delivered after
a flow stop or a new group generation (those records are read again from the committed offsets)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from trainmon.stream_processors.kafka_consumer import _Consumer


class FakeConsumer:
    """The attributes _deliver reads, with a callback that records what it got and can stop the flow
    or move the group's generation on, as a rebalance would while a batch is being delivered."""

    def __init__(self, stop_at: int | None = None, rebalance_at: int | None = None) -> None:
        self.delivered: list[tuple[str, int]] = []
        self.flow_active = True
        self._read_offset: defaultdict = defaultdict(lambda: None)
        self._commit_every = None
        self._n_acked = 0
        self.app = SimpleNamespace(consumer_generation_id=1, topics=SimpleNamespace(acks_enabled_for=lambda t: False))
        self.stop_at, self.rebalance_at = stop_at, rebalance_at

    async def callback(self, message) -> None:
        self.delivered.append((message.topic, message.offset))
        if message.offset == self.stop_at:
            self.flow_active = False
        if message.offset == self.rebalance_at:
            self.app.consumer_generation_id += 1


def records(offsets: range, topic: str = "t") -> list:
    tp = (topic, 0)
    return [(tp, SimpleNamespace(topic=topic, offset=offset)) for offset in offsets]


def deliver(consumer: FakeConsumer, batch: list) -> None:
    asyncio.run(_Consumer._deliver(consumer, batch))


def test_a_batch_is_delivered_in_order_and_sets_the_read_offset() -> None:
    consumer = FakeConsumer()
    deliver(consumer, records(range(0, 250)))  # more than the 100 between turns for others
    assert [offset for _, offset in consumer.delivered] == list(range(250))
    assert consumer._read_offset[("t", 0)] == 249


def test_records_below_the_read_offset_are_skipped() -> None:
    consumer = FakeConsumer()
    consumer._read_offset[("t", 0)] = 5
    deliver(consumer, records(range(3, 8)))
    assert [offset for _, offset in consumer.delivered] == [5, 6, 7]


def test_nothing_is_delivered_after_a_flow_stop() -> None:
    consumer = FakeConsumer(stop_at=3)
    deliver(consumer, records(range(10)))
    assert [offset for _, offset in consumer.delivered] == [0, 1, 2, 3]
    assert consumer._read_offset[("t", 0)] == 3  # the rest is read again from the committed offset


def test_nothing_is_delivered_after_a_new_generation() -> None:
    consumer = FakeConsumer(rebalance_at=6)
    deliver(consumer, records(range(10)))
    assert [offset for _, offset in consumer.delivered] == list(range(7))
