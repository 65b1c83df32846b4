"""Raw rows without Python: ClickHouse's own Kafka engine against today's `trainmon process` worker.

Issue 13 asks whether `metric_points` can be written without Python in the path. This benchmark
measures both designs on the same backlog, in the same run, against the same services:

  A (today)  Kafka -> one `trainmon process` worker (decode, validate, rules, windows, Arrow insert)
             -> metric_points (with its rollup, epoch and offset views).
  B          Kafka -> a ClickHouse `Kafka` engine table (JSONAsString, one consumer) -> a materialized
             view that makes the sink's rows (one per value; project, run, rank, host, step, epoch,
             time; src_topic/src_partition/src_offset from the _topic/_partition/_offset virtual
             columns) -> a second copy of the schema (its own database, migrated by deploy/migrate.py,
             so the same rollup and offset views run), so A's and B's rows never mix.
             The Kafka table and its view live in a `Memory` database and are re-created after every
             ClickHouse start: with the chdb-core engine a Kafka table kept in an Atomic database stops
             ClickHouse from starting again (and its CREATE answers "Shutdown was called" although it
             works; both are tolerated here).

Steps: start Kafka and ClickHouse (no Alertmanager: the worker gets the shipped rules with no routes),
create topics and schema with deploy/topics.py and deploy/migrate.py; pre-produce --events wide metrics
events through the agent's Publisher (the real wire format: random full-precision floats, a NaN loss
now and then, integers past 2**53, epochs on half the runs), flushed before any consumer starts, so
the producer's CPU is in no figure. Then, --repeats times, A and B alternately drain that backlog
(each in a consumer group of its own, into an emptied table):
  values_per_s            values visible after the first insert / (all visible - first row visible),
                          polled every 0.1 s (startup is not in it);
  values_per_s_from_start all values / (all visible - worker start, or CREATE of the Kafka table);
  first_row_s             start -> first row visible;
  <part>_cpu_pct          % of one core each process used between first row and all visible
                          (bench/pipeline.py's CpuShare): worker, clickhouse, kafka;
  cpu_s_per_million_values  CPU seconds of all three per million values over that window;
  values_lost_or_doubled  rows in the table - values sent (must be 0).
After the repeats: A's and B's last tables are compared (a fingerprint of every row, values bit for
bit with every NaN counted equal, and a row-by-row spot check of every 101st offset).
One more A run under py-spy (not in the medians) says which share of the worker's CPU goes to writing
raw rows (Arrow conversion, insert_arrow, source lists and dedup tokens): what the worker would still
cost if B wrote the raw rows, since the rules still need every event read.
Exactly-once of B (--crash-kills drains): ClickHouse SIGKILLed right after a block becomes visible,
alternately with the Kafka broker SIGSTOPped first (the engine writes a block, raw rows and rollups,
that it then cannot commit: the crash window between write and offset commit, made certain) and
without (the kill follows the raw part within milliseconds); ClickHouse restarted (services), its
Kafka table and view re-created in the same group, the drain finished; then rows (merges stopped, so
duplicates have not collapsed yet), distinct (partition, offset, name) and the 1-minute rollup's
count are compared with the values sent.

Everything started here is stopped by PID at the end (services by services.stop_all); the bench
databases and topics are dropped. Ports: bench/pipeline.py's bench_settings
(TRAINMON_BENCH_PORT_OFFSET moves them). The machine is shared and has 2 cores: read medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.pipeline import CpuShare, bench_settings, delete_topics, say, start_worker, write_figures  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from trainmon.agent.publisher import Publisher  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.contract import Topic, envelope, topic_name  # noqa: E402
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from trainmon.deploy.services.base import pid_alive  # noqa: E402
from trainmon.deploy.topics import create_topics, wait_for_topics  # noqa: E402
from trainmon.settings import Settings  # noqa: E402
from trainmon.stream_processors.config import DEFAULT_PIPELINE  # noqa: E402
from trainmon.stream_processors.topic_ids import topic_keys  # noqa: E402

DATABASE_A = "trainmon_bench_ke"  # the worker's (settings.clickhouse_database)
DATABASE_B = "trainmon_bench_ke_engine"  # the Kafka engine's copy of the schema
QUEUE_DB = "trainmon_bench_ke_queue"  # Memory database: the Kafka table and its view
POLL_S = 0.1
PY_SPY = Path(sys.executable).parent / "py-spy"

# The contract's metrics event parsed once per message (JSONExtract into a named tuple); the values
# object as a Map(String, Float64) takes "NaN"/"Infinity"/"-Infinity" as the non-finite floats the
# contract decodes them to, and integers past 2**53 as their nearest float, as the contract does.
# time: seconds * 1e6 truncated to microseconds, as the sink's Arrow cast. Only `v` and `kind` are
# checked: nothing else of the contract's validation happens here (see docs/benchmarks.md).
EVENT_TYPE = ("Tuple(v UInt8, kind String, project String, run String, rank UInt32, host String, step UInt64, "
              "epoch Nullable(Float64), time Float64, values Map(String, Float64))")
VIEW_SQL = """CREATE MATERIALIZED VIEW {queue_db}.metrics_mv TO {target}.metric_points AS
SELECT e.project AS project, e.run AS run, e.rank AS rank, e.host AS host, name, value, e.step AS step,
       ifNull(e.epoch, nan) AS epoch, fromUnixTimestamp64Micro(toInt64(e.time * 1e6), 'UTC') AS time,
       concat(_topic, {id_suffix}) AS src_topic, _partition AS src_partition, _offset AS src_offset
FROM (SELECT JSONExtract(raw, '{event_type}') AS e, _topic, _partition, _offset FROM {queue_db}.metrics_queue)
ARRAY JOIN mapKeys(e.values) AS name, mapValues(e.values) AS value
WHERE e.kind = 'metrics' AND e.v = 1"""
QUEUE_SQL = """CREATE TABLE {queue_db}.metrics_queue (raw String) ENGINE = Kafka
SETTINGS kafka_broker_list = {brokers}, kafka_topic_list = {topic}, kafka_group_name = {group},
         kafka_format = 'JSONAsString', kafka_num_consumers = 1, kafka_max_block_size = {block:d},
         kafka_flush_interval_ms = {flush_ms:d}"""


# --- the backlog ----------------------------------------------------------------------------------


def produce_backlog(settings: Settings, spool: Path, events: int, width: int, runs: int, ranks: int,
                    seed: int = 13) -> int:
    """`events` metrics events of `width` values through the agent's Publisher, flushed; returns values sent.

    Each (run, rank, step) once, so no row collapses in the ReplacingMergeTree. Values are random
    full-precision floats (exact parsing shows), `loss` NaN every 997th event, `tokens` an odd integer
    past 2**53 (past 2**64 every 1,000th; stored as the nearest float), `epoch` on even runs only (absent: NaN)."""
    rng = random.Random(seed)
    names = [f"layer_{i:03d}/grad_norm" for i in range(width - 3)] + ["loss", "lr", "tokens"]
    publisher = Publisher(settings, spool_dir=spool)
    sent = 0
    try:
        for index in range(events):
            run, rank, step = index % runs, (index // runs) % ranks, index // (runs * ranks)
            values: dict[str, float | int] = {name: rng.random() * 10.0 ** rng.randint(-4, 4) for name in names[:-3]}
            values["loss"] = float("nan") if index % 997 == 500 else 1.0 / (1 + step) + rng.random() * 1e-3
            values["lr"] = 3e-4
            # odd integers past 2**53 (no float holds them: the nearest is stored), now and then past 2**64
            values["tokens"] = 10**20 + 1 if index % 1000 == 7 else 2**53 + 1 + 2 * step
            publisher.publish(envelope("metrics", project="bench", run=f"ke-{run:02d}", rank=rank,
                                       host=f"node-{rank}", step=step, time=time.time(),
                                       epoch=step / 1000 if run % 2 == 0 else None, values=values))
            sent += len(values)
            if index % 5000 == 4999 and not publisher.flush(120):  # bounded memory queue: never drop
                raise SystemExit("the backlog did not reach Kafka within 120 s")
        if not publisher.flush(300):
            raise SystemExit("the backlog did not reach Kafka within 300 s")
        if publisher.dropped:
            raise SystemExit(f"the publisher dropped {publisher.dropped} events")
    finally:
        publisher.close()
    return sent


def pipeline_without_routes(directory: Path) -> Path:
    """The shipped rules and windows with no routes: no Alertmanager to start, no listener of our own."""
    config = yaml.safe_load(DEFAULT_PIPELINE.read_text())
    config["routes"] = []
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- ClickHouse helpers ---------------------------------------------------------------------------


def empty_tables(client: Any, database: str) -> None:
    """Every MergeTree table of `database` emptied (raw, rollups, offsets), the migration ledger kept:
    each drain starts from nothing, and the worker's offset watermark skips nothing."""
    tables = client.query("SELECT name FROM system.tables WHERE database = {d:String} AND engine LIKE '%MergeTree' "
                          "AND name != 'schema_migrations'", parameters={"d": database}).result_rows
    for (name,) in tables:
        client.command(f"TRUNCATE TABLE {database}.`{name}`")


def count_rows(client: Any, database: str) -> int:
    return int(client.query(f"SELECT count() FROM {database}.metric_points").result_rows[0][0])


def tolerate_shutdown_error(run: Callable[[], Any], client: Any, table: str) -> None:
    """CREATE of a Kafka table answers "Shutdown was called (LOGICAL_ERROR)" although it made the table
    and consumes (a defect of the chdb-core engine): accept exactly that, when the table is there."""
    try:
        run()
    except Exception as exc:  # clickhouse-connect's DatabaseError
        database, name = table.split(".")
        exists = client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = {n:String}",
                              parameters={"d": database, "n": name}).result_rows[0][0]
        if "Shutdown was called" not in str(exc) or not exists:
            raise


def quote(text: str) -> str:
    """A ClickHouse string literal (DDL takes no query parameters, and a view must hold the value itself)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_engine(client: Any, settings: Settings, group: str, id_suffix: str, block_events: int,
                  flush_ms: int) -> None:
    """B's Kafka table (one consumer, its own group) and the view into DATABASE_B.metric_points; it
    starts consuming as soon as the view is attached."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {QUEUE_DB} ENGINE = Memory")
    topic = topic_name(Topic.METRICS, settings.kafka_topic_prefix)
    queue = QUEUE_SQL.format(queue_db=QUEUE_DB, brokers=quote(settings.bootstrap_servers), topic=quote(topic),
                             group=quote(group), block=block_events, flush_ms=flush_ms)
    tolerate_shutdown_error(lambda: client.command(queue), client, f"{QUEUE_DB}.metrics_queue")
    client.command(VIEW_SQL.format(queue_db=QUEUE_DB, target=DATABASE_B, event_type=EVENT_TYPE,
                                   id_suffix=quote(id_suffix)))


def drop_engine(client: Any) -> None:
    client.command(f"DROP TABLE IF EXISTS {QUEUE_DB}.metrics_mv SYNC")
    client.command(f"DROP TABLE IF EXISTS {QUEUE_DB}.metrics_queue SYNC")


def clickhouse_service(settings: Settings) -> Any:
    return services.services(settings, ["clickhouse"])[0]


def service_pids(settings: Settings) -> dict[str, list[int]]:
    return {s.name: [s.pid()] for s in services.services(settings, ["kafka", "clickhouse"]) if s.pid()}


# --- one drain ------------------------------------------------------------------------------------


@dataclass
class Drain:
    """What polling one drain saw; times are time.monotonic()."""

    started: float
    first: float = 0.0
    first_rows: int = 0
    done: float = 0.0
    rows: int = 0
    cpu_first: dict[str, float] = field(default_factory=dict)
    cpu_done: dict[str, float] = field(default_factory=dict)

    def figures(self, expected: int) -> dict[str, float]:
        window = max(self.done - self.first, 1e-9)
        cpu = {name: self.cpu_done[name] - self.cpu_first.get(name, 0.0) for name in self.cpu_done}
        steady_values = expected - self.first_rows
        return {
            "values_per_s": steady_values / window if steady_values > 0 else float("nan"),
            "values_per_s_from_start": expected / max(self.done - self.started, 1e-9),
            "first_row_s": self.first - self.started,
            "drain_s": window,
            **{f"{name}_cpu_pct": 100 * seconds / window for name, seconds in cpu.items()},
            "cpu_s_per_million_values": sum(cpu.values()) / max(steady_values, 1) * 1e6,
            "values_lost_or_doubled": float(self.rows - expected),
        }


def drain(client: Any, database: str, expected: int, started: float, cpu: CpuShare, timeout_s: float,
          alive: Callable[[], str | None] = lambda: None, on_first: Callable[[], None] = lambda: None) -> Drain:
    """Poll metric_points until `expected` rows are visible; CPU is read at the first row and at the end.
    `alive` returns why to give up (a worker that exited), `on_first` runs at the first row (a profiler)."""
    seen = Drain(started)
    deadline = started + timeout_s
    while True:
        rows = count_rows(client, database)
        now = time.monotonic()
        if rows and not seen.first:
            seen.first, seen.first_rows, seen.cpu_first = now, rows, cpu.used()
            on_first()
        if rows >= expected:
            seen.done, seen.rows, seen.cpu_done = now, rows, cpu.used()
            return seen
        problem = alive()
        if problem or now > deadline:
            raise SystemExit(f"{database}.metric_points: {rows:,} of {expected:,} values after "
                             f"{now - started:.0f}s; {problem or 'raise --drain-timeout?'}")
        time.sleep(POLL_S)


def settle(client: Any, database: str, rows: int, seconds: float) -> int:
    """Rows after `seconds` more: a design that writes a block twice shows it here."""
    time.sleep(seconds)
    return max(rows, count_rows(client, database))


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_worker(args: argparse.Namespace, settings: Settings, workdir: Path, expected: int, label: str,
               profile: Path | None = None) -> dict[str, float]:
    """Design A: one fresh worker (group of its own) drains the backlog into DATABASE_A. With `profile`,
    py-spy records the worker from its first row to the last (raw stacks into that file)."""
    client = connect(settings)
    empty_tables(client, DATABASE_A)
    log = workdir / f"worker-{label}.log"
    started = time.monotonic()
    worker = start_worker(settings, pipeline_without_routes(workdir), log, args.batch_events,
                          extra_args=["--group", f"ke-a-{label}-{uuid.uuid4().hex[:6]}"])
    spy: list[subprocess.Popen] = []

    def start_spy() -> None:
        if profile is not None:
            with open(workdir / "py-spy.log", "wb") as spy_log:
                spy.append(subprocess.Popen([str(PY_SPY), "record", "--pid", str(worker.pid), "--format", "raw",
                                             "--nonblocking", "--rate", str(args.profile_rate), "-o", str(profile)],
                                            stdout=subprocess.DEVNULL, stderr=spy_log))

    def exited() -> str | None:
        if worker.poll() is None:
            return None
        return f"the worker exited with {worker.returncode}; its log ends:\n" + log.read_text(errors="replace")[-2000:]

    try:
        cpu = CpuShare({"worker": [worker.pid], **service_pids(settings)})
        seen = drain(client, DATABASE_A, expected, started, cpu, args.drain_timeout, exited, start_spy)
        for proc in spy:  # SIGINT: py-spy writes what it has and exits
            stop_process(proc, signal.SIGINT, 30)
        seen.rows = settle(client, DATABASE_A, seen.rows, 2.0)
    finally:
        for proc in spy:
            stop_process(proc, signal.SIGINT, 30)
        stop_process(worker)
    return seen.figures(expected)


def run_engine(args: argparse.Namespace, settings: Settings, expected: int, label: str, id_suffix: str) -> dict[str, float]:
    """Design B: a Kafka table of its own group and its view drain the backlog into DATABASE_B."""
    client = connect(settings, database="default")
    empty_tables(client, DATABASE_B)
    drop_engine(client)
    cpu = CpuShare(service_pids(settings))
    started = time.monotonic()
    create_engine(client, settings, f"ke-b-{label}-{uuid.uuid4().hex[:6]}", id_suffix, args.ke_block_events,
                  args.ke_flush_ms)
    try:
        seen = drain(client, DATABASE_B, expected, started, cpu, args.drain_timeout)
        seen.rows = settle(client, DATABASE_B, seen.rows, 2.0 + args.ke_flush_ms / 1000)
    finally:
        drop_engine(client)
    return seen.figures(expected)


# --- checks ---------------------------------------------------------------------------------------

# Every column the sink writes, values and epochs as their bits with every NaN the same: an
# order-free fingerprint of a table's rows (sum wraps modulo 2**64).
_NAN_BITS = "toUInt64(9221120237041090560)"  # 0x7ff8000000000000
FINGERPRINT_SQL = f"""SELECT count(), sum(cityHash64(project, run, rank, host, name, step,
    if(isNaN(epoch), {_NAN_BITS}, reinterpretAsUInt64(epoch)), if(isNaN(value), {_NAN_BITS}, reinterpretAsUInt64(value)),
    toUnixTimestamp64Micro(time), src_topic, src_partition, src_offset)),
    countIf(isNaN(value)), countIf(value >= 9007199254740992), countIf(value >= 18446744073709551616)
FROM {{db}}.metric_points"""
SPOT_SQL = """SELECT count(), countIf(NOT (a.project = b.project AND a.run = b.run AND a.rank = b.rank AND a.host = b.host
    AND a.step = b.step AND (a.epoch = b.epoch OR isNaN(a.epoch) AND isNaN(b.epoch))
    AND (a.value = b.value OR isNaN(a.value) AND isNaN(b.value)) AND a.time = b.time AND a.src_topic = b.src_topic))
FROM (SELECT * FROM {a}.metric_points WHERE src_offset % 101 = 0) AS a
INNER JOIN (SELECT * FROM {b}.metric_points WHERE src_offset % 101 = 0) AS b USING (src_partition, src_offset, name)"""


def compare_tables(client: Any) -> dict[str, float]:
    """A's and B's rows of the same backlog: the same rows, values bit for bit (NaN = NaN)?"""
    a = client.query(FINGERPRINT_SQL.format(db=DATABASE_A)).result_rows[0]
    b = client.query(FINGERPRINT_SQL.format(db=DATABASE_B)).result_rows[0]
    spot = client.query(SPOT_SQL.format(a=DATABASE_A, b=DATABASE_B)).result_rows[0]
    return {"rows_identical": float(a == b), "spot_checked_rows": float(spot[0]), "spot_check_mismatches": float(spot[1]),
            "worker_nan_values": float(a[2]), "kafka_engine_nan_values": float(b[2]),
            "worker_values_from_2_53": float(a[3]), "kafka_engine_values_from_2_53": float(b[3]),
            "worker_values_from_2_64": float(a[4]), "kafka_engine_values_from_2_64": float(b[4])}


def raw_write_share(profile: Path) -> tuple[float, int]:
    """Share of the worker's on-CPU samples spent writing raw rows, and the sample count.

    Counted: stacks through the sink's columnar insert (ClickHouseSink._insert_columns's lambda: Arrow
    conversion, source list, dedup token, clickhouse-connect's insert_arrow) and Columns.extend (a
    batch's rows merged into the held ones). Not counted: decoding, rules, windows, Batch.add_metrics
    (windows are fed from those columns) and the other tables' inserts, which the worker still does
    if the raw rows come from B. py-spy leaves out samples of threads waiting on a socket or a lock."""
    total = raw = 0
    for line in profile.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        names = [frame.split(" (", 1)[0] for frame in stack.split(";")]
        if any(name.endswith("_insert_columns.<locals>.<lambda>") or name == "Columns.extend" for name in names):
            raw += int(count)
    return (raw / total if total else float("nan")), total


CRASH_KINDS = ("commit_held", "plain")


def rollup_count(client: Any) -> int:
    """Values B's 1-minute rollup has counted: every insert it got, summed for good."""
    return int(client.query(f"SELECT sum(count) FROM {DATABASE_B}.metric_rollup_1m").result_rows[0][0])


def wait_for_block(client: Any, before: int, timeout_s: float) -> int:
    """Rows once the next block shows (polled every 2 ms, so a kill follows it within milliseconds); 0 on timeout."""
    deadline = time.monotonic() + timeout_s
    while (rows := count_rows(client, DATABASE_B)) == before:
        if time.monotonic() > deadline:
            return 0
        time.sleep(0.002)
    return rows


def crash_once(args: argparse.Namespace, settings: Settings, expected: int, events: int, id_suffix: str,
               kind: str) -> dict[str, float]:
    """One drain of B with one ClickHouse SIGKILL right after a block shows, then a restart that re-creates
    the Kafka table and view in the same group, the drain to its end, and the counts.

    The engine commits a block's Kafka offsets after writing it (the raw table, then its views), so the
    crash that matters falls between the write and the commit. `plain`: the kill follows the raw part
    within milliseconds. `commit_held`: the Kafka broker is SIGSTOPped once the engine has fetched, so it
    writes a block from what it holds and cannot commit it (as when a broker is slow or failing over);
    the kill waits until the block's rollups are written too, and the broker is resumed after it.
    Merges of B's metric_points are stopped meanwhile, so duplicates are counted before they collapse."""
    client = connect(settings, database="default")
    empty_tables(client, DATABASE_B)
    drop_engine(client)
    stop_merges = f"SYSTEM STOP MERGES {DATABASE_B}.metric_points"  # duplicates share a sort key: keep them
    client.command(stop_merges)
    group = f"ke-crash-{kind}-{uuid.uuid4().hex[:6]}"
    create_engine(client, settings, group, id_suffix, args.ke_block_events, args.ke_flush_ms)
    kafka = services.services(settings, ["kafka"])[0].pid() if kind == "commit_held" else None
    try:
        if kafka:  # paused once the engine has fetched: it can still make blocks, not commit them
            read_sql = ("SELECT sum(num_messages_read) FROM system.kafka_consumers "
                        f"WHERE database = '{QUEUE_DB}' AND table = 'metrics_queue'")
            deadline = time.monotonic() + args.drain_timeout
            while not client.query(read_sql).result_rows[0][0] and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(kafka, signal.SIGSTOP)
        rows = wait_for_block(client, count_rows(client, DATABASE_B), 30 if kafka else args.drain_timeout)
        if not rows or rows >= expected:
            raise SystemExit(f"crash test ({kind}): no block to kill after (rows {rows:,} of {expected:,}); "
                             "raise --events or lower --ke-block-events")
        if kafka:  # and the block's views (rollups, offsets) written too: only the commit is missing
            deadline = time.monotonic() + 10
            while rollup_count(client) < rows and time.monotonic() < deadline:
                time.sleep(0.05)
        pid = clickhouse_service(settings).pid()
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.01)
    finally:
        if kafka:
            os.kill(kafka, signal.SIGCONT)
    say(f"crash test ({kind}): ClickHouse (pid {pid}) SIGKILLed with {rows:,} of {expected:,} values visible; "
        "restarting it and re-creating the Kafka table (same group)")
    restarted = time.monotonic()
    services.start_all(settings, ["clickhouse"], progress=say)
    client = connect(settings, database="default")
    client.command(stop_merges)  # not kept across a restart
    create_engine(client, settings, group, id_suffix, args.ke_block_events, args.ke_flush_ms)
    while count_rows(client, DATABASE_B) <= rows and time.monotonic() - restarted < args.drain_timeout:
        time.sleep(POLL_S)
    back = time.monotonic() - restarted
    sources_sql = f"SELECT uniqExact(src_partition, src_offset) FROM {DATABASE_B}.metric_points"
    while client.query(sources_sql).result_rows[0][0] < events and time.monotonic() - restarted < args.drain_timeout:
        time.sleep(0.5)
    time.sleep(3 + args.ke_flush_ms / 1000)  # a late duplicate block, if any
    total, distinct, seen = client.query(
        f"SELECT count(), uniqExact(src_partition, src_offset, name), uniqExact(src_partition, src_offset) "
        f"FROM {DATABASE_B}.metric_points").result_rows[0]
    rollup = rollup_count(client)
    drop_engine(client)
    client.command(f"SYSTEM START MERGES {DATABASE_B}.metric_points")
    # Raw duplicates share their row's sort key: merges (stopped here) would collapse them later, and
    # FINAL hides them; the rollups sum every insert for good. The kill may also fall between the raw
    # insert and its views', so the two counts can differ.
    found = {f"crash_{kind}_kills": 1.0, f"crash_{kind}_kills_doubled": float(total > distinct or rollup > distinct),
             f"crash_{kind}_visible_at_kill": float(rows), f"crash_{kind}_restart_to_new_rows_s": back,
             f"crash_{kind}_raw_rows_doubled": float(total - distinct),
             f"crash_{kind}_rollup_values_doubled": float(rollup - distinct),
             f"crash_{kind}_values_lost": float(expected - distinct), f"crash_{kind}_events_missing": float(events - seen)}
    say("  " + ", ".join(f"{name.removeprefix('crash_')} {value:,.0f}" for name, value in found.items()))
    return found


# --- report ---------------------------------------------------------------------------------------

PREFIX = {"A": "worker_", "B": "kafka_engine_"}


def figure_name(design: str, key: str) -> str:
    """JSON names: worker_values_per_s, kafka_engine_values_per_s; the worker's own CPU is worker_cpu_pct
    and the services' are worker_clickhouse_cpu_pct / kafka_engine_clickhouse_cpu_pct; CPU figures have
    the design first so that A's ClickHouse and B's ClickHouse are told apart."""
    if design == "A" and key == "worker_cpu_pct":
        return "worker_cpu_pct"
    return PREFIX[design] + key


def print_table(rows: dict[str, list[float]], single: dict[str, float]) -> None:
    print(f"\n{'figure':<48} {'median':>14} {'min':>14} {'max':>14}")
    for key, column in rows.items():
        print(f"{key:<48} {statistics.median(column):>14,.1f} {min(column):>14,.1f} {max(column):>14,.1f}")
    for key, value in single.items():
        whole = value == value and abs(value) != float("inf") and value == int(value)
        print(f"{key:<48} {value:>14,.0f}" if whole else f"{key:<48} {value:>14,.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000,
                        help="metrics events in the backlog both designs drain (default 100,000)")
    parser.add_argument("--width", type=int, default=64, help="values per event (default 64; at least 4)")
    parser.add_argument("--runs", type=int, default=24, help="runs the events are spread over (default 24)")
    parser.add_argument("--ranks", type=int, default=4, help="ranks per run (default 4)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="A and B drains, alternately; medians are reported (default 3; 0: only the "
                        "exactly-once test)")
    parser.add_argument("--batch-events", type=int, default=5000,
                        help="A: the worker's `trainmon process --batch-events` (default 5000, its default)")
    parser.add_argument("--ke-block-events", type=int, default=1600,
                        help="B: kafka_max_block_size, messages per block and insert (default 1,600: 102,400 "
                        "rows at 64 values, about the worker's 100,000-row inserts)")
    parser.add_argument("--ke-flush-ms", type=int, default=1000,
                        help="B: kafka_flush_interval_ms, the longest a partial block waits (default 1000; "
                        "the worker holds rows up to 1.5 s)")
    parser.add_argument("--drain-timeout", type=float, default=600,
                        help="seconds one drain may take before the benchmark gives up (default 600)")
    parser.add_argument("--profile-rate", type=int, default=100,
                        help="py-spy samples per second in the extra, profiled A run (default 100)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled A run")
    parser.add_argument("--crash-kills", type=int, default=2,
                        help="B's exactly-once test: drains with one ClickHouse SIGKILL each, right after a block "
                        "shows, alternately with the Kafka broker paused (the block's offset commit held) and "
                        "without; 0 skips the test (default 2; each restart waits ~45 s for the dead consumer "
                        "to leave the group)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON (bench/pipeline.py's "
                        "write_figures: with the machine and these options)")
    args = parse_args(parser, argv, events=20_000, repeats=1, crash_kills=1)
    if args.width < 4:
        parser.error("--width must be at least 4")

    settings = bench_settings(args.partitions, DATABASE_A)
    settings_b = dataclasses.replace(settings, clickhouse_database=DATABASE_B)
    say(f"starting Kafka and ClickHouse under {settings.home} ...")
    services.start_all(settings, ["kafka", "clickhouse"], progress=say)
    per_run: dict[str, list[float]] = {}
    single: dict[str, float] = {}
    try:
        create_topics(settings, progress=lambda m: None)
        wait_for_topics(settings, progress=say)  # a new topic's id is unknown until the broker lists it
        for target in (settings, settings_b):
            migrate(target, progress=lambda m: None)
        metrics_topic = topic_name(Topic.METRICS, settings.kafka_topic_prefix)
        key = topic_keys(settings, [metrics_topic]).get(metrics_topic)
        if key is None:
            raise SystemExit(f"{metrics_topic}: Kafka did not say its topic id")
        id_suffix = key[len(metrics_topic):]  # "#<id>": src_topic is "name#id", as the worker writes it
        with tempfile.TemporaryDirectory(prefix="bench-ke-") as tmp:
            workdir = Path(tmp)
            say(f"producing {args.events:,} events x {args.width} values to {metrics_topic} ...")
            began = time.monotonic()
            expected = produce_backlog(settings, workdir / "spool", args.events, args.width, args.runs, args.ranks)
            say(f"backlog of {expected:,} values in Kafka after {time.monotonic() - began:.1f}s")
            for repeat in range(args.repeats):
                for design in ("A", "B"):
                    say(f"--- run {repeat + 1}/{args.repeats}: {design} "
                        f"({'trainmon process worker' if design == 'A' else 'ClickHouse Kafka engine'})")
                    got = (run_worker(args, settings, workdir, expected, str(repeat)) if design == "A" else
                           run_engine(args, settings, expected, str(repeat), id_suffix))
                    for name, value in got.items():
                        per_run.setdefault(figure_name(design, name), []).append(value)
                    say("  " + ", ".join(f"{name} {value:,.1f}" for name, value in got.items()))
            if per_run:
                single.update(compare_tables(connect(settings, database="default")))
                say(f"A's and B's rows: {single}")
            if not args.no_profile and not PY_SPY.exists():
                say(f"no {PY_SPY}: the profiled A run is skipped (pip install py-spy)")
            elif not args.no_profile and per_run:
                say("--- profiled A run (py-spy; not in the medians)")
                profile = Path(args.json).with_suffix(".worker.pyspy.txt") if args.json else workdir / "worker.pyspy.txt"
                profile.parent.mkdir(parents=True, exist_ok=True)
                profiled = run_worker(args, settings, workdir, expected, "profiled", profile)
                share, samples = raw_write_share(profile) if profile.exists() else (float("nan"), 0)
                worker_cpu = statistics.median(per_run["worker_cpu_pct"])
                single.update({"worker_raw_write_share_pct": 100 * share, "worker_profile_samples": float(samples),
                               "worker_profiled_values_per_s": profiled["values_per_s"],
                               "worker_cpu_pct_without_raw_writes_est": worker_cpu * (1 - share)})
            for kill in range(args.crash_kills):
                kind = CRASH_KINDS[kill % len(CRASH_KINDS)]
                say(f"--- exactly-once test of B, {kill + 1}/{args.crash_kills}: ClickHouse SIGKILLed mid-drain ({kind})")
                for name, value in crash_once(args, settings, expected, args.events, id_suffix, kind).items():
                    summed = not name.endswith(("_s", "_at_kill"))  # counts add up over kills of a kind
                    single[name] = single.get(name, 0.0) + value if summed else value
    finally:
        try:
            client = connect(settings, database="default")
            drop_engine(client)
            for database in (QUEUE_DB, DATABASE_A, DATABASE_B):
                client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        except Exception as exc:  # ClickHouse down after a failed restart: stop_all still runs
            say(f"could not drop the bench databases: {exc}")
        delete_topics(settings)
        services.stop_all(settings, ["kafka", "clickhouse"], progress=say)

    figures = {name: statistics.median(column) for name, column in per_run.items()}
    figures.update(single)
    figures["repeats"] = float(args.repeats)
    figures["values_per_drain"] = float(expected)
    print_table(per_run, single)
    ratio = ""
    if per_run:
        ratio = f"; B/A values/s {figures['kafka_engine_values_per_s'] / figures['worker_values_per_s']:.2f}x"
    print(f"\n{args.repeats} drain(s) per design of {args.events:,} events x {args.width} values "
          f"({expected:,} values), {args.partitions} partitions{ratio}; {os.cpu_count()} CPUs, shared: read medians")
    if args.json:
        write_figures(Path(args.json), args, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
