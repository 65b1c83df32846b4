"""Scratch: the bench ClickHouse with the schema and nothing written; per-thread CPU over 60 s."""
import subprocess, sys, time
sys.path.insert(0, ".")  # run from the checkout, with TRAINMON_BENCH_HOME=<fresh dir>
from bench.pipeline import bench_settings
from bench.storage import clickhouse, fresh_database, server_process
with clickhouse(bench_settings(1, database="trainmon_probe_idle"), None) as settings:
    fresh_database(settings, None)
    server = server_process(settings.clickhouse)
    time.sleep(20)
    print(subprocess.run([sys.executable, "docs/results/2026-12-06-idle-cuts/probe_threads.py", "60", str(server.pid)], capture_output=True, text=True).stdout)
