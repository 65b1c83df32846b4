"""The processors' Kafka consumer: Faust's, with the co-partitioning assignor, read progress and
delivery a fetched batch at a time.

Four things Faust does not offer: the assignor (copartitioning.py says why); metadata asked for
again within seconds, not minutes, while a topic the group reads is missing from it
(METADATA_RETRY_S); how far each assigned partition has been fetched (its high watermark and when a
fetch reported it), which the partition clocks need to tell "nothing more was sent" from "not read
yet" (clock.py); and handing a fetched batch to its handler as one list. Faust's loop races every
message against a flow stop (four tasks made and three cancelled per event), then decodes it into an Event, puts it on a stream's queue, and wakes the
agent that takes it off again: several event-loop turns per event, which at rest cost the worker more
than its own processing (issue 13, bench/idle.py). Here a topic with a batch handler
(`ProcessorsTransport.batch_handlers`) gets each fetch's records of that topic as one list, in offset
order per partition, and acks them itself (`Consumer.ack`) once they are durable; other topics go
through Faust's streams as before. Once the flow is stopped (a rebalance) or the group's generation
moves on, the batch's undelivered rest is dropped, and the new assignment re-reads it from the
committed offsets. Set `ProcessorsTransport` as `app.transport` before any topic is declared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka
from aiokafka.errors import IllegalStateError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

from trainmon.stream_processors.copartitioning import CopartitionedAssignor
from trainmon.stream_processors.membership import Lease

Progress = dict[tuple[str, int], tuple[int, float]]  # (topic, partition) -> (high watermark, fetched at)
# A fetch is answered once this much is there or after `fetch_max_wait_s` ([processors] fetch_max_wait).
# aiokafka's defaults (1 byte) make a trickle of events one fetch each: at rest, a few hundred round trips
# a second that cost the worker and the broker more than the events. Under load the bytes are there at
# once: no delay.
FETCH_MIN_BYTES = 64 * 1024
# Busy (at least this much read in the last second): fetches wait at most BUSY_FETCH_MAX_WAIT_S. A fetch
# leaves out the partitions whose records are still buffered, so under load a fetch of only the quiet
# topics (released alerts, runs) would wait out the long wait: +0.1-0.2 s on alert and visible latency
# (bench/pipeline.py). At rest the long wait saves a fifth of the worker (bench/idle.py --pair).
BUSY_BYTES_PER_S = 1024 * 1024
BUSY_FETCH_MAX_WAIT_S = 0.1
BatchHandler = Callable[[list[Any]], Awaitable[None]]  # a topic's records of one fetch (Faust messages)
# A topic the group reads that the broker's metadata does not list (a broker slow to learn of a new
# topic, a topic re-created) is assigned to nobody, and aiokafka asks for metadata again only every
# metadata_max_age_ms (5 min). While one is missing it is asked every METADATA_RETRY_S instead: when
# the topic shows up, the group leader's metadata snapshot changes and aiokafka rebalances.
METADATA_RETRY_S = 2.0
log = logging.getLogger("trainmon.processors")


def ask_for_missing_topics(consumer: aiokafka.AIOKafkaConsumer, known: list[str]) -> list[str]:
    """Metadata asked for again if a subscribed topic has none; returns the topics missing, and warns
    when they differ from `known` (the previous call's)."""
    missing = sorted(t for t in consumer.subscription() if not consumer.partitions_for_topic(t))
    if missing and missing != known:
        log.warning("not in the broker's metadata: %s; asking every %g s (their partitions are assigned to "
                    "nobody until then)", ", ".join(missing), METADATA_RETRY_S)
    if missing:
        consumer._client.force_metadata_update()
    return missing


class FetchPacer:
    """The fetch wait for the bytes read: `rest_s` while under BUSY_BYTES_PER_S, else at most
    BUSY_FETCH_MAX_WAIT_S; judged over windows of about a second."""

    def __init__(self, rest_s: float) -> None:
        self.rest_s = rest_s
        self.wait_s = rest_s
        self.busy = False  # read BUSY_BYTES_PER_S or more over the latest window
        self._since, self._bytes = None, 0

    def read(self, size: int, now: float) -> float:
        """`size` bytes handed over at `now` (monotonic seconds); returns the wait for the next fetches."""
        if self._since is None:
            self._since = now
        self._bytes += size
        if now - self._since >= 1.0:
            self.busy = self._bytes / (now - self._since) >= BUSY_BYTES_PER_S
            self.wait_s = min(self.rest_s, BUSY_FETCH_MAX_WAIT_S) if self.busy else self.rest_s
            self._since, self._bytes = now, 0
        return self.wait_s


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    _missing_topics: list[str] = []

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not all(hasattr(consumer, name) for name in ("_partition_assignment_strategy", "_client")):
            raise RuntimeError(f"aiokafka {aiokafka.__version__} changed how a consumer keeps its assignors or its "
                               "client; trainmon cannot co-partition its topics with it: install the version "
                               "pyproject.toml allows")
        consumer._partition_assignment_strategy = [CopartitionedAssignor]
        consumer._fetch_min_bytes = FETCH_MIN_BYTES  # both read by start()
        consumer._fetch_max_wait_ms = round(1000 * transport.fetch_max_wait_s)
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        lease = getattr(self.transport, "lease", None)
        if lease is not None:
            lease.watch(self._consumer._coordinator)  # the group's answers renew it: membership.py

    @Service.timer(METADATA_RETRY_S)
    async def _ask_for_missing_topics(self) -> None:
        if self._consumer is not None:
            self._missing_topics = ask_for_missing_topics(self._consumer, self._missing_topics)

    def set_fetch_max_wait(self, seconds: float) -> None:
        """Read by the fetcher as it builds each fetch request; an int set from another thread is safe."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._fetch_max_wait_ms = round(1000 * seconds)

    def read_progress(self) -> Progress:
        consumer = self._consumer
        if consumer is None:
            return {}
        out: Progress = {}
        try:
            for tp in list(consumer.assignment()):
                highwater, fetched_ms = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
                if highwater is not None and fetched_ms is not None:
                    out[tp.topic, tp.partition] = (highwater, fetched_ms / 1000.0)
        except (RuntimeError, IllegalStateError):  # a rebalance under way: no word this time
            return {}
        return out


class _Consumer(faust_aiokafka.Consumer):
    _pacer: FetchPacer | None = None

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def read_progress(self) -> Progress:
        """Per assigned (topic, partition): Kafka's high watermark at the latest fetch, and the wall
        time of that fetch; partitions not fetched yet are left out."""
        return self._thread.read_progress()

    def at_rest(self) -> bool:
        """Reading less than BUSY_BYTES_PER_S (FetchPacer), or nothing yet."""
        return self._pacer is None or not self._pacer.busy

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (faust.transport.consumer.Consumer._drain_messages), one flow race per
        fetched batch instead of per message (module doc). The fetch itself stays outside the race:
        a fetch cancelled in flight would still move the consumer's position past records nobody got."""
        consumer_stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = await self._fetch(timeout=1.0)
                self._pace(records)
                await self.sleep(0)  # a fetch may return at once, again and again: let others run
                if records and not self.should_stop:
                    await self.wait_first(self._deliver(records), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Broker stopped consumer, shutting down...")
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Consumer shutting down for user cancel.")
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _fetch(self, timeout: float) -> list[tuple[Any, Any]]:
        """Faust's getmany (faust.transport.consumer.Consumer.getmany) as one list, a partition at a time:
        its per-record work (a round-robin over topics, checks of the flow and the generation, the
        partition's high watermark read and recorded for the monitor, an async generator's step) cost
        more than the records' own conversion, and nothing can change the flow or the generation between
        records of one fetch, which are converted without a turn of the loop. The round-robin is
        _deliver's job here: it groups a fetch's records by topic, each partition's in offset order."""
        records, active = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return []
        if not self.flow_active:  # as Faust's getmany: back to the committed offsets
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return []
        fetched: list[tuple[Any, Any]] = []
        to_message, track, buffered = self._to_message, self.app.monitor.track_tp_end_offset, self._buffered_partitions
        for tp, batch in records.items():
            if active is None or tp in active or tp in buffered:
                track(tp, self.highwater(tp))
                fetched += [(tp, to_message(tp, record)) for record in batch]
        return fetched

    def _pace(self, records: list[tuple[Any, Any]]) -> None:
        if self._pacer is None:
            self._pacer = FetchPacer(self.transport.fetch_max_wait_s)
        size = sum(len(message.value or b"") for _, message in records)
        self._thread.set_fetch_max_wait(self._pacer.read(size, time.monotonic()))  # also a rebuilt consumer's

    async def _deliver(self, records: list[tuple[Any, Any]]) -> None:
        """Each record of one fetch to its topic's batch handler (one list per topic) or Faust stream, in
        order; what Faust's per-record loop does but the race: read offsets (a record below one was
        delivered already), gaps in acking topics, commits every `broker_commit_every` acks, a turn for
        others every 100 records. Like Faust's getmany, it stops at a flow stop or a new group
        generation: the records left are read again from the committed offsets."""
        read_offset, callback, commit_every = self._read_offset, self.callback, self._commit_every
        acking, app, handlers = self.app.topics.acks_enabled_for, self.app, self.transport.batch_handlers
        generation = app.consumer_generation_id
        batches: dict[str, list[Any]] = {}
        for index, (tp, message) in enumerate(records):
            if not self.flow_active or app.consumer_generation_id != generation:
                return
            if index and index % 100 == 0:
                await asyncio.sleep(0)
            offset, last = message.offset, read_offset[tp]
            if last is not None and offset < last:
                continue  # delivered before a seek back
            if last and offset - last > 1 and acking(message.topic):
                await self._add_gap(tp, last + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            if message.topic in handlers:
                batches.setdefault(message.topic, []).append(message)
            else:
                await callback(message)
            read_offset[tp] = offset
        for topic in [t for t in handlers if t in batches]:  # the handlers' order: see batch_handlers
            if not self.flow_active or app.consumer_generation_id != generation:
                return
            messages = batches[topic]
            # Shielded: a flow stop ends the race around this call, not a handler half way through
            # (its state changes would be made, its outcome lost); it then ends on its own.
            await asyncio.shield(handlers[topic](messages))


class ProcessorsTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the consumer above. `batch_handlers`: topic name -> the handler
    that gets that topic's records a fetch at a time (the consumer then never gives them to a stream).
    A fetch's batches go to their handlers in the order the handlers were added, whatever the order of
    the topics in the fetch (Kafka orders records within a partition only): under load a fetch holds
    seconds of work, and a small topic added first is not kept waiting behind it."""

    Consumer = _Consumer

    def __init__(self, *args: Any, fetch_max_wait_s: float, lease: Lease | None = None, **kwargs: Any) -> None:
        """fetch_max_wait_s: the wait at rest ([processors] fetch_max_wait; its default lives there).
        lease: renewed by the consumer group's heartbeats (membership.py)."""
        super().__init__(*args, **kwargs)
        self.batch_handlers: dict[str, BatchHandler] = {}
        self.fetch_max_wait_s = fetch_max_wait_s
        self.lease = lease
