"""Server and client CPU per sink write, lz4-compressed (clickhouse-connect's default) or not."""
import statistics, sys, time
from pathlib import Path
ROOT = Path(sys.argv[1]); sys.path.insert(0, str(ROOT))
from bench.insert_cost import prepare, set_aside, drop_scratch
from bench.pipeline import bench_settings
from bench.sim_storage import batches, recent_start, sim_config
from bench.storage import clickhouse, server_process
from trainmon.clickhouse import connect
from stream_processors import sink

sizes = [(20000, 5), (1800, 20)]
with clickhouse(bench_settings(1, database="trainmon_bench_cprobe"), None) as settings:
    aside = []
    drop_scratch(settings, aside)
    server = server_process(settings.clickhouse)
    try:
        for events, writes in sizes:
            made = batches(sim_config(8, 8, 24.0, 0.15), recent_start(24.0), events, {})
            res = {"lz4": [], "none": []}
            for rnd in range(4):
                chunk = [next(made) for _ in range(writes)]
                for variant in (["lz4", "none"] if rnd % 2 == 0 else ["none", "lz4"]):
                    target = settings.replace(clickhouse_database=f"{settings.clickhouse_database}_{events}_{rnd}_{variant}")
                    prepare(target, "schema")
                    factory = (lambda s: connect(s)) if variant == "lz4" else (lambda s: connect(s, compress=False))
                    w = sink.ClickHouseSink(target, client_factory=factory)
                    w.client.query("SELECT 1"); time.sleep(1.0)
                    used, mine = sum(server.cpu_times()[:2]), time.process_time()
                    for b in chunk:
                        w.write(b)
                    s_ms = 1000 * (sum(server.cpu_times()[:2]) - used) / writes
                    c_ms = 1000 * (time.process_time() - mine) / writes
                    res[variant].append((s_ms, c_ms))
                    set_aside(settings, target.clickhouse_database, aside)
                print(events, rnd, {k: v[-1] for k, v in res.items()}, flush=True)
            for k, v in res.items():
                print(f"{events} events {k}: server {statistics.median(x[0] for x in v):.1f} ms, client {statistics.median(x[1] for x in v):.1f} ms per write")
    finally:
        drop_scratch(settings, aside)
