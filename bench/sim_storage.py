"""A simulated cluster written into ClickHouse the way a processors worker writes it, and what it costs on disk.

Shared by bench/disk_per_gpu_day.py (megabytes per GPU-day) and bench/storage.py (bytes per point and
per column), so both measure the same rows: agent/simulator's nodes and runs, each event added to the
sink's `Batch` with a Kafka source (topic, partition 0, a running offset per topic) and written by
`ClickHouseSink` in batches of `batch_events` events, so the raw tables, their rollup views and
`system_latest` fill as in production.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from trainmon.agent.simulator import SimConfig, generate
from trainmon.settings import Settings
from trainmon.stream_processors.sink import Batch, ClickHouseSink

# One offset counter per topic, as a single Kafka partition of each would number the messages.
TOPICS = ("system", "metrics")


def sim_config(nodes: int, gpus: int, hours: float, metrics_every: float, seed: int = 1) -> SimConfig:
    """One run on every GPU (each rank logging a step every `metrics_every` seconds), 1 Hz samples."""
    return SimConfig(nodes=nodes, gpus=gpus, runs=1, world_size=nodes * gpus, duration=hours * 3600, interval=1.0,
                     step_interval=metrics_every, seed=seed)


def recent_start(hours: float) -> float:
    """A start time that puts every simulated row inside every table's TTL."""
    return time.time() - hours * 3600 - 60


def batches(config: SimConfig, start: float, batch_events: int, counts: dict[str, int]) -> Iterator[Batch]:
    """The simulation's system and metrics events as worker-sized batches; `counts` is filled with the
    events per topic and the values (rows of the raw tables) as they are made."""
    for key in (*TOPICS, "values"):
        counts.setdefault(key, 0)
    batch, pending = Batch(), 0
    for event in generate(config, start=start):
        kind = event["kind"]
        if kind not in TOPICS:
            continue  # run lifecycle and heartbeats: a few rows per run, not per GPU-second
        (batch.add_system if kind == "system" else batch.add_metrics)(event, f"bench.{kind}", 0, counts[kind])
        counts[kind] += 1
        pending += 1
        if pending >= batch_events:
            counts["values"] += batch.values
            yield batch
            batch, pending = Batch(), 0
    if batch:
        counts["values"] += batch.values
        yield batch


def write(settings: Settings, config: SimConfig, start: float, batch_events: int) -> dict[str, int]:
    """Every system and metrics event of the simulation through the sink; returns the counts."""
    sink, counts = ClickHouseSink(settings), {}
    for batch in batches(config, start, batch_events, counts):
        sink.write(batch)
    return counts


def merge(client: Any, tables: Iterable[str]) -> None:
    """Let the merges settle: each table's parts merged into as few as its partitions allow."""
    for table in tables:
        client.command(f"OPTIMIZE TABLE {table} FINAL")


def table_bytes(client: Any) -> dict[str, tuple[int, int, int]]:
    """table -> (rows, compressed bytes on disk, uncompressed bytes) of the active parts."""
    rows = client.query("SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts "
                        "WHERE database = currentDatabase() AND active GROUP BY table").result_rows
    return {table: (int(r), int(b), int(u)) for table, r, b, u in rows}
