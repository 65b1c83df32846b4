"""The consumer's batch delivery (kafka_consumer.py): what Faust's per-message loop guaranteed must
hold for a whole fetched batch: order, no record below the read offset, and nothing delivered after
a flow stop or a new group generation (those records are read again from the committed offsets).
Topics with a batch handler get a fetch's records as one list per topic, never through the callback,
in the order the handlers were added; a handler once started runs to its end even if the delivery
around it is cancelled."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from trainmon.stream_processors.kafka_consumer import _Consumer


class FakeConsumer:
    """The attributes _deliver reads, with a callback that records what it got and can stop the flow
    or move the group's generation on, as a rebalance would while a batch is being delivered."""

    def __init__(self, stop_at: int | None = None, rebalance_at: int | None = None,
                 batched: tuple[str, ...] = ()) -> None:
        self.delivered: list[tuple[str, int]] = []
        self.batches: list[tuple[str, list[int]]] = []
        self.flow_active = True
        self._read_offset: defaultdict = defaultdict(lambda: None)
        self._commit_every = None
        self._n_acked = 0
        self.app = SimpleNamespace(consumer_generation_id=1, topics=SimpleNamespace(acks_enabled_for=lambda t: False))
        self.transport = SimpleNamespace(batch_handlers={topic: self.handler(topic) for topic in batched})
        self.stop_at, self.rebalance_at = stop_at, rebalance_at

    def handler(self, topic: str):
        async def handle(messages: list) -> None:
            self.batches.append((topic, [m.offset for m in messages]))
        return handle

    async def callback(self, message) -> None:
        self.delivered.append((message.topic, message.offset))
        if message.offset == self.stop_at:
            self.flow_active = False
        if message.offset == self.rebalance_at:
            self.app.consumer_generation_id += 1


def records(offsets: range, topic: str = "t", partition: int = 0) -> list:
    tp = (topic, partition)
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


def test_a_batched_topic_gets_one_list_per_fetch_and_others_the_callback() -> None:
    consumer = FakeConsumer(batched=("m", "s"))
    fetch = records(range(0, 3), "m") + records(range(10, 12), "s") + records(range(5, 7), "t") + records(
        range(20, 22), "m", partition=1)
    deliver(consumer, fetch)
    assert consumer.batches == [("m", [0, 1, 2, 20, 21]), ("s", [10, 11])]
    assert consumer.delivered == [("t", 5), ("t", 6)]
    assert consumer._read_offset[("m", 0)] == 2 and consumer._read_offset[("m", 1)] == 21


def test_a_fetchs_batches_go_to_their_handlers_in_the_order_the_handlers_were_added() -> None:
    """Under load a fetch holds seconds of metrics; a released alert on its way to the incident book,
    fetched with them, must not wait behind them (nor behind the next fetch's): the app adds that
    topic's handler first."""
    consumer = FakeConsumer(batched=("incidents", "runs", "metrics"))
    fetch = records(range(0, 3), "metrics") + records(range(7, 9), "runs") + records(range(4, 5), "incidents") + (
        records(range(10, 12), "metrics", partition=1))
    deliver(consumer, fetch)
    assert consumer.batches == [("incidents", [4]), ("runs", [7, 8]), ("metrics", [0, 1, 2, 10, 11])]


def test_the_app_handles_released_alerts_first_and_the_bulk_metrics_last(tmp_path) -> None:
    from trainmon.contract import Topic, topic_name
    from trainmon.stream_processors.app import create_app
    from trainmon.stream_processors.config import load_pipeline
    from trainmon.stream_processors.internal_topics import INCIDENT_ALERTS, internal_topic_name
    from trainmon.settings import Settings

    settings = Settings(services_home=str(tmp_path), kafka_bootstrap_servers="127.0.0.1:1")  # nothing listens
    order = list(create_app(settings, load_pipeline(), None).transport.batch_handlers)
    assert order[0] == internal_topic_name(INCIDENT_ALERTS, settings.kafka_topic_prefix)
    assert order[-1] == topic_name(Topic.METRICS, settings.kafka_topic_prefix)


def test_a_flow_stop_before_the_handlers_drops_the_batch() -> None:
    for fetch in (records(range(0, 3), "m") + records(range(5, 7), "t"),  # stopped mid-fetch
                  records(range(0, 3), "m") + records(range(5, 6), "t")):  # at its last record
        consumer = FakeConsumer(stop_at=5, batched=("m",))
        deliver(consumer, fetch)
        assert consumer.batches == []  # read again from the committed offsets
        assert consumer.delivered == [("t", 5)]


def test_a_handler_runs_to_its_end_when_the_delivery_is_cancelled() -> None:
    finished: list[list[int]] = []

    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def handle(messages: list) -> None:
            started.set()
            await release.wait()  # the processing thread at work
            finished.append([m.offset for m in messages])

        consumer = FakeConsumer()
        consumer.transport.batch_handlers["m"] = handle
        delivery = asyncio.ensure_future(_Consumer._deliver(consumer, records(range(3), "m")))
        await started.wait()
        delivery.cancel()  # the flow race lost: a rebalance began
        await asyncio.sleep(0)
        release.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert delivery.cancelled()

    asyncio.run(scenario())
    assert finished == [[0, 1, 2]]


class FakeFetching:
    """The attributes _fetch reads: one fetch's records per partition, the partitions active for it,
    and what it calls to convert, to record high watermarks and to seek back."""

    def __init__(self, fetched: dict, active: set | None, flow_active: bool = True) -> None:
        self.fetched, self.active, self.flow_active = fetched, active, flow_active
        self.should_stop, self.seeks, self.tracked = False, 0, []
        self._buffered_partitions: set = set()
        self.app = SimpleNamespace(monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: self.tracked.append((tp, hw))))
        self.log = SimpleNamespace(warning=lambda *a: None)

    async def _wait_next_records(self, timeout: float):
        return self.fetched, self.active

    async def perform_seek(self) -> None:
        self.seeks += 1

    def highwater(self, tp) -> int:
        return 1000 + tp[1]

    def _to_message(self, tp, record):
        return SimpleNamespace(topic=tp[0], partition=tp[1], offset=record)


def fetch(consumer: FakeFetching) -> list:
    return asyncio.run(_Consumer._fetch(consumer, timeout=1.0))


def test_a_fetch_converts_the_active_partitions_records_in_offset_order() -> None:
    a, b, paused = ("t", 0), ("t", 1), ("t", 2)
    consumer = FakeFetching({a: [5, 6, 7], b: [1, 2], paused: [9]}, active={a, b})
    got = [(tp, m.offset) for tp, m in fetch(consumer)]
    assert [o for tp, o in got if tp == a] == [5, 6, 7] and [o for tp, o in got if tp == b] == [1, 2]
    assert paused not in {tp for tp, _ in got}  # not active, not buffered: left for a later fetch
    assert sorted(consumer.tracked) == [(a, 1000), (b, 1001)]  # once per partition, not per record
    consumer._buffered_partitions.add(paused)
    assert (paused, 9) in [(tp, m.offset) for tp, m in fetch(consumer)]


def test_a_fetch_while_the_flow_is_stopped_delivers_nothing_and_seeks_back() -> None:
    consumer = FakeFetching({("t", 0): [1, 2]}, active=None, flow_active=False)
    assert fetch(consumer) == [] and consumer.seeks == 1
    consumer.flow_active, consumer.should_stop = True, True
    assert fetch(consumer) == [] and consumer.seeks == 1
