"""Probe: which tables ClickHouse writes and merges in one throughput phase of bench/pipeline.py (system.part_log).

Run from the checkout: python docs/results/2026-12-06-warm-broker/probe_merges.py [SECONDS]; TRAINMON_BENCH_HOME as for
the benches. Output of 2026-12-06: probe_outputs.txt."""
import argparse, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout
from bench import pipeline as P
from bench import idle as I
from trainmon.deploy import services
from trainmon.deploy.migrate import migrate
from trainmon.deploy.topics import create_topics
from trainmon.clickhouse import connect

args = argparse.Namespace(workers=2, batch_events=5000, warmup=12, seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 20,
                          width=64, runs=24, drain_timeout=120)
settings = P.bench_settings(6)
log_file = I.part_log_file(settings)
log_file.parent.mkdir(parents=True, exist_ok=True)
log_file.write_text(I.PART_LOG_XML)
try:
    services.start_all(settings, progress=P.say)
finally:
    log_file.unlink(missing_ok=True)
try:
    create_topics(settings, progress=lambda m: None)
    migrate(settings, progress=lambda m: None)
    start = I.server_now(settings)
    with tempfile.TemporaryDirectory() as tmp:
        r = P.run_once(args, settings, Path(tmp), 600_000, [])
    print({k: round(v, 1) for k, v in r.items()})
    end = I.server_now(settings)
    with connect(settings) as c:
        c.command("SYSTEM FLUSH LOGS")
        rows = c.query("SELECT table, countIf(event_type='NewPart'), sumIf(rows, event_type='NewPart'), "
                       "countIf(event_type='MergeParts'), round(sumIf(duration_ms, event_type='MergeParts')/1000,2), "
                       "sumIf(read_rows, event_type='MergeParts'), round(sumIf(duration_ms, event_type='NewPart')/1000,2) FROM system.part_log "
                       "WHERE database={d:String} AND event_time >= {s:DateTime} GROUP BY table ORDER BY 5 DESC",
                       parameters={"d": settings.clickhouse_database, "s": start}).result_rows
        print("table new_parts new_rows merges merge_s merged_rows newpart_s")
        for row in rows:
            print(*row)
        detail = c.query("SELECT event_time, rows, formatReadableSize(size_in_bytes), length(merged_from), duration_ms, part_type, "
                         "peak_memory_usage FROM system.part_log WHERE database={d:String} AND table='metric_points' AND event_type='MergeParts' "
                         "AND event_time >= {s:DateTime} ORDER BY event_time", parameters={"d": settings.clickhouse_database, "s": start}).result_rows
        for row in detail:
            print(*row)
        sizes = c.query("SELECT part_type, count(), avg(rows), formatReadableSize(avg(size_in_bytes)) FROM system.part_log WHERE database={d:String} AND table='metric_points' AND event_type='NewPart' AND event_time >= {s:DateTime} GROUP BY part_type", parameters={"d": settings.clickhouse_database, "s": start}).result_rows
        print(sizes)
        print(c.query("SELECT name, value, changed FROM system.merge_tree_settings WHERE name IN ('merge_selector_base','min_bytes_for_wide_part','min_rows_for_wide_part','max_parts_to_merge_at_once','merge_selector_algorithm','min_age_to_force_merge_seconds','number_of_free_entries_in_pool_to_lower_max_size_of_merge','background_pool_size')").result_rows)
finally:
    connect(settings, database="default").command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    P.delete_topics(settings)
    services.stop_all(settings, progress=P.say)
