"""The processors' Kafka consumer: Faust's, with the co-partitioning assignor and read progress.

Two things Faust does not offer: the assignor (copartitioning.py says why), and how far each assigned
partition has been fetched (its high watermark and when a fetch reported it), which the partition
clocks need to tell "nothing more was sent" from "not read yet" (clock.py). Set `ProcessorsTransport`
as `app.transport` before any topic is declared.
"""

from __future__ import annotations

import aiokafka
from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_aiokafka

from trainmon.stream_processors.copartitioning import CopartitionedAssignor

Progress = dict[tuple[str, int], tuple[int, float]]  # (topic, partition) -> (high watermark, fetched at)
# A fetch is answered once this much is there or after FETCH_MAX_WAIT_MS. aiokafka's defaults (1 byte)
# make a trickle of events one fetch each: at rest, a few hundred round trips a second that cost the
# worker and the broker more than the events. Under load the bytes are there at once: no delay.
FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_partition_assignment_strategy"):  # read by AIOKafkaConsumer.start()
            raise RuntimeError(f"aiokafka {aiokafka.__version__} changed how a consumer keeps its assignors; "
                               "trainmon cannot co-partition its topics with it: install the version "
                               "pyproject.toml allows")
        consumer._partition_assignment_strategy = [CopartitionedAssignor]
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS  # read by start()
        return consumer

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
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def read_progress(self) -> Progress:
        """Per assigned (topic, partition): Kafka's high watermark at the latest fetch, and the wall
        time of that fetch; partitions not fetched yet are left out."""
        return self._thread.read_progress()


class ProcessorsTransport(faust_aiokafka.Transport):
    Consumer = _Consumer
