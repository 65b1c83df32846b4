"""What ClickHouse spends on one sink write, by the write's size and by view (issue 13).

A processors worker writes each table once per flush: every 2 s at rest, in writes of up to 100,000 rows
under load. This benchmark writes the simulator's events (8 nodes x 8 GPUs, every rank logging 6 values
every 0.15 s) through the worker's own sink (`ClickHouseSink`) into freshly migrated databases, in writes
of each --sizes number of events, and reads the server's CPU time (its process, from /proc) around the
writes. Per size and variant it reports ClickHouse's CPU milliseconds per write and microseconds per value:

- `schema`: every view, raw inserts as the worker sends them (no insert-time Replacing merge);
- `insert_merge`: the same with `optimize_on_insert = 1` on the raw inserts (ClickHouse's default, the
  worker's before 08b8df9);
- `raw_only`: every materialized view dropped, so `schema - raw_only` is what the views cost;
- `hourly_from_raw`: the design before migration 0012, the three 1-hour tables filled from the raw rows
  of each insert (the schema's now read the 1-minute tables' block); the run checks that the 1-hour
  tables come out as the schema's (`hourly_from_raw_hourly_rows_differing`, must be 0);
- with --per-view, `view_<name>`: that one view kept, so `view_<name> - raw_only` is what it costs.

The same batches go to every variant of a round, each into its own fresh database, variants in turn;
figures are medians over --rounds. Each database is detached as its variant ends and all are dropped
together at the end: on ext4 without a journal the files a drop deletes make every file created in the
next minute cost the kernel a scan (dropping between variants doubled the figures of small writes on the
benchmark VM: docs/benchmarks.md, "The disk under ClickHouse"), and detached ones run no merges or
clean-up of their own beside the measured writes. The server's CPU is read in clock ticks (10 ms), so a
variant's writes are timed together and divided. It starts its own ClickHouse on the bench ports and
stops it at the end.

    python bench/insert_cost.py --json bench/results/insert_cost.json      # ~2 min
    python bench/insert_cost.py --per-view                                 # + each view alone, ~5 min
    python bench/insert_cost.py --quick                                    # ~15 s, for make bench
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import bench_settings, say, write_figures  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from bench.sim_storage import batches, recent_start, sim_config  # noqa: E402
from bench.storage import clickhouse, fresh_database, server_process  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.settings import Settings  # noqa: E402
from trainmon.stream_processors import sink  # noqa: E402

VARIANTS = ("schema", "insert_merge", "raw_only", "hourly_from_raw")
# The 1-hour views as they were before migration 0012 (the `hourly_from_raw` variant): each reads the raw
# rows of every insert, as the 1-minute views do.
HOURLY_FROM_RAW = {
    "metric_rollup_1h_mv": "metric_rollup_1h AS SELECT project, run, name, rank, toStartOfHour(time) AS bucket, "
    "min(step) AS step_min, max(step) AS step_max, count() AS count, countIf(NOT isFinite(value)) AS non_finite, "
    "sumIf(value, isFinite(value)) AS sum, min(if(isFinite(value), value, NULL)) AS min, "
    "max(if(isFinite(value), value, NULL)) AS max, argMaxState(value, step) AS last FROM metric_points "
    "GROUP BY project, run, name, rank, bucket",
    "system_rollup_1h_mv": "system_rollup_1h AS SELECT host, gpu, name, toStartOfHour(time) AS bucket, "
    "count() AS count, sum(value) AS sum, min(value) AS min, max(value) AS max, argMaxState(value, time) AS last "
    "FROM system_samples GROUP BY host, gpu, name, bucket",
    "metric_epochs_1h_mv": "metric_epochs_1h AS SELECT project, run, toStartOfHour(time) AS bucket, "
    "min(step) AS first_step, argMinState(epoch, step) AS first_epoch FROM metric_points WHERE isFinite(epoch) "
    "GROUP BY project, run, bucket",
}
# Each 1-hour table read whole, merged per key: what both designs must give alike.
HOURLY = {
    "metric_rollup_1h": "SELECT project, run, name, rank, bucket, min(step_min), max(step_max), sum(count), "
    "sum(non_finite), sum(sum), min(min), max(max), argMaxMerge(last) FROM metric_rollup_1h "
    "GROUP BY project, run, name, rank, bucket ORDER BY project, run, name, rank, bucket",
    "system_rollup_1h": "SELECT host, gpu, name, bucket, sum(count), sum(sum), min(min), max(max), argMaxMerge(last) "
    "FROM system_rollup_1h GROUP BY host, gpu, name, bucket ORDER BY host, gpu, name, bucket",
    "metric_epochs_1h": "SELECT project, run, bucket, min(first_step), argMinMerge(first_epoch) FROM metric_epochs_1h "
    "GROUP BY project, run, bucket ORDER BY project, run, bucket",
}


def sizes(text: str) -> list[tuple[int, int]]:
    """'2:100,1800:20' -> [(2, 100), (1800, 20)]: events per write, writes per variant and round."""
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: give EVENTS:WRITES pairs, comma-separated, e.g. 2:100,1800:20")
    return pairs


def prepare(target: Settings, variant: str) -> None:
    """A fresh database for one variant: all migrations, then its views: as migrated (schema,
    insert_merge), the 1-hour ones re-created on the raw tables (hourly_from_raw), all dropped (raw_only) or all
    but one (view_<name>)."""
    fresh_database(target, None)
    client = connect(target)
    if variant in ("schema", "insert_merge"):
        return
    if variant == "hourly_from_raw":
        for view, definition in HOURLY_FROM_RAW.items():
            client.command(f"DROP VIEW {view}")
            client.command(f"CREATE MATERIALIZED VIEW {view} TO {definition}")
        return
    for (view,) in client.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                "AND engine = 'MaterializedView'").result_rows:
        if variant != f"view_{view}":
            client.command(f"DROP VIEW {view}")


def same(a: object, b: object) -> bool:
    """Two cells equal; floats up to the rounding of sums added in another order, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def differing(expected: dict[str, list[tuple]], got: dict[str, list[tuple]]) -> int:
    """Rows of the 1-hour tables that differ between two variants (a key missing on one side counts)."""
    count = 0
    for table, rows in expected.items():
        other = got[table]
        count += abs(len(rows) - len(other))
        count += sum(1 for x, y in zip(rows, other) if len(x) != len(y) or not all(map(same, x, y)))
    return count


def view_names(settings: Settings, aside: list[str]) -> list[str]:
    target = settings.replace(clickhouse_database=f"{settings.clickhouse_database}_views")
    fresh_database(target, None)
    names = [row[0] for row in connect(target).query("SELECT name FROM system.tables WHERE database = "
                                                     "currentDatabase() AND engine = 'MaterializedView' ORDER BY "
                                                     "name").result_rows]
    set_aside(settings, target.clickhouse_database, aside)
    return names


def set_aside(settings: Settings, database: str, aside: list[str]) -> None:
    """Detached, not dropped: no files deleted and no background merges until the run ends."""
    connect(settings, database="default").command(f"DETACH DATABASE {database}")
    aside.append(database)


def drop_scratch(settings: Settings, aside: list[str]) -> None:
    """Every database this run set aside, and any other with its --database prefix (a run that was
    interrupted: ClickHouse attaches detached databases again when it starts)."""
    client = connect(settings, database="default")
    for name in aside:
        client.command(f"ATTACH DATABASE IF NOT EXISTS {name}")
    for (name,) in client.query("SELECT name FROM system.databases WHERE startsWith(name, {p:String})",
                                parameters={"p": f"{settings.clickhouse_database}_"}).result_rows:
        client.command(f"DROP DATABASE {name} SYNC")


def measure(settings: Settings, variants: list[str], events: int, writes: int, rounds: int, aside: list[str],
            ) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """Per variant, per round: (server CPU ms per write, µs per value); and the 1-hour rows in which
    `hourly_from_raw` differed from `schema`, over all rounds."""
    server = server_process(settings.clickhouse)
    if server is None:
        raise SystemExit("insert_cost: no ClickHouse process listens on this machine; it measures the server's CPU")
    shipped = dict(sink.RAW_INSERT_SETTINGS)
    results: dict[str, list[tuple[float, float]]] = defaultdict(list)
    mismatches = 0
    made = batches(sim_config(8, 8, 24.0, 0.15), recent_start(24.0), events, {})
    for round_ in range(rounds):
        chunk = [next(made) for _ in range(writes)]
        values = sum(batch.values for batch in chunk)
        hourly: dict[str, dict[str, list[tuple]]] = {}
        for variant in variants:
            target = settings.replace(clickhouse_database=f"{settings.clickhouse_database}_{events}_{round_}_{variant}")
            prepare(target, variant)
            sink.RAW_INSERT_SETTINGS.update(optimize_on_insert=1 if variant == "insert_merge" else
                                            shipped["optimize_on_insert"])
            writer = sink.ClickHouseSink(target)
            writer.client.query("SELECT 1")  # connected before the clock starts
            time.sleep(1.0)  # the migration's own work settled
            used = sum(server.cpu_times()[:2])
            try:
                for batch in chunk:
                    writer.write(batch)
            finally:
                sink.RAW_INSERT_SETTINGS.update(shipped)
            seconds = sum(server.cpu_times()[:2]) - used
            results[variant].append((1000 * seconds / writes, 1e6 * seconds / values))
            if variant in ("schema", "hourly_from_raw"):
                client = connect(target)
                hourly[variant] = {table: client.query(sql).result_rows for table, sql in HOURLY.items()}
            set_aside(settings, target.clickhouse_database, aside)
        if {"schema", "hourly_from_raw"} <= hourly.keys():
            mismatches += differing(hourly["schema"], hourly["hourly_from_raw"])
        say(f"  {events:,} events per write, round {round_ + 1}: "
            + ", ".join(f"{v} {results[v][-1][0]:.1f} ms" for v in variants))
    return results, mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=sizes, default=sizes("2:100,1800:20,20000:5"), metavar="EVENTS:WRITES,...",
                        help="write sizes in events (a metrics event holds 6 values here, a system event ~150) and "
                             "how many writes each variant makes per round (default 2:100,1800:20,20000:5: a "
                             "near-empty write, a 2 s flush of the demo's cluster, a write under load)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, variants in turn in each (default 3)")
    parser.add_argument("--per-view", action="store_true", help="also each materialized view alone (view_<name>)")
    parser.add_argument("--database", default="trainmon_bench_insert_cost",
                        help="prefix of the scratch databases, one per size, round and variant, detached as each "
                             "ends and all dropped at the end (default %(default)s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, sizes="2:20,1800:5", rounds=1)

    figures: dict[str, float] = {}
    with clickhouse(bench_settings(1, database=args.database), None) as settings:
        aside: list[str] = []
        drop_scratch(settings, aside)  # an interrupted run's
        try:
            variants = list(VARIANTS)
            if args.per_view:
                variants += [f"view_{name}" for name in view_names(settings, aside)]
            for events, writes in args.sizes:
                say(f"{writes} writes of {events:,} events per variant, {args.rounds} round(s), "
                    f"{len(variants)} variants ...")
                results, mismatches = measure(settings, variants, events, writes, args.rounds, aside)
                figures[f"w{events}_hourly_from_raw_hourly_rows_differing"] = mismatches
                for variant, rows in results.items():
                    figures[f"w{events}_{variant}_cpu_ms_per_write"] = statistics.median(r[0] for r in rows)
                    figures[f"w{events}_{variant}_cpu_us_per_value"] = statistics.median(r[1] for r in rows)
        finally:
            drop_scratch(settings, aside)
    print(f"\nClickHouse CPU per sink write (median of {args.rounds} round(s)), ms per write / us per value:")
    print(f"{'variant':40s}" + "".join(f"{f'{e:,} events':>22s}" for e, _ in args.sizes))
    for variant in variants:
        cells = "".join(f"{figures[f'w{e}_{variant}_cpu_ms_per_write']:>12.1f} / {figures[f'w{e}_{variant}_cpu_us_per_value']:>6.2f}"
                        for e, _ in args.sizes)
        print(f"{variant:40s}{cells}")
    print("1-hour rows in which hourly_from_raw differed from schema: "
          + ", ".join(f"{figures[f'w{e}_hourly_from_raw_hourly_rows_differing']:.0f} ({e:,} events)" for e, _ in args.sizes)
          + " (must be 0)")
    if args.json:
        write_figures(args.json, args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
