"""The trainmon stream processors as a Faust app, top to bottom: topics, agents, timer.

One consumer group; run more workers (`trainmon process` on more machines) to split the partitions.
Each agent takes a batch of events (`take_events`), hands it to the processing thread, sends what it
produced (dead letters, alerts, run-hardware summaries) and only then lets Faust ack the batch, so
offsets are committed after ClickHouse accepted the rows.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust

from stream_processors.config import PipelineConfig
from stream_processors.processing import Message, Outcome, Processing
from stream_processors.sink import ClickHouseSink
from trainmon.contract import Topic, encode, topic_name
from trainmon.settings import Settings

log = logging.getLogger("trainmon.processors")


def _data_parent(settings: Settings) -> Path:
    """Faust makes its (here empty: tables are in memory) data directory but not its parents."""
    parent = settings.home / "processors"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def create_app(settings: Settings, pipeline: PipelineConfig, dispatcher: Any, *, group_id: str = "trainmon-processors",
               batch_events: int = 5000, batch_within_s: float = 0.1, web_port: int | None = None) -> faust.App:
    app = faust.App(
        group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
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
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, batch_events * 2),
        producer_compression_type="lz4",
    )
    processing = Processing(pipeline, ClickHouseSink(settings), dispatcher)
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmon-processing")  # owns all state

    def topic(which: Topic) -> faust.TopicT:
        return app.topic(topic_name(which, settings.kafka_topic_prefix), key_type=bytes, value_type=bytes)

    metrics_topic, runs_topic, system_topic = topic(Topic.METRICS), topic(Topic.RUNS), topic(Topic.SYSTEM)
    alerts_topic, deadletter_topic = topic(Topic.ALERTS), topic(Topic.DEADLETTER)
    def internal(name: str) -> faust.TopicT:  # the processors' own re-keying, co-partitioned with the rest
        return app.topic(f"{settings.kafka_topic_prefix}{name}", internal=True, partitions=settings.kafka_partitions,
                         key_type=bytes, value_type=bytes)

    run_hardware_topic = internal("run-hardware")  # GPU busyness per run, for the stall rule
    host_run_ends_topic = internal("host-run-ends")  # run_end per host, for the node rules

    async def in_thread(function, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(thread, function, *args)

    async def send(outcome: Outcome) -> None:
        for key, value, headers in outcome.dead_letters:
            await deadletter_topic.send(key=key, value=value, headers=headers)
        for alert in outcome.alerts:
            await alerts_topic.send(key=alert["fingerprint"].encode(), value=encode(alert))
        for summary in outcome.run_hardware:
            await run_hardware_topic.send(key=summary["run"].encode(), value=encode(summary))
        for event in outcome.host_run_ends:
            await host_run_ends_topic.send(key=event["host"].encode(), value=encode(event))

    async def consume(stream, source: str = "contract") -> None:
        async for events in stream.take_events(batch_events, within=batch_within_s):
            messages = [Message(e.message.topic, e.message.partition, e.message.offset, e.message.key,
                                e.message.value) for e in events]
            await send(await in_thread(processing.handle, messages, source))
            # leaving the loop body acks the batch: its offsets may now be committed

    @app.agent(metrics_topic)
    async def metrics(stream):
        await consume(stream)

    @app.agent(runs_topic)
    async def runs(stream):
        await consume(stream)

    @app.agent(system_topic)
    async def system(stream):
        await consume(stream)

    @app.agent(run_hardware_topic)
    async def hardware(stream):
        await consume(stream, "run_hardware")

    @app.agent(host_run_ends_topic)
    async def host_run_ends(stream):
        await consume(stream, "host_run_ends")

    @app.timer(interval=1.0)
    async def tick() -> None:
        await send(await in_thread(processing.tick))

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
        await in_thread(processing.revoke, [(tp.topic, tp.partition) for tp in revoked])

    def summary() -> str:
        return (f"processed {dict(processing.counts)}; {processing.sink.written_values} values written, "
                f"{processing.sink.skipped_events} replayed events skipped, "
                f"{processing.windows.late_events} late window events")

    @app.on_before_shutdown.connect
    async def flush(sender: Any, **kwargs: Any) -> None:
        await in_thread(processing.close)  # open windows and run snapshots
        log.warning("stopping: %s", summary())

    @app.timer(interval=30.0)
    async def report() -> None:
        log.info("%s", summary())

    app.processing = processing  # for tests and the benchmark
    return app
