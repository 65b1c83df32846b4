"""Batched, exactly-once writes to ClickHouse.

The processors hand over one batch of decoded events per topic (what `take_events` collected) and
ack them only after `write()` returned, so Kafka offsets are committed after ClickHouse accepted the
rows. Replays after a crash are skipped by offset: raw rows carry their source topic, partition and
offset, the `ingest_offsets` view keeps the highest one written per partition (migration 0002), and
`skip()` drops events at or below it.

Errors come in two kinds. Transient ones (ClickHouse down or overloaded, a timeout, a schema not yet
migrated, which an operator fixes) are retried with backoff, holding the stream: an identical re-sent
block is deduplicated by ClickHouse, so nothing is lost or counted twice (inserts of rows from Kafka
messages name those messages in `insert_deduplication_token`, for clusters: see `dedup_settings`).
Deterministic ones (a value ClickHouse refuses, too many partitions in one insert, a row we cannot
convert) would fail forever: the insert is split in halves until the rows ClickHouse refuses are
isolated; the rest is written and `write()` returns the refused rows' sources, for the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from itertools import chain
from typing import Any, Callable, Iterable, Mapping

# Imported here, not where first used: a worker pays for them (~0.3 s) as it starts, before it joins the
# group, instead of in its first batch, where they held up the first alert after every (re)start.
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from trainmon.clickhouse import connect
from trainmon.settings import Settings
from trainmon.stream_processors.gpu_inventory import GpuInventory
from trainmon.stream_processors.membership import MembershipLost

log = logging.getLogger("trainmon.processors")

# We batch ourselves and must know the write happened: no server-side buffering, and on a cluster
# (Distributed tables, deploy/clickhouse_cluster.py) no queue in front of the shards either, so the
# insert returns once every shard holds its rows. Plain tables ignore the second setting.
INSERT_SETTINGS = {"async_insert": 0, "distributed_foreground_insert": 1}
# Raw inserts skip the Replacing merge ClickHouse runs over each inserted block: it finds nothing to
# collapse but a step logged twice or an event sent twice, which other blocks bring as often and which
# readers already meet until a merge (and drop with FINAL where it matters). Skipping it saves 3-12 % of
# the server's CPU per 2 s flush at rest and 16-25 % per write under load (bench/insert_cost.py); the views
# see the inserted block either way.
RAW_INSERT_SETTINGS = {**INSERT_SETTINGS, "optimize_on_insert": 0}
METRIC_GROUP = ("project", "run", "rank", "host", "step", "epoch", "time", "src_topic", "src_partition", "src_offset")
SYSTEM_GROUP = ("host", "gpu", "gpu_uuid", "time", "src_topic", "src_partition", "src_offset")
PRIMARY = ("metric_points", "system_samples")  # their INSERT moves the offset watermark: written last
SOURCED_TABLE = "run_events"  # the one Batch.rows table whose rows carry their event's offset (add_run_event)
Source = tuple[str, int, int]  # topic, partition, offset of the message a row came from
# The next owner of a partition reads its offset watermark only once no insert naming that partition is still
# running in ClickHouse: a worker SIGKILLed while the server runs its insert (a large one, or one ClickHouse
# delays for too many parts) leaves the insert running, and a watermark read before it ends would have the next
# owner write the same events again (rollups doubled for good). Inserts of rows from Kafka messages name their
# consumer group and partitions in their query_id (`fence_query_id`); FENCE_WAIT_S bounds the wait.
FENCE_PREFIX = "trainmon-insert"
FENCE_WAIT_S = 120.0
FENCE_POLL_S = 0.2
# Server errors worth waiting for: overload, timeouts, read-only replicas, too many parts (merges catch
# up), and a schema not migrated yet (unknown table, column or database: `trainmon db migrate`). On a
# cluster also: a shard unreachable (279), Keeper unreachable (225), and a replicated insert whose outcome
# Keeper lost (319), which ClickHouse says to retry: the deduplication token makes the retry harmless.
# And a login or grant the operator has to fix (516 AUTHENTICATION_FAILED after a password rotation,
# 497 ACCESS_DENIED when a grant is missing): every row would otherwise go to the dead-letter topic.
TRANSIENT_CODES = frozenset({3, 16, 47, 60, 81, 159, 164, 202, 209, 210, 225, 241, 242, 279, 319, 394, 497, 516, 999})
_CODE = re.compile(r"Code: (\d+)")


class Rejected(Exception):
    """ClickHouse will never take this insert as it is (or we cannot even build it)."""


def transient(exc: BaseException) -> bool:
    """Whether retrying the same insert can succeed. Errors of our own (a row that does not convert)
    and server errors outside TRANSIENT_CODES are deterministic; anything unrecognised from the
    connection is taken as transient, since dropping data on a network hiccup would be worse."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(exc, (OperationalError, OSError, TimeoutError)):
        return True
    if isinstance(exc, DatabaseError):
        code = _CODE.search(str(exc))
        if code is None:
            return True
        number = int(code[1])
        if number == 252:  # TOO_MANY_PARTS: waiting helps, unless one insert spans too many partitions
            return "for single INSERT" not in str(exc)
        return number in TRANSIENT_CODES
    return False


def dedup_settings(table: str, sources: list[Source | None], base: Mapping[str, Any] = INSERT_SETTINGS
                   ) -> dict[str, Any]:
    """The insert's settings; for rows from Kafka messages, with a deduplication token that names them.

    ClickHouse drops a block whose token it has seen, as it drops a block whose hash it has seen. The raw
    tables' `ingest_time DEFAULT now64()` is filled by a Distributed table before it hands each shard its
    rows, so there a re-sent block arrives with new values and a new hash; the messages it came from do
    not change (the same messages make the same rows), and each shard keeps the token for its own rows
    and rollups. Rows without a source (snapshots, windows, alerts) fill their columns themselves, so
    their hash already recognises them; hashing sources costs per event, not per value."""
    if not sources or None in sources:
        return dict(base)
    token = hashlib.sha256(f"{table}\n{sources!r}".encode()).hexdigest()
    return {**base, "insert_deduplication_token": token}


def fence_query_id(prefix: str, sources: list[Source]) -> str:
    """The query_id of an insert of rows from Kafka messages: `prefix`, the partitions they came from, and a
    part of its own (a retry is another query)."""
    partitions = "-".join(map(str, sorted({source[1] for source in sources})))
    return f"{prefix}.{partitions}.{uuid.uuid4().hex}"


def fenced_partitions(query_id: str) -> set[int]:
    """The partitions a `fence_query_id` names."""
    return {int(p) for p in query_id.rsplit(".", 2)[1].split("-")}


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


class Columns:
    """Rows of a long-form table (one row per name and value) as `name` and `value` columns plus the
    columns shared by a group of rows (an event's project, run, step, ...) stored once per group with
    the group's row count: a 64-value event costs two extends and one append per shared column, and
    the per-row arrays are made in numpy or Arrow only when needed."""

    def __init__(self, shared: tuple[str, ...]) -> None:
        self.shared = {name: [] for name in shared}
        self._shared_lists = list(self.shared.values())
        self.names: list[str] = []
        self.values: list[float] = []
        self.counts: list[int] = []
        self._codes: dict[str, tuple[int, tuple[Any, list]]] = {}  # name -> (rows when coded, codes)

    def add(self, figures: Mapping[str, float], shared: tuple) -> None:
        if not figures:
            return
        self.names.extend(figures.keys())
        self.values.extend(figures.values())
        for column, value in zip(self._shared_lists, shared):
            column.append(value)
        self.counts.append(len(figures))

    def __len__(self) -> int:
        return len(self.values)

    def groups(self) -> int:
        return len(self.counts)

    def extend(self, other: "Columns") -> None:
        for mine, theirs in zip(self._shared_lists, other._shared_lists):
            mine.extend(theirs)
        self.names.extend(other.names)
        self.values.extend(other.values)
        self.counts.extend(other.counts)

    def halves(self) -> tuple["Columns", "Columns"]:
        """Two Columns with the first and second half of the groups (events), for isolating a bad one."""
        middle, parts = len(self.counts) // 2, (Columns(tuple(self.shared)), Columns(tuple(self.shared)))
        rows = sum(self.counts[:middle])
        for part, groups, values in ((parts[0], slice(None, middle), slice(None, rows)),
                                     (parts[1], slice(middle, None), slice(rows, None))):
            for mine, theirs in zip(part._shared_lists, self._shared_lists):
                mine.extend(theirs[groups])
            part.names, part.values, part.counts = self.names[values], self.values[values], self.counts[groups]
        return parts

    def sources(self) -> list[Source]:
        return list(zip(self.shared["src_topic"], self.shared["src_partition"], self.shared["src_offset"]))

    def column(self, name: str) -> Any:
        """One column, a value per row, as a numpy array (floats for value and time)."""
        if name == "value":
            return np.asarray(self.values, dtype=float)
        if name == "name":
            return np.asarray(self.names, dtype=object)
        kind = float if name in ("time", "epoch") else object
        return np.repeat(np.asarray(self.shared[name], dtype=kind), self.counts)

    def codes(self, name: str) -> tuple[Any, list]:
        """Integer codes of a column, a code per row, and the labels they stand for (hashed in C, and
        for a shared column once per group, not once per row)."""
        cached = self._codes.get(name)
        if cached is not None and cached[0] == len(self.values):  # Columns only grow: same rows, same codes
            return cached[1]
        if name == "name":
            codes, labels = pd.factorize(np.asarray(self.names, dtype=object))
            coded = codes.astype(np.int64), labels.tolist()
        else:
            codes, labels = pd.factorize(np.asarray(self.shared[name], dtype=object))
            coded = np.repeat(codes.astype(np.int64), self.counts), labels.tolist()
        self._codes[name] = (len(self.values), coded)
        return coded

    def arrow(self, types: Mapping[str, Any]):
        """An Arrow table for insert_arrow; shared columns are converted once per group and repeated in C."""
        rows = np.repeat(np.arange(len(self.counts)), self.counts)
        arrays = {"name": pa.array(self.names, pa.string()), "value": pa.array(self.values, pa.float64())}
        for name, values in self.shared.items():
            if name == "time":
                micros = pc.cast(pc.multiply(pa.array(values, pa.float64()), 1e6), pa.int64(), safe=False)
                group = micros.cast(pa.timestamp("us", tz="UTC"))
            else:
                group = pa.array(values, types[name])
            arrays[name] = group.take(rows)
        return pa.table(arrays)


class Batch:
    """Rows for each table: the hot long-form tables as Columns, the others as row dicts."""

    def __init__(self) -> None:
        self.metric = Columns(METRIC_GROUP)
        self.system = Columns(SYSTEM_GROUP)
        self.rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        self.offsets: dict[tuple[str, int], int] = {}  # highest source offset per partition in the batch
        self.values = 0

    def _source(self, topic: str, partition: int, offset: int) -> None:
        if offset > self.offsets.get((topic, partition), -1):
            self.offsets[(topic, partition)] = offset

    def add_metrics(self, event: Mapping[str, Any], topic: str, partition: int, offset: int) -> None:
        values = event["values"]
        epoch = event.get("epoch")
        self.metric.add(values, (event["project"], event["run"], event["rank"], event["host"], event["step"],
                                 math.nan if epoch is None else float(epoch), event["time"], topic, partition, offset))
        self.values += len(values)
        self._source(topic, partition, offset)

    def add_system(self, event: Mapping[str, Any], topic: str, partition: int, offset: int) -> None:
        host, when = event["host"], event["time"]
        self.system.add(event["figures"], (host, -1, "", when, topic, partition, offset))
        self.values += len(event["figures"])
        for gpu in event.get("gpus") or ():
            self.system.add(gpu["figures"], (host, gpu["index"], gpu["uuid"], when, topic, partition, offset))
            self.values += len(gpu["figures"])
            self.rows["gpus"].append({"host": host, "gpu": gpu["index"], "gpu_uuid": gpu["uuid"],
                                      "gpu_name": gpu.get("name") or "", "last_error": gpu.get("error") or "",
                                      "last_seen": utc(when)})
        self._source(topic, partition, offset)

    def add_run_event(self, row: dict[str, Any], topic: str, partition: int, offset: int) -> None:
        row.update(src_topic=topic, src_partition=partition, src_offset=offset)
        self.rows[SOURCED_TABLE].append(row)
        self._source(topic, partition, offset)

    def add(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        self.rows[table].extend(rows)

    def merge(self, other: "Batch") -> None:
        self.metric.extend(other.metric)
        self.system.extend(other.system)
        for table, rows in other.rows.items():
            self.rows[table].extend(rows)
        for (topic, partition), offset in other.offsets.items():
            self._source(topic, partition, offset)
        self.values += other.values

    def take_hardware(self) -> "Batch":
        """The hardware rows (system_samples, gpus) moved to a Batch of their own, which may be written
        later than the rest, with the offsets of their partitions. Those are the system topic's, which
        hold nothing else (check_topic in contract.py): were a partition's rows split between two
        inserts, the first would move its watermark past rows still held, and a replay would skip them."""
        hardware = Batch()
        if not len(self.system):
            return hardware
        hardware.system, self.system = self.system, Columns(SYSTEM_GROUP)
        hardware.rows["gpus"] = self.rows.pop("gpus", [])
        hardware.values = len(hardware.system)
        self.values -= hardware.values
        shared = hardware.system.shared
        for topic, partition, offset in zip(shared["src_topic"], shared["src_partition"], shared["src_offset"]):
            hardware._source(topic, partition, offset)
        for key in hardware.offsets:
            self.offsets.pop(key, None)
        return hardware

    def take_derived(self) -> "Batch":
        """The rows no event's offset names (alerts, incidents, windows, run snapshots) moved to a Batch
        of their own, which may be written ahead of the raw rows: a checkpoint for an alert writes only
        these (processing.py, snapshot)."""
        derived = Batch()
        for table in [t for t in self.rows if t != SOURCED_TABLE]:
            derived.rows[table] = self.rows.pop(table)
        return derived

    def sources(self) -> Iterable[Source]:
        """(topic, partition, offset) of each event whose rows this batch holds."""
        rows = ((r["src_topic"], r["src_partition"], r["src_offset"]) for r in self.rows.get(SOURCED_TABLE, ()))
        return chain(self.metric.sources(), self.system.sources(), rows)

    def __bool__(self) -> bool:
        return bool(len(self.metric) or len(self.system) or any(self.rows.values()))


def _types() -> dict[str, Any]:
    return {"project": pa.string(), "run": pa.string(), "rank": pa.uint32(), "host": pa.string(),
            "name": pa.string(), "step": pa.uint64(), "epoch": pa.float64(), "value": pa.float64(),
            "src_topic": pa.string(), "src_partition": pa.uint16(), "src_offset": pa.uint64(),
            "gpu": pa.int16(), "gpu_uuid": pa.string()}


class ClickHouseSink:
    def __init__(self, settings: Settings, *, client_factory: Callable[[Settings], Any] = connect,
                 max_backoff_s: float = 10.0) -> None:
        self._connect = lambda: client_factory(settings)
        # A client per thread: a ClickHouse session refuses a second query while one runs, and the inserts'
        # thread (write_behind.py) writes while the processing thread reads a watermark or writes an alert.
        self._local = threading.local()
        self._counting = threading.Lock()  # the counters below: both threads write
        self._watermarks: dict[tuple[str, int], int] = {}
        self._fenced: set[int] = set()  # partitions whose earlier inserts were waited for (_await_earlier_inserts)
        group = hashlib.sha256(settings.processors_group.encode()).hexdigest()[:16]
        self._fence_prefix = f"{FENCE_PREFIX}.{group}"
        # every node's: the previous owner may have sent its insert to another (a name migrations checked)
        self._processes = (f"clusterAllReplicas('{settings.clickhouse_cluster}', system.processes)"
                           if settings.clickhouse_cluster else "system.processes")
        self._types = _types()
        self._column_types: dict[tuple[str, tuple[str, ...]], list] = {}  # see _insert_rows
        self.max_backoff_s = max_backoff_s
        self.inventory = GpuInventory()  # `gpus` rows only when a GPU's row changes (gpu_inventory.py)
        self.written_values = 0
        self.skipped_events = 0
        self.refused: Counter[str] = Counter()  # table -> rows ClickHouse refused for good

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
        return client

    # --- replay protection ----------------------------------------------------------------------

    def skip(self, topic: str, partition: int, offset: int) -> bool:
        """True if this message's rows are already in ClickHouse (written before a crash/rebalance)."""
        key = (topic, partition)
        watermark = self._watermarks.get(key)
        if watermark is None:
            if partition not in self._fenced:
                self._await_earlier_inserts(partition)
                self._fenced.add(partition)
            watermark = self._retry(lambda: self._read_watermark(topic, partition), "read the offset watermark")
            self._watermarks[key] = watermark = max(watermark, self._watermarks.get(key, -1))
        if offset <= watermark:
            self.skipped_events += 1
            return True
        return False

    def _read_watermark(self, topic: str, partition: int) -> int:
        rows = self.client.query(
            "SELECT max(offset), count() FROM ingest_offsets WHERE topic = {t:String} AND partition = {p:UInt16}",
            parameters={"t": topic, "p": partition}).result_rows
        return int(rows[0][0]) if rows and rows[0][1] else -1

    def _await_earlier_inserts(self, partition: int) -> None:
        """Waits until the inserts naming `partition` that are running now have ended (see FENCE_WAIT_S)."""
        began = time.monotonic()
        running = self._retry(lambda: self._running_inserts(partition), "list the inserts still running")
        if not running:
            return
        log.warning("partition %d: %d insert(s) of its rows still running in ClickHouse, from before it was "
                    "assigned here; its offset watermark is read once they end", partition, len(running))
        while running and time.monotonic() - began < FENCE_WAIT_S:
            time.sleep(FENCE_POLL_S)
            running &= self._retry(lambda: self._running_inserts(partition), "list the inserts still running")
        if running:
            log.error("partition %d: %d insert(s) still running after %g s (%s); reading its offset watermark "
                      "anyway: the events they write may be written twice", partition, len(running), FENCE_WAIT_S,
                      ", ".join(sorted(running)))
        else:
            log.info("partition %d: the inserts from before its assignment ended after %.1f s", partition,
                     time.monotonic() - began)

    def _running_inserts(self, partition: int) -> set[str]:
        rows = self.client.query(f"SELECT query_id FROM {self._processes} WHERE startsWith(query_id, {{p:String}})",
                                 parameters={"p": f"{self._fence_prefix}."}).result_rows
        return {query_id for (query_id,) in rows if partition in fenced_partitions(query_id)}

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their watermarks (every topic's) must be read again if they come back, and
        what this worker wrote to `gpus` may be stale by then (another owner wrote newer rows): every GPU
        is written again at its next sample, once per rebalance."""
        partitions = set(partitions)
        for key in [key for key in self._watermarks if key[1] in partitions]:
            del self._watermarks[key]
        self._fenced -= partitions
        self.inventory = GpuInventory()

    # --- writing -----------------------------------------------------------------------------------

    def write(self, batch: Batch, admit: Callable[[], None] | None = None) -> list[tuple[Source, str]]:
        """Write everything in the batch, retrying transient errors until ClickHouse takes it, and
        splitting off what it refuses for good: returns those rows' sources with the reason (rows
        without a source, such as run snapshots, are logged and counted). Blocking: run in a thread.
        admit: called before each insert, retries included; MembershipLost from it ends the write
        (membership.py: a worker whose partitions may have been given away writes nothing more)."""
        refused: list[tuple[Source | None, str]] = []
        for table, rows in batch.rows.items():
            if table == "gpus":
                rows = self.inventory.to_write(rows)
            if rows:
                refused += self._guarded(table, rows, _admitted(self._insert_rows(table), admit), _halves,
                                         _row_sources)
        for table, columns in (("metric_points", batch.metric), ("system_samples", batch.system)):
            if len(columns):
                refused += self._guarded(table, columns, _admitted(self._insert_columns(table), admit),
                                         Columns.halves, Columns.sources)
        for key, offset in batch.offsets.items():  # a stream restarted in place must skip these too
            self._watermarks[key] = max(self._watermarks.get(key, -1), offset)
        with self._counting:
            self.written_values += batch.values
        return [(source, reason) for source, reason in refused if source is not None]

    def _insert_rows(self, table: str) -> Callable[[list], Any]:
        def insert(rows: list[Mapping[str, Any]]) -> Any:
            columns = tuple(rows[0].keys())
            data = [[row[c] for c in columns] for row in rows]
            key = (table, columns)
            types = self._column_types.get(key)
            if types is None:  # clickhouse-connect would DESCRIBE the table before every insert: once here
                types = self._column_types[key] = self.client.create_insert_context(table, list(columns)).column_types
            return self.client.insert(table, data, column_names=list(columns), column_types=types,
                                      settings=self._insert_settings(table, _row_sources(rows)))

        return insert

    def _insert_columns(self, table: str) -> Callable[[Columns], Any]:
        return lambda columns: self.client.insert_arrow(table, columns.arrow(self._types),
                                                        settings=self._insert_settings(table, columns.sources(),
                                                                                       RAW_INSERT_SETTINGS))

    def _insert_settings(self, table: str, sources: list[Source | None], base: Mapping[str, Any] = INSERT_SETTINGS
                         ) -> dict[str, Any]:
        settings = dedup_settings(table, sources, base)
        if "insert_deduplication_token" in settings:  # rows from Kafka messages: a watermark counts them
            settings["query_id"] = fence_query_id(self._fence_prefix, sources)
        return settings

    def _guarded(self, table: str, part: Any, insert: Callable[[Any], Any], halves: Callable[[Any], tuple],
                 sources: Callable[[Any], list]) -> list[tuple[Source | None, str]]:
        try:
            self._retry(lambda: insert(part), f"insert into {table}")
            return []
        except Rejected as exc:
            reason = f"ClickHouse refused the row for {table}: {exc}"[:900]
            size = part.groups() if isinstance(part, Columns) else len(part)
            if size <= 1:
                log.error("%s; dead-lettered", reason)
                found = sources(part)
                with self._counting:
                    self.refused[table] += len(found)
                return [(source, reason) for source in found]
            first, second = halves(part)
            return (self._guarded(table, first, insert, halves, sources)
                    + self._guarded(table, second, insert, halves, sources))

    def _retry(self, attempt: Callable[[], Any], what: str) -> Any:
        delay, failures = 0.2, 0
        while True:
            try:
                result = attempt()
                if failures:
                    log.warning("ClickHouse is back after %d failed attempts to %s", failures, what)
                return result
            except MembershipLost:
                raise
            except Exception as exc:  # connection refused, timeouts, server errors: hold and retry
                self._column_types.clear()  # a migration may have changed a table: described again
                if not transient(exc):
                    raise Rejected(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("ClickHouse write failed (%s: %s); holding the stream and retrying to %s",
                                type(exc).__name__, str(exc)[:200], what)
                self._local.client = None  # reconnect: the old pool may hold dead connections
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)


def _admitted(insert: Callable[[Any], Any], admit: Callable[[], None] | None) -> Callable[[Any], Any]:
    if admit is None:
        return insert

    def admitted(part: Any) -> Any:
        admit()
        return insert(part)
    return admitted


def _row_sources(rows: list[Mapping[str, Any]]) -> list[Source | None]:
    """Rows that came from one Kafka message (run_events) name it; run snapshots and windows do not."""
    return [(r["src_topic"], r["src_partition"], r["src_offset"]) if "src_topic" in r else None for r in rows]


def _halves(rows: list) -> tuple[list, list]:
    middle = len(rows) // 2
    return rows[:middle], rows[middle:]
