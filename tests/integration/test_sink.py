"""The ClickHouse sink on the real engine: exact counts across a crash-and-replay, holding while down."""

from __future__ import annotations

import math
import threading
import time

import pytest

from trainmon.stream_processors.runs import raw_event_row
from trainmon.stream_processors.sink import Batch, ClickHouseSink
from trainmon.clickhouse import connect
from trainmon.contract import envelope

pytestmark = pytest.mark.integration
T0 = float(int(time.time()) // 3600 * 3600 - 3600)  # recent: system samples keep 30 days


def metrics(run: str, step: int, n: int = 8) -> dict:
    values = {f"m{i}": float(step * i) for i in range(n)}
    values["loss"] = math.nan if step == 3 else 1.0 / (step + 1)
    return envelope("metrics", project="p", run=run, rank=0, host="node-1", step=step, epoch=0, time=T0 + step,
                    values=values)


def system(host: str, second: int, error: str | None = None) -> dict:
    gpus = [{"index": i, "uuid": f"GPU-{i}", "name": "H100", "figures": {"util_percent": 90.0 + i}} for i in range(2)]
    if error:
        gpus[1]["error"] = error
    return envelope("system", host=host, time=T0 + second, figures={"cpu_percent": 50.0}, gpus=gpus)


def feed(sink: ClickHouseSink, topic: str, events, first_offset: int, batch_size: int) -> None:
    """What the processors do: skip what is written, batch, write, then (implicitly) ack."""
    for start in range(0, len(events), batch_size):
        batch = Batch()
        for offset, event in enumerate(events[start : start + batch_size], start=first_offset + start):
            if sink.skip(topic, 0, offset):
                continue
            if event["kind"] == "metrics":
                batch.add_metrics(event, topic, 0, offset)
            else:
                batch.add_system(event, topic, 0, offset)
        if batch:
            sink.write(batch)


def count(client, sql: str) -> int:
    return client.query(sql).result_rows[0][0]


def test_a_replay_after_a_crash_is_skipped_so_raw_and_rollups_stay_exact(migrated):
    client = connect(migrated)
    events = [metrics("sink-replay", step) for step in range(200)]
    first = ClickHouseSink(migrated)
    feed(first, "t.metrics", events[:150], 0, batch_size=40)  # written, but say offsets were committed at 80
    second = ClickHouseSink(migrated)  # the worker that takes over re-reads from offset 80, in other batches
    feed(second, "t.metrics", events[80:], 80, batch_size=33)
    assert second.skipped_events == 70
    values_per_event = len(events[0]["values"])
    assert count(client, "SELECT count() FROM metric_points WHERE run = 'sink-replay'") == 200 * values_per_event
    assert count(client, "SELECT sum(count) FROM metric_rollup_1m WHERE run = 'sink-replay'") == 200 * values_per_event
    assert count(client, "SELECT sum(non_finite) FROM metric_rollup_1m WHERE run = 'sink-replay'") == 1


def relogged(run: str, value: float) -> dict:
    return envelope("metrics", project="p", run=run, rank=0, host="node-1", step=7, epoch=0, time=T0 + value,
                    values={"loss": value})


def test_a_step_logged_again_in_one_insert_reads_as_if_in_separate_inserts(migrated):
    """Raw inserts skip ClickHouse's insert-time collapse (sink.RAW_INSERT_SETTINGS): a step logged three
    times in one batch must read as three batches do: FINAL keeps the last, and until a merge the raw
    rows count what the rollups count."""
    client = connect(migrated)
    client.command("SYSTEM STOP MERGES metric_points")  # "until a merge": the three parts stay apart
    try:
        for run, batch_size in (("sink-relog-one", 3), ("sink-relog-three", 1)):
            feed(ClickHouseSink(migrated), f"t.{run}", [relogged(run, v) for v in (1.0, 2.0, 3.0)], 0, batch_size)
            assert client.query(f"SELECT value FROM metric_points FINAL WHERE run = '{run}'").result_rows == [(3.0,)]
            assert count(client, f"SELECT sum(count) FROM metric_rollup_1m WHERE run = '{run}'") == 3
            assert count(client, f"SELECT count() FROM metric_points WHERE run = '{run}'") == 3
    finally:
        client.command("SYSTEM START MERGES metric_points")


def test_system_samples_land_per_host_and_gpu_with_the_inventory(migrated):
    client = connect(migrated)
    feed(ClickHouseSink(migrated), "t.system", [system("sink-node", s) for s in range(30)], 0, batch_size=7)
    rows = client.query("SELECT gpu, count(), max(value) FROM system_samples WHERE host = 'sink-node' "
                        "GROUP BY gpu ORDER BY gpu").result_rows
    assert rows == [(-1, 30, 50.0), (0, 30, 90.0), (1, 30, 91.0)]
    inventory = client.query("SELECT gpu, gpu_uuid, gpu_name FROM gpus FINAL WHERE host = 'sink-node' ORDER BY gpu")
    assert inventory.result_rows == [(0, "GPU-0", "H100"), (1, "GPU-1", "H100")]


def test_the_gpu_inventory_is_written_when_it_changes_not_with_every_sample(migrated):
    client = connect(migrated)
    sink = ClickHouseSink(migrated)
    feed(sink, "t.inventory", [system("inventory-node", s) for s in range(30)], 0, batch_size=7)  # five writes
    assert count(client, "SELECT count() FROM gpus WHERE host = 'inventory-node'") == 2  # one row per GPU
    feed(sink, "t.inventory", [system("inventory-node", 30, error="GPU is lost")], 30, batch_size=1)
    rows = client.query("SELECT gpu, last_error, last_seen FROM gpus FINAL WHERE host = 'inventory-node' ORDER BY gpu")
    assert [(gpu, error) for gpu, error, _ in rows.result_rows] == [(0, ""), (1, "GPU is lost")]
    assert rows.result_rows[1][2].timestamp() == T0 + 30  # the erroring sample's own time
    assert count(client, "SELECT count() FROM gpus WHERE host = 'inventory-node'") == 3


def test_after_a_rebalance_the_gpu_inventory_is_written_again_not_left_to_another_owners_rows(migrated):
    """A node's partition goes to worker B, which writes an error, and comes back to A, which sees the
    error gone: A must write that, although it is what A last wrote itself."""
    client = connect(migrated)
    a, b = ClickHouseSink(migrated), ClickHouseSink(migrated)
    feed(a, "t.rebalance", [system("rebalance-node", s) for s in range(3)], 0, batch_size=3)
    a.forget([0])
    feed(b, "t.rebalance", [system("rebalance-node", 3, error="GPU is lost")], 3, batch_size=1)
    b.forget([0])
    feed(a, "t.rebalance", [system("rebalance-node", 4)], 4, batch_size=1)
    rows = client.query("SELECT gpu, last_error FROM gpus FINAL WHERE host = 'rebalance-node' ORDER BY gpu")
    assert rows.result_rows == [(0, ""), (1, "")]


class FlakyClient:
    """A real client that refuses the first `failures` inserts, as ClickHouse does while it is down."""

    def __init__(self, settings, failures: int) -> None:
        self.real, self.failures = connect(settings), failures

    def __getattr__(self, name):
        attribute = getattr(self.real, name)
        if name.startswith("insert") and self.failures > 0:
            def refuse(*args, **kwargs):
                self.failures -= 1
                raise ConnectionRefusedError("ClickHouse is down")
            return refuse
        return attribute


def test_while_clickhouse_is_down_the_sink_holds_and_then_writes_everything_once(migrated):
    flaky = FlakyClient(migrated, failures=4)
    sink = ClickHouseSink(migrated, client_factory=lambda settings: flaky, max_backoff_s=0.2)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (feed(sink, "t.down", [metrics("sink-down", s) for s in range(20)], 0, 20),
                                              done.set()))
    writer.start()
    time.sleep(0.3)
    assert not done.is_set(), "the write must hold while ClickHouse refuses"
    writer.join(10)
    assert done.is_set() and flaky.failures == 0
    client = connect(migrated)
    assert count(client, "SELECT count() FROM metric_points WHERE run = 'sink-down'") == 20 * 9


class DescribeCounter:
    """A real client that counts table descriptions: create_insert_context, and inserts given no column
    types (clickhouse-connect then runs DESCRIBE TABLE first)."""

    def __init__(self, settings, refuse_next: int = 0) -> None:
        self.real, self.describes, self.refuse_next = connect(settings), 0, refuse_next

    def create_insert_context(self, *args, **kwargs):
        self.describes += 1
        return self.real.create_insert_context(*args, **kwargs)

    def insert(self, *args, **kwargs):
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise ConnectionRefusedError("ClickHouse is down")
        self.describes += kwargs.get("column_types") is None and kwargs.get("context") is None
        return self.real.insert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_row_inserts_describe_their_table_once_and_again_after_a_failure(migrated):
    counter = DescribeCounter(migrated)
    sink = ClickHouseSink(migrated, client_factory=lambda settings: counter, max_backoff_s=0.2)
    starts = [envelope("run_start", project="p", run="sink-describe", rank=r, host="node-1", time=T0 + r,
                       config={}) for r in range(6)]

    def write(offset: int) -> None:
        batch = Batch()
        batch.add_run_event(raw_event_row(starts[offset]), "t.describe", 0, offset)
        sink.write(batch)

    for offset in range(3):
        write(offset)
    assert counter.describes == 1, "one DESCRIBE for the table, not one per insert"
    counter.refuse_next = 1  # a failed insert may mean a migration changed the table: described again
    for offset in range(3, 6):
        write(offset)
    assert counter.describes == 2
    client = connect(migrated)
    assert count(client, "SELECT count() FROM run_events WHERE run = 'sink-describe'") == 6
