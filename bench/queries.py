"""Dashboard query latency on generated history. Goals: every view < 300 ms at p50; no line > a few thousand points.

Generates, in a database of its own (default `trainmon_bench`, created with the project's migrations),
history the size the dashboard must stay fast at, all of it with ClickHouse itself (INSERT ... SELECT
FROM numbers(...)), then times each view's query from dashboard/queries.py as the read-only user:

| view                   | data                                                                  | query                           |
|------------------------|-----------------------------------------------------------------------|---------------------------------|
| runs_list              | 100,000 runs (two snapshots for a tenth), 1h loss rollups, alerts      | runs(metric="loss"): newest 200 |
| runs_search_best       | same                                                                  | project + search, sort by best  |
| overlay_20x1M          | 20 runs x 1,000,000 steps of `loss` in metric_points (20M rows)        | series(20 runs, points=1000)    |
| overlay_20x1M_raw      | same, forced to raw points (what the rollups save)                    | series(..., source="raw")       |
| cluster_heatmap_512x8  | 512 nodes x 8 GPUs x 5 figures + 4 host figures at 1 Hz, last 15 min   | cluster(minutes=15)             |
| silent_nodes           | same                                                                  | silent_nodes(60)                |
| gpu_history_30d        | one GPU: 29 days of 1-minute rollup rows (+ the 1-hour rollup made     | host_series(4 figures, 30 days, |
|                        | from them) and the last day as raw 1 Hz samples                       | points=600)                     |
| cluster_heatmap_rollup1m | with --cluster-history-hours N: N hours of 1-minute rollups for the  | the heatmap read from           |
|                        | whole cluster, merged (OPTIMIZE FINAL) with the recent minutes         | system_rollup_1m, as before     |
|                        |                                                                       | migration 0003 (reference)      |

The runs are 20 projects, one run started every ~5 minutes over the past year, 12 hourly `loss` rollup
rows each, an alert episode for every 10th run (the newest 1 % still firing). The overlay's runs log 4
steps a second (1,000,000 steps = ~69 h), each with one spike. The cluster's last 4 nodes stop 5 minutes
before the end (what silent_nodes finds); its samples run ~1 minute past the start of their generation so
they are current when the live views are timed first. The views marked reference have no goal: they show
what the design avoids (raw points for the overlay; the time-series table for the heatmap).

Each view runs once to warm up, then --repeat times; p50 / p99 in ms, rows returned and the most points
in one line. The database is dropped at the end unless --keep. ClickHouse: --url, else the settings
(config file, TRAINMON_CLICKHOUSE_URL, the local engine). Writes use the settings' user; reads use
--read-user (default `reader`, the local engine's read-only user), or the write user if that one
cannot log in (the output says so).

    python bench/queries.py [--url http://127.0.0.1:8123] [--repeat 20] [--keep] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clickhouse_target import bench_clickhouse  # noqa: E402
from trainmon.dashboard.queries import Queries  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402

GOAL_MS = 300.0
WRITE = {"async_insert": 0}
GPU_FIGURES = ("util_percent", "mem_used_bytes", "mem_total_bytes", "temperature_c", "power_w")
HOST_FIGURES = ("cpu_percent", "mem_used_percent", "load1", "net_rx_bytes_per_s")
HISTORY_FIGURES = ("util_percent", "mem_used_bytes", "temperature_c", "power_w")
OVERLAY_PROJECT = "proj-big"
SILENT_NODES, SILENT_FOR_S = 4, 300  # the last nodes of the cluster stop reporting 5 minutes before the end
REFERENCE = {"overlay_20x1M_raw", "cluster_heatmap_rollup1m"}  # what the design avoids: timed, no goal
OPTIMIZE_LEAD_S = 60  # more of it with --cluster-history-hours, for the OPTIMIZE that follows the samples
LEAD_S = 60  # cluster samples run this far past the start of their generation: live when timed
STEPS_PER_S = 4  # overlay runs: 1,000,000 steps take ~69 hours


def say(message: str) -> None:
    print(message, flush=True)


def timed(label: str, action) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    say(f"  {label}: {elapsed:.1f} s")
    return elapsed


def host_name(expression: str) -> str:
    return f"concat('node-', leftPad(toString({expression}), 4, '0'))"


# --- generation -------------------------------------------------------------------------------------


def generate_runs(w, runs: int, overlay_runs: int, now: int) -> None:
    """`runs` runs in 20 projects (the last `overlay_runs` are the overlay's), one started every ~5 min over
    the past year, with their final state; the newest tenth also has an earlier `running` snapshot, so
    FINAL has rows to collapse. 12 hourly `loss` rollup rows per generic run, so `best` has data; alerts."""
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
                 status=(f"multiIf(number >= {runs - 50}, 'running', number % 20 = 0, 'failed', number % 20 = 1, "
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


def generate_overlay(w, overlay_runs: int, steps: int, now: int) -> None:
    """`steps` steps of `loss` for each overlay run, STEPS_PER_S a second, ending now; a spike per run."""
    span = steps / STEPS_PER_S
    for index in range(overlay_runs):
        start = now - span - 3600 * index
        started = time.perf_counter()
        w.command(f"""
            INSERT INTO metric_points (project, run, rank, host, name, step, epoch, value, time)
            SELECT '{OVERLAY_PROJECT}', 'big-{index:02d}', 0, 'node-0000', 'loss', number, number / 10000,
                   if(number = {(index * 7919 + 123_457) % steps}, 50.0,
                      2.5 * exp(-number / {50_000 + 5_000 * index}) + 0.1 + (cityHash64(number, {index}) % 1000) / 20000),
                   toDateTime64({start} + number / {STEPS_PER_S}, 6, 'UTC')
            FROM numbers({steps})""", settings=WRITE)
        say(f"  metric_points: run {index + 1}/{overlay_runs} ({steps:,} steps) in {time.perf_counter() - started:.1f} s")


def generate_cluster(w, nodes: int, gpus: int, seconds: int, end: int) -> int:
    """1 Hz samples for `seconds` up to `end`: GPU_FIGURES per GPU, HOST_FIGURES per node (the last
    SILENT_NODES nodes stop SILENT_FOR_S before the end); one gpus row per GPU."""
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
                   toDateTime64({end - seconds} + t, 3, 'UTC')
            FROM (
                SELECT {first} + intDiv(number, {slots * seconds}) AS h, intDiv(number, {seconds}) % {slots} AS slot,
                       number % {seconds} AS t,
                       if(slot < {gpus * len(GPU_FIGURES)}, toInt16(intDiv(slot, {len(GPU_FIGURES)})), toInt16(-1)) AS g,
                       if(g >= 0, {list(GPU_FIGURES)}[1 + slot % {len(GPU_FIGURES)}],
                          {list(HOST_FIGURES)}[1 + slot - {gpus * len(GPU_FIGURES)}]) AS name
                FROM numbers({rows}))
            WHERE NOT (h >= {nodes - SILENT_NODES} AND t >= {seconds - SILENT_FOR_S})""", settings=WRITE)
        total += rows
        say(f"  system_samples: nodes {first}..{first + count - 1} ({rows:,} rows) in {time.perf_counter() - started:.1f} s")
    w.command(f"""
        INSERT INTO gpus (host, gpu, gpu_uuid, gpu_name, last_error, last_seen)
        SELECT {host_name('intDiv(number, ' + str(gpus) + ')')}, number % {gpus}, concat('GPU-', toString(number)),
               'NVIDIA H100 80GB HBM3', '', toDateTime64({end} - 1, 3, 'UTC')
        FROM numbers({nodes * gpus})""", settings=WRITE)
    return total


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
    seconds = raw_until - day_ago
    w.command(f"""
        INSERT INTO system_samples (host, gpu, gpu_uuid, name, value, time)
        SELECT '{host}', {gpu}, 'GPU-history', name, {value.replace('m /', 's / 60 /')}, toDateTime64({day_ago} + s, 3, 'UTC')
        FROM (SELECT number AS s, arrayJoin({figures}) AS name FROM numbers({seconds}))""", settings=WRITE)
    say(f"  {host} gpu {gpu}: {minutes:,} rollup minutes x {len(figures)} figures, {seconds:,} raw seconds x "
        f"{len(figures)} figures")


def wait_for_merges(w, database: str, limit_s: float = 30.0) -> float:
    """Let the background merges the inserts started finish, so timings do not race them."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        busy = w.query("SELECT count() FROM system.merges WHERE database = {d:String}", parameters={"d": database}).result_rows[0][0]
        if not busy:
            break
        time.sleep(1.0)
    return time.perf_counter() - started


# --- timing -----------------------------------------------------------------------------------------


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


def time_views(q: Queries, repeat: int, history_host: str, history_gpu: int, days: int, overlay_runs: int,
               cluster_history: bool) -> dict[str, dict]:
    overlay = [f"big-{i:02d}" for i in range(overlay_runs)]
    views = {  # the live views first: the cluster's samples were generated to be current now
        "cluster_heatmap_512x8": (lambda: q.cluster(minutes=15), []),
        "silent_nodes": (lambda: q.silent_nodes(60), []),
        "gpu_history_30d": (lambda: q.host_series([history_host], list(HISTORY_FIGURES),
                                                  datetime.now(timezone.utc) - timedelta(days=days),
                                                  datetime.now(timezone.utc), gpu=history_gpu, points=600),
                            ["host", "gpu", "name"]),
        "runs_list": (lambda: q.runs(metric="loss"), []),
        "runs_search_best": (lambda: q.runs(project="proj-3", search="seed 3", metric="loss", order_by="best",
                                            descending=False), []),
        "overlay_20x1M": (lambda: q.series(OVERLAY_PROJECT, overlay, "loss", points=1000), ["run"]),
        "overlay_20x1M_epoch": (lambda: q.series(OVERLAY_PROJECT, overlay, "loss", x="epoch", points=1000), ["run"]),
    }
    if cluster_history:
        views["cluster_heatmap_rollup1m"] = (lambda: cluster_from_rollup(q, 15), [])
    views["overlay_20x1M_raw"] = (lambda: q.series(OVERLAY_PROJECT, overlay, "loss", points=1000, source="raw"),
                                  ["run"])
    results = {}
    for name, (call, keys) in views.items():
        frame = call()  # warm-up
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            frame = call()
            samples.append((time.perf_counter() - started) * 1000)
        source = frame.attrs.get("sources") or frame.attrs.get("source")
        if isinstance(source, dict):
            source = ",".join(sorted(set(source.values())))
        results[name] = {"p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99),
                         "rows": len(frame), "points_per_line": points_per_line(frame, keys), "source": source or ""}
        r = results[name]
        say(f"  {name}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['rows']} rows"
            + (f", source {r['source']}" if r["source"] else ""))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="ClickHouse HTTP URL (default: from the settings, the local engine)")
    parser.add_argument("--database", default="trainmon_bench", help="database to generate into (default trainmon_bench)")
    parser.add_argument("--read-user", default="reader", help="user the views are timed as (default reader)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per view after one warm-up (default 20)")
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the runs table (default 100000)")
    parser.add_argument("--overlay-runs", type=int, default=20, help="runs overlaid (default 20)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps per overlaid run (default 1000000)")
    parser.add_argument("--nodes", type=int, default=512, help="cluster nodes (default 512)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--minutes", type=int, default=15, help="minutes of 1 Hz cluster samples (default 15)")
    parser.add_argument("--days", type=int, default=30, help="days of one GPU's history (default 30)")
    parser.add_argument("--cluster-history-hours", type=int, default=0,
                        help="also N hours of 1-minute rollups for every node before the raw window, and time the "
                             "heatmap read from that rollup as it was before migration 0003 (default 0)")
    parser.add_argument("--reuse", action="store_true", help="time the data a previous --keep run left (no generation)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards (default: drop it)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)

    settings, admin, described = bench_clickhouse(args.url, args.database)
    say(described)
    history_host, history_gpu = "node-0007", 3
    figures: dict = {}
    try:
        if not args.reuse:
            admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
            migrate(settings, progress=lambda message: say(f"  {message}"))
        w = connect(settings)
        now = int(time.time())
        generated = {}
        if not args.reuse:
            say(f"generating runs: {args.runs:,} (+ 12 hourly loss rollup rows each, alerts)")
            generated["runs_s"] = timed("runs", lambda: generate_runs(w, args.runs, args.overlay_runs, now))
            say(f"generating metric_points: {args.overlay_runs} runs x {args.steps:,} steps")
            generated["metric_points_s"] = timed("metric_points", lambda: generate_overlay(w, args.overlay_runs, args.steps, now))
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
            generated["system_samples_rows"] = 0
            generated["system_samples_s"] = timed("system_samples", lambda: generated.__setitem__(
                "system_samples_rows", generate_cluster(w, args.nodes, args.gpus, args.minutes * 60, end)))
            if args.cluster_history_hours:  # the layout once merges caught up: history and recent minutes in one part
                generated["optimize_s"] = timed("OPTIMIZE TABLE system_rollup_1m FINAL", lambda: w.command(
                    "OPTIMIZE TABLE system_rollup_1m FINAL"))
            generated["merges_wait_s"] = timed("waiting for background merges", lambda: wait_for_merges(w, args.database))
        counts = dict(w.query(
            "SELECT table, sum(rows) FROM system.parts WHERE database = currentDatabase() AND active GROUP BY table"
        ).result_rows)
        say("rows: " + ", ".join(f"{t} {counts.get(t, 0):,}" for t in (
            "runs", "metric_points", "metric_rollup_1m", "metric_rollup_1h", "system_samples", "system_rollup_1m",
            "system_rollup_1h", "system_latest", "alerts", "gpus")))
        try:
            reader = connect(settings.replace(clickhouse_user=args.read_user, clickhouse_password=""))
            reader.query("SELECT 1")
            read_user = args.read_user
        except Exception as exc:  # e.g. a server without that user
            say(f"note: user {args.read_user!r} cannot log in ({str(exc).splitlines()[0][:120]}); timing as {settings.clickhouse_user!r}")
            reader, read_user = w, settings.clickhouse_user
        say(f"timing as {read_user!r}: one warm-up, then {args.repeat} runs per view")
        load_before = os.getloadavg()
        results = time_views(Queries(reader), args.repeat, history_host, history_gpu, args.days, args.overlay_runs,
                             args.cluster_history_hours > 0)
        load_after = os.getloadavg()
        say(f"load average (1 min) before / after timing: {load_before[0]:.1f} / {load_after[0]:.1f} "
            f"on {os.cpu_count()} CPUs (other work on the machine inflates the figures)")
    finally:
        if not args.keep:
            admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
            say(f"dropped database {args.database} (--keep keeps it)")

    say("")
    say(f"{'view':<26}{'p50 ms':>9}{'p99 ms':>9}{'rows':>8}{'pts/line':>10}  {'source':<8}goal")
    for name, r in results.items():
        met = "(ref)" if name in REFERENCE else "ok" if r["p50_ms"] < GOAL_MS else "MISSED"
        say(f"{name:<26}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['rows']:>8}{r['points_per_line'] or '-':>10}  "
            f"{r['source'] or '-':<8}{met}")
    figures = {
        "clickhouse_version": admin.server_version, "cpus": os.cpu_count(), "read_user": read_user, "repeat": args.repeat,
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "goal_p50_ms": GOAL_MS, "rows": counts, "generation": generated,
        "max_points_per_line": max(r["points_per_line"] for r in results.values()),
        "generated": {"runs": args.runs, "overlay": f"{args.overlay_runs} runs x {args.steps} steps",
                      "cluster": f"{args.nodes} nodes x {args.gpus} GPUs, {len(GPU_FIGURES)} GPU + {len(HOST_FIGURES)} "
                                 f"host figures, {args.minutes} min at 1 Hz",
                      "history": f"{args.days} days: 1m rollup (+1h) and the last day raw"},
    }
    for name, r in results.items():
        figures[f"{name}_p50_ms"] = round(r["p50_ms"], 2)
        figures[f"{name}_p99_ms"] = round(r["p99_ms"], 2)
        figures[f"{name}_rows"] = r["rows"]
        figures[f"{name}_points_per_line"] = r["points_per_line"]
        figures[f"{name}_source"] = r["source"]
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    return 0 if all(r["p50_ms"] < GOAL_MS for n, r in results.items() if n not in REFERENCE) else 1


if __name__ == "__main__":
    sys.exit(main())
