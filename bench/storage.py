"""Storage cost: bytes on disk per training-metric point and per GPU figure, after merges, column by column,
and what other codecs, types and sort orders would cost on the same rows.

What is counted
- A metric point is one training value: a row of `metric_points`, (project, run, rank, metric, step) -> value,
  with its epoch, time, ingest time and Kafka source. A metrics event carrying 6 values is 6 points.
- A system value is one host or GPU figure at one sample time: a row of `system_samples`. A GPU value is one
  with gpu >= 0 (host figures have gpu = -1). A GPU sample is one GPU's figures at one instant (17 in the
  simulator: utilisation, memory, temperature, power, clocks, PCIe, throttling, ECC).
- Bytes are the active parts' `bytes_on_disk` (system.parts: compressed columns, marks, primary index,
  checksums) after OPTIMIZE ... FINAL, and per column `column_data_compressed_bytes` (system.parts_columns).
  The bench database's raw tables keep every part in the wide format (one file per column, which
  system.parts_columns can size; ClickHouse writes parts under 10 MB compact), as production's merged parts are.
  The headline divides the raw table's bytes by its points; the tables the rollup views fill
  (metric_rollup_*, metric_epochs_1m, system_rollup_*, system_latest) are counted apart, and the
  all-tables figure beside it divides raw + derived bytes by the same points.
- Prometheus stores "around 1-2 bytes per sample" on average (its storage docs; the Gorilla paper its chunks
  follow reports 1.37 B per point): a sample is an int64 millisecond timestamp and a float64 value, encoded
  delta-of-delta and Gorilla XOR in 120-sample chunks (plus block indexes), with the
  series' labels once per series in the index, as our sort-key columns cost next to nothing per row. The
  comparable figure here is value + time bytes per point; our rows carry more (step, epoch, ingest time,
  Kafka source). Noisy float64 values cost 6-8 B in any XOR store, Prometheus's included.

The data: agent/simulator's nodes (1 Hz samples of every GPU) and one run on every GPU, each rank logging a
step every --metrics-every seconds, written through the processors' sink (bench/sim_storage.py, the same
rows as bench/disk_per_gpu_day.py) into a freshly migrated database.

Candidates: every column of the two raw tables is copied, in the same row order and partitions, into a trial
table under the shipped codec and under each candidate codec or type (CANDIDATES), merged as the raw table is
(horizontally), and each copy is read back and compared bit for bit with its source ("exact"). A second copy of
the values puts each figure in parts of its own, to show which figures cost what. Lossy ones (Float32)
and beta ones (ALP needs `enable_alp_codec`, and a server as new as 26.x) are measured, never adopted. The
simulator is kinder than production in three ways, so three variants of the written rows are tried too:
- `f32`: training values as `tensor.item()` of a float32 tensor gives them (float64, 29 zero mantissa bits);
- `jitter`: timestamps off the ideal grid (each training step 0-2 % of a step late, each sample 0-5 ms);
- `shared`: Kafka offsets of a partition shared by SHARED_SOURCES sources (512 nodes on 6 partitions),
  where a host's or rank's successive messages are ~85 offsets apart in arrival order, not 1.
Sort orders: the whole raw table copied under other ORDER BYs (an ALTER cannot change it; shown for scale).

Ingest (--ingest-rounds): the same batches written by the sink into a database migrated up to
--ingest-before (the schema before migration 0008's codecs) and into one with every migration, each batch
into both in turn (which first alternates), so that other work on the machine weighs on both alike; each
round into fresh databases. Values per second of wall time per schema (median of the rounds), the median of
each batch's after/before insert time, and, for a server on this machine, values per second of its CPU time
during the inserts (what the insert costs it, less stretched by other work than the wall time).

--json figures: metric_point_bytes and system_value_bytes (raw table bytes per row), their
*_bytes_all_tables (with the tables the views fill), gpu_value_bytes, host_value_bytes, gpu_sample_bytes
(one GPU's figures at one instant; *_with_host adds the node's figures shared out per GPU),
*_prometheus_comparable_bytes (value + time columns), <table>__<column>_bytes_per_row,
trial__<table>__<column>__<data>__<codec>_bytes_per_row, order__<table>__<order>_bytes_per_row and
ingest_{before,after}_values_per_s with ingest_after_vs_before_percent (medians of the rounds),
ingest_insert_time_after_vs_before_percent (median of the batches' after/before insert times) and
ingest_server_cpu_* (per second of server CPU time).

    python bench/storage.py --json bench/results/storage.json   # 1 node x 8 GPUs, 6 h (~2-3 min)
    python bench/storage.py --quick                               # 1 h, one ingest round (~30 s)
    python bench/storage.py --upto 7                              # the schema before 0008

It starts its own ClickHouse on the bench ports (bench/pipeline.py bench_settings: 28123 plus
TRAINMON_BENCH_PORT_OFFSET) unless --url is given, and drops its databases at the end unless --keep.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.pipeline import bench_settings, say, write_figures  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from bench.sim_storage import batches, merge, recent_start, sim_config, table_bytes, write  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.migrate import MIGRATIONS_DIR, discover, migrate  # noqa: E402
from trainmon.settings import Settings  # noqa: E402
from trainmon.stream_processors.sink import ClickHouseSink  # noqa: E402

RAW = ("metric_points", "system_samples")
# Tables the raw tables' views fill, by the raw table whose points they summarise.
DERIVED = {"metric_points": ("metric_rollup_1m", "metric_rollup_1h", "metric_epochs_1m",
                             "metric_epochs_1h"),
           "system_samples": ("system_rollup_1m", "system_rollup_1h", "system_latest")}
OTHER = ("gpus", "ingest_offsets")  # a few rows per GPU or partition: listed, in no per-point figure
# Per-figure partitions of the trial tables: each figure's bytes show apart (host and GPU figures apart).
FIGURE_KEY = {"metric_points": "name", "system_samples": "(gpu < 0, name)"}
# Every part in the wide format, whose columns system.parts_columns can size one by one (a compact part, the
# default below 10 MB, reports 0 per column); production's merged parts are that large anyway.
WIDE = "min_bytes_for_wide_part = 0, min_rows_for_wide_part = 0"
# Copies merged as the raw tables are, horizontally (a table of 11 or more columns outside its key would be
# merged column by column); columns without a codec get the raw part's default explicitly (part_default_codec).
TRIAL = f"{WIDE}, enable_vertical_merge_algorithm = 0"
PROMETHEUS_BYTES = (1.0, 2.0)  # per sample, as its storage documentation states
SHARED_SOURCES = 85  # hosts (or ranks) writing into one Kafka partition: 512 nodes on 6 partitions
JITTER_SAMPLE_MS = 5  # a node daemon's sample lands 0-5 ms after its tick
JITTER_STEP = 0.02  # a training step ends 0-2 % of a step late (the simulator's own step-time noise)
INT_CODECS = ("T64, ZSTD(1)", "Delta, ZSTD(1)", "DoubleDelta, ZSTD(1)", "GCD, T64, ZSTD(1)")


@dataclass(frozen=True)
class Candidate:
    """One stand-in for a raw column: its type and codec, which rows it holds, and what may be concluded."""

    column: str
    type: str  # "" = the raw column's type
    codec: str  # the CODEC(...) body; "" = the default codec of the raw table's part
    data: str = "as written"  # or "f32", "jitter", "shared": the variants of the module docstring
    lossy: bool = False  # reads back other values: measured, never adopted
    beta: bool = False  # needs a setting and a recent server: measured, not adopted
    integral: bool = False  # Int64 copy of the values: counted only on figures whose values are all integers

    @property
    def label(self) -> str:
        kind = f"{self.type} " if self.type else ""
        return f"{kind}{self.codec or 'default codec'}"


def _floats(column: str, data: str = "as written") -> list[Candidate]:
    """Float codecs: XOR (Gorilla), prediction (FPC), decimal (ALP), differences, or a general compressor."""
    codecs = ["Gorilla, ZSTD(1)", "Gorilla, ZSTD(3)", "ZSTD(1)", "ZSTD(3)", "Delta, ZSTD(1)", "DoubleDelta, ZSTD(1)",
              "FPC, ZSTD(1)", "FPC"]
    return ([Candidate(column, "", c, data) for c in codecs]
            + [Candidate(column, "", c, data, beta=True) for c in ("ALP", "ALP, ZSTD(1)")])


def _times(column: str, data: str = "as written") -> list[Candidate]:
    """Timestamp codecs: a regular grid favours DoubleDelta, a jittered one Delta."""
    return [Candidate(column, "", c, data) for c in ("DoubleDelta, ZSTD(1)", "Delta, ZSTD(1)", "Delta, ZSTD(3)",
                                                     "ZSTD(1)", "T64, ZSTD(1)")]


def _offsets(data: str = "as written") -> list[Candidate]:
    """Kafka offset codecs: rising by a constant (one source per partition) or by a noisy step (shared)."""
    return [Candidate("src_offset", "", c, data) for c in ("Delta, ZSTD(1)", "Delta, ZSTD(3)", "DoubleDelta, ZSTD(1)",
                                                           "T64, ZSTD(1)", "Delta, T64, ZSTD(1)")]


def _values(extra: list[Candidate]) -> list[Candidate]:
    """The value column's candidates, with the lossy Float32 ones measured to show what exactness costs."""
    return (_floats("value") + extra
            + [Candidate("value", "Float32", c, lossy=True) for c in ("Gorilla, ZSTD(1)", "ZSTD(1)")])


CANDIDATES: dict[str, list[Candidate]] = {
    "metric_points": [
        *_values(_floats("value", "f32")),  # training values: float32 tensors' .item() is common
        *[Candidate("epoch", "", c) for c in ("Gorilla, ZSTD(1)", "DoubleDelta, ZSTD(1)", "Delta, ZSTD(1)",
                                               "ZSTD(1)", "FPC, ZSTD(1)")],
        Candidate("epoch", "", "ALP, ZSTD(1)", beta=True),
        *_times("time"), *_times("time", "jitter"),
        *[Candidate("step", "", c) for c in ("DoubleDelta, ZSTD(1)", "Delta, ZSTD(1)", "T64, ZSTD(1)")],
        *_times("ingest_time"),
        *_offsets(), *_offsets("shared"),
        *[Candidate("rank", "", c) for c in ("", "ZSTD(1)", "T64, ZSTD(1)")],
        *[Candidate("run", "", c) for c in ("", "ZSTD(1)", "ZSTD(3)")],
        Candidate("run", "LowCardinality(String)", ""),
    ],
    "system_samples": [
        *_values([Candidate("value", "Int64", c, integral=True) for c in INT_CODECS]),  # NVML figures: integers
        *_times("time"), *_times("time", "jitter"),
        *_times("ingest_time"),
        *_offsets(), *_offsets("shared"),
        *[Candidate("gpu", "", c) for c in ("", "ZSTD(1)", "T64, ZSTD(1)")],
    ],
}
# Other sort orders, each the whole raw table copied: (label, ORDER BY).
ORDERS = {"metric_points": [("metric, step, rank", "project, run, name, step, rank"),
                            ("rank, step, metric", "project, run, rank, step, name")],
          "system_samples": [("figure, time, GPU", "host, name, time, gpu")]}


def variant(table: str, column: str, data: str, metrics_every: float) -> str:
    """SQL for a column's values in a data variant (see the module docstring), from the raw row."""
    if data == "as written":
        return column
    if data == "f32":
        return "toFloat64(toFloat32(value))"
    if data == "jitter" and table == "metric_points":
        late_us = max(1, int(JITTER_STEP * metrics_every * 1e6))
        return f"time + toIntervalMicrosecond(cityHash64(run, rank, step) % {late_us})"
    if data == "jitter":
        return f"time + toIntervalMillisecond(cityHash64(host, time) % {JITTER_SAMPLE_MS + 1})"
    if data == "shared":
        source = "run, rank, step" if table == "metric_points" else "host, toStartOfSecond(time)"
        return (f"toUInt64(intDiv(toUnixTimestamp64Milli(toDateTime64(time, 3)), 1000)) * {SHARED_SOURCES} "
                f"+ cityHash64({source}) % {SHARED_SOURCES}")
    raise ValueError(data)


def normal_codec(codec: str) -> str:
    """A codec as written here, from system.columns' form: 'CODEC(Delta(8), ZSTD(1))' -> 'Delta, ZSTD(1)'."""
    inner = codec[len("CODEC("):-1] if codec.startswith("CODEC(") else codec
    return re.sub(r"\b(Delta|DoubleDelta|Gorilla|FPC|ALP)\(\d+(, \d+)?\)", r"\1", inner)


@contextmanager
def migrations_upto(version: int | None) -> Iterator[Path]:
    """A folder holding the shipped migrations up to `version` (all of them when None)."""
    if version is None:
        yield MIGRATIONS_DIR
        return
    with tempfile.TemporaryDirectory(prefix="trainmon-migrations-") as tmp:
        for migration in discover():
            if migration.version <= version:
                shutil.copy(migration.path, tmp)
        yield Path(tmp)


def fresh_database(settings: Settings, version: int | None) -> None:
    """Drop the settings' database and migrate it anew, up to `version`."""
    connect(settings, database="default").command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database} SYNC")
    with migrations_upto(version) as directory:
        migrate(settings, progress=lambda m: None, directory=directory)


# --- measuring -----------------------------------------------------------------------------------------

def columns_of(client: Any, table: str) -> list[tuple[str, str, str, bool]]:
    """(name, type, codec, in sorting key) of each column of a table, in table order."""
    return [(n, t, normal_codec(c), bool(k)) for n, t, c, k in client.query(
        "SELECT name, type, compression_codec, is_in_sorting_key FROM system.columns "
        "WHERE database = currentDatabase() AND table = {t:String} ORDER BY position", parameters={"t": table}
    ).result_rows]


def column_bytes(client: Any, table: str) -> dict[str, tuple[int, int, int]]:
    """column -> (rows, compressed, uncompressed bytes) over the active parts."""
    rows = client.query(
        "SELECT column, sum(rows), sum(column_data_compressed_bytes), sum(column_data_uncompressed_bytes) "
        "FROM system.parts_columns WHERE database = currentDatabase() AND table = {t:String} AND active "
        "GROUP BY column", parameters={"t": table}).result_rows
    return {c: (int(r), int(b), int(u)) for c, r, b, u in rows}


@dataclass
class Trial:
    """The trial table of one raw table: per candidate and per figure, compressed bytes and exactness."""

    table: str
    shipped: dict[str, tuple[str, str]]  # column -> (type, codec) as the raw table has it
    bytes: dict[tuple[int, Any], int]  # (candidate index, figure) -> compressed bytes; index -1-k: raw column k
    rows: dict[Any, int]  # figure -> rows
    integral: set[Any]  # figures whose values are all integers
    changed: dict[int, int]  # candidate index -> values that read back different
    candidates: list[Candidate]
    raw_columns: list[str]

    def total(self, index: int, figures: set[Any] | None = None) -> int:
        return sum(b for (i, f), b in self.bytes.items() if i == index and (figures is None or f in figures))

    def shipped_index(self, column: str) -> int:
        return -1 - self.raw_columns.index(column)

    def per_row(self, index: int, figures: set[Any] | None = None) -> float:
        rows = sum(r for f, r in self.rows.items() if figures is None or f in figures)
        return self.total(index, figures) / rows if rows else float("nan")


def part_default_codec(client: Any, table: str) -> str:
    """The codec the table's biggest active part gives columns declared without one ('LZ4', 'ZSTD(3)')."""
    rows = client.query("SELECT default_compression_codec FROM system.parts WHERE database = currentDatabase() "
                        "AND table = {t:String} AND active ORDER BY bytes_on_disk DESC LIMIT 1",
                        parameters={"t": table}).result_rows
    return normal_codec(rows[0][0]) if rows else "LZ4"


def table_keys(client: Any, table: str) -> tuple[str, str]:
    """(sorting key, partition key) of a table, as system.tables writes them."""
    return client.query("SELECT sorting_key, partition_key FROM system.tables WHERE database = currentDatabase() "
                        "AND name = {t:String}", parameters={"t": table}).result_rows[0]


def run_trial(client: Any, table: str, candidates: list[Candidate], partition: str | None,
              metrics_every: float) -> Trial:
    """Copy every column of `table` and each candidate into one table in the raw table's row order, merge it,
    measure each copy's compressed bytes per partition, and read each copy back against its source.

    `partition` None keeps the raw table's partitions, so neighbouring rows are the raw table's (what its
    codecs see); FIGURE_KEY puts each figure in parts of its own, to tell the figures' costs apart."""
    raw = columns_of(client, table)
    beta = client.query("SELECT count() FROM system.settings WHERE name = 'enable_alp_codec'").result_rows[0][0]
    candidates = [c for c in candidates if beta or not c.beta]  # a server without ALP: none of those
    key, raw_partition = table_keys(client, table)
    types = {name: kind for name, kind, _, _ in raw}
    # A column without a codec gets the part's default, which the server picks by part size (here LZ4, and
    # ZSTD(3) for merged parts over ~100 MB): the copies, in a bigger table, get the raw part's explicitly.
    default = part_default_codec(client, table)
    definitions = [f"`{n}` {t} CODEC({c or default})" for n, t, c, _ in raw]
    sources = [f"`{n}`" for n, _, _, _ in raw]
    for i, cand in enumerate(candidates):
        definitions.append(f"c{i} {cand.type or types[cand.column]} CODEC({cand.codec or default})")
        expr = variant(table, cand.column, cand.data, metrics_every)
        if cand.integral:
            expr = "if(value = round(value) AND abs(value) < 1e18, toInt64(value), 0)"
        sources.append(expr)
    trial = f"storage_trial_{table}"
    settings = {"max_partitions_per_insert_block": 0, "async_insert": 0} | ({"enable_alp_codec": 1} if beta else {})
    client.command(f"DROP TABLE IF EXISTS {trial} SYNC")
    client.command(f"CREATE TABLE {trial} ({', '.join(definitions)}) ENGINE = MergeTree "
                   f"PARTITION BY {partition or raw_partition} ORDER BY ({key}) SETTINGS {TRIAL}", settings=settings)
    client.command(f"INSERT INTO {trial} SELECT {', '.join(sources)} FROM {table}", settings=settings)
    client.command(f"OPTIMIZE TABLE {trial} FINAL")
    index = {f"c{i}": i for i in range(len(candidates))} | {n: -1 - k for k, (n, _, _, _) in enumerate(raw)}
    measured: dict[tuple[int, Any], int] = defaultdict(int)
    rows: dict[Any, int] = defaultdict(int)
    for partition, column, count, compressed in client.query(
            "SELECT partition, column, sum(rows), sum(column_data_compressed_bytes) FROM system.parts_columns "
            "WHERE database = currentDatabase() AND table = {t:String} AND active GROUP BY partition, column",
            parameters={"t": trial}).result_rows:
        figure = partition_value(partition)
        measured[(index[column], figure)] += int(compressed)
        if column == raw[0][0]:
            rows[figure] += int(count)
    integral = {(int(host), name) for host, name, odd in client.query(
        f"SELECT gpu < 0, name, countIf(NOT isFinite(value) OR value != round(value) OR abs(value) >= 1e18) "
        f"FROM {table} GROUP BY 1, 2").result_rows if not odd} if table == "system_samples" else set()
    checks = []
    for i, cand in enumerate(candidates):
        expr = variant(table, cand.column, cand.data, metrics_every)
        if cand.integral:
            checks.append(f"countIf(value = round(value) AND abs(value) < 1e18 AND toFloat64(c{i}) != value)")
        elif (cand.type or types[cand.column]).startswith("Float"):
            checks.append(f"countIf(reinterpretAsUInt64(toFloat64(c{i})) != reinterpretAsUInt64(toFloat64({expr})))")
        else:
            checks.append(f"countIf(c{i} != {expr})")
    changed = client.query(f"SELECT {', '.join(checks)} FROM {trial}").result_rows[0]
    client.command(f"DROP TABLE IF EXISTS {trial} SYNC")
    return Trial(table, {n: (t, c) for n, t, c, _ in raw}, dict(measured), dict(rows), integral,
                 dict(enumerate(int(c) for c in changed)), candidates, [n for n, _, _, _ in raw])


def partition_value(text: str) -> Any:
    """A partition as system.parts writes it ("'loss'", "(1,'util_percent')") as a Python value."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def figure_name(table: str, figure: Any) -> str:
    """'loss', or 'gpu util_percent' / 'host cpu_percent' from a (gpu < 0, name) partition."""
    if table == "system_samples":
        host, name = figure
        return f"{'host' if host else 'gpu'} {name}"
    return str(figure)


def run_orders(client: Any, table: str) -> list[tuple[str, str, float, float]]:
    """(label, ORDER BY, bytes per row of all columns, of value) of the whole table under each sort order."""
    out = []
    for label, order in [("shipped", None), *ORDERS[table]]:
        order = order or table_keys(client, table)[0]
        copy = f"storage_order_{table}"
        client.command(f"DROP TABLE IF EXISTS {copy} SYNC")
        client.command(f"CREATE TABLE {copy} AS {table} ENGINE = MergeTree ORDER BY ({order}) SETTINGS {TRIAL}")
        client.command(f"INSERT INTO {copy} SELECT * FROM {table}", settings={"async_insert": 0})
        client.command(f"OPTIMIZE TABLE {copy} FINAL")
        sizes = column_bytes(client, copy)
        rows = next(iter(sizes.values()))[0]
        out.append((label, order, sum(b for _, b, _ in sizes.values()) / rows, sizes["value"][1] / rows))
        client.command(f"DROP TABLE IF EXISTS {copy} SYNC")
    return out


def server_process(url: str) -> psutil.Process | None:
    """The process listening on a loopback ClickHouse URL's port (None for a remote server): the CPU time it
    spends is the insert's own cost, which other work on the machine stretches less than the wall time."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.port is None:
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == parsed.port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def ingest(settings: Settings, args: argparse.Namespace) -> dict[str, list[float]]:
    """The same batches through the sink into the schema before (up to --ingest-before) and after (all
    migrations), each batch into both, one after the other (which first alternates): the load of other work
    on the machine then falls on both alike. Each round into fresh databases. Returns per schema the values
    per second of wall time of each round ("before", "after") and, for a server on this machine, per second of
    its CPU time during the inserts ("before_cpu", "after_cpu"); under "ratio" each batch's after/before
    insert time."""
    counts: dict[str, int] = {}
    made = list(batches(sim_config(args.nodes, args.gpus, args.ingest_minutes / 60, args.metrics_every, seed=2),
                        recent_start(args.ingest_minutes / 60), args.batch_events, counts))
    schemas = {"before": args.ingest_before, "after": None}
    server = server_process(settings.clickhouse)
    rates: dict[str, list[float]] = {"before": [], "after": [], "before_cpu": [], "after_cpu": [], "ratio": []}
    for round_ in range(args.ingest_rounds):
        sinks, spent, cpu = {}, {name: 0.0 for name in schemas}, {name: 0.0 for name in schemas}
        for name, version in schemas.items():
            target = settings.replace(clickhouse_database=f"{args.database}_ingest_{name}")
            fresh_database(target, version)
            sinks[name] = ClickHouseSink(target)
            sinks[name].client.query("SELECT 1")  # connected before the clock starts
        for i, batch in enumerate(made):
            took = {}
            for name in (("before", "after") if (i + round_) % 2 == 0 else ("after", "before")):
                began, used = time.perf_counter(), sum(server.cpu_times()[:2]) if server else 0.0
                sinks[name].write(batch)
                took[name] = time.perf_counter() - began
                spent[name] += took[name]
                cpu[name] += sum(server.cpu_times()[:2]) - used if server else 0.0
            rates["ratio"].append(took["after"] / took["before"])
        for name in schemas:
            rates[name].append(counts["values"] / spent[name])
            if server:
                rates[f"{name}_cpu"].append(counts["values"] / cpu[name])
            connect(settings, database="default").command(f"DROP DATABASE IF EXISTS {args.database}_ingest_{name} SYNC")
        say(f"  ingest round {round_ + 1} ({counts['values']:,} values in {len(made)} batches): before "
            f"{rates['before'][-1]:,.0f}, after {rates['after'][-1]:,.0f} values/s")
    return rates


# --- reporting ---------------------------------------------------------------------------------------------

def report(client: Any, args: argparse.Namespace, counts: dict[str, int]) -> dict[str, float]:
    """Print the tables and return the figures (unit-named) for --json."""
    figures: dict[str, float] = {}
    sizes = table_bytes(client)
    points = {"metric_points": sizes["metric_points"][0], "system_samples": sizes["system_samples"][0]}
    print(f"\n{'table':<18} {'kind':<8} {'rows':>11} {'bytes on disk':>14} {'B/row':>8} {'B per raw point':>16}")
    for raw in RAW:
        for table in (raw, *DERIVED[raw]):
            rows, on_disk, _ = sizes.get(table, (0, 0, 0))
            kind = "raw" if table == raw else "derived"
            print(f"{table:<18} {kind:<8} {rows:>11,} {on_disk:>14,} {on_disk / max(rows, 1):>8.2f} "
                  f"{on_disk / points[raw]:>16.3f}")
    for table in OTHER:
        rows, on_disk, _ = sizes.get(table, (0, 0, 0))
        print(f"{table:<18} {'other':<8} {rows:>11,} {on_disk:>14,} {on_disk / max(rows, 1):>8.2f} {'-':>16}")

    for raw in RAW:
        family = sizes[raw][1] + sum(sizes.get(t, (0, 0, 0))[1] for t in DERIVED[raw])
        prefix = "metric_point" if raw == "metric_points" else "system_value"
        figures[f"{prefix}_bytes"] = sizes[raw][1] / points[raw]
        figures[f"{prefix}_bytes_all_tables"] = family / points[raw]
        figures[f"{raw}_rows"] = points[raw]

    trials, by_figure = {}, {}
    if args.candidates:
        for raw in RAW:
            say(f"trying {len(CANDIDATES[raw])} candidate copies of {raw}'s columns ...")
            trials[raw] = run_trial(client, raw, CANDIDATES[raw], None, args.metrics_every)
            values = [c for c in CANDIDATES[raw] if c.column == "value" and c.data == "as written"]
            by_figure[raw] = run_trial(client, raw, values, FIGURE_KEY[raw], args.metrics_every)
    for raw in RAW:
        columns = column_bytes(client, raw)
        default = f"{part_default_codec(client, raw)} (default)"
        shipped = {n: (t, c or default) for n, t, c, _ in columns_of(client, raw)}
        data = sum(b for _, b, _ in columns.values())
        on_disk = sizes[raw][1]
        print(f"\n{raw}: {points[raw]:,} rows, {on_disk:,} bytes on disk = {on_disk / points[raw]:.3f} B per row")
        print(f"  {'column':<14} {'type':<24} {'codec':<22} {'compressed':>11} {'uncompressed':>13} {'B/row':>7} "
              f"{'share':>6}")
        for column, (rows, compressed, uncompressed) in sorted(columns.items(), key=lambda kv: -kv[1][1]):
            kind, codec = shipped[column]
            print(f"  {column:<14} {kind[:24]:<24} {codec[:22]:<22} {compressed:>11,} "
                  f"{uncompressed:>13,} {compressed / points[raw]:>7.3f} {100 * compressed / on_disk:>5.1f}%")
            figures[f"{raw}__{column}_bytes_per_row"] = compressed / points[raw]
        overhead = on_disk - data
        print(f"  {'part overhead (marks, primary index, checksums, ...)':<62} {overhead:>11,} {'':>13} "
              f"{overhead / points[raw]:>7.3f} {100 * overhead / on_disk:>5.1f}%")
        prefix = "metric_point" if raw == "metric_points" else "system_value"
        figures[f"{prefix}_prometheus_comparable_bytes"] = (columns["value"][1] + columns["time"][1]) / points[raw]
        if raw in trials:
            candidates_table(trials[raw], figures)

    if "system_samples" in by_figure:
        gpu_figures(by_figure["system_samples"], sizes["system_samples"][1], args, figures)
    if "metric_points" in by_figure:
        per_figure(by_figure["metric_points"], args.top, figures)
    if args.orders:
        for raw in RAW:
            print(f"\n{raw} under other sort orders (whole table copied; ORDER BY cannot be altered in place):")
            print(f"  {'order':<22} {'B/row, all columns':>19} {'B/row, value':>13}  ORDER BY")
            for label, order, per_row, value in run_orders(client, raw):
                print(f"  {label:<22} {per_row:>19.3f} {value:>13.3f}  {order}")
                figures[f"order__{raw}__{label}_bytes_per_row"] = per_row

    low, high = PROMETHEUS_BYTES
    print(f"\nAgainst Prometheus ({low:g}-{high:g} B per sample, a sample being an int64 ms timestamp + a float64 "
          "value, delta-of-delta + Gorilla XOR; labels once per series):")
    for key, what in (("metric_point", "training metric point"), ("gpu_value", "GPU figure"),
                      ("system_value", "system value (host + GPU)")):
        if f"{key}_bytes" in figures:
            comparable = figures.get(f"{key}_prometheus_comparable_bytes")
            extra = f"; value + time alone {comparable:.2f} B" if comparable is not None else ""
            print(f"  {what:<26} {figures[f'{key}_bytes']:.2f} B per point in the raw table{extra}; "
                  f"{figures.get(f'{key}_bytes_all_tables', float('nan')):.2f} B with its rollups")
    print("  A noisy float64 (a loss with its batch noise, full 52-bit mantissa) costs 6-8 B in any XOR store; "
          "the 1-2 B Prometheus quotes are for integers, counters and slowly changing gauges.")
    return figures


def candidates_table(trial: Trial, figures: dict[str, float]) -> None:
    """Each candidate against its column's shipped codec on the same values, rows and parts."""
    print(f"\n  candidates for {trial.table} (copies in the raw table's row order and parts; 'vs shipped' compares "
          "with the shipped codec on the same data):")
    print(f"  {'column':<12} {'data':<11} {'type and codec':<36} {'B/row':>8} {'vs shipped':>11}  exact")
    for column in dict.fromkeys(c.column for c in trial.candidates):
        _, codec = trial.shipped[column]
        print(f"  {column:<12} {'as written':<11} {('shipped: ' + (codec or 'default codec'))[:36]:<36} "
              f"{trial.per_row(trial.shipped_index(column)):>8.3f} {'':>11}  yes")
        for i, cand in enumerate(trial.candidates):
            if cand.column != column or cand.integral:  # Int64 copies: per figure, below
                continue
            per_row = trial.per_row(i)
            reference = trial.per_row(trial.shipped_index(column))
            if cand.data != "as written":  # the shipped codec on the same variant's values
                reference = next((trial.per_row(j) for j, other in enumerate(trial.candidates)
                                  if other.data == cand.data and other.column == column and other.codec == codec
                                  and not other.type), float("nan"))
            changed = trial.changed.get(i, 0)
            exact = "yes" if not changed else f"NO: {changed:,} of {sum(trial.rows.values()):,} values changed"
            beta = " (beta: enable_alp_codec)" if cand.beta else ""
            print(f"  {column:<12} {cand.data:<11} {cand.label[:36]:<36} {per_row:>8.3f} "
                  f"{100 * (per_row / reference - 1):>+10.1f}%  {exact}{beta}")
            figures[f"trial__{trial.table}__{column}__{cand.data}__{cand.label}_bytes_per_row"] = per_row


def gpu_figures(trial: Trial, on_disk: int, args: argparse.Namespace, figures: dict[str, float]) -> None:
    """Bytes per GPU value, per GPU sample and per host value: the raw table's bytes shared out by what each
    kind of row's columns take in the per-figure trial's shipped copies (part overhead pro rata)."""
    gpu = {f for f in trial.rows if not f[0]}
    host = {f for f in trial.rows if f[0]}
    shipped = [trial.shipped_index(c) for c in trial.raw_columns]
    gpu_bytes = sum(trial.total(i, gpu) for i in shipped)
    host_bytes = sum(trial.total(i, host) for i in shipped)
    scale = on_disk / (gpu_bytes + host_bytes)
    gpu_rows, host_rows = sum(trial.rows[f] for f in gpu), sum(trial.rows[f] for f in host)
    samples = gpu_rows / len(gpu)  # a GPU sample: one row per GPU figure
    figures["gpu_value_bytes"] = gpu_bytes * scale / gpu_rows
    figures["host_value_bytes"] = host_bytes * scale / host_rows
    figures["gpu_sample_bytes"] = gpu_bytes * scale / samples
    figures["gpu_sample_bytes_with_host"] = on_disk / samples
    value_time = sum(trial.total(trial.shipped_index(c), gpu) for c in ("value", "time"))
    figures["gpu_value_prometheus_comparable_bytes"] = value_time * scale / gpu_rows
    figures["gpu_value_bytes_all_tables"] = (figures["system_value_bytes_all_tables"] * figures["gpu_value_bytes"]
                                             / figures["system_value_bytes"])
    print(f"\nGPU figures: {gpu_rows:,} GPU values ({len(gpu)} figures per GPU sample, {samples:,.0f} GPU samples), "
          f"{host_rows:,} host values")
    comparable = figures["gpu_value_prometheus_comparable_bytes"]
    print(f"  per GPU value {figures['gpu_value_bytes']:.3f} B (value + time {comparable:.3f} "
          f"B), per GPU sample {figures['gpu_sample_bytes']:.1f} B ({figures['gpu_sample_bytes_with_host']:.1f} B with "
          f"the host's figures shared out), per host value {figures['host_value_bytes']:.3f} B")
    per_figure(trial, args.top, figures)


def per_figure(trial: Trial, top: int, figures: dict[str, float]) -> None:
    """The costliest figures' values under the shipped codec, the best exact production-safe candidate, and for
    figures whose values are all integers the best Int64 codec (a typed column the long form does not have)."""
    shipped = trial.shipped_index("value")
    safe = [i for i, c in enumerate(trial.candidates) if c.column == "value" and c.data == "as written"
            and not c.lossy and not c.beta and not c.integral and not trial.changed.get(i)]
    ints = [i for i, c in enumerate(trial.candidates) if c.integral]
    ranked = sorted(trial.rows, key=lambda f: -trial.total(shipped, {f}))
    print(f"\n  {trial.table}: the {min(top, len(ranked))} costliest of {len(ranked)} figures by their value column "
          "(each figure in parts of its own, so neighbours differ from the raw table's)")
    print(f"  {'figure':<32} {'rows':>10} {'shipped B':>10} {'best exact Float64':>30} {'Int64 best':>26}")
    for figure in ranked[:top]:
        best = min(safe, key=lambda i: trial.per_row(i, {figure})) if safe else None
        best_text = f"{trial.candidates[best].codec} {trial.per_row(best, {figure}):.3f}" if best is not None else "-"
        int_text = "-"
        if figure in trial.integral and ints:
            j = min(ints, key=lambda i: trial.per_row(i, {figure}))
            int_text = f"{trial.candidates[j].codec} {trial.per_row(j, {figure}):.3f}"
        print(f"  {figure_name(trial.table, figure)[:32]:<32} {trial.rows[figure]:>10,} "
              f"{trial.per_row(shipped, {figure}):>10.3f} {best_text[:30]:>30} {int_text[:26]:>26}")
    if trial.integral and ints:
        count = sum(trial.rows[f] for f in trial.integral)
        line = ", ".join(f"{trial.candidates[i].label} {trial.per_row(i, trial.integral):.3f}" for i in ints)
        print(f"  the {len(trial.integral)} integer figures ({count:,} values): Float64 shipped "
              f"{trial.per_row(shipped, trial.integral):.3f} B per value; as Int64: {line}")
        figures["integer_figures_float64_bytes_per_value"] = trial.per_row(shipped, trial.integral)
        figures["integer_figures_int64_best_bytes_per_value"] = min(trial.per_row(i, trial.integral) for i in ints)


# --- main ------------------------------------------------------------------------------------------------------

@contextmanager
def clickhouse(settings: Settings, url: str | None) -> Iterator[Settings]:
    """The bench ClickHouse (started here, stopped at the end) or the one at `url`."""
    if url:
        yield settings.replace(clickhouse_url=url)
        return
    say(f"starting ClickHouse under {settings.home} ...")
    started = [s.name for s in services.start_all(settings, names=["clickhouse"], progress=say)]
    try:
        yield settings
    finally:
        if started:
            services.stop_all(settings, started, progress=say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1, help="simulated nodes (default 1)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node; one rank on each (default 8)")
    parser.add_argument("--hours", type=float, default=6.0,
                        help="hours of 1 Hz samples and training steps written (default 6: ~4.4 M values)")
    parser.add_argument("--metrics-every", type=float, default=1.0,
                        help="seconds between two logged training steps of each rank (default 1.0)")
    parser.add_argument("--batch-events", type=int, default=2000, help="events per sink insert (default 2000)")
    parser.add_argument("--upto", type=int, metavar="VERSION",
                        help="apply the migrations up to VERSION only (default: all; 7 is the schema before 0008's "
                             "codecs)")
    parser.add_argument("--no-candidates", dest="candidates", action="store_false",
                        help="skip the candidate codecs and types (the trial tables)")
    parser.add_argument("--no-orders", dest="orders", action="store_false",
                        help="skip the other sort orders (a copy of each raw table per order)")
    parser.add_argument("--top", type=int, default=12, help="figures listed per table, costliest first (default 12)")
    parser.add_argument("--ingest-rounds", type=int, default=3,
                        help="rounds of the insert-throughput comparison, before against after (default 3; 0 skips)")
    parser.add_argument("--ingest-minutes", type=float, default=30.0,
                        help="simulated minutes written per round and schema (default 30: ~360 k values)")
    parser.add_argument("--ingest-before", type=int, default=7, metavar="VERSION",
                        help="the 'before' schema of the throughput comparison: migrations up to VERSION (default 7)")
    parser.add_argument("--url", help="an existing ClickHouse HTTP URL (default: start one on the bench ports)")
    parser.add_argument("--database", default="trainmon_bench_storage",
                        help="database (default trainmon_bench_storage; the throughput rounds use <database>_ingest_*)")
    parser.add_argument("--keep", action="store_true", help="keep the measured database afterwards")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, hours=1.0, ingest_rounds=1, ingest_minutes=10.0)

    figures: dict[str, float] = {}
    with clickhouse(bench_settings(1, database=args.database), args.url) as settings:
        admin = connect(settings, database="default")
        say(f"ClickHouse {admin.query('SELECT version()').result_rows[0][0]} at {settings.clickhouse}")
        try:
            fresh_database(settings, args.upto)
            client = connect(settings)
            for table in RAW:
                client.command(f"ALTER TABLE {table} MODIFY SETTING {WIDE}")
            config = sim_config(args.nodes, args.gpus, args.hours, args.metrics_every)
            say(f"writing {args.hours:g} h of {args.nodes} node(s) x {args.gpus} GPUs at 1 Hz, one run logging every "
                f"{args.metrics_every:g} s, through the sink in batches of {args.batch_events} events ...")
            began = time.monotonic()
            counts = write(settings, config, recent_start(args.hours), args.batch_events)
            say(f"  {counts['system']:,} system and {counts['metrics']:,} metrics events, {counts['values']:,} values "
                f"in {time.monotonic() - began:.0f} s; merging (OPTIMIZE ... FINAL)")
            merge(client, [*RAW, *(t for raw in RAW for t in DERIVED[raw]), *OTHER])
            figures = report(client, args, counts)
        finally:
            if not args.keep:
                admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
        latest = max(m.version for m in discover())
        if args.ingest_rounds > 0 and args.ingest_before < latest:
            say(f"insert throughput through the sink: migrations up to {args.ingest_before} (before) against all "
                f"{latest} (after), {args.ingest_rounds} round(s) of {args.ingest_minutes:g} simulated minutes ...")
            rates = ingest(settings, args)
            before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
            paired = statistics.median(rates["ratio"])
            figures.update(ingest_before_values_per_s=before, ingest_after_values_per_s=after,
                           ingest_after_vs_before_percent=100 * (after / before - 1),
                           ingest_insert_time_after_vs_before_percent=100 * (paired - 1))
            print(f"\ninsert throughput through the sink, each batch into both schemas in turn (median of "
                  f"{args.ingest_rounds} rounds):")
            if args.ingest_rounds < 3:
                print("  (fewer than 3 rounds: a check that it runs, not a figure)")
            print(f"  before {before:,.0f} values/s, after {after:,.0f} ({100 * (after / before - 1):+.1f} %); "
                  f"a batch's insert time after/before, median of {len(rates['ratio'])}: {100 * (paired - 1):+.1f} %")
            print(f"  rounds before: {', '.join(f'{r:,.0f}' for r in rates['before'])}; "
                  f"after: {', '.join(f'{r:,.0f}' for r in rates['after'])}")
            if rates["before_cpu"]:
                before, after = statistics.median(rates["before_cpu"]), statistics.median(rates["after_cpu"])
                figures.update(ingest_server_cpu_before_values_per_s=before, ingest_server_cpu_after_values_per_s=after,
                               ingest_server_cpu_after_vs_before_percent=100 * (after / before - 1))
                print(f"  per second of the server's CPU time during the inserts: before {before:,.0f}, after "
                      f"{after:,.0f} ({100 * (after / before - 1):+.1f} %)")
    if args.json:
        write_figures(args.json, args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
