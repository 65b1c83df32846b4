"""What the processors do with a batch, as plain synchronous code (run in one worker thread).

All state lives per source partition (stream_processors/partition.py) and is owned by the worker the
partition is assigned to: `assign` restores it from its latest snapshot, `snapshot` turns what
changed into bytes for the state topic, `revoke` hands it over. An event whose offset the state has
already applied (a replay from the committed offset after a crash) changes nothing; neither does a
re-sent one (its producer's seq is not new). The ClickHouse sink and the route dispatcher are per
worker. Everything runs in one thread, so no locks are needed and the event loop never blocks; only the
held rows' inserts run on a thread of their own (write_behind.py), so that no event waits for one.

Rows are held, not written per batch: `flush` hands them to the inserts at the first tick (once a
second) after the oldest has waited `insert_max_delay_s`, at every checkpoint, and when
`insert_max_rows` are held (or, while an insert is still running, three times that). At
rest that is one insert per table every 2 s, not one per batch of each topic, each making a part that
views and merges then work on; under load the row limit comes first, so inserts grow instead. Hardware
samples (system_samples, gpus) wait `hardware_insert_max_delay_s` (4.5 s), then go with the next
training flush (or alone if no training rows are held): each of their inserts feeds four views, and the
dashboard shows them on a 10 s refresh, so at rest they go every 6 s, with every third training insert
and never with one of their own. A snapshot first writes the rows no event's offset names (windows,
alerts, run snapshots: a replay would not make them again), then lists, per topic, the offsets of the
events whose raw rows are held or handed over but not known to be written; after a crash those events
are re-read, and their rows alone are written (`_rewrite`) unless ClickHouse has them (rows written
ahead of a snapshot are safe: a replay of their events is skipped by offset, sink.py). A full
snapshot also hands the held raw rows over, and its events are acked only once that write is done
(`written`, app.py); an alert's snapshot (`light`) leaves them held.

No exception on one event leaves the batch: it is dead-lettered with reason `internal_error` and
counted, and the rest of the batch goes on. Rows ClickHouse refuses for good are dead-lettered too,
and the pipeline raises its own alert about them (refusals.py).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterable, Mapping

from trainmon.stream_processors.config import PipelineConfig
from trainmon.stream_processors.membership import Lease
from trainmon.stream_processors.alerts import RUN_LOST, AlertBook
from trainmon.stream_processors.partition import PartitionState
from trainmon.stream_processors.refusals import RefusalNotices
from trainmon.stream_processors.rules.base import Condition
from trainmon.stream_processors.runs import raw_event_row
from trainmon.stream_processors.sink import Batch, ClickHouseSink, Source, utc
from trainmon.stream_processors.snapshots import SnapshotError, dumps, loads
from trainmon.stream_processors.write_behind import Refused, WriteBehind
from trainmon.contract import (DLQ_DETAIL, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC, ContractError,
                               Reason, Topic, check_topic, decode, validate)

log = logging.getLogger("trainmon.processors")

RUN_KINDS = frozenset({"run_start", "run_meta", "heartbeat", "run_end"})
INTERNAL_KINDS = {"run_hardware": frozenset({"run_hardware"}), "host_run_ends": frozenset({"run_end"}),
                  "incidents": frozenset({"alert"})}
STALE_PAGE_S = 3600.0  # alerts about events older than this are recorded but not paged (history replays)
# While an insert is still running, rows are held up to this many times insert_max_rows before the next
# is handed over: a worker behind the stream writes fewer, larger inserts (ClickHouse's CPU per value,
# merges included, a sixth less in bench/pipeline.py), one keeping up writes as before.
BUSY_INSERT_GROWTH = 3

DeadLetter = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Message:
    """The parts of a Kafka message the processing reads. Faust's messages have them too and are handed
    over as they are: making a copy of each was 3.9 % of the worker's samples at rest (py-spy at 086f634,
    bench/idle.py; some of it garbage collection, tuned since in worker.py)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Outcome:
    """What a batch asks the async side to send to Kafka afterwards. Alerts go to the alerts topic and
    the incident topic (or, without incidents, the routes), notifications to the routes, only once a
    snapshot covering the state that made them is durable."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    notifications: list[dict] = field(default_factory=list)  # of incidents (incidents.py)
    run_hardware: list[dict] = field(default_factory=list)  # re-keyed by run, for the stall rule
    host_run_ends: list[dict] = field(default_factory=list)  # run_end re-keyed by host, for node rules
    unowned: set[int] = field(default_factory=set)  # partitions read but no longer ours: do not ack
    all_written: bool = False  # a tick's: nothing held after it, so a checkpoint now inserts nothing


def run_hardware(event: Mapping[str, Any]) -> list[dict]:
    """System sample -> one GPU-busyness summary per run on the node, re-keyed by run (stall rule).
    Where the sample lists processes, each summary names the run's `pids` still alive there: a rank
    whose process is gone is dead even inside a declared pause (heartbeat_lost)."""
    gpus = [g["figures"]["util_percent"] for g in event.get("gpus") or () if "util_percent" in g["figures"]]
    if not gpus or not event.get("runs"):
        return []
    busy = statistics.fmean(gpus)
    processes = event.get("processes")
    out = [{"v": 1, "kind": "run_hardware", "run": run, "host": event["host"], "time": event["time"],
            "gpu_util_percent": busy, "gpus": len(gpus)} for run in event["runs"]]
    if processes:
        for summary in out:
            summary["pids"] = [p["pid"] for p in processes if p.get("run") == summary["run"]]
    return out


def _internal(raw: bytes, source: str) -> dict:
    """The processors' re-keyed topics are validated like the agents' ones: a forged message there is
    dead-lettered, it does not reach a rule with the wrong types."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ContractError(Reason.MALFORMED, f"not JSON ({str(exc)[:80]})") from None
    if type(event) is not dict or event.get("kind") not in INTERNAL_KINDS[source]:
        raise ContractError(Reason.UNKNOWN_KIND, f"expected {', '.join(INTERNAL_KINDS[source])}", "kind")
    if event["kind"] in ("run_end", "alert"):
        return validate(event)
    for name, kind in (("run", str), ("host", str), ("time", (int, float)), ("gpu_util_percent", (int, float))):
        if not isinstance(event.get(name), kind) or isinstance(event.get(name), bool):
            raise ContractError(Reason.WRONG_TYPE, "missing or wrong type", name)
    if not 0.0 <= event["gpu_util_percent"] <= 100.0 or not 0 < event["time"] < 32503680000:
        raise ContractError(Reason.INVALID_VALUE, "out of range", "gpu_util_percent/time")
    pids = event.get("pids")  # optional: only where the sample listed processes
    if pids is not None:
        if type(pids) is not list or not all(type(pid) is int for pid in pids):
            raise ContractError(Reason.WRONG_TYPE, "expected a list of integers", "pids")
        if len(pids) > 1024 or not all(0 <= pid <= 2**32 - 1 for pid in pids):  # as a sample's processes
            raise ContractError(Reason.INVALID_VALUE, "at most 1024 pids, each 0..2**32-1", "pids")
    return event


class Processing:
    def __init__(self, pipeline: PipelineConfig, sink: ClickHouseSink, dispatcher: Any = None,
                 deliveries: deque | None = None, *, group: str = "trainmon-processors",
                 lost_after_s: float = 900.0, lateness_s: float = 10.0, insert_max_rows: int = 100_000,
                 insert_max_delay_s: float = 1.5, hardware_insert_max_delay_s: float = 4.5,
                 window_idle_s: float = 20.0, topics: Mapping[str, Topic] | None = None,
                 snapshot_loader: Callable[[int], list[bytes]] | None = None, writes: Executor | None = None,
                 lease: Lease | None = None) -> None:
        """writes: where the held rows' inserts run, one at a time (the worker's thread for them; default
        inline: written as they are handed over). lease: the worker's group membership, which every write
        and checkpoint must hold (membership.py; default none: always held)."""
        self.pipeline = pipeline
        self.sink = sink
        self.dispatcher = dispatcher
        self.deliveries = deque() if deliveries is None else deliveries  # filled by the dispatcher's thread
        self.group = group
        self.lost_after_s = lost_after_s
        self.lateness_s, self.window_idle_s = lateness_s, window_idle_s
        self.snapshot_loader = snapshot_loader  # partition -> its latest snapshots in the state topic
        self.partitions: dict[int, PartitionState] = {}
        self.released: set[int] = set()  # revoked: events read for them are not ours to process
        self.generation = 0  # of the consumer group, at the latest assignment
        self.lease, self.membership = lease, 0  # the generation the partitions were assigned in
        self.topic_keys: dict[str, str] = {}  # topic name -> name#id, offsets' key (topic_ids.py)
        self.topics = dict(topics or {})  # Kafka name -> the agents' topic it is: its kinds only (check_topic)
        self.counts: Counter[str] = Counter()
        self.refusals = RefusalNotices(AlertBook(pipeline.repeat_interval_s, pipeline.dashboard_url))
        self.unreleased: list[dict] = []  # alerts made since the last snapshot: see release()
        self.unnotified: list[dict] = []  # incident notifications made since the last snapshot
        self.insert_max_rows, self.insert_max_delay_s = insert_max_rows, insert_max_delay_s
        self.hardware_insert_max_delay_s = hardware_insert_max_delay_s
        self.held = Batch()  # rows not written yet: see flush()
        self.held_since = 0.0  # wall time the oldest held row was held
        self.held_hardware = Batch()  # system_samples and gpus rows not written yet, on their own delay
        self.hardware_since = 0.0
        self.held_sources: dict[Source, Message] = {}
        self.refused: list[DeadLetter] = []  # rows ClickHouse refused at a flush, to dead-letter: see take_refused()
        self.writes = WriteBehind(lambda batch, **options: self.sink.write(batch, **options), writes)  # beside the handling

    # --- ownership ----------------------------------------------------------------------------------

    def assign(self, partitions: Iterable[int], generation: int = 0, topic_keys: Mapping[str, str] | None = None) -> None:
        """generation: the consumer group's, which orders this owner's snapshots after any a former
        owner of the partition may still write late. topic_keys: name -> name#id of the topics read."""
        self.generation = max(self.generation, generation)
        self.membership = generation  # not the max: a group deleted and made again starts from 1
        if topic_keys:
            if any(self.topic_keys.get(name, key) != key for name, key in topic_keys.items()):
                log.warning("a topic was re-created (new id): %s; its offsets start afresh", topic_keys)
            self.topic_keys.update(topic_keys)
        for partition in partitions:
            self.released.discard(partition)
            self._owned(partition)

    def _owned(self, partition: int) -> PartitionState | None:
        state = self.partitions.get(partition)
        if state is None and partition not in self.released:
            state = self.partitions[partition] = self._restore(partition)
        return state

    def _fresh(self, partition: int) -> PartitionState:
        state = PartitionState(partition, self.pipeline, lateness_s=self.lateness_s, window_idle_s=self.window_idle_s)
        state.version = (self.generation, 0)
        return state

    def _restore(self, partition: int) -> PartitionState:
        state = self._fresh(partition)
        best: tuple[tuple[int, int], Any] | None = None
        for data in self.snapshot_loader(partition) if self.snapshot_loader else ():
            try:
                found = loads(data, self.group, partition)
            except SnapshotError as exc:
                self.counts["snapshot.unusable"] += 1
                log.warning("partition %d: skipping a snapshot: %s", partition, exc)
                continue
            if best is None or found[0] >= best[0]:  # on a tie the later one
                best = found
        if best is not None:
            try:
                state.restore(best[1], (max(self.generation, best[0][0]), best[0][1]))
                state.clock.resumed(time.time())
                self.counts["snapshot.restored"] += 1
                log.info("partition %d: state restored from snapshot %s (offsets %s)", partition, best[0],
                         state.applied)
            except Exception as exc:  # a snapshot of another version: start afresh, loudly
                log.error("partition %d: snapshot %s not restorable (%s); starting from empty state",
                          partition, best[0], exc)
                state = self._fresh(partition)
        return state

    def snapshot(self, partitions: Iterable[int] | None = None, *, light: bool = False) -> dict[int, bytes]:
        """Snapshots of the partitions whose state changed (or of those named), numbered on. The rows no
        event's offset names (alerts, incidents, windows, run snapshots) are written first; the raw rows
        are handed to the inserts (light, an alert's checkpoint: left held), and each snapshot lists the
        offsets of its partition's events whose rows are not known to be written, for a replay to write
        (handle). Ack events only once `written()` is done."""
        self._write(self.held.take_derived(), {})
        if not light:
            self.flush()
        held: dict[int, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))  # partition -> topic -> offsets
        for topic, partition, offset in chain(self.held.sources(), self.held_hardware.sources(), self.writes.sources()):
            held[partition][topic].add(offset)
        out = {}
        for partition in self.partitions if partitions is None else partitions:
            state = self.partitions.get(partition)
            if state is None or not (state.dirty or partitions is not None):
                continue
            state.version = (state.version[0], state.version[1] + 1)
            state.dirty = False
            out[partition] = dumps(self.group, partition, state.version, state.state(held.get(partition)))
        return out

    def release(self) -> tuple[list[dict], list[dict]]:
        """The alerts and incident notifications made since the previous call, to send once the
        snapshots taken with them (call it in the same thread step as `snapshot`, `revoke` or `close`)
        are durable: then nothing is sent whose state could be lost, and nothing is lost whose state
        says it was sent."""
        alerts, self.unreleased = self.unreleased, []
        notifications, self.unnotified = self.unnotified, []
        return alerts, notifications

    def revoke(self, partitions: Iterable[int]) -> dict[int, bytes]:
        """Partitions moved to another worker: snapshots of every changed partition, the final ones
        of those revoked (whose state is then dropped)."""
        partitions = [p for p in set(partitions) if p in self.partitions]
        self.write_all()  # the next owner reads the offset watermarks: every row in first
        final = self.snapshot()
        final.update(self.snapshot([p for p in partitions if p not in final]))
        for partition in partitions:
            del self.partitions[partition]
            self.released.add(partition)
        self.sink.forget(partitions)
        return final

    def hold_membership(self) -> None:
        """Returns while the group still gives this worker its partitions; raises MembershipLost once it
        does not (see `lose`). Waits while that is not known (membership.py)."""
        if self.lease is not None and self.partitions:
            self.lease.hold(self.membership)

    def lose(self, why: object) -> None:
        """The group gave the partitions away while this worker could not hear of it (frozen, cut off):
        their state, held rows and unsent alerts are dropped unwritten, as a worker killed now would
        lose them; their next owner restores the last snapshot and re-reads the rest. Writes already
        handed over fail on their own (their generation is gone), so no event behind them is acked."""
        partitions = sorted(self.partitions)
        log.warning("partitions %s lost (%s): their held rows and unsent alerts are dropped; their next owner "
                    "re-reads them", partitions, why)
        self.counts["membership.lost"] += 1
        self.held, self.held_hardware, self.held_sources = Batch(), Batch(), {}
        self.unreleased, self.unnotified = [], []
        for partition in partitions:
            del self.partitions[partition]
            self.released.add(partition)
        self.sink.forget(partitions)

    def _admission(self) -> dict[str, Callable[[], None]]:
        """The sink's write options: with a lease, `admit` holds it for this assignment's generation."""
        if self.lease is None:
            return {}
        lease, generation = self.lease, self.membership
        return {"admit": lambda: lease.hold(generation)}

    # --- a batch from one topic ---------------------------------------------------------------------

    def handle(self, messages: Iterable[Message], source: str = "contract") -> Outcome:
        """A batch from one topic. source: `contract` (agents' topics), or the processors' own internal
        topics `run_hardware` (by run), `host_run_ends` (by host) and `incidents` (released alerts, to
        the incident book): validated, not written."""
        outcome, wall = Outcome(), time.time()
        batches: dict[int, Batch] = {}  # per partition: rows to write, which feed its windows too
        replays: dict[int, Batch] = {}  # events new to the state whose rows ClickHouse already has: windows only
        rewrites = Batch()  # events in the state whose rows ClickHouse has not: rows only (see _rewrite)
        newest: dict[tuple[int, str], float | None] = {}  # (partition, topic) -> newest event time read
        sources: dict[Source, Message] = {}
        for message in messages:
            state = self._owned(message.partition)
            if state is None:
                outcome.unowned.add(message.partition)
                continue
            topic = self.topic_keys.get(message.topic, message.topic)  # name#id: see topic_ids.py
            newest.setdefault((message.partition, message.topic), None)  # read, if only a replay: not idle
            if message.offset <= state.applied.get(topic, -1):
                self.counts["replayed"] += 1  # already in the restored state, and written unless listed
                self._rewrite(state, (topic, message.partition, message.offset), message, rewrites, sources)
                continue
            if state.unwritten:  # past the restored snapshot on this topic: no more replays
                state.unwritten.pop(topic, None)
            state.applied[topic] = message.offset
            state.dirty = True
            try:
                if source == "contract":
                    event = decode(message.value)
                    expected = self.topics.get(message.topic)
                    if expected is not None:
                        check_topic(event, expected)
                else:
                    event = _internal(message.value, source)
            except ContractError as error:
                self._dead_letter(outcome, message, error.reason.value, str(error))
                continue
            self.counts[event["kind"]] += 1
            if source == "contract" and state.resent(event, message.topic):
                self.counts["resent"] += 1
                continue
            src = (topic, message.partition, message.offset)
            written = source == "contract" and self.sink.skip(*src)
            batch = (replays if written else batches).get(message.partition)
            if batch is None:
                batch = (replays if written else batches)[message.partition] = Batch()
            try:
                self._route(state, event, src, batch, outcome, source, wall)
            except Exception as exc:  # a bug or an event no rule expected: this event only
                if self.counts["dead_letter.internal_error"] % 1000 == 0:  # the first, then every 1000th
                    log.exception("partition %d offset %d: processing failed; dead-lettered as internal_error",
                                  message.partition, message.offset)
                self._dead_letter(outcome, message, "internal_error", f"{type(exc).__name__}: {exc}")
                continue
            if event["time"] > (newest[message.partition, message.topic] or 0.0):
                newest[message.partition, message.topic] = event["time"]
            sources[src] = message
        for (partition, topic), time_read in newest.items():
            self.partitions[partition].clock.observe(topic, time_read, wall)
        merged = rewrites
        for partition in batches.keys() | replays.keys():
            state = self.partitions[partition]
            for batch in filter(None, (batches.get(partition), replays.get(partition))):
                state.windows.add_metrics(batch.metric, wall)
                state.windows.add_system(batch.system, wall)
            if partition in batches:
                merged.merge(batches[partition])
        self._alert_rows(merged, outcome.alerts)
        self.unreleased.extend(outcome.alerts)
        self._incident_rows(merged, outcome.notifications)
        self._hold(merged, sources)
        return outcome

    def _route(self, state: PartitionState, event: dict, src: Source, batch: Batch, outcome: Outcome,
               source: str, wall: float) -> None:
        if source == "incidents":
            self._correlate(state, event, outcome, wall)
            return
        kind = event["kind"]
        now = max(state.clock.now, min(event["time"], wall + state.clock.max_future_s))
        if source == "host_run_ends":
            outcome.alerts.extend(state.engines["host"].on_event(event, now))
            return
        if kind == "system":
            outcome.alerts.extend(state.engines["host"].on_event(event, now))
            outcome.run_hardware.extend(run_hardware(event))
            add_rows(event, src, batch)
            return
        alerts = state.engines["run"].on_event(event, now)
        if kind in RUN_KINDS or kind == "metrics":
            state.book.observe(event)
            add_rows(event, src, batch)
            if kind == "run_end":
                outcome.host_run_ends.append(event)
        outcome.alerts.extend(alerts)

    def _rewrite(self, state: PartitionState, src: Source, message: Message, batch: Batch,
                 sources: dict[Source, Message]) -> None:
        """A replayed event the restored state has, whose rows its snapshot listed as held (taken by an
        alert's checkpoint): its rows, unless ClickHouse got them before the crash; rules and windows
        have it already."""
        pending = state.unwritten.get(src[0])
        if not pending or src[2] not in pending:
            return
        pending.discard(src[2])
        if self.sink.skip(*src):
            return
        add_rows(decode(message.value), src, batch)
        sources[src] = message
        self.counts["rewritten"] += 1

    def _correlate(self, state: PartitionState, alert: dict, outcome: Outcome, wall: float) -> None:
        """A released alert into the incident book (a stale one is recorded, not paged)."""
        if not self._pageable(alert, wall):
            return
        if state.incidents is None:  # the pipeline dropped its `incidents` section: route it alone
            outcome.notifications.append(alert)
        else:
            outcome.notifications.extend(state.incidents.add(alert, wall))

    def _incident_rows(self, batch: Batch, notifications: list[dict]) -> None:
        self.counts["incident.notified"] += len(notifications)
        self.unnotified.extend(notifications)
        batch.add("incidents", (incident_row(n) for n in notifications if "incident" in n))

    def _alert_rows(self, batch: Batch, alerts: list[dict]) -> None:
        for alert in alerts:
            self.counts[f"alert.{alert['state']}"] += 1
        batch.add("alerts", (alert_row(a) for a in alerts))

    def _hold(self, batch: Batch, sources: Mapping[Source, Message]) -> None:
        if not batch:
            return
        hardware, now = batch.take_hardware(), time.time()
        if batch:
            if not self.held:
                self.held_since = now
            self.held.merge(batch)
        if hardware:
            if not self.held_hardware:
                self.hardware_since = now
            self.held_hardware.merge(hardware)
        self.held_sources.update(sources)
        held_rows = sum(b.values + sum(map(len, b.rows.values())) for b in (self.held, self.held_hardware))
        if held_rows >= self.insert_max_rows * (BUSY_INSERT_GROWTH if self.writes.busy() else 1):
            self.flush()

    def written(self) -> Future:
        """Done once every row handed over so far is in ClickHouse or refused (`take_refused`)."""
        return self.writes.barrier()

    def write_all(self) -> None:
        """Every held row written, or refused, when this returns."""
        self.flush()
        self.writes.wait()

    def flush(self, hardware: bool = True) -> None:
        """Hand the held rows to the inserts (write_behind.py: waits only while two writes are not done);
        those ClickHouse refuses for good wait for `take_refused` (sink.py retries transient errors).
        hardware=False leaves the hardware rows held: they come from the system topic's partitions only
        (check_topic), whose offset watermarks no other insert moves."""
        batch, self.held = self.held, Batch()
        if hardware:
            batch.merge(self.held_hardware)
            self.held_hardware = Batch()
        if not batch:
            return
        sources = self.held_sources
        if hardware:  # else kept for the hardware rows still held; these go at the next full flush
            self.held_sources = {}
        self.writes.submit(batch, sources, **self._admission())

    def _write(self, batch: Batch, sources: Mapping[Source, Message]) -> None:
        """Write a batch now, in this thread, beside any write handed over."""
        if batch:
            self._refuse([(sources.get(source), reason)
                          for source, reason in self.sink.write(batch, **self._admission())])

    def _refuse(self, refused: Refused) -> None:
        """Rows ClickHouse refused for good: dead-lettered by their messages."""
        for message, reason in refused:
            self.counts["rejected_by_clickhouse"] += 1
            if message is not None:
                self.refused.append(_dead_letter(message, "rejected", reason))
                self.counts["dead_letter.rejected"] += 1

    def take_refused(self) -> list[DeadLetter]:
        """The dead letters of refused rows since the last call, of the writes done by then: to send
        before their events are acked."""
        self._refuse(self.writes.take_refused())
        refused, self.refused = self.refused, []
        return refused

    def _dead_letter(self, outcome: Outcome, message: Message, reason: str, detail: str) -> None:
        outcome.dead_letters.append(_dead_letter(message, reason, detail))
        self.counts[f"dead_letter.{reason}"] += 1

    def dispatch(self, alerts: Iterable[dict], wall: float | None = None) -> None:
        """Hand alerts or incident notifications to the routes, once their snapshot is durable."""
        wall = time.time() if wall is None else wall
        for alert in alerts:
            if self._pageable(alert, wall) and self.dispatcher is not None:
                self.dispatcher.submit(alert)

    def _pageable(self, alert: Mapping[str, Any], wall: float) -> bool:
        """Alerts about events older than STALE_PAGE_S (a new consumer group reading history) are
        recorded, not paged."""
        if alert["state"] == "firing" and wall - alert["time"] > STALE_PAGE_S:
            self.counts["alert.not_paged_stale"] += 1
            return False
        return True

    # --- the clock ----------------------------------------------------------------------------------

    def tick(self, progress: Mapping[tuple[str, int], tuple[int, float]] | None = None) -> Outcome:
        """Time-based rules, lost runs, window closing and run snapshots, per partition on its own
        clock; about once a second. progress: per (topic, partition) read, Kafka's high watermark and
        the wall time of the fetch that reported it (clock.py: how far each topic has been read)."""
        outcome, batch, wall = Outcome(), Batch(), time.time()
        for (topic, partition), (highwater, fetched) in (progress or {}).items():
            state = self.partitions.get(partition)
            if state is not None:
                state.clock.fetched(topic, fetched, highwater, state.applied.get(self.topic_keys.get(topic, topic), -1))
        for state in self.partitions.values():
            if not state.clock.events:
                continue  # nothing read yet: the partition has no time
            now = state.clock.advance(wall)
            before = len(outcome.alerts)
            for engine in state.engines.values():
                outcome.alerts.extend(engine.on_tick(now, state.clock.live, state.clock.live_since))
            if state.clock.live:
                self._lose_runs(state, now, outcome)
            rows = state.windows.close_due(now if state.clock.live else None, wall)
            batch.add("window_aggregates", rows)
            runs, ranks = state.book.snapshots(now)
            batch.add("runs", runs)
            batch.add("run_ranks", ranks)
            for project, run in state.book.expired(now):
                state.evict(run)
            if rows or runs or len(outcome.alerts) > before:
                state.dirty = True
        outcome.alerts.extend(self.refusals.due(dict(self.sink.refused), wall))  # a copy: the inserts count too
        self._alert_rows(batch, outcome.alerts)
        self.unreleased.extend(outcome.alerts)
        for state in self.partitions.values():
            if state.incidents is not None and state.incidents.open:
                notifications = state.incidents.tick(wall)
                state.dirty |= bool(notifications)
                outcome.notifications.extend(notifications)
        self._incident_rows(batch, outcome.notifications)
        while self.deliveries:
            batch.add("alert_deliveries", [self.deliveries.popleft()])
        self._hold(batch, {})
        training_due = bool(self.held) and wall - self.held_since >= self.insert_max_delay_s
        hardware_due = (bool(self.held_hardware) and wall - self.hardware_since >= self.hardware_insert_max_delay_s
                        and (training_due or not self.held))  # with the training rows: one insert less
        if training_due or hardware_due:
            self.flush(hardware=hardware_due)
        outcome.all_written = not (self.held or self.held_hardware)
        return outcome

    def _lose_runs(self, state: PartitionState, now: float, outcome: Outcome) -> None:
        for run in state.book.lose(now, self.lost_after_s):
            self.counts["runs_lost"] += 1
            engine = state.engines["run"]
            outcome.alerts.extend(engine.end_run(run.run, run.last_seen, now))
            outcome.alerts.append(engine.book.once(RUN_LOST, Condition(
                {"project": run.project, "run": run.run}, True, now, {"silent_s": now - run.last_seen}), now))
            for host, rank in {r.host: n for n, r in run.ranks.items()}.items():  # node rules stop watching it
                outcome.host_run_ends.append({"v": 1, "kind": "run_end", "project": run.project, "run": run.run,
                                              "rank": rank, "host": host, "time": run.last_seen, "status": "crashed"})

    def close(self) -> dict[int, bytes]:
        """Shutting down: run snapshots written, final state snapshots returned. Open windows stay open
        in the snapshot: whoever takes the partition over completes them."""
        batch, wall = Batch(), time.time()
        for state in self.partitions.values():
            runs, ranks = state.book.snapshots(max(state.clock.now, wall), force=True)
            batch.add("runs", runs)
            batch.add("run_ranks", ranks)
            state.dirty = True
        self._hold(batch, {})
        self.write_all()
        return self.snapshot()


def add_rows(event: Mapping[str, Any], src: Source, batch: Batch) -> None:
    """An event's own rows (metric values, hardware figures, run lifecycle events), named by its offset."""
    kind = event["kind"]
    if kind == "metrics":
        batch.add_metrics(event, *src)
    elif kind == "system":
        batch.add_system(event, *src)
    elif kind in RUN_KINDS and kind != "heartbeat":
        batch.add_run_event(raw_event_row(event), *src)


def alert_row(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {"fingerprint": alert["fingerprint"], "rule": alert["rule"], "state": alert["state"],
            "severity": alert["severity"], "project": alert.get("project") or "", "run": alert.get("run") or "",
            "labels": dict(alert["labels"]), "annotations": dict(alert.get("annotations") or {}),
            "values": {k: float(v) for k, v in (alert.get("values") or {}).items()},
            "starts_at": utc(alert["starts_at"]), "ends_at": utc(alert["ends_at"]) if alert.get("ends_at") else None,
            "time": utc(alert["time"])}


def incident_row(notification: Mapping[str, Any]) -> dict[str, Any]:
    members = notification["members"]
    annotations = notification.get("annotations") or {}
    return {"incident": notification["incident"], "state": notification["state"], "rule": notification["rule"],
            "severity": notification["severity"], "summary": annotations.get("summary", ""),
            "cause": annotations.get("cause", ""), "project": notification.get("project") or "",
            "run": notification.get("run") or "",
            "hosts": sorted({m["labels"]["host"] for m in members if m["labels"].get("host")}),
            "runs": sorted({m["labels"]["run"] for m in members if m["labels"].get("run")}),
            "members": [m["fingerprint"] for m in members], "member_rules": [m["rule"] for m in members],
            "members_total": notification["members_total"], "starts_at": utc(notification["starts_at"]),
            "ends_at": utc(notification["ends_at"]) if notification.get("ends_at") else None,
            "time": utc(notification["time"])}


def _dead_letter(message: Message, reason: str, detail: str) -> DeadLetter:
    headers = [(DLQ_REASON, reason.encode()), (DLQ_DETAIL, detail.encode()[:1000]),
               (DLQ_TOPIC, message.topic.encode()), (DLQ_PARTITION, str(message.partition).encode()),
               (DLQ_OFFSET, str(message.offset).encode())]
    return message.key, message.value, headers
