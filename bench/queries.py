"""Dashboard query latency on realistic history, cold and warm. Goals: every view < 300 ms p50 cold and
< 100 ms p50 warm; no line > a few thousand points.

Generates history in a database of its own (default `trainmon_bench`, created with the project's
migrations), then times each view's query from dashboard/queries.py as the read-only user:

| view                 | data                                                                   | query                           |
|----------------------|------------------------------------------------------------------------|---------------------------------|
| runs_list            | --runs runs (two snapshots for a tenth), 1h loss rollups, alerts       | runs(metric="loss"): newest 200 |
| runs_search_best     | same                                                                   | project + search, sort by best  |
| run_detail           | the widest running run (512 ranks) with its rank snapshots             | run(project, run)               |
| overlay              | --overlay-runs runs x --steps steps of `loss` in metric_points         | series(all of them, points=1000)|
| overlay_epoch        | same, against epoch                                                    | series(..., x="epoch")          |
| overlay_raw          | same, forced to raw points (reference: what the rollups save)          | series(..., source="raw")       |
| cluster_heatmap      | --nodes nodes x --gpus GPUs x 5 figures + 4 host figures at 1 Hz,      | cluster(minutes=15)             |
|                      | the last --minutes minutes                                             |                                 |
| silent_nodes         | same; the last 4 nodes stop 5 minutes before the end                   | silent_nodes(60)                |
| gpu_history_30d      | one GPU: 29 days of 1-minute rollup rows (+ the 1-hour rollup made     | host_series(4 figures, 30 days, |
|                      | from them), then raw 1 Hz samples                                      | points=600)                     |
| cluster_heatmap_rollup1m | with --cluster-history-hours N: N hours of 1-minute rollups for    | the heatmap from                |
|                      | every series (reference: the heatmap as before migration 0003)         | system_rollup_1m                |

Runs: 20 projects, one run started every ~5 minutes over the past year, 12 hourly `loss` rollup rows each,
an alert episode for every 10th run (the newest 1 % still firing); the newest 50 are running (the
overlay's among them). Overlay runs log 4 steps a second (1,000,000 steps = ~69 h), one spike each.

--shape (how the history is written; the data is the same):
- `ingest` (default): the recent part is written as a live system writes it. Events go through the
  processors' own sink (stream_processors/sink.py `Batch` + `ClickHouseSink`) the way one worker holds
  and flushes them (processing.py): rows held, written at the first 1 s tick after the oldest has waited
  [processors] insert_max_delay (1.5 s: every other tick) or once insert_max_rows are held (checked every
  processors_batch_events events); run and rank snapshots from stream_processors/runs.py's RunBook at
  every tick (a running run's progress every 15 s). Each simulated second
  holds the whole cluster's system event (every node's 4 host + 8 x 5 GPU figures, and its `gpus` rows),
  a metrics event from every rank of every running run (4 values; one rank per GPU of the cluster at most),
  and 4 overlay steps per overlay run. The last --ingest-seconds are written this way: first as fast as
  the machine allows (after 10 seconds that measure its speed, the rest moves forward, leaving one gap
  in every series, so that it ends about when it is written), then --tail-seconds at the live cadence
  (one tick per wall-clock second), so the tables end with a live system's fresh small parts and the
  merges they set off are still running when the views are timed. Older history (the
  overlay's earlier steps, the runs' final states, the GPU's month, cluster minutes before the window)
  is bulk-loaded with INSERT ... SELECT and left to the background merges for up to --settle-s (never
  OPTIMIZE), as a live system's older months have been merged for days.
  How the part counts compare with a live ingest: the window's inserts are the ones a live worker makes,
  one per table per flush; written faster than real time, they give the merges less time per insert
  than live, so the newest partitions hold at least as many parts as live. During the tail (live
  cadence) the part counts are sampled every few seconds: `ingest.tail_parts` gives their range, the
  live figure; `parts_active` at timing is beside it. A live deployment with W workers makes W inserts
  per table per tick, each 1/W the size (more, smaller parts); window_aggregates, alerts and run_events
  rows are not written here (no timed view reads them). The overlay's bulk steps end where the ingest
  window would begin had the bulk load taken no time: that time is a gap on the overlay's time axis.
- `bulk`: everything with a few large INSERT ... SELECT (the previous behaviour): few large parts, an
  optimistic layout. --cluster-history-hours then merges the rollup with OPTIMIZE FINAL, as before.

Timing: for every view, --cold-repeat cold calls, each after ClickHouse's caches are dropped (SYSTEM DROP
MARK / UNCOMPRESSED / QUERY / QUERY CONDITION / PRIMARY INDEX / INDEX MARK / INDEX UNCOMPRESSED / MMAP /
PAGE CACHE and UNLOAD PRIMARY KEY, each where the server has it) and every file under the database's data
paths (system.tables data_paths) is evicted from the OS page cache (posix_fadvise DONTNEED; only when the
server's files are on this machine: the output says whether they were); then one warm-up and --repeat
warm calls. p50 / p99 per view in ms (p99 of a few calls is about their maximum), rows returned, the
most points in one line, and what the view's statements read when warm (rows and bytes from ClickHouse's
query summary, parts and marks from EXPLAIN ESTIMATE). Reference views (overlay_raw,
cluster_heatmap_rollup1m) have no goal and are called --reference-repeat times. Latency on a shared
2-core machine is noisy: compare medians of several runs.

The database is dropped at the end unless --keep; --reuse times a kept one (shape ingest: after a fresh
ingest window on top of it, so the live views have current data; --ingest-seconds 0: none). ClickHouse:
--url, else the settings. Writes use the settings' user; reads use --read-user (default `reader`), or the
write user if that one cannot log in (the output says so). Cache drops need a user allowed SYSTEM.

    python bench/queries.py --url http://127.0.0.1:8123 [--quick] [--shape bulk] [--json PATH]
    python bench/queries.py --url ... --overlay-runs 20 --steps 50000000 --settle-s 900 --keep   # 1e9 points
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import uuid
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clickhouse_target import bench_clickhouse  # noqa: E402
from bench.pipeline import machine_info  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.dashboard.queries import Queries  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from trainmon.settings import Settings  # noqa: E402
from trainmon.stream_processors.runs import RunBook  # noqa: E402
from trainmon.stream_processors.sink import Batch, ClickHouseSink  # noqa: E402

GOAL_COLD_MS = 300.0
GOAL_WARM_MS = 100.0
WRITE = {"async_insert": 0}
GPU_FIGURES = ("util_percent", "mem_used_bytes", "mem_total_bytes", "temperature_c", "power_w")
HOST_FIGURES = ("cpu_percent", "mem_used_percent", "load1", "net_rx_bytes_per_s")
HISTORY_FIGURES = ("util_percent", "mem_used_bytes", "temperature_c", "power_w")
RUN_METRICS = ("loss", "lr", "grad_norm", "step_time_s")  # what each rank of a running run logs every second
OVERLAY_PROJECT = "proj-big"
RUNNING = 50  # the newest runs are running (the overlay's among them)
SILENT_NODES, SILENT_FOR_S = 4, 300  # the last nodes of the cluster stop reporting 5 minutes before the end
REFERENCE = {"overlay_raw", "cluster_heatmap_rollup1m"}  # what the design avoids: timed, no goal
OPTIMIZE_LEAD_S = 60  # more of it with --cluster-history-hours, for the OPTIMIZE that follows the samples
LEAD_S = 60  # bulk shape: cluster samples run this far past the start of their generation: live when timed
STEPS_PER_S = 4  # overlay runs: 1,000,000 steps take ~69 hours
CHUNK_ROWS = 10_000_000  # overlay rows per INSERT ... SELECT: progress between them
CALIBRATE_S = 10  # ingest shape: simulated seconds that measure how fast this machine writes them
# Every cache ClickHouse 26.9 keeps between queries that a restarted server would not have (SYSTEM ...);
# a server without one of them skips it. Compiled expressions are CPU work, not data: not dropped.
CACHE_DROPS = ("DROP MARK CACHE", "DROP UNCOMPRESSED CACHE", "DROP QUERY CACHE", "DROP QUERY CONDITION CACHE",
               "DROP PRIMARY INDEX CACHE", "DROP INDEX MARK CACHE", "DROP INDEX UNCOMPRESSED CACHE", "DROP MMAP CACHE",
               "DROP PAGE CACHE", "UNLOAD PRIMARY KEY")


def say(message: str) -> None:
    print(message, flush=True)


def timed(label: str, action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    say(f"  {label}: {elapsed:.1f} s")
    return elapsed


def host_name(expression: str) -> str:
    return f"concat('node-', leftPad(toString({expression}), 4, '0'))"


def node(index: int) -> str:
    """The host name host_name() makes in SQL, in Python."""
    return f"node-{index:04d}"


# --- bulk generation ----------------------------------------------------------------------------------


def generate_runs(w, runs: int, overlay_runs: int, now: int) -> None:
    """`runs` runs in 20 projects (the last `overlay_runs` are the overlay's), one started every ~5 min over
    the past year, with their final state (the newest RUNNING still running); the newest tenth also has an
    earlier `running` snapshot, so FINAL has rows to collapse. 12 hourly `loss` rollup rows per generic
    run, so `best` has data; alerts."""
    generic = runs - overlay_runs
    select = f"""
        SELECT
            if(number < {generic}, concat('proj-', toString(number % 20)), '{OVERLAY_PROJECT}') AS project,
            if(number < {generic}, concat('run-', leftPad(toString(number), 6, '0')),
               concat('big-', leftPad(toString(number - {generic}), 2, '0'))) AS run,
            concat('exp ', toString(number % 997), ' seed ', toString(number % 7)) AS name,
            concat('user', toString(number % 50)) AS user,
            @status@ AS status,
            arraySlice(['baseline', 'sweep', 'ablation', 'prod', 'debug'], 1 + number % 4, 1 + number % 2) AS tags,
            [1, 8, 64, 512][1 + number % 4] AS world_size,
            arrayMap(i -> {host_name("(number + i) % 512")}, range(greatest(1, intDiv(world_size, 8)))) AS hosts,
            toDateTime64({now} - ({runs} - number) * 315, 3, 'UTC') AS started_at,
            @ended@ AS ended_at,
            @seen@ AS last_seen,
            @step@ AS last_step,
            concat('{{"lr":', toString(round(exp2(-(number % 10)) / 100, 8)), ',"batch_size":', toString(bitShiftLeft(32, number % 4)),
                   ',"optimizer":{{"name":"', ['adam', 'sgd', 'adamw'][1 + number % 3], '","beta":0.9}},"seed":',
                   toString(number % 7), '}}') AS config,
            '[{{"name":"imagenet","version":"2024-01"}}]' AS datasets,
            '{{"parameters":125000000,"layers":12}}' AS model,
            concat('{{"commit":"', hex(cityHash64(number)), '","dirty":false}}') AS code,
            concat('{{"python":"3.11.2","packages":{{', arrayStringConcat(arrayMap(i -> concat('"pkg', toString(i), '":"1.',
                   toString(i), '"'), range(40)), ','), '}}}}') AS environment,
            @updated@ AS updated_at
        FROM numbers(@range@)"""
    columns = ("project, run, name, user, status, tags, world_size, hosts, started_at, ended_at, last_seen, last_step, "
               "config, datasets, model, code, environment, updated_at")

    def fill(sql: str, **parts: str) -> str:
        for key, value in parts.items():
            sql = sql.replace(f"@{key}@", value)
        return sql

    earlier = fill(select, status="'running'", ended="CAST(NULL AS Nullable(DateTime64(3, 'UTC')))",
                   seen="started_at + toIntervalSecond(60)", step="toUInt64(100)", updated="started_at",
                   range=f"{runs - runs // 10}, {runs // 10}")
    w.command(f"INSERT INTO runs ({columns}) {earlier}", settings=WRITE)
    final = fill(select,
                 status=(f"multiIf(number >= {runs - RUNNING}, 'running', number % 20 = 0, 'failed', number % 20 = 1, "
                         "'killed', number % 20 = 2, 'crashed', 'finished')"),
                 ended="if(status = 'running', NULL, started_at + toIntervalSecond(3600 + number % 86400))",
                 seen=f"ifNull(ended_at, toDateTime64({now}, 3, 'UTC'))", step="toUInt64(1000 + number % 100000)",
                 updated="last_seen", range=str(runs))
    w.command(f"INSERT INTO runs ({columns}) {final}", settings=WRITE)
    w.command(f"""
        INSERT INTO metric_rollup_1h (project, run, name, rank, bucket, step_min, step_max, count, non_finite, sum, min, max, last)
        SELECT project, run, 'loss', 0, bucket, any(s0), any(s1), any(n), 0, any(v) * 3600, any(v) * 0.9, any(v) * 1.1,
               argMaxState(v, s1)
        FROM (
            SELECT intDiv(number, 12) AS r, number % 12 AS h,
                   concat('proj-', toString(r % 20)) AS project, concat('run-', leftPad(toString(r), 6, '0')) AS run,
                   toStartOfHour(toDateTime({now} - ({runs} - r) * 315, 'UTC')) + toIntervalHour(h) AS bucket,
                   toUInt64(h * 3600) AS s0, toUInt64(h * 3600 + 3599) AS s1, toUInt64(3600) AS n,
                   2.5 * exp(-h / (2 + r % 10)) + 0.1 + (cityHash64(r) % 100) / 1000 AS v
            FROM numbers({generic} * 12)
        ) GROUP BY project, run, bucket""", settings=WRITE)
    # Alerts: one episode for every 10th run, resolved, but those of the newest 1 % are still firing.
    w.command(f"""
        INSERT INTO alerts (fingerprint, rule, state, severity, project, run, labels, annotations, `values`, starts_at,
                            ends_at, time)
        SELECT hex(cityHash64(r)), ['loss_non_finite', 'loss_plateau', 'straggler'][1 + number % 3], s,
               'warning', concat('proj-', toString(r % 20)), concat('run-', leftPad(toString(r), 6, '0')),
               map('host', {host_name('r % 512')}, 'rank', toString(number % 8)), map('summary', 'bench'), map('value', 1.0),
               toDateTime64({now} - ({runs} - r) * 315 + 600, 3, 'UTC') AS starts,
               if(s = 'resolved', starts + toIntervalSecond(600), NULL),
               starts + toIntervalSecond(if(s = 'resolved', 600, 0))
        FROM (SELECT number, number * 10 AS r FROM numbers({generic // 10}))
        ARRAY JOIN if(r >= {generic - generic // 100}, ['firing'], ['firing', 'resolved']) AS s""", settings=WRITE)


def overlay_value(step: int, index: int) -> float:
    """An overlay run's loss at `step` (the bulk SQL's curve and spike, in Python, for the ingest window)."""
    return 2.5 * math.exp(-step / (50_000 + 5_000 * index)) + 0.1 + ((step * 2_654_435_761 + index) % 1000) / 20000


def generate_overlay(w, overlay_runs: int, steps: int, ends: Sequence[float], budget_s: float = math.inf) -> int:
    """`steps` steps of `loss` for each overlay run, STEPS_PER_S a second, the last one just before ends[i]; a
    spike per run. Inserted in rounds, a chunk of every run per round (the runs grow together), with progress
    (rows/s, ETA): a billion points take many minutes. Past budget_s the load stops at the end of a round,
    every run as long as the others: returns the steps per run written."""
    if steps <= 0:
        return 0
    chunk = min(steps, max(1_000_000, CHUNK_ROWS // max(1, overlay_runs)))
    total, done, started, noted = overlay_runs * steps, 0, time.perf_counter(), 0.0
    for first in range(0, steps, chunk):
        count = min(chunk, steps - first)
        for index in range(overlay_runs):
            start = ends[index] - steps / STEPS_PER_S
            w.command(f"""
                INSERT INTO metric_points (project, run, rank, host, name, step, epoch, value, time)
                SELECT '{OVERLAY_PROJECT}', 'big-{index:02d}', 0, 'node-0000', 'loss', number, number / 10000,
                       if(number = {(index * 7919 + 123_457) % steps}, 50.0,
                          2.5 * exp(-number / {50_000 + 5_000 * index}) + 0.1 + (cityHash64(number, {index}) % 1000) / 20000),
                       toDateTime64({start} + number / {STEPS_PER_S}, 6, 'UTC')
                FROM numbers({first}, {count})""", settings=WRITE)
            done += count
            elapsed = time.perf_counter() - started
            if elapsed - noted >= 5 or done == total:
                noted = elapsed
                rate = done / max(elapsed, 1e-9)
                say(f"  metric_points: {done:,}/{total:,} rows ({done / total:.0%}), {rate / 1e6:.2f} M rows/s, "
                    f"ETA {(total - done) / rate:.0f} s")
        if time.perf_counter() - started >= budget_s and first + count < steps:
            say(f"  metric_points: stopped by the time budget at {first + count:,} of {steps:,} steps per run")
            return first + count
    return steps


def generate_cluster(w, nodes: int, gpus: int, start: int, end: int, silent_from: float) -> int:
    """1 Hz samples from `start` to `end`: GPU_FIGURES per GPU, HOST_FIGURES per node; the last SILENT_NODES
    nodes send nothing from `silent_from` on."""
    seconds = end - start
    if seconds <= 0:
        return 0
    slots = gpus * len(GPU_FIGURES) + len(HOST_FIGURES)
    chunk = 64
    total = 0
    for first in range(0, nodes, chunk):
        count = min(chunk, nodes - first)
        rows = count * slots * seconds
        started = time.perf_counter()
        w.command(f"""
            INSERT INTO system_samples (host, gpu, gpu_uuid, name, value, time)
            SELECT {host_name('h')} AS host, g AS gpu, if(g >= 0, concat('GPU-', toString(h), '-', toString(g)), ''),
                   name,
                   multiIf(name = 'util_percent', 75 + 20 * sin(t / 30 + h + g),
                           name = 'mem_used_bytes', 6e10 + 1e9 * ((h + g) % 15),
                           name = 'mem_total_bytes', 8e10,
                           name = 'temperature_c', 60 + (h * 8 + g) % 25 + 3 * sin(t / 60),
                           name = 'power_w', 400 + 200 * sin(t / 45 + g),
                           name = 'cpu_percent', 30 + 10 * sin(t / 20),
                           name = 'mem_used_percent', 40 + h % 50,
                           name = 'load1', 8 + (h % 8),
                           1e8 + 1e7 * (t % 10)),
                   toDateTime64({start} + t, 3, 'UTC')
            FROM (
                SELECT {first} + intDiv(number, {slots * seconds}) AS h, intDiv(number, {seconds}) % {slots} AS slot,
                       number % {seconds} AS t,
                       if(slot < {gpus * len(GPU_FIGURES)}, toInt16(intDiv(slot, {len(GPU_FIGURES)})), toInt16(-1)) AS g,
                       if(g >= 0, {list(GPU_FIGURES)}[1 + slot % {len(GPU_FIGURES)}],
                          {list(HOST_FIGURES)}[1 + slot - {gpus * len(GPU_FIGURES)}]) AS name
                FROM numbers({rows}))
            WHERE NOT (h >= {nodes - SILENT_NODES} AND {start} + t >= {silent_from})""", settings=WRITE)
        total += rows
        say(f"  system_samples: nodes {first}..{first + count - 1} ({rows:,} rows) in {time.perf_counter() - started:.1f} s")
    return total


def generate_gpus(w, nodes: int, gpus: int, end: int) -> None:
    """The GPU inventory (bulk shape; in the ingest shape the sink writes it with every system event)."""
    w.command(f"""
        INSERT INTO gpus (host, gpu, gpu_uuid, gpu_name, last_error, last_seen)
        SELECT {host_name('intDiv(number, ' + str(gpus) + ')')}, number % {gpus}, concat('GPU-', toString(number)),
               'NVIDIA H100 80GB HBM3', '', toDateTime64({end} - 1, 3, 'UTC')
        FROM numbers({nodes * gpus})""", settings=WRITE)


def generate_cluster_history(w, nodes: int, gpus: int, hours: int, before: int) -> int:
    """`hours` of 1-minute rollup rows for every series of the cluster, ending at `before` (where the raw
    samples begin): the history a live cluster has, which the "last minutes" views must not pay for."""
    slots = gpus * len(GPU_FIGURES) + len(HOST_FIGURES)
    end = before // 60 * 60
    total = 0
    for hour in range(0, hours, 6):
        count = min(6, hours - hour) * 60
        rows = nodes * slots * count
        started = time.perf_counter()
        w.command(f"""
            INSERT INTO system_rollup_1m (host, gpu, name, bucket, count, sum, min, max, last)
            SELECT {host_name('h')}, g, name, b, 60, 60 * v, v - 5, v + 5,
                   arrayReduce('argMaxState', [v], [toDateTime64(b + 59, 3, 'UTC')])
            FROM (SELECT intDiv(number, {slots * count}) AS h, intDiv(number, {count}) % {slots} AS slot,
                         number % {count} AS m, toDateTime({end} - ({hour * 60} + m + 1) * 60, 'UTC') AS b,
                         if(slot < {gpus * len(GPU_FIGURES)}, toInt16(intDiv(slot, {len(GPU_FIGURES)})), toInt16(-1)) AS g,
                         if(g >= 0, {list(GPU_FIGURES)}[1 + slot % {len(GPU_FIGURES)}],
                            {list(HOST_FIGURES)}[1 + slot - {gpus * len(GPU_FIGURES)}]) AS name,
                         toFloat64(50 + (h + m) % 40) AS v
                  FROM numbers({rows}))""", settings=WRITE)
        total += rows
        say(f"  system_rollup_1m: hours {hour}..{hour + count // 60 - 1} before the raw window ({rows:,} rows) "
            f"in {time.perf_counter() - started:.1f} s")
    return total


def cluster_from_rollup(q: Queries, minutes: int):
    """The heatmap as it was read before migration 0003: the newest minutes of system_rollup_1m
    (reference only: it touches the newest granule of every series, so it grows with the history)."""
    return q._frame(
        "SELECT host, gpu, anyIf(v, name = 'util_percent') AS util_percent, anyIf(v, name = 'temperature_c') AS "
        "temperature_c, max(seen) AS last_seen FROM (SELECT host, gpu, name, argMaxMerge(last) AS v, max(bucket) AS seen "
        f"FROM system_rollup_1m WHERE bucket >= toStartOfMinute(now() - toIntervalMinute({int(minutes)})) AND gpu >= 0 "
        f"AND name IN {list(GPU_FIGURES)} GROUP BY host, gpu, name) GROUP BY host, gpu ORDER BY host, gpu")


def generate_history(w, host: str, gpu: int, days: int, raw_until: int, now: int) -> None:
    """One GPU: 1-minute rollup rows from `days` ago to a day ago (and the 1-hour rollup made from them),
    raw 1 Hz samples for the last day up to `raw_until` (the rollups' views add those)."""
    day_ago = (now - 86400) // 60 * 60
    minutes = (day_ago - (now - days * 86400) // 60 * 60) // 60
    figures = list(HISTORY_FIGURES) + ["mem_total_bytes"]
    value = ("multiIf(name = 'util_percent', 50 + 45 * sin(m / 300), name = 'mem_used_bytes', 5e10 + 2e10 * sin(m / 500), "
             "name = 'mem_total_bytes', 8e10, name = 'temperature_c', 65 + 10 * sin(m / 200), 450 + 150 * sin(m / 100))")
    w.command(f"""
        INSERT INTO system_rollup_1m (host, gpu, name, bucket, count, sum, min, max, last)
        SELECT '{host}', {gpu}, name, toDateTime({day_ago} - (m + 1) * 60, 'UTC') AS bucket, 60, v * 60,
               v * 0.95, if(m = 20000 AND name = 'temperature_c', 95, v * 1.05),
               arrayReduce('argMaxState', [v], [toDateTime64(bucket + 59, 3, 'UTC')])
        FROM (SELECT number AS m, arrayJoin({figures}) AS name, {value} AS v FROM numbers({minutes}))""", settings=WRITE)
    w.command(f"""
        INSERT INTO system_rollup_1h (host, gpu, name, bucket, count, sum, min, max, last)
        SELECT host, gpu, name, toStartOfHour(bucket) AS hour, sum(count), sum(sum), min(min), max(max), argMaxMergeState(last)
        FROM system_rollup_1m WHERE host = '{host}' AND gpu = {gpu} AND bucket < toDateTime({day_ago}, 'UTC')
        GROUP BY host, gpu, name, hour""", settings=WRITE)
    seconds = max(0, raw_until - day_ago)
    w.command(f"""
        INSERT INTO system_samples (host, gpu, gpu_uuid, name, value, time)
        SELECT '{host}', {gpu}, 'GPU-history', name, {value.replace('m /', 's / 60 /')}, toDateTime64({day_ago} + s, 3, 'UTC')
        FROM (SELECT number AS s, arrayJoin({figures}) AS name FROM numbers({seconds}))""", settings=WRITE)
    say(f"  {host} gpu {gpu}: {minutes:,} rollup minutes x {len(figures)} figures, {seconds:,} raw seconds x "
        f"{len(figures)} figures")


def wait_for_merges(w, database: str, limit_s: float = 30.0, quiet_s: int = 3) -> float:
    """Let the background merges the inserts started finish (up to limit_s; finished = none running for
    quiet_s seconds in a row, as the next one may be picked a moment after the last ends), so timings do
    not race them."""
    started = time.perf_counter()
    noted, quiet = 0.0, 0
    while time.perf_counter() - started < limit_s:
        busy, rows = w.query("SELECT count(), sum(rows_read) FROM system.merges WHERE database = {d:String}",
                             parameters={"d": database}).result_rows[0]
        quiet = 0 if busy else quiet + 1
        if quiet >= quiet_s:
            break
        if time.perf_counter() - started - noted >= 30:
            noted = time.perf_counter() - started
            say(f"    {busy} merges running after {noted:.0f} s ({int(rows or 0):,} rows read so far)")
        time.sleep(1.0)
    return time.perf_counter() - started


# --- ingest-shaped generation -------------------------------------------------------------------------


def live_second(replay: "Replay", t: int) -> None:
    """Simulated second `t`, written no earlier than its end on the wall clock, as a live cluster sends it."""
    wait = t + 1 - time.time()
    if wait > 0:
        time.sleep(wait)
    replay.second(t)


class Replay:
    """Seconds of a live cluster written as one processors worker writes them (processing.py): events go into
    the held Batch, which is written through ClickHouseSink at the tick after the oldest held row has waited
    insert_max_delay, or once insert_max_rows are held
    (checked every batch_events events, as a worker does per handled batch); at every tick RunBook
    (stream_processors/runs.py) adds the run and rank snapshots that are due."""

    def __init__(self, settings: Settings, running: list[dict], overlay: dict[str, int], nodes: int, gpus: int,
                 silent_from: float) -> None:
        self.sink = ClickHouseSink(settings)
        self.book = RunBook()
        self.held = Batch()
        self.partitions = max(1, settings.kafka_partitions)
        self.batch_events = settings.processors_batch_events
        self.max_rows, self.max_delay = settings.processors_insert_max_rows, settings.processors_insert_max_delay
        self.held_since: float | None = None  # simulated time the oldest held row was held
        self.nodes, self.gpus, self.silent_from = nodes, gpus, silent_from
        self.offsets: Counter[tuple[str, int]] = Counter()
        # The rows' src_topic, `name#topic-id` as in production, with an id of this run's own: the sink's
        # deduplication tokens name (topic, partition, offset), so a --reuse run's rows are new rows.
        tag = uuid.uuid4().hex[:8]
        self.metrics_topic, self.system_topic = f"metrics#bench-{tag}", f"system#bench-{tag}"
        self.handled = 0
        self.flushes: list[dict[str, int]] = []  # rows per table of each flush: one insert per table
        self.ranks: list[dict] = []  # one metrics event per rank of a running run, updated every second
        self.overlay: list[tuple[int, dict]] = []  # (run index, its metrics event), STEPS_PER_S steps a second
        # The runs train on the cluster's GPUs: at most one logging rank per GPU, each run's ranks cut to a
        # common cap (the generated world sizes add up to ~4,400 whatever the cluster's size).
        sizes = [run["world_size"] for run in running if run["project"] != OVERLAY_PROJECT]
        cap = max(sizes, default=1)
        while cap > 1 and sum(min(size, cap) for size in sizes) > nodes * gpus:
            cap -= 1
        for run in running:
            big = run["project"] == OVERLAY_PROJECT
            if big and run["run"] not in overlay:
                continue
            hosts = [node(0)] if big or not run["hosts"] else run["hosts"]
            for rank in range(1 if big else min(run["world_size"], cap)):  # the overlay's: rank 0 on node-0000
                host = hosts[(rank // 8) % len(hosts)]
                self.book.observe({"kind": "run_start", "project": run["project"], "run": run["run"], "rank": rank,
                                   "host": host, "time": run["started"], "step": None, "name": run["name"],
                                   "user": run["user"], "world_size": 1 if big else run["world_size"],
                                   "local_rank": rank % 8, "config": run["config"], "tags": run["tags"],
                                   "datasets": run["datasets"], "model": run["model"], "code": run["code"],
                                   "environment": run["environment"]})
                event = {"kind": "metrics", "project": run["project"], "run": run["run"], "rank": rank, "host": host,
                         "step": overlay[run["run"]] - 1 if big else run["last_step"], "epoch": None, "time": 0.0,
                         "values": {}}
                if big:
                    self.overlay.append((int(run["run"].rsplit("-", 1)[1]), event))
                else:
                    self.ranks.append(event)

    def _source(self, topic: str, key: str) -> tuple[str, int, int]:
        partition = zlib.crc32(key.encode()) % self.partitions
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] = offset + 1
        return topic, partition, offset

    def _handled(self) -> None:
        """A worker checks its held rows after each batch of events it handled (Processing._hold)."""
        self.handled += 1
        if self.handled % self.batch_events == 0:
            if self.held.values + sum(map(len, self.held.rows.values())) >= self.max_rows:
                self.flush()

    def _metrics(self, event: dict) -> None:
        self.book.observe(event)
        self.held.add_metrics(event, *self._source(self.metrics_topic, event["run"]))
        self._handled()

    def second(self, t: float) -> None:
        """Every event of simulated second `t`, then the worker's tick at t + 1."""
        for event in self.ranks:
            step = event["step"] + 1
            event.update(step=step, time=t + 0.5, epoch=step / 10000, values={
                "loss": 2.5 * math.exp(-step / 20_000) + 0.1 + (step * 7 + event["rank"]) % 100 / 1000,
                "lr": 1e-3, "grad_norm": 1.0 + (step * 31 % 100) / 100, "step_time_s": 0.9 + event["rank"] % 10 / 100})
            self._metrics(event)
        for index, event in self.overlay:
            for part in range(STEPS_PER_S):
                step = event["step"] + 1
                event.update(step=step, time=t + part / STEPS_PER_S, epoch=step / 10000,
                             values={"loss": overlay_value(step, index)})
                self._metrics(event)
        for h in range(self.nodes):
            if h >= self.nodes - SILENT_NODES and t >= self.silent_from:
                continue
            host = node(h)
            gpus = [{"index": g, "uuid": f"GPU-{h}-{g}", "name": "NVIDIA H100 80GB HBM3", "error": "", "figures": {
                "util_percent": 75 + 20 * math.sin(t / 30 + h + g), "mem_used_bytes": 6e10 + 1e9 * ((h + g) % 15),
                "mem_total_bytes": 8e10, "temperature_c": 60 + (h * 8 + g) % 25 + 3 * math.sin(t / 60),
                "power_w": 400 + 200 * math.sin(t / 45 + g)}} for g in range(self.gpus)]
            event = {"kind": "system", "host": host, "time": t, "gpus": gpus, "figures": {
                "cpu_percent": 30 + 10 * math.sin(t / 20), "mem_used_percent": 40 + h % 50, "load1": 8 + h % 8,
                "net_rx_bytes_per_s": 1e8 + 1e7 * (int(t) % 10)}}
            self.held.add_system(event, *self._source(self.system_topic, host))
            self._handled()
        runs, ranks = self.book.snapshots(t + 1)
        self.held.add("runs", runs)
        self.held.add("run_ranks", ranks)
        if self.held_since is None:
            self.held_since = t
        if t + 1 - self.held_since >= self.max_delay:
            self.flush()

    def flush(self) -> None:
        self.held_since = None
        if not self.held:
            return
        batch, self.held = self.held, Batch()
        rows = {table: len(r) for table, r in batch.rows.items() if r}
        rows.update({t: len(c) for t, c in (("metric_points", batch.metric), ("system_samples", batch.system)) if len(c)})
        refused = self.sink.write(batch)
        if refused:
            raise RuntimeError(f"ClickHouse refused {len(refused)} rows of the bench's own data: {refused[0][1]}")
        self.flushes.append(rows)

    def summary(self) -> dict[str, Any]:
        """Inserts per table and their median rows: what the worker's flushes made."""
        tables = sorted({t for rows in self.flushes for t in rows})
        return {"flushes": len(self.flushes),
                "inserts": {t: sum(1 for rows in self.flushes if t in rows) for t in tables},
                "rows_per_insert_p50": {t: statistics.median(rows[t] for rows in self.flushes if t in rows)
                                        for t in tables}}


def running_runs(w) -> list[dict]:
    """The running runs of the runs table (newest snapshot): their ranks log in the ingest window."""
    rows = w.query(
        "SELECT project, run, name, user, tags, world_size, hosts, toUnixTimestamp64Milli(started_at) / 1000, last_step, "
        "config, datasets, model, code, environment FROM runs FINAL WHERE status = 'running' ORDER BY project, run"
    ).result_rows
    keys = ("project", "run", "name", "user", "tags", "world_size", "hosts", "started", "last_step", "config",
            "datasets", "model", "code", "environment")
    runs = []
    for row in rows:
        run = dict(zip(keys, row))
        for key, default in (("config", {}), ("datasets", []), ("model", {}), ("code", {}), ("environment", {})):
            run[key] = json.loads(run[key]) if run[key] else default
        runs.append(run)
    return runs


def part_counts(w, database: str) -> dict[str, int]:
    return dict(w.query("SELECT table, count() FROM system.parts WHERE database = {d:String} AND active GROUP BY table",
                        parameters={"d": database}).result_rows)


def ingest(w, replay: Replay, database: str, t0: int, fast_s: int, tail_s: int) -> dict[str, Any]:
    """`fast_s` seconds from t0 through `replay` as fast as they can be written, then `tail_s` seconds at the
    live cadence, each written once it has passed, with the part counts sampled every 5 s.

    The first CALIBRATE_S seconds measure how fast this machine writes; the rest of the fast part is then
    moved forward (one gap in every series, early in the window) so that it ends about when it is written:
    the data is current when the views are timed, and a slow machine costs fast_s / speed seconds, not the
    time to catch up with the wall clock. No second is written before it has passed."""
    started, t, noted = time.perf_counter(), t0, 0.0
    calibrate = min(CALIBRATE_S, fast_s)
    for _ in range(calibrate):
        replay.second(t)
        t += 1
    rest, gap = fast_s - calibrate, 0
    if rest:
        speed = calibrate / max(time.perf_counter() - started, 1e-9)
        gap = max(0, int(time.time() + rest / speed) - rest - t)
        t += gap
    for _ in range(rest):
        live_second(replay, t)
        t += 1
        elapsed = time.perf_counter() - started
        if elapsed - noted >= 15:
            noted = elapsed
            say(f"  ingest: {t - t0 - gap:,}/{fast_s:,} s written in {elapsed:.0f} s "
                f"({(t - t0 - gap) / elapsed:.1f}x real time), {time.time() - t:.0f} s behind the wall clock")
    behind = max(0, int(time.time()) - t)  # an optimistic estimate: the rest catches up (at most a minute)
    for _ in range(min(behind, 60)):
        replay.second(t)
        t += 1
    fast_wall = time.perf_counter() - started
    written = t - t0 - gap
    say(f"  ingest: {written:,} s written in {fast_wall:.0f} s ({written / max(fast_wall, 1e-9):.1f}x real time; "
        f"a gap of {gap} s after the first {calibrate}), {max(0.0, time.time() - t):.0f} s behind the wall clock")
    tail_parts: dict[str, list[int]] = {}
    sampled = 0.0
    for _ in range(tail_s):
        live_second(replay, t)
        t += 1
        if time.time() - sampled >= 5:
            sampled = time.time()
            for table, count in part_counts(w, database).items():
                tail_parts.setdefault(table, []).append(count)
    replay.flush()  # the rows a worker would still hold are written at its next tick or checkpoint
    if tail_s:
        say(f"  ingest: {tail_s} s more at the live cadence (one tick a second)")
    return {"window_start": t0, "window_end": t, "seconds_fast": written, "seconds_tail": tail_s, "gap_s": gap,
            "fast_wall_s": round(fast_wall, 1), "speed_x_real_time": round(written / max(fast_wall, 1e-9), 2),
            "behind_s_at_tail": max(0, int(time.time()) - t), "wall_s": round(time.perf_counter() - started, 1),
            "tail_parts": {table: [min(c), max(c)] for table, c in sorted(tail_parts.items())}, **replay.summary()}


# --- timing -------------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def points_per_line(frame, keys: list[str]) -> int:
    if frame is None or not len(frame) or not keys:
        return 0
    return int(frame.groupby(keys).size().max())


class Recorder:
    """The read client, remembering the statements sent since `calls` was last cleared (to explain a view)."""

    def __init__(self, client) -> None:
        self.client = client
        self.calls: list[tuple[str, dict | None]] = []

    def query(self, sql: str, parameters: dict | None = None, **options: Any):
        self.calls.append((sql, parameters))
        return self.client.query(sql, parameters=parameters, **options)

    def query_arrow(self, sql: str, parameters: dict | None = None, **options: Any):
        self.calls.append((sql, parameters))
        return self.client.query_arrow(sql, parameters=parameters, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def explain(client, statements: list[tuple[str, dict | None]]) -> dict[str, int]:
    """What statements read, run once more (warm): rows and bytes from the query summary, parts and marks
    selected from EXPLAIN ESTIMATE (summed over tables)."""
    read = {"queries": len(statements), "read_rows": 0, "read_bytes": 0, "parts": 0, "marks": 0}
    for sql, parameters in statements:
        summary = client.query(sql, parameters=parameters).summary or {}
        read["read_rows"] += int(summary.get("read_rows", 0))
        read["read_bytes"] += int(summary.get("read_bytes", 0))
        try:
            for _database, _table, parts, _rows, marks in client.query(f"EXPLAIN ESTIMATE {sql}",
                                                                       parameters=parameters).result_rows:
                read["parts"] += int(parts)
                read["marks"] += int(marks)
        except Exception:  # noqa: BLE001 - a statement EXPLAIN ESTIMATE cannot take: rows and bytes still count
            pass
    return read


class Cold:
    """Makes the next query cold: ClickHouse's caches dropped (those the server has), every file of the
    database evicted from the OS page cache (when its data paths are on this machine)."""

    def __init__(self, admin, database: str) -> None:
        self.admin = admin
        self.drops = []
        for command in CACHE_DROPS:
            try:
                admin.command(f"SYSTEM {command}")
                self.drops.append(command)
            except Exception as exc:  # noqa: BLE001 - an older server, or no right to: said in the output
                say(f"note: SYSTEM {command} not available ({str(exc).splitlines()[0][:100]})")
        paths = admin.query("SELECT DISTINCT arrayJoin(data_paths) FROM system.tables WHERE database = {d:String}",
                            parameters={"d": database}).result_rows
        self.paths = [p for (p,) in paths if os.path.isdir(p)]
        self.evicts = bool(self.paths) and len(self.paths) == len(paths)
        self.seconds: list[float] = []
        self.files = self.bytes = 0
        self()  # the first pass writes back what the generation left dirty: not in any view's time
        self.first_s = self.seconds.pop()

    def __call__(self) -> None:
        started = time.perf_counter()
        for command in self.drops:
            self.admin.command(f"SYSTEM {command}")
        files = size = 0
        for root in self.paths if self.evicts else ():
            for directory, _, names in os.walk(root):
                for name in names:
                    try:
                        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
                    except OSError:  # merged away meanwhile
                        continue
                    try:
                        os.fdatasync(fd)  # dirty pages (a fresh part) cannot be dropped until written
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        size += os.fstat(fd).st_size
                        files += 1
                    finally:
                        os.close(fd)
        self.files, self.bytes = files, size
        self.seconds.append(time.perf_counter() - started)


def time_views(recorder: Recorder, cold: Cold, views: dict[str, tuple[Callable, list[str]]],
               cold_repeat: int, repeat: int, reference_repeat: int) -> dict[str, dict]:
    """Per view: cold calls (each after `cold`), one warm-up, warm calls; then what its statements read."""
    results = {}
    began = time.perf_counter()
    for name, (call, keys) in views.items():
        cold_n, warm_n = ((min(cold_repeat, reference_repeat), min(repeat, reference_repeat)) if name in REFERENCE
                          else (cold_repeat, repeat))
        at = time.perf_counter() - began
        cold_ms = []
        for _ in range(cold_n):
            cold()
            started = time.perf_counter()
            call()
            cold_ms.append((time.perf_counter() - started) * 1000)
        frame = call()  # warm-up
        warm_ms = []
        for _ in range(warm_n):
            recorder.calls.clear()
            started = time.perf_counter()
            frame = call()
            warm_ms.append((time.perf_counter() - started) * 1000)
        if isinstance(frame, dict):  # one record (run_detail): its ranks are the rows
            source, rows = "", len(frame.get("ranks") or [])
        else:
            source, rows = frame.attrs.get("sources") or frame.attrs.get("source"), len(frame)
        if isinstance(source, dict):
            source = ",".join(sorted(set(source.values())))
        results[name] = r = {
            "cold_p50_ms": percentile(cold_ms, 0.5) if cold_ms else math.nan,
            "cold_p99_ms": percentile(cold_ms, 0.99) if cold_ms else math.nan,
            "warm_p50_ms": percentile(warm_ms, 0.5), "warm_p99_ms": percentile(warm_ms, 0.99),
            "rows": rows, "points_per_line": points_per_line(frame, keys) if keys else 0, "source": source or "",
            **explain(recorder.client, list(recorder.calls))}
        say(f"  {name}: cold p50 {r['cold_p50_ms']:.1f} ms (p99 {r['cold_p99_ms']:.1f}), warm p50 {r['warm_p50_ms']:.1f} ms "
            f"(p99 {r['warm_p99_ms']:.1f}), {rows} rows" + (f", source {r['source']}" if r["source"] else "")
            + f"; reads {r['read_rows']:,} rows, {r['marks']:,} marks in {r['parts']:,} parts (began {at:.0f} s in)")
    return results


def meets(r: dict[str, Any]) -> bool:
    """Both goals at p50 (a figure not measured, e.g. --cold-repeat 0, does not fail its goal)."""
    return not r["cold_p50_ms"] >= GOAL_COLD_MS and not r["warm_p50_ms"] >= GOAL_WARM_MS


def table_parts(w, database: str) -> dict[str, dict[str, int]]:
    """Per table: active parts, partitions, parts in the newest partition, rows, bytes on disk."""
    rows = w.query("SELECT table, partition, count(), sum(rows), sum(bytes_on_disk) FROM system.parts "
                   "WHERE database = {d:String} AND active GROUP BY table, partition ORDER BY table, partition",
                   parameters={"d": database}).result_rows
    tables: dict[str, dict[str, int]] = {}
    for table, _partition, parts, count, size in rows:  # ordered: the last partition seen is the newest
        t = tables.setdefault(table, {"parts": 0, "partitions": 0, "newest_partition_parts": 0, "rows": 0, "bytes": 0})
        t["parts"] += parts
        t["partitions"] += 1
        t["newest_partition_parts"] = parts
        t["rows"] += count
        t["bytes"] += size
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="ClickHouse HTTP URL (default: from the settings, the local engine)")
    parser.add_argument("--database", default="trainmon_bench", help="database to generate into (default trainmon_bench)")
    parser.add_argument("--read-user", default="reader", help="user the views are timed as (default reader)")
    parser.add_argument("--shape", choices=("ingest", "bulk"), default="ingest",
                        help="how history is written: ingest = the recent part through the processors' sink, insert "
                             "by insert (default); bulk = a few large INSERT ... SELECT (optimistic: few large parts)")
    parser.add_argument("--ingest-seconds", type=int, default=600,
                        help="shape ingest: seconds of history written as the sink writes them, ending now (default "
                             "600: the newest 10 of the heatmap's 15 minutes)")
    parser.add_argument("--tail-seconds", type=int, default=60,
                        help="shape ingest: of those, the last ones written at the live cadence, one flush a wall-clock "
                             "second (default 60)")
    parser.add_argument("--settle-s", type=float, default=300,
                        help="shape ingest: wait up to this long for the merges of the bulk-loaded history before the "
                             "ingest window (default 300)")
    parser.add_argument("--repeat", type=int, default=20, help="warm calls per view after one warm-up (default 20)")
    parser.add_argument("--cold-repeat", type=int, default=5,
                        help="cold calls per view, each after dropping caches and evicting the page cache (default 5)")
    parser.add_argument("--reference-repeat", type=int, default=3,
                        help="at most this many cold and warm calls of the reference views; 0: skip them (overlay_raw "
                             "reads every point: minutes at 1e9) (default 3)")
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the runs table (default 100000)")
    parser.add_argument("--overlay-runs", type=int, default=20, help="runs overlaid (default 20)")
    parser.add_argument("--steps", type=int, default=1_000_000,
                        help="steps per overlaid run (default 1000000); overlay points = runs x steps, e.g. "
                             "--overlay-runs 20 --steps 50000000 for 1e9")
    parser.add_argument("--bulk-budget-s", type=float, default=0,
                        help="stop the bulk load of the overlay's points at the end of the first round (a chunk of "
                             "every run) after this many seconds: every run as long as the others, the points reached "
                             "in the output (default 0: no limit)")
    parser.add_argument("--nodes", type=int, default=512, help="cluster nodes (default 512)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--minutes", type=int, default=15, help="minutes of 1 Hz cluster samples (default 15)")
    parser.add_argument("--days", type=int, default=30, help="days of one GPU's history (default 30)")
    parser.add_argument("--cluster-history-hours", type=int, default=0,
                        help="also N hours of 1-minute rollups for every node before the raw window, and time the "
                             "heatmap read from that rollup as it was before migration 0003 (default 0)")
    parser.add_argument("--reuse", action="store_true",
                        help="time the data a previous --keep run left (shape ingest: after a fresh ingest window)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards (default: drop it)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, runs=10_000, overlay_runs=4, steps=250_000, nodes=64, days=3, ingest_seconds=120,
                      tail_seconds=15, settle_s=30, repeat=5, cold_repeat=3, reference_repeat=2)
    args.tail_seconds = max(0, min(args.tail_seconds, args.ingest_seconds))

    settings, admin, described = bench_clickhouse(args.url, args.database)
    say(described)
    history_host, history_gpu = "node-0007", 3
    ingest_shape = args.shape == "ingest"
    generated: dict[str, Any] = {}
    try:
        if not args.reuse:
            admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
            migrate(settings, progress=lambda message: say(f"  {message}"))
        w = connect(settings)
        now = int(time.time())
        fast_s = args.ingest_seconds - args.tail_seconds
        bulk_steps = max(0, args.steps - STEPS_PER_S * args.ingest_seconds) if ingest_shape else args.steps
        began = time.perf_counter()
        if not args.reuse:
            say(f"generating runs: {args.runs:,} (+ 12 hourly loss rollup rows each, alerts)")
            generated["runs_s"] = timed("runs", lambda: generate_runs(w, args.runs, args.overlay_runs, now))
            if ingest_shape:  # all running, their bulk steps ending where the ingest window may begin
                ends = [now - fast_s] * args.overlay_runs
                say(f"generating metric_points: {args.overlay_runs} runs x {bulk_steps:,} steps in bulk, then "
                    f"{STEPS_PER_S} steps a second each through the sink")
            else:
                ends = [now - 3600 * index for index in range(args.overlay_runs)]
                say(f"generating metric_points: {args.overlay_runs} runs x {args.steps:,} steps")
            started = time.perf_counter()
            generated["metric_points_bulk_steps_per_run"] = generate_overlay(
                w, args.overlay_runs, bulk_steps, ends, args.bulk_budget_s or math.inf)
            generated["metric_points_s"] = round(time.perf_counter() - started, 1)
            say(f"  metric_points: {generated['metric_points_s']:.1f} s")
        if ingest_shape and not args.reuse:
            say(f"letting the background merges settle (up to {args.settle_s:.0f} s)")
            generated["settle_s"] = timed("merges", lambda: wait_for_merges(w, args.database, args.settle_s))
        if ingest_shape and args.ingest_seconds:
            t0 = int(time.time()) - fast_s
            planned_end = t0 + fast_s + args.tail_seconds
            silent_from = planned_end - SILENT_FOR_S
            cluster_from = planned_end - args.minutes * 60
            if not args.reuse:
                say(f"generating one GPU's {args.days}-day history ({history_host} gpu {history_gpu})")
                generated["history_s"] = timed("history", lambda: generate_history(
                    w, history_host, history_gpu, args.days, min(t0, cluster_from), now))
                if args.cluster_history_hours:
                    say(f"generating {args.cluster_history_hours} h of 1-minute rollups for every node")
                    generated["cluster_history_s"] = timed("cluster history", lambda: generate_cluster_history(
                        w, args.nodes, args.gpus, args.cluster_history_hours, min(t0, cluster_from)))
                if cluster_from < t0:
                    say(f"generating system_samples in bulk before the ingest window ({t0 - cluster_from} s)")
                    generated["system_samples_s"] = timed("system_samples", lambda: generate_cluster(
                        w, args.nodes, args.gpus, cluster_from, t0, silent_from))
            overlay = {} if args.reuse else {f"big-{i:02d}": 0 for i in range(args.overlay_runs)}
            overlay.update(w.query(  # each run's next step: after its bulk steps, or after a kept database's
                "SELECT run, max(step_max) + 1 FROM metric_rollup_1h WHERE project = {p:String} AND name = 'loss' "
                "GROUP BY run", parameters={"p": OVERLAY_PROJECT}).result_rows)
            running = running_runs(w)
            replay = Replay(settings, running, overlay, args.nodes, args.gpus, silent_from)
            say(f"ingest window through the processors' sink: {len(running)} running runs ({len(replay.ranks):,} other ranks "
                f"logging {len(RUN_METRICS)} values a second), {len(overlay)} overlay runs ({STEPS_PER_S} steps a second), "
                f"{args.nodes} nodes x {args.gpus} GPUs at 1 Hz; {fast_s} s as fast as possible, then "
                f"{args.tail_seconds} s at the live cadence")
            generated["ingest"] = ingest(w, replay, args.database, t0, fast_s, args.tail_seconds)
        elif not args.reuse:  # bulk shape, as before
            say(f"generating one GPU's {args.days}-day history ({history_host} gpu {history_gpu})")
            raw_from = int(time.time()) - args.minutes * 60 - 60  # the cluster's raw window starts after this
            generated["history_s"] = timed("history", lambda: generate_history(
                w, history_host, history_gpu, args.days, raw_from, now))
            if args.cluster_history_hours:
                say(f"generating {args.cluster_history_hours} h of 1-minute rollups for every node")
                generated["cluster_history_s"] = timed("cluster history", lambda: generate_cluster_history(
                    w, args.nodes, args.gpus, args.cluster_history_hours, raw_from))
            say(f"generating system_samples: {args.nodes} nodes x {args.gpus} GPUs x {len(GPU_FIGURES)} figures + "
                f"{len(HOST_FIGURES)} host figures, {args.minutes} min at 1 Hz (nodes {args.nodes - SILENT_NODES}.."
                f"{args.nodes - 1} stop {SILENT_FOR_S} s before the end)")
            # The samples run to about when the live views are timed (after the OPTIMIZE below, if any).
            end = int(time.time()) + LEAD_S + (OPTIMIZE_LEAD_S if args.cluster_history_hours else 0)
            generated["system_samples_s"] = timed("system_samples", lambda: generate_cluster(
                w, args.nodes, args.gpus, end - args.minutes * 60, end, end - SILENT_FOR_S))
            generate_gpus(w, args.nodes, args.gpus, end)
            if args.cluster_history_hours:  # the layout once merges caught up: history and recent minutes in one part
                generated["optimize_s"] = timed("OPTIMIZE TABLE system_rollup_1m FINAL", lambda: w.command(
                    "OPTIMIZE TABLE system_rollup_1m FINAL"))
            generated["merges_wait_s"] = timed("waiting for background merges", lambda: wait_for_merges(w, args.database))
        generated["total_s"] = round(time.perf_counter() - began, 1)

        tables = table_parts(w, args.database)
        overlay_points = w.query("SELECT count() FROM metric_points WHERE project = {p:String}",
                                 parameters={"p": OVERLAY_PROJECT}).result_rows[0][0]
        overlay_runs = [r for (r,) in w.query("SELECT DISTINCT run FROM runs WHERE project = {p:String} ORDER BY run",
                                              parameters={"p": OVERLAY_PROJECT}).result_rows]
        detail = w.query("SELECT project, run FROM runs FINAL WHERE status = 'running' AND project != {p:String} "
                         "ORDER BY world_size DESC, run LIMIT 1", parameters={"p": OVERLAY_PROJECT}).result_rows
        say("active parts (newest partition), rows:")
        for table in ("metric_points", "metric_rollup_1m", "metric_rollup_1h", "metric_epochs_1m", "metric_epochs_1h",
                      "system_samples", "system_rollup_1m", "system_rollup_1h", "system_latest", "runs", "run_ranks", "gpus", "alerts",
                      "ingest_offsets"):
            t = tables.get(table)
            if t:
                say(f"  {table:<18} {t['parts']:>6} parts ({t['newest_partition_parts']} in the newest of "
                    f"{t['partitions']} partitions), {t['rows']:>14,} rows, {t['bytes'] / 1e6:>10,.1f} MB")
        say(f"overlay: {overlay_points:,} points in {len(overlay_runs)} runs; database {sum(t['bytes'] for t in tables.values()) / 1e9:.2f} GB on disk")

        try:
            reader = connect(settings.replace(clickhouse_user=args.read_user, clickhouse_password=""),
                             autogenerate_session_id=False)  # as the dashboard connects (dashboard/components.py)
            reader.query("SELECT 1")
            read_user = args.read_user
        except Exception as exc:  # e.g. a server without that user
            say(f"note: user {args.read_user!r} cannot log in ({str(exc).splitlines()[0][:120]}); timing as {settings.clickhouse_user!r}")
            reader, read_user = w, settings.clickhouse_user
        recorder = Recorder(reader)
        q = Queries(recorder)
        cold = Cold(admin, args.database)
        say(f"cold calls: {len(cold.drops)} SYSTEM commands ({', '.join(c.lower() for c in cold.drops)}); "
            + (f"page cache evicted for the files under {len(cold.paths)} table paths (the first pass, writing back "
               f"what generation left dirty, took {cold.first_s:.1f} s)" if cold.evicts else
               "the server's files are not on this machine: its OS page cache stays warm"))
        views: dict[str, tuple[Callable[[], Any], list[str]]] = {  # the live views first: their data is current now
            "silent_nodes": (lambda: q.silent_nodes(60), []),  # finds the silent nodes while the others are < 60 s old
            "cluster_heatmap": (lambda: q.cluster(minutes=15), []),
            "gpu_history_30d": (lambda: q.host_series([history_host], list(HISTORY_FIGURES),
                                                      datetime.now(timezone.utc) - timedelta(days=args.days),
                                                      datetime.now(timezone.utc), gpu=history_gpu, points=600),
                                ["host", "gpu", "name"]),
            "runs_list": (lambda: q.runs(metric="loss"), []),
            "runs_search_best": (lambda: q.runs(project="proj-3", search="seed 3", metric="loss", order_by="best",
                                                descending=False), []),
        }
        if detail:
            views["run_detail"] = (lambda: q.run(*detail[0]), [])
        views["overlay"] = (lambda: q.series(OVERLAY_PROJECT, overlay_runs, "loss", points=1000), ["run"])
        views["overlay_epoch"] = (lambda: q.series(OVERLAY_PROJECT, overlay_runs, "loss", x="epoch", points=1000), ["run"])
        if args.cluster_history_hours:
            views["cluster_heatmap_rollup1m"] = (lambda: cluster_from_rollup(q, 15), [])
        views["overlay_raw"] = (lambda: q.series(OVERLAY_PROJECT, overlay_runs, "loss", points=1000, source="raw"), ["run"])
        if not args.reference_repeat:
            views = {name: view for name, view in views.items() if name not in REFERENCE}
        newest = w.query("SELECT dateDiff('millisecond', max(time), now64(3)) / 1000 FROM system_latest").result_rows[0][0]
        say(f"newest system sample {newest:.0f} s old (silent_nodes finds the silent nodes while the others are < 60 s old"
            + ("; the bulk shape writes the samples ahead of the clock)" if newest < 0 else ")"))
        say(f"timing as {read_user!r}: per view {args.cold_repeat} cold calls, one warm-up, {args.repeat} warm calls "
            f"(reference views at most {args.reference_repeat} each)")
        load_before = os.getloadavg()
        results = time_views(recorder, cold, views, args.cold_repeat, args.repeat, args.reference_repeat)
        load_after = os.getloadavg()
        say(f"load average (1 min) before / after timing: {load_before[0]:.1f} / {load_after[0]:.1f} "
            f"on {os.cpu_count()} CPUs (other work on the machine inflates the figures)")
        if cold.seconds:
            say(f"making a call cold took {statistics.median(cold.seconds):.2f} s (median; {cold.files:,} files, "
                f"{cold.bytes / 1e9:.2f} GB evicted)")
    finally:
        if not args.keep:
            admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
            say(f"dropped database {args.database} (--keep keeps it)")

    say("")
    say(f"{'view':<26}{'cold p50':>9}{'p99':>8}{'warm p50':>9}{'p99':>8}{'rows':>7}{'pts/line':>9}  {'source':<7}"
        f"{'rows read':>12}{'marks':>8}  goal")
    for name, r in results.items():
        met = "(ref)" if name in REFERENCE else "ok" if meets(r) else "MISSED"
        say(f"{name:<26}{r['cold_p50_ms']:>9.1f}{r['cold_p99_ms']:>8.1f}{r['warm_p50_ms']:>9.1f}{r['warm_p99_ms']:>8.1f}"
            f"{r['rows']:>7}{r['points_per_line'] or '-':>9}  {r['source'] or '-':<7}{r['read_rows']:>12,}{r['marks']:>8,}  {met}")
    goals_met = all(meets(r) for n, r in results.items() if n not in REFERENCE)
    figures: dict[str, Any] = {
        "shape": args.shape, "machine": machine_info(), "clickhouse_version": admin.server_version,
        "cpus": os.cpu_count(), "read_user": read_user, "repeat": args.repeat, "cold_repeat": args.cold_repeat,
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "goal_cold_p50_ms": GOAL_COLD_MS, "goal_warm_p50_ms": GOAL_WARM_MS, "goals_met": goals_met,
        "cold_drops": [c.lower() for c in cold.drops], "page_cache_evicted": cold.evicts,
        "cold_prepare_s_p50": round(statistics.median(cold.seconds), 3) if cold.seconds else None,
        "cold_first_pass_s": round(cold.first_s, 2), "evicted_files": cold.files, "evicted_bytes": cold.bytes,
        "newest_sample_age_s_at_timing": newest,
        "overlay_points": overlay_points, "overlay_runs": len(overlay_runs),
        "bytes_on_disk": sum(t["bytes"] for t in tables.values()),
        "metric_points_bytes_per_row": round(tables["metric_points"]["bytes"] / max(1, tables["metric_points"]["rows"]), 3)
        if "metric_points" in tables else None,
        "rows": {t: v["rows"] for t, v in tables.items()}, "parts_active": {t: v["parts"] for t, v in tables.items()},
        "parts_newest_partition": {t: v["newest_partition_parts"] for t, v in tables.items()},
        "partitions": {t: v["partitions"] for t, v in tables.items()},
        "table_bytes": {t: v["bytes"] for t, v in tables.items()},
        "generation": generated, "max_points_per_line": max(r["points_per_line"] for r in results.values()),
        "generated": {"runs": args.runs, "overlay": f"{args.overlay_runs} runs x {args.steps} steps",
                      "cluster": f"{args.nodes} nodes x {args.gpus} GPUs, {len(GPU_FIGURES)} GPU + {len(HOST_FIGURES)} "
                                 f"host figures, {args.minutes} min at 1 Hz",
                      "history": f"{args.days} days: 1m rollup (+1h) and the last day raw", "reused": args.reuse},
    }
    for name, r in results.items():
        for key in ("cold_p50_ms", "cold_p99_ms", "warm_p50_ms", "warm_p99_ms"):
            figures[f"{name}_{key}"] = round(r[key], 2)
        for key in ("rows", "points_per_line", "source", "read_rows", "read_bytes", "parts", "marks", "queries"):
            figures[f"{name}_{key}"] = r[key]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    return 0 if goals_met else 1


if __name__ == "__main__":
    sys.exit(main())
