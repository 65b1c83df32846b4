"""Batched, exactly-once writes to ClickHouse.

The processors hand over one batch of decoded events per topic (what `take_events` collected) and
ack them only after `write()` returned, so Kafka offsets are committed after ClickHouse accepted the
rows. Replays after a crash are skipped by offset: raw rows carry their source topic, partition and
offset, the `ingest_offsets` view keeps the highest one written per partition (migration 0002), and
`skip()` drops events at or below it. While ClickHouse is down, `write()` backs off and retries the
same batch (an identical re-sent block is deduplicated by ClickHouse), holding the stream: nothing
is lost, nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from trainmon.clickhouse import connect
from trainmon.settings import Settings

log = logging.getLogger("trainmon.processors")

INSERT_SETTINGS = {"async_insert": 0}  # we batch ourselves and must know the write happened
METRIC_COLUMNS = ("project", "run", "rank", "host", "name", "step", "epoch", "value", "time",
                  "src_topic", "src_partition", "src_offset")
SYSTEM_COLUMNS = ("host", "gpu", "gpu_uuid", "name", "value", "time", "src_topic", "src_partition", "src_offset")
PRIMARY = ("metric_points", "system_samples")  # their INSERT moves the offset watermark: written last


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


class Batch:
    """Rows for each table, built column-wise for the hot tables (one list extend per event)."""

    def __init__(self) -> None:
        self.metric = {name: [] for name in METRIC_COLUMNS}
        self.system = {name: [] for name in SYSTEM_COLUMNS}
        self.rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        self.offsets: dict[tuple[str, int], int] = {}  # highest source offset per partition in the batch
        self.values = 0

    def _source(self, topic: str, partition: int, offset: int) -> None:
        if offset > self.offsets.get((topic, partition), -1):
            self.offsets[(topic, partition)] = offset

    def add_metrics(self, event: Mapping[str, Any], topic: str, partition: int, offset: int) -> None:
        values = event["values"]
        n = len(values)
        columns = self.metric
        columns["name"].extend(values.keys())
        columns["value"].extend(values.values())
        epoch = event.get("epoch")
        for name, constant in (("project", event["project"]), ("run", event["run"]), ("rank", event["rank"]),
                               ("host", event["host"]), ("step", event["step"]),
                               ("epoch", float("nan") if epoch is None else float(epoch)), ("time", event["time"]),
                               ("src_topic", topic), ("src_partition", partition), ("src_offset", offset)):
            columns[name].extend([constant] * n)
        self.values += n
        self._source(topic, partition, offset)

    def add_system(self, event: Mapping[str, Any], topic: str, partition: int, offset: int) -> None:
        host, when = event["host"], event["time"]
        self._system_figures(host, -1, "", event["figures"], when, topic, partition, offset)
        for gpu in event.get("gpus") or ():
            self._system_figures(host, gpu["index"], gpu["uuid"], gpu["figures"], when, topic, partition, offset)
            self.rows["gpus"].append({"host": host, "gpu": gpu["index"], "gpu_uuid": gpu["uuid"],
                                      "gpu_name": gpu.get("name") or "", "last_error": gpu.get("error") or "",
                                      "last_seen": utc(when)})
        self._source(topic, partition, offset)

    def _system_figures(self, host: str, gpu: int, uuid: str, figures: Mapping[str, float], when: float,
                        topic: str, partition: int, offset: int) -> None:
        n = len(figures)
        columns = self.system
        columns["name"].extend(figures.keys())
        columns["value"].extend(figures.values())
        for name, constant in (("host", host), ("gpu", gpu), ("gpu_uuid", uuid), ("time", when),
                               ("src_topic", topic), ("src_partition", partition), ("src_offset", offset)):
            columns[name].extend([constant] * n)
        self.values += n

    def add(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        self.rows[table].extend(rows)

    def __bool__(self) -> bool:
        return bool(self.metric["value"] or self.system["value"] or any(self.rows.values()))


def _arrow(columns: Mapping[str, list], types: Mapping[str, Any]):
    import pyarrow as pa

    arrays = {}
    for name, values in columns.items():
        if name == "time":
            seconds = pa.array(values, pa.float64())
            micros = pa.compute.cast(pa.compute.multiply(seconds, 1e6), pa.int64(), safe=False)
            arrays[name] = micros.cast(pa.timestamp("us", tz="UTC"))
        else:
            arrays[name] = pa.array(values, types[name])
    return pa.table(arrays)


def _types() -> dict[str, Any]:
    import pyarrow as pa

    return {"project": pa.string(), "run": pa.string(), "rank": pa.uint32(), "host": pa.string(),
            "name": pa.string(), "step": pa.uint64(), "epoch": pa.float64(), "value": pa.float64(),
            "src_topic": pa.string(), "src_partition": pa.uint16(), "src_offset": pa.uint64(),
            "gpu": pa.int16(), "gpu_uuid": pa.string()}


class ClickHouseSink:
    def __init__(self, settings: Settings, *, client_factory: Callable[[Settings], Any] = connect,
                 max_backoff_s: float = 10.0) -> None:
        self._connect = lambda: client_factory(settings)
        self._client = None
        self._watermarks: dict[tuple[str, int], int] = {}
        self._types = _types()
        self.max_backoff_s = max_backoff_s
        self.written_values = 0
        self.skipped_events = 0

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    # --- replay protection ----------------------------------------------------------------------

    def skip(self, topic: str, partition: int, offset: int) -> bool:
        """True if this message's rows are already in ClickHouse (written before a crash/rebalance)."""
        key = (topic, partition)
        watermark = self._watermarks.get(key)
        if watermark is None:
            watermark = self._retry(lambda: self._read_watermark(topic, partition), "read the offset watermark")
            self._watermarks[key] = watermark
        if offset <= watermark:
            self.skipped_events += 1
            return True
        return False

    def _read_watermark(self, topic: str, partition: int) -> int:
        rows = self.client.query(
            "SELECT max(offset), count() FROM ingest_offsets WHERE topic = {t:String} AND partition = {p:UInt16}",
            parameters={"t": topic, "p": partition}).result_rows
        return int(rows[0][0]) if rows and rows[0][1] else -1

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked: their watermark must be read again if they come back."""
        for key in partitions:
            self._watermarks.pop(key, None)

    # --- writing -----------------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Write everything in the batch, retrying until ClickHouse takes it. Blocking: run in a thread."""
        for table, rows in batch.rows.items():
            if rows:
                columns = list(rows[0].keys())
                data = [[row[c] for c in columns] for row in rows]
                self._retry(lambda: self.client.insert(table, data, column_names=columns, settings=INSERT_SETTINGS),
                            f"insert {len(data)} rows into {table}")
        for table, columns in (("metric_points", batch.metric), ("system_samples", batch.system)):
            if columns["value"]:
                arrow = _arrow(columns, self._types)
                self._retry(lambda: self.client.insert_arrow(table, arrow, settings=INSERT_SETTINGS),
                            f"insert {arrow.num_rows} rows into {table}")
        for key, offset in batch.offsets.items():  # a stream restarted in place must skip these too
            self._watermarks[key] = max(self._watermarks.get(key, -1), offset)
        self.written_values += batch.values

    def _retry(self, attempt: Callable[[], Any], what: str) -> Any:
        delay, failures = 0.2, 0
        while True:
            try:
                result = attempt()
                if failures:
                    log.warning("ClickHouse is back after %d failed attempts to %s", failures, what)
                return result
            except Exception as exc:  # connection refused, timeouts, server errors: hold and retry
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("ClickHouse write failed (%s: %s); holding the stream and retrying to %s",
                                type(exc).__name__, str(exc)[:200], what)
                self._client = None  # reconnect: the old pool may hold dead connections
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
