"""Exploratory: ClickHouse CPU per sink write under insert-settings variants (not committed)."""
import statistics, sys, time
from collections import defaultdict
sys.path.insert(0, "<checkout>"); sys.path.insert(0, "<checkout>/bench")
from bench import insert_cost as ic
from trainmon.stream_processors import sink
from bench.pipeline import bench_settings

VARIANTS = {"base": {}, "mt1": {"max_threads": 1}, "nocc": {"use_concurrency_control": 0},
            "nodedup": {"insert_deduplicate": 0}, "pvp": {"parallel_view_processing": 1}}
events, writes, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with ic.clickhouse(bench_settings(1, database="trainmon_x_ins"), None) as settings:
    aside = []
    ic.drop_scratch(settings, aside)
    server = ic.server_process(settings.clickhouse)
    made = ic.batches(ic.sim_config(8, 8, 24.0, 0.15), ic.recent_start(24.0), events, {})
    res = defaultdict(list)
    ship_i, ship_r = dict(sink.INSERT_SETTINGS), dict(sink.RAW_INSERT_SETTINGS)
    try:
        for r in range(rounds):
            chunk = [next(made) for _ in range(writes)]
            for name, extra in VARIANTS.items():
                target = settings.replace(clickhouse_database=f"trainmon_x_ins_{r}_{name}")
                ic.prepare(target, "schema")
                sink.INSERT_SETTINGS.update(extra); sink.RAW_INSERT_SETTINGS.update(extra)
                w = sink.ClickHouseSink(target); w.client.query("SELECT 1"); time.sleep(1.0)
                used = sum(server.cpu_times()[:2])
                for b in chunk:
                    w.write(b)
                res[name].append(1000 * (sum(server.cpu_times()[:2]) - used) / writes)
                sink.INSERT_SETTINGS.clear(); sink.INSERT_SETTINGS.update(ship_i)
                sink.RAW_INSERT_SETTINGS.clear(); sink.RAW_INSERT_SETTINGS.update(ship_r)
                ic.set_aside(settings, target.clickhouse_database, aside)
            print(r, {k: round(v[-1], 1) for k, v in res.items()}, flush=True)
    finally:
        ic.drop_scratch(settings, aside)
print({k: round(statistics.median(v), 1) for k, v in res.items()})
