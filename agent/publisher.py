"""Hands contract events to Kafka without ever blocking or failing the caller.

`publish()` is a deque append. One background thread does the rest, every `linger_s`: encode, write
to the disk spool (write-ahead), produce to Kafka from the spool in order, and advance the delivered
watermark from delivery reports. While Kafka is unreachable, librdkafka holds what was produced
(bounded) and retries forever (`message.timeout.ms=0`, so nothing is dropped on a timer and per-key
order holds); the rest waits on disk and is produced when there is room again. Shared by the SDK and
the node daemon.

Run-side events that carry a `producer` id get their `seq` here, on this thread, in queue order and
before they are encoded: so seq grows in the order events reach the spool and Kafka, and a record the
spool re-sends after a crash carries the same producer and seq bytes as the original.

A topic Kafka does not have (the agent or the job started before `trainmon topics create`, a topic
being re-created) is not a loss either: librdkafka fails those records at once, and they stay in the
spool (holding the watermark) while the publisher stops producing until everything in flight is
reported, then hands exactly the failed records over again every MISSING_TOPIC_RETRY_S, in order,
before anything newer. Nothing delivered is sent twice. The one gap: a topic created in the moment
between a record's failure and a later record's success on it; a run's event re-sent after a later
one of that run was read is then skipped as a replay (its seq is not new).

What cannot be kept is counted, never silent: events refused at a full memory queue (warned once,
then at most once a minute), events the spool's size cap removed before they were sent, permanent
Kafka errors, and what was still only in memory at close. `dropped` is their sum. If the spool
cannot be written (disk full, I/O error), events are produced to Kafka directly instead, in order
after what was spooled before (counted as `unspooled`, warned); they are then only in memory until
Kafka acknowledges them.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from trainmon.agent.spool import Record, Spool, SpoolLocked
from trainmon.contract import TOPIC_OF_KIND, ContractError, Topic, encode, partition_key, topic_name
from trainmon import kafka_client
from trainmon.settings import Settings

log = logging.getLogger("trainmon.agent")

TOPICS = list(Topic)  # the spool stores a topic as its index here, not its (prefix-dependent) name
TOPIC_CODE = {topic: code for code, topic in enumerate(TOPICS)}
KIND_CODE = {kind: TOPIC_CODE[topic] for kind, topic in TOPIC_OF_KIND.items()}
REPLAY_CHUNK = 2000
# The background thread works in slices this big and then sleeps briefly: a training thread waiting
# for the GIL gets it within one slice instead of after Python's 5 ms switch interval. (sleep(0)
# would not hand the GIL over; a real sleep does.) Each slice is also one spool write, so nothing in
# a cycle (encode, frame, write, produce) holds the GIL for more than one slice. The pauses cost
# this thread throughput while the caller is CPU-bound; only when the memory queue is half full do
# they stop, because keeping memory bounded and nothing dropped comes first then.
SLICE_EVENTS = 32  # encoded and spooled per slice (encoding a 10-value event: 1.2 µs with orjson, 6.5 with the json module)
PRODUCE_SLICE_EVENTS = 128  # handed to librdkafka per slice (~3 µs each): slices of similar length
SLICE_PAUSE_S = 50e-6
CYCLE_EVENTS = 20_000  # per cycle at most; the next cycle starts at once while more are queued
FRESH_MAX_EVENTS = 2 * CYCLE_EVENTS  # spooled records kept in memory for producing; beyond, read back from disk
WARN_EVERY_S = 60.0  # repeated trouble (drops, spool write failures) is logged at most this often
MISSING_TOPIC_RETRY_S = 2.0  # records refused for a topic Kafka does not have are handed over again this often


@dataclass(frozen=True)
class PublisherOptions:
    linger_s: float = 0.05  # how often the background thread wakes
    max_queue_events: int = 100_000  # in memory before the spool; beyond it publish() drops and counts
    spool_max_bytes: int = 1 << 30  # past it the oldest spooled events are dropped, counted and logged
    segment_bytes: int = 16 << 20
    fsync_interval_s: float = 1.0  # 0: fsync every write
    kafka_buffer_kbytes: int = 32 << 10  # librdkafka's in-memory queue


class Publisher:
    def __init__(self, settings: Settings, *, spool_dir: Path, client_id: str = "trainmon",
                 options: PublisherOptions | None = None, producer_config: dict[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self.options = options or PublisherOptions()
        self.spool = self._open_spool(Path(spool_dir))
        self._names = [topic_name(topic, settings.kafka_topic_prefix) for topic in TOPICS]
        self._producer = Producer(kafka_client.config(
            settings,
            **{"client.id": client_id,
            "enable.idempotence": True,  # implies acks=all; retries cannot duplicate or reorder
            "compression.type": "lz4",
            # The Java/aiokafka partitioner, so a run's events and what the Faust processors re-key
            # by run land on the same partition number (librdkafka's default hashes differently).
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "message.timeout.ms": 0,  # retry forever: the spool, not a timer, bounds what is held
            "queue.buffering.max.kbytes": self.options.kafka_buffer_kbytes,
            "queue.buffering.max.messages": 100_000,
            "reconnect.backoff.max.ms": 2000,
            "error_cb": self._on_error,
            "logger": _QuietKafkaLog(),  # state changes are reported once each by _on_error instead
            **(producer_config or {})}))
        self._queue: deque[dict] = deque()
        self._max_queue = self.options.max_queue_events
        self._pause_below = self.options.max_queue_events // 2
        self._handled = 0  # events taken off the queue (spooled or refused)
        self._cycles = 0  # completed background cycles (flush waits on them)
        self._produced = self.spool.acked  # highest seq handed to librdkafka
        # Spooled seqs handed to librdkafka and not yet retired, in order, and those of them delivered
        # (partitions acknowledge out of order). The watermark is the last of a delivered prefix, so
        # both stay as small as what librdkafka holds, and seqs the spool no longer has are never awaited.
        self._inflight: deque[int] = deque()
        self._delivered: set[int] = set()
        self._missing: set[int] = set()  # in flight, refused for a topic Kafka does not have
        self._missing_retry_at = 0.0
        self._fresh: list[Record] = []  # just spooled, not yet produced: spares a read back from disk
        self._unspooled: deque[tuple[int, bytes, bytes]] = deque()  # the spool failed: produced from memory
        self._direct_inflight = 0  # of those, handed to librdkafka and not yet reported
        self._seqs: dict[str, Any] = {}  # producer id -> itertools.count
        self._counts = {"queue_dropped": 0, "kafka_refused": 0, "abandoned": 0, "refused": 0, "delivered": 0,
                        "replayed": 0, "unspooled": 0}
        self._warned_at: dict[str, float] = {}
        self._warn_counts: dict[str, int] = {}
        self._kafka_down = False
        self._closing = False
        self._close_deadline = 0.0
        self._wake = threading.Event()
        if self.spool.pending:
            log.info("trainmon: replaying %d events spooled in %s by an earlier process", self.spool.pending, self.spool.dir)
            self._counts["replayed"] = self.spool.pending
        self._thread = threading.Thread(target=self._run, name="trainmon-publisher", daemon=True)
        self._thread.start()

    def _open_spool(self, directory: Path) -> Spool:
        options = self.options
        kwargs = dict(max_bytes=options.spool_max_bytes, segment_bytes=options.segment_bytes,
                      fsync_interval_s=options.fsync_interval_s)
        try:
            return Spool(directory, **kwargs)
        except SpoolLocked:
            mine = directory.with_name(f"{directory.name}.{os.getpid()}")
            log.warning("trainmon: spool %s is used by another live process; using %s", directory, mine)
            return Spool(mine, **kwargs)

    # --- the caller's side: cheap, never raises ---------------------------------------------------

    assigns_seq = True  # events with a `producer` get their `seq` on this publisher's thread, in order

    def publish(self, event: dict) -> bool:
        if self._closing or len(self._queue) >= self._max_queue:
            self._drop_published()
            return False
        self._queue.append(event)
        return True

    def _drop_published(self) -> None:
        """An event refused at a full memory queue (or after close): counted, warned once, then at
        most once a minute with the count."""
        self._counts["queue_dropped"] += 1
        if self._closing:
            return
        now = time.monotonic()
        if now < self._warned_at.get("queue", -WARN_EVERY_S) + WARN_EVERY_S:
            return
        first = "queue" not in self._warned_at
        self._warned_at["queue"] = now
        message = (f"trainmon: the publisher's memory queue is full ({self._max_queue} events: the spool and "
                   f"Kafka cannot keep up); events are being dropped, {self._counts['queue_dropped']} so far "
                   f"(the count is in every heartbeat as `dropped`)")
        log.warning(message)
        if first:
            try:
                from trainmon import TrainmonWarning

                warnings.warn(message, TrainmonWarning, stacklevel=4)
            except Exception:
                pass

    def _warn_limited(self, kind: str, message: str, *args: Any) -> None:
        """Once, then at most once a minute, with how often it happened since."""
        self._warn_counts[kind] = self._warn_counts.get(kind, 0) + 1
        now = time.monotonic()
        if now < self._warned_at.get(kind, -WARN_EVERY_S) + WARN_EVERY_S:
            return
        self._warned_at[kind] = now
        log.warning(message + " (%d times in the last minute)", *args, self._warn_counts.pop(kind))

    @property
    def dropped(self) -> int:
        """Events lost for good so far, whatever the cause: refused at a full memory queue, removed by
        the spool's size cap before they were sent, refused by Kafka for good, left in memory at close."""
        counts = self._counts
        return counts["queue_dropped"] + counts["kafka_refused"] + counts["abandoned"] + self.spool.lost

    def _idle(self) -> bool:
        """Everything taken in so far is delivered."""
        return not self._queue and self.spool.pending == 0 and not self._unspooled and self._direct_inflight == 0

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything published before this call is delivered to Kafka.

        Two whole background cycles after the call have moved every earlier event to the spool;
        then nothing pending on disk means it was all delivered."""
        start = self._cycles
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._thread.is_alive():
            self._wake.set()
            if self._cycles >= start + 2 and self._idle():
                return True
            time.sleep(0.005)
        return self._idle()

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within timeout_s; the rest stays spooled for the next process."""
        if self._closing:
            return
        self._close_deadline = time.monotonic() + timeout_s
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s + 2.0)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "published": self._handled + len(self._queue),
            "queued": len(self._queue),
            "spooled_events": self.spool.pending,
            "spooled_bytes": self.spool.size,
            "spool_dropped": self.spool.lost,
            "in_flight": len(self._inflight) + self._direct_inflight,
            **self._counts,
            "dropped": self.dropped,
        }

    # --- the background thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.wait(self.options.linger_s)
            self._wake.clear()
            try:
                self._cycle()
            except Exception:  # never let the thread die: the caller's data is at stake
                log.exception("trainmon: publisher cycle failed; retrying")
                time.sleep(self.options.linger_s)
            self._cycles += 1
            if self._closing:
                if self._idle() or time.monotonic() >= self._close_deadline:
                    break
                self._producer.flush(0.05)
        self._shutdown()

    def _cycle(self) -> None:
        self._spool_queued()
        self._produce()
        self._producer.poll(0)
        self._advance()

    def _spool_queued(self) -> None:
        """Encode and spool what was queued when the cycle began (at most CYCLE_EVENTS): a caller that
        keeps publishing must not keep this cycle from ever reaching the spool and Kafka."""
        queue = self._queue
        seqs = self._seqs
        left = min(len(queue), CYCLE_EVENTS)
        while left:
            if len(self._unspooled) >= self._max_queue:  # the spool fails and Kafka is slow: memory is full,
                return                                   # so the queue fills and publish() counts the drops
            records = []
            size = min(SLICE_EVENTS, left)
            left -= size
            for _ in range(size):
                event = queue.popleft()
                self._handled += 1  # right after the pop: stats' published = handled + queued stays exact
                try:
                    producer = event.get("producer")
                    if producer is not None and "seq" not in event:  # before encoding: a re-send is identical
                        counter = seqs.get(producer)
                        if counter is None:
                            counter = seqs[producer] = itertools.count()
                        event["seq"] = next(counter)
                    records.append((KIND_CODE[event["kind"]], partition_key(event), encode(event)))
                except (ContractError, KeyError, TypeError, AttributeError) as exc:
                    self._refuse(event, exc)
            if records:
                self._write(records)
            if left:
                self._pause()

    def _write(self, records: list[tuple[int, bytes, bytes]]) -> None:
        """Spool the records; if the spool cannot be written, keep them in memory to be produced
        directly, in order after everything spooled before them."""
        if not self._unspooled:
            try:
                first, last = self.spool.append(records)
            except OSError as exc:
                self._warn_limited("spool", "trainmon: cannot write the spool %s (%s): events go to Kafka "
                                   "directly, without the disk's protection; %d so far", self.spool.dir, exc,
                                   self._counts["unspooled"] + len(records))
            else:
                fresh = self._fresh
                if (fresh[-1].seq if fresh else self._produced) == first - 1:
                    if len(fresh) + len(records) <= FRESH_MAX_EVENTS:
                        fresh.extend(Record(seq, *record) for seq, record in zip(range(first, last + 1), records))
                    else:  # Kafka is behind: the rest is read back from disk instead of held twice
                        self._fresh = []
                return
        self._counts["unspooled"] += len(records)
        self._unspooled.extend(records)

    def _pause(self) -> None:
        """Hand the GIL to the training thread between slices, unless memory is at stake."""
        if len(self._queue) < self._pause_below:
            time.sleep(SLICE_PAUSE_S)

    def _refuse(self, event: Any, exc: Exception) -> None:
        self._counts["refused"] += 1
        if self._counts["refused"] <= 10 or self._counts["refused"] % 1000 == 0:
            log.warning("trainmon: event refused (%s), %d so far: %.200r", exc, self._counts["refused"], event)

    def _produce(self) -> None:
        spool = self.spool
        if self._produced < spool.acked:  # the size cap dropped what we had not produced yet
            self._produced = spool.handed = spool.acked
            self._fresh = []
        inflight = self._inflight
        if time.monotonic() < self._missing_retry_at or (self._missing and not self._retry_missing()):
            return
        while self._produced < spool.last_seq:
            fresh = self._fresh
            batch = fresh if fresh and fresh[0].seq == self._produced + 1 else spool.read(self._produced + 1, REPLAY_CHUNK)
            self._fresh = []
            if not batch:
                self._produced = spool.handed = spool.last_seq  # nothing on disk past here (seqs skipped at open)
                break
            for index, record in enumerate(batch):
                try:
                    self._producer.produce(self._names[record.topic], record.value, record.key,
                                           on_delivery=partial(self._on_delivery, record.seq))
                except (BufferError, KafkaException) as exc:  # queue full (Kafka slow or down), or no topic
                    self._held_back(exc, record)
                    self._fresh = batch[index:] if batch[index].seq == self._produced + 1 else []
                    return
                inflight.append(record.seq)
                self._produced = spool.handed = record.seq
                if index % PRODUCE_SLICE_EVENTS == PRODUCE_SLICE_EVENTS - 1:
                    self._pause()
        unspooled = self._unspooled
        produced = 0
        while unspooled:  # only once everything spooled before them is handed over: order holds
            topic, key, value = unspooled[0]
            try:
                self._producer.produce(self._names[topic], value, key, on_delivery=self._on_direct_delivery)
            except BufferError:
                return
            unspooled.popleft()
            self._direct_inflight += 1
            produced += 1
            if produced % PRODUCE_SLICE_EVENTS == 0:
                self._pause()

    def _retry_missing(self) -> bool:
        """Hand the records refused for a missing topic over again, once nothing else is in flight (a
        later record of that topic must not overtake them). False while they wait: nothing newer is
        produced meanwhile."""
        missing, delivered = self._missing, self._delivered
        if len(self._inflight) > len(delivered) + len(missing):  # both are parts of _inflight: some unreported
            return False
        wanted, last = set(missing), max(missing)
        seq = min(missing)
        while wanted and seq <= last:
            batch = self.spool.read(seq, REPLAY_CHUNK)
            if not batch:
                break
            for record in batch:
                if record.seq in wanted:
                    try:
                        self._producer.produce(self._names[record.topic], record.value, record.key,
                                               on_delivery=partial(self._on_delivery, record.seq))
                    except (BufferError, KafkaException) as exc:  # the rest later
                        self._held_back(exc, record)
                        return False
                    wanted.discard(record.seq)
                    missing.discard(record.seq)
            seq = batch[-1].seq + 1
        for gone in wanted:  # the spool's size cap removed them meanwhile: counted as lost there
            missing.discard(gone)
            delivered.add(gone)
        return True

    def _held_back(self, exc: BufferError | KafkaException, record: Record) -> None:
        """produce() did not take the record: its queue is full (it is tried again next cycle), or
        Kafka has no such topic (see _topic_missing). Any other KafkaException is raised again: the
        cycle logs it and retries."""
        if isinstance(exc, KafkaException):
            if exc.args[0].code() not in _MISSING_TOPIC_CODES:
                raise exc
            self._topic_missing(self._names[record.topic], exc.args[0])

    def _topic_missing(self, topic: str, err: Any) -> None:
        """Kafka has no such topic (yet): hold everything for MISSING_TOPIC_RETRY_S."""
        self._missing_retry_at = time.monotonic() + MISSING_TOPIC_RETRY_S
        self._warn_limited("missing_topic", "trainmon: Kafka has no topic %s (%s): its events stay in the spool "
                           "%s and are sent once it exists; create it with `trainmon topics create`",
                           topic, err.str(), self.spool.dir)

    def _on_delivery(self, seq: int, err: Any, message: Any) -> None:
        if err is not None and err.code() in _MISSING_TOPIC_CODES:
            self._missing.add(seq)
            self._topic_missing(message.topic(), err)
            return
        self._report(err)
        self._delivered.add(seq)

    def _on_direct_delivery(self, err: Any, _message: Any) -> None:
        self._direct_inflight -= 1
        self._report(err)

    def _report(self, err: Any) -> None:
        if err is not None:  # message.timeout.ms=0: only permanent errors get here
            self._counts["kafka_refused"] += 1
            log.error("trainmon: Kafka refused an event for good (%s); it is dropped", err.str())
        else:
            self._counts["delivered"] += 1
            if self._kafka_down:
                self._kafka_down = False
                log.warning("trainmon: Kafka reachable again; replaying %d spooled events", self.spool.pending)

    def _on_error(self, err: Any) -> None:
        if not self._kafka_down and err.code() in _DOWN_CODES:
            self._kafka_down = True
            log.warning("trainmon: Kafka unreachable (%s); events are spooled to %s and sent when it is back",
                        err.str(), self.spool.dir)

    def _advance(self) -> None:
        """Retire the delivered prefix of what is in flight and move the watermark to its end; the
        spool makes the watermark durable on its own timer."""
        inflight, delivered = self._inflight, self._delivered
        acked = None
        while inflight and inflight[0] in delivered:
            acked = inflight.popleft()
            delivered.discard(acked)
        if acked is not None:
            self.spool.ack(acked)
        else:
            self.spool.maintain()

    def _shutdown(self) -> None:
        try:
            while self._queue and len(self._unspooled) < self._max_queue:  # publish() refuses by now
                self._spool_queued()  # whatever is still queued is at least on disk for the next process
            self._producer.poll(0)
            self._advance()
        except Exception:
            log.exception("trainmon: publisher shutdown failed; undelivered events stay spooled")
        finally:
            # What only memory holds is lost now: records never spooled, and records librdkafka holds
            # whose segment the size cap removed (the spool can no longer re-send them).
            acked = self.spool.acked
            abandoned = len(self._unspooled) + max(0, self._direct_inflight) + len(self._queue) + sum(
                1 for seq in self._inflight if seq <= acked and seq not in self._delivered)
            if abandoned:
                self._counts["abandoned"] += abandoned
                log.warning("trainmon: %d events held only in memory were not delivered before close and are "
                            "lost (%d dropped in all)", abandoned, self.dropped)
            self.spool.close()
            if self.spool.pending:
                log.warning("trainmon: %d events not delivered yet stay in %s for the next start",
                            self.spool.pending, self.spool.dir)


class _QuietKafkaLog:
    """librdkafka logs every failed reconnect; in a training job's output that is noise every few
    seconds, so its lines go to the `trainmon.kafka` logger at DEBUG."""

    _log = logging.getLogger("trainmon.kafka")

    def log(self, _level: int, message: str, *args: Any) -> None:
        self._log.debug(message, *args)


def _down_codes() -> frozenset[int]:
    """Errors that mean no event can get through. Not _TRANSPORT: it is one broker's connection, and
    with one broker of three down the others take over its partitions while events keep flowing."""
    from confluent_kafka import KafkaError

    return frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE})


_DOWN_CODES = _down_codes()


def _missing_topic_codes() -> frozenset[int]:
    """Errors that mean the topic (or its partition) does not exist yet: the broker's and librdkafka's."""
    from confluent_kafka import KafkaError

    return frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION})


_MISSING_TOPIC_CODES = _missing_topic_codes()
