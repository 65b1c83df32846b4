"""Probe: is the overlay's warm miss at 20 M points the rollups' part count? Time the views (bench/queries.py defaults,
--keep), OPTIMIZE ... FINAL the four rollup tables of metric_points, time them again (--reuse --ingest-seconds 0).
Run from the checkout: python docs/results/2026-12-06-warm-broker/probe_overlay_parts.py; output: overlay_parts.log."""
import subprocess, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the checkout
sys.path.insert(0, str(ROOT))
from bench.pipeline import bench_settings, say
from trainmon.deploy import services
from trainmon.clickhouse import connect

settings = bench_settings(1, database="trainmon_bench")
services.start_all(settings, ["clickhouse"], progress=say)
url = "http://127.0.0.1:28123"
try:
    q = [sys.executable, "bench/queries.py", "--url", url, "--reference-repeat", "0"]
    subprocess.run(q + ["--keep", "--json", str(Path.cwd() / "ov_before.json")], cwd=ROOT, check=False)
    with connect(settings, database="trainmon_bench") as c:
        for t in ("metric_rollup_1m", "metric_rollup_1h", "metric_epochs_1m", "metric_epochs_1h"):
            before = c.query(f"SELECT count() FROM system.parts WHERE database='trainmon_bench' AND table='{t}' AND active").result_rows[0][0]
            c.command(f"OPTIMIZE TABLE {t} FINAL")
            after = c.query(f"SELECT count() FROM system.parts WHERE database='trainmon_bench' AND table='{t}' AND active").result_rows[0][0]
            print(f"{t}: {before} -> {after} active parts", flush=True)
    subprocess.run(q + ["--reuse", "--ingest-seconds", "0", "--json", str(Path.cwd() / "ov_after.json")], cwd=ROOT, check=False)
finally:
    try:
        connect(settings, database="default").command("DROP DATABASE IF EXISTS trainmon_bench")
    finally:
        services.stop_all(settings, ["clickhouse"], progress=say)
