"""The trainmon stream processors as a Faust app, top to bottom: topics, batch handlers, checkpoints, timer.

One consumer group; run more workers (`trainmon process` on more machines) to split the partitions.
Each fetch's events of a topic come as one batch (kafka_consumer.py: no Faust stream or agent per
event) and go to the processing thread, which owns all state, per source partition. Offsets are
committed only behind a durable state snapshot:

1. a batch is processed, up to PIECE_EVENTS at a time (rules evaluated, its rows held for ClickHouse),
   and its events join the pending list; the once-a-second tick hands the held rows to a thread of
   their own that inserts them while the processing goes on (processing.py, write_behind.py);
2. a checkpoint (every `checkpoint_interval_s`, 5 s, at rest at the first tick after it that handed
   every held row over) writes the rows no event names (alerts, windows, run snapshots), hands the
   raw rows over, turns the changed partitions' state into snapshots, which list the offsets of the
   events whose rows are not written yet, sends them to the compacted state topic and waits for Kafka
   to acknowledge them (all partitions' at once). An alert's checkpoint, at once after a piece or a
   tick that raised alerts, leaves the raw rows held and acks nothing;
3. then the alerts are sent to the alerts topic and the routes: exactly those made before the
   snapshots were taken (taken together in the processing thread), so an alert that a snapshot
   records as sent is never lost, at shutdown either; so no alert waits for an insert of raw rows.
   With an `incidents` section in the pipeline, alerts go to the incident topic instead of the
   routes; its partition's owner groups them (incidents.py) and sends the incidents' notifications
   to the routes by the same rule: after the snapshot that records them;
4. once the rows handed over by then are written, the checkpoint's events are acked (so Faust may
   commit their offsets), after the dead letters of any rows ClickHouse refused.

A worker that dies loses at most what came after its last checkpoint; whoever takes its partitions
over restores the snapshot and re-reads from the committed offset, which the snapshot covers, so
every event is applied to the state exactly once and every alert is sent once.

`[processors] durable_state = false` (`trainmon process --no-durable-state`) runs the same code without
snapshots, to measure what the guarantee above costs: state is lost at every restart and rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust

from trainmon.stream_processors.checkpoint_cadence import CheckpointCadence
from trainmon.stream_processors.config import PipelineConfig
from trainmon.stream_processors.copartitioning import split_partitions
from trainmon.stream_processors.internal_topics import (HOST_RUN_ENDS, INCIDENT_ALERTS, INCIDENT_PARTITION, RUN_HARDWARE, STATE,
                                               internal_topic_name)
from trainmon.stream_processors.kafka_consumer import BatchHandler, ProcessorsTransport
from trainmon.stream_processors.membership import Lease, MembershipLost
from trainmon.stream_processors.processing import Outcome, Processing
from trainmon.stream_processors.sink import ClickHouseSink
from trainmon.stream_processors.state_topic import latest_snapshots
from trainmon.stream_processors.topic_ids import topic_keys
from trainmon.contract import Topic, encode, topic_name
from trainmon import kafka_client
from trainmon.settings import Settings

log = logging.getLogger("trainmon.processors")
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024  # the state topic's max.message.bytes (deploy/topics.py)
HEARTBEAT_INTERVAL_S = 1.0  # to the group coordinator; the session timeout must be several of these
PIECE_EVENTS = 500  # a fetch is handled this many events at a time: see in_pieces


async def in_pieces(events: list[Any], size: int, handle: Callable[[list[Any]], Awaitable[bool]],
                    checkpoint: Callable[[], Awaitable[None]]) -> None:
    """A fetch's events handled `size` at a time, with a checkpoint after each piece that raised alerts:
    alerts leave as soon as the state that made them is durable. Under load a fetch holds thousands of
    events, up to a second's work, and an alert early in it no longer waits for the rest (at rest a
    fetch is one piece)."""
    for start in range(0, len(events), size):
        if await handle(events[start:start + size]):
            await checkpoint()


def _data_parent(settings: Settings) -> Path:
    """Faust makes its (here empty: no Faust tables) data directory but not its parents."""
    parent = settings.home / "processors"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def create_app(settings: Settings, pipeline: PipelineConfig, dispatcher: Any, *,
               checkpoint_interval_s: float = 5.0, lost_after_s: float = 900.0) -> faust.App:
    """A worker as the [processors] settings say (trainmon/settings.py explains each). durable_state off:
    no state snapshots are written or read; checkpoints only ack events and release alerts (on the same
    schedule), and assigned partitions start from empty state: at-least-once processing that forgets all
    rule, window and run state at every restart or rebalance (for measuring what durability costs).
    session_timeout: how long the group waits for a silent worker before giving its partitions to the
    others (heartbeats go every HEARTBEAT_INTERVAL_S)."""
    group_id, batch_events, web_port = (settings.processors_group, settings.processors_batch_events,
                                        settings.processors_web_port)
    durable_state, session_timeout_s = settings.processors_durable_state, settings.processors_session_timeout
    if session_timeout_s < 3 * HEARTBEAT_INTERVAL_S:
        raise ValueError(f"session timeout of {session_timeout_s} s: at least three heartbeat intervals "
                         f"({3 * HEARTBEAT_INTERVAL_S:g} s)")
    app = faust.App(
        group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=kafka_client.faust_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=web_port is not None,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=web_port or 6066,
        store="memory://",
        datadir=str(_data_parent(settings) / "{conf.name}-data"),  # not the current directory
        table_standby_replicas=0,
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        broker_max_poll_records=batch_events,  # a fetch's records, the largest batch handled at once
        stream_wait_empty=False,  # pending events are acked by our own checkpoint, also on revoke
        producer_compression_type=None,  # snapshots, most of what it sends, are compressed already (snapshots.py)
        producer_max_request_size=MAX_SNAPSHOT_BYTES,
    )
    lease = Lease(session_timeout_s)  # renewed by the consumer's heartbeats: membership.py
    app.transport = ProcessorsTransport(app.conf.broker_consumer, app,  # before any topic: see its module
                                        fetch_max_wait_s=settings.processors_fetch_max_wait, lease=lease)
    state_topic_name = internal_topic_name(STATE, settings.kafka_topic_prefix)
    processing = Processing(
        pipeline, ClickHouseSink(settings), dispatcher, group=group_id, lost_after_s=lost_after_s,
        insert_max_rows=settings.processors_insert_max_rows, insert_max_delay_s=settings.processors_insert_max_delay,
        hardware_insert_max_delay_s=settings.processors_hardware_insert_max_delay,
        window_idle_s=settings.processors_window_idle,
        topics={topic_name(t, settings.kafka_topic_prefix): t for t in (Topic.METRICS, Topic.RUNS, Topic.SYSTEM)},
        snapshot_loader=(lambda partition: latest_snapshots(settings, state_topic_name, partition, group_id))
        if durable_state else (lambda partition: []),
        writes=ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmon-insert"), lease=lease)  # write_behind.py
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmon-processing")  # owns all state

    def topic(which: Topic) -> faust.TopicT:
        return app.topic(topic_name(which, settings.kafka_topic_prefix), key_type=bytes, value_type=bytes)

    metrics_topic, runs_topic, system_topic = topic(Topic.METRICS), topic(Topic.RUNS), topic(Topic.SYSTEM)
    alerts_topic, deadletter_topic = topic(Topic.ALERTS), topic(Topic.DEADLETTER)

    def internal(name: str) -> faust.TopicT:  # the processors' own topics, co-partitioned with the rest
        return app.topic(internal_topic_name(name, settings.kafka_topic_prefix), internal=True,
                         partitions=settings.kafka_partitions, key_type=bytes, value_type=bytes)

    run_hardware_topic = internal(RUN_HARDWARE)  # GPU busyness per run, for the stall rule
    host_run_ends_topic = internal(HOST_RUN_ENDS)  # run_end per host, for the node rules
    incident_topic = internal(INCIDENT_ALERTS)  # released alerts, to the incident book
    # What each topic is, in the order a fetch's batches are handled (kafka_consumer.py): released alerts
    # on their way to a page first, then the re-keyed rule inputs and lifecycle events, the bulk last.
    sources = {incident_topic: "incidents", host_run_ends_topic: "host_run_ends", run_hardware_topic: "run_hardware",
               runs_topic: "contract", system_topic: "contract", metrics_topic: "contract"}
    read_topics = {t.get_topic_name() for t in sources}

    pending_events: list[Any] = []  # Faust messages processed, not yet behind a snapshot
    held_alerts: list[dict] = []  # released with snapshots that could not be written: sent next time
    held_notifications: list[dict] = []  # the same, of incidents
    checkpoint_lock = asyncio.Lock()
    acking: set[asyncio.Future] = set()  # checkpoints' acks waiting for their rows to be written
    cadence = CheckpointCadence(checkpoint_interval_s)  # when the periodic checkpoint runs
    # Closed from a rebalance's start until the new assignment's state is ready: Faust may hand over
    # events of a newly assigned partition before its on_partitions_assigned handlers finish, and state
    # restored for them then would carry no generation and no topic ids (events counted twice).
    assignment_ready = asyncio.Event()

    async def in_thread(function, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(thread, function, *args)

    async def dead_letter(letters: list) -> None:
        for key, value, headers in letters:
            await deadletter_topic.send(key=key, value=value, headers=headers)

    async def send(outcome: Outcome) -> None:
        """What may go out before the checkpoint: re-keyed events (replays of them are recognised by
        offset) and dead letters."""
        await dead_letter(outcome.dead_letters)
        for summary in outcome.run_hardware:
            await run_hardware_topic.send(key=summary["run"].encode(), value=encode(summary))
        for event in outcome.host_run_ends:
            await host_run_ends_topic.send(key=event["host"].encode(), value=encode(event))

    async def write_snapshots(snapshots: dict[int, bytes]) -> None:
        if not durable_state:
            return
        for partition, data in snapshots.items():
            if len(data) > MAX_SNAPSHOT_BYTES:
                log.error("partition %d: state snapshot of %d bytes is over %d; not written, offsets held",
                          partition, len(data), MAX_SNAPSHOT_BYTES)
                raise RuntimeError("state snapshot too large")
        sent = [await app.producer.send(state_topic_name, group_id.encode(), data, partition, None, None)
                for partition, data in snapshots.items()]
        await asyncio.gather(*sent)  # all partitions' snapshots in flight at once: one round trip

    def as_member(step: Callable[[], Any]) -> Any:
        """step() in the processing thread while the group still gives this worker its partitions; None
        once it does not, with all of theirs dropped (Processing.lose)."""
        try:
            processing.hold_membership()
            return step()
        except MembershipLost as exc:
            processing.lose(exc)
            return None

    def snapshot_and_release(revoked: list[int] | None, light: bool
                             ) -> tuple[dict[int, bytes], tuple[list[dict], list[dict]], list, Future]:
        """In the processing thread, in one step: the rows no event names written and the raw rows handed
        over (light: left held), the snapshots and exactly the alerts and incident notifications they
        cover, the dead letters of rows ClickHouse refused so far, and when the rows handed over are
        written."""
        if revoked is not None:
            snapshots = processing.revoke(revoked)
        elif durable_state:
            snapshots = processing.snapshot(light=light)
        else:
            if not light:
                processing.flush()
            snapshots = {}
        return snapshots, processing.release(), processing.take_refused(), processing.written()

    async def publish(alerts: list[dict], notifications: list[dict]) -> None:
        """Released alerts to the alerts topic, and to the incident book or straight to the routes."""
        for alert in alerts:
            await alerts_topic.send(key=alert["fingerprint"].encode(), value=encode(alert))
            if pipeline.incidents is not None:
                await incident_topic.send(key=alert["fingerprint"].encode(), value=encode(alert),
                                          partition=INCIDENT_PARTITION)
        processing.dispatch(notifications if pipeline.incidents is not None else alerts + notifications)

    async def checkpoint(revoked: list[int] | None = None, light: bool = False) -> None:
        """Snapshots of changed state made durable, then alerts released, then acks once the rows are
        written (see module doc). light, for alerts: the raw rows stay held, so no event is acked (the
        next full checkpoint does)."""
        async with checkpoint_lock:
            events: list[Any] = []
            if not light:
                cadence.began()
                events = list(pending_events)  # all handled, so in the snapshots about to be taken
                pending_events.clear()
            taken = await in_thread(as_member, lambda: snapshot_and_release(revoked, light))
            if taken is None:  # nothing of the lost partitions is sent or acked: their next owner re-reads it
                pending_events.clear()
                held_alerts.clear()
                held_notifications.clear()
                return
            snapshots, (alerts, notifications), refused, written = taken
            await dead_letter(refused)  # before the acks: a refused row's event is never lost
            alerts[:0], notifications[:0] = held_alerts, held_notifications
            held_alerts.clear()
            held_notifications.clear()
            try:
                await write_snapshots(snapshots)
            except Exception as exc:  # Kafka unreachable: keep everything pending, try again next time
                log.warning("state snapshot not written (%s); offsets and alerts held", exc)
                pending_events[:0], held_alerts[:0], held_notifications[:0] = events, alerts, notifications
                for state in processing.partitions.values():
                    state.dirty = True
                return
            await publish(alerts, notifications)
        if revoked is not None:  # the handler commits next: every checkpoint's events acked by then
            await asyncio.gather(*acking, acked_once_written(events, written))
        elif events:  # in the background: the tick and alerts' checkpoints wait for no insert
            acking.add(task := asyncio.ensure_future(acked_once_written(events, written)))
            task.add_done_callback(acking.discard)

    async def acked_once_written(events: list[Any], written: Future) -> None:
        try:
            await asyncio.wrap_future(written)
        except MembershipLost:  # the rows were dropped with their partitions (logged there): re-read later
            return
        except Exception as exc:  # a bug, not ClickHouse being away (sink.py retries that): re-read later
            log.error("writing held rows failed (%s); %d events not acked", exc, len(events))
            return
        await dead_letter(await in_thread(processing.take_refused))  # the rows refused by those writes
        for message in events:
            app.consumer.ack(message)

    async def alert_checkpoint() -> None:
        await checkpoint(light=True)

    def consume(source: str) -> BatchHandler:
        async def handle_piece(events: list[Any]) -> bool:
            outcome = await in_thread(processing.handle, events, source)  # Faust's messages, as they are
            await send(outcome)
            pending_events.extend(e for e in events if e.partition not in outcome.unowned)
            return bool(outcome.alerts or outcome.notifications)

        async def handle(events: list[Any]) -> None:
            await assignment_ready.wait()
            await in_pieces(events, PIECE_EVENTS, handle_piece, alert_checkpoint)
        return handle

    for topic, source in sources.items():
        app.topics.add(topic)  # subscribed; its records come to the handler a fetch at a time
        app.transport.batch_handlers[topic.get_topic_name()] = consume(source)

    @app.timer(interval=1.0)
    async def tick() -> None:
        outcome = await in_thread(processing.tick, app.consumer.read_progress())
        await send(outcome)
        if outcome.alerts or outcome.notifications:
            await alert_checkpoint()  # a silence or a group_wait ending pages now, not a checkpoint later
        elif cadence.after_tick(outcome.all_written, app.consumer.at_rest()):
            await checkpoint()  # at rest, right after the tick wrote the held rows: its flush has none

    @app.timer(interval=checkpoint_interval_s)
    async def periodic_checkpoint() -> None:
        if cadence.on_timer(app.consumer.at_rest()):
            await checkpoint()

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
        assignment_ready.clear()
        await checkpoint(revoked=sorted({tp.partition for tp in revoked}))
        try:
            await app.consumer.commit()
        except Exception as exc:  # the next owner re-reads from the older commit: safe, only slower
            log.info("commit on revoke failed: %s", exc)

    @app.on_partitions_assigned.connect
    async def assigned(sender: Any, assigned: set, **kwargs: Any) -> None:
        started, partitions = time.monotonic(), sorted({tp.partition for tp in assigned})
        ours = [tp for tp in assigned if tp.topic in read_topics]
        for partition, missing in split_partitions(((tp.topic, tp.partition) for tp in ours), read_topics).items():
            processing.counts["partition.split"] += 1  # another worker reads those: its state is torn
            log.error("partition %d assigned without %s: the group's assignor does not co-partition "
                      "(stream_processors/copartitioning.py)", partition, ", ".join(missing))
        generation = getattr(app, "consumer_generation_id", 0) or 0
        lease.confirmed(generation, started)  # the group has just given it these partitions
        try:
            keys = await in_thread(topic_keys, settings, {tp.topic for tp in assigned})
            await in_thread(processing.assign, partitions, generation, keys)
        finally:
            assignment_ready.set()
        log.info("partitions %s assigned (generation %d): state ready in %.2f s", partitions, generation,
                 time.monotonic() - started)

    def summary() -> str:
        return (f"processed {dict(processing.counts)}; {processing.sink.written_values} values written, "
                f"{processing.sink.skipped_events} replayed events skipped, "
                f"{sum(s.windows.late_events for s in processing.partitions.values())} late window events, "
                f"partitions {sorted(processing.partitions)}")

    @app.on_before_shutdown.connect
    async def flush(sender: Any, **kwargs: Any) -> None:
        lease.close()  # a checkpoint waiting for the group's word gives up now, if the lease has run out
        async with checkpoint_lock:
            taken = await in_thread(as_member, lambda: (processing.close(), processing.release(),
                                                        processing.take_refused()))
            if taken is None:
                log.warning("stopping: %s", summary())
                return
            snapshots, (alerts, notifications), refused = taken
            await dead_letter(refused)
            await asyncio.gather(*acking)  # every row is written now: their events acked before the commit
            try:  # open windows and run snapshots written, then the alerts they cover sent
                await write_snapshots(snapshots)
            except Exception as exc:
                log.warning("final state snapshot not written, %d alerts not sent: %s", len(alerts), exc)
            else:
                await publish(held_alerts + alerts, held_notifications + notifications)
        log.warning("stopping: %s", summary())

    @app.timer(interval=30.0)
    async def report() -> None:
        log.info("%s", summary())

    app.processing = processing  # for tests and the benchmark
    return app
