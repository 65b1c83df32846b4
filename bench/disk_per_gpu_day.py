"""ClickHouse disk per GPU-day: what a platform team provisions for trainmon's storage.

Simulated nodes (agent/simulator: the same hardware model the demo and the detection benchmark use)
sample every GPU at 1 Hz for `--hours`; the events are written the way a processors worker writes
them (stream_processors/sink.py Batch + ClickHouseSink, batches of `--batch-events`), so the raw
table, its rollup views and `system_latest` fill as in production. After the merges settle
(OPTIMIZE ... FINAL), the bytes on disk of each table are divided by the GPU-days written. Training
metrics are measured beside it: one run on every GPU, each rank logging a step every `--metrics-every` seconds.

The steady-state line multiplies each table's daily bytes by its TTL (deploy/clickhouse/migrations):
what one GPU costs once retention is full.

    python bench/disk_per_gpu_day.py --json bench/results/disk.json   # 1 node x 8 GPUs, 24 h (~3 min)
    python bench/disk_per_gpu_day.py --hours 2                          # a quick look

It starts its own ClickHouse under .trainmon/bench (port 28123) unless --url is given, and drops its
database at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import parse_args  # noqa: E402
from bench.sim_storage import merge, recent_start, sim_config, table_bytes, write  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from trainmon.settings import Settings  # noqa: E402

# Retention of each table in days, as the migrations set it (0: no TTL, kept while its run is).
RETENTION_DAYS = {"system_samples": 30, "system_rollup_1m": 365, "system_rollup_1h": 1825, "system_latest": 0,
                  "gpus": 0, "metric_points": 730, "metric_rollup_1m": 1825, "metric_rollup_1h": 1825,
                  "metric_epochs_1m": 1825, "metric_epochs_1h": 1825}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1, help="simulated nodes (default 1)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--hours", type=float, default=24, help="hours of 1 Hz samples (default 24)")
    parser.add_argument("--metrics-every", type=float, default=1.0,
                        help="seconds between two logged training steps of each rank (default 1.0)")
    parser.add_argument("--batch-events", type=int, default=2000, help="events per insert (default 2000)")
    parser.add_argument("--url", help="an existing ClickHouse HTTP URL (default: start one under .trainmon/bench)")
    parser.add_argument("--database", default="trainmon_bench_disk", help="database (default trainmon_bench_disk)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, hours=2.0)

    settings = Settings(services_home=str(ROOT / ".trainmon" / "bench"), services_clickhouse_http_port=28123,
                        services_clickhouse_tcp_port=29000, clickhouse_database=args.database,
                        clickhouse_url=args.url or "")
    started = []
    if not args.url:
        say(f"starting ClickHouse under {settings.home} ...")
        started = [s.name for s in services.start_all(settings, names=["clickhouse"], progress=say)]
    admin = connect(settings, database="default")
    version = admin.query("SELECT version()").result_rows[0][0]
    say(f"ClickHouse {version} at {settings.clickhouse}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    figures: dict[str, float] = {}
    try:
        admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
        migrate(settings, progress=lambda m: None)
        config = sim_config(args.nodes, args.gpus, args.hours, args.metrics_every)
        start = recent_start(args.hours)
        say(f"writing {args.hours:g} h of {args.nodes} node(s) x {args.gpus} GPUs at 1 Hz, one run logging every "
            f"{args.metrics_every:g} s, batches of {args.batch_events} events ...")
        began = time.monotonic()
        counts = write(settings, config, start, args.batch_events)
        say(f"  {counts['system']:,} system and {counts['metrics']:,} metrics events, {counts['values']:,} values "
            f"in {time.monotonic() - began:.0f} s; merging (OPTIMIZE ... FINAL)")
        client = connect(settings)
        merge(client, RETENTION_DAYS)
        sizes = table_bytes(client)
        gpu_days = args.nodes * args.gpus * args.hours / 24
        print(f"\n{'table':<20} {'rows':>12} {'on disk':>12} {'raw':>12} {'bytes/row':>10} {'MB per GPU-day':>15} "
              f"{'TTL days':>9}")
        steady = 0.0
        for table, (rows, on_disk, raw) in sorted(sizes.items()):
            if table not in RETENTION_DAYS or not rows:
                continue
            per_gpu_day = on_disk / gpu_days / 1e6
            days = RETENTION_DAYS[table]
            steady += per_gpu_day * days if days else on_disk / (args.nodes * args.gpus) / 1e6
            figures[f"{table}_mb_per_gpu_day"] = per_gpu_day
            figures[f"{table}_bytes_per_row"] = on_disk / rows
            print(f"{table:<20} {rows:>12,} {on_disk:>12,} {raw:>12,} {on_disk / rows:>10.2f} {per_gpu_day:>15.3f} "
                  f"{days or '-':>9}")
        hardware = sum(v for k, v in figures.items() if k.startswith("system_") and k.endswith("_mb_per_gpu_day"))
        training = sum(v for k, v in figures.items() if k.startswith("metric_") and k.endswith("_mb_per_gpu_day"))
        figures.update(hardware_mb_per_gpu_day=hardware, training_mb_per_gpu_day=training,
                       steady_state_gb_per_gpu=steady / 1e3, gpu_days=gpu_days, values_written=counts["values"])
        print(f"\nper GPU-day: hardware {hardware:.2f} MB, training metrics {training:.2f} MB (each rank a step every "
              f"{args.metrics_every:g} s)")
        print(f"steady state under the shipped TTLs: {steady / 1e3:.2f} GB per GPU")
    finally:
        if not args.keep:
            admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
        if started:
            services.stop_all(settings, started, progress=say)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
