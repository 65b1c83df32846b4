"""Ad-hoc: ClickHouse CPU per metric_points write, plain strings vs dictionary arrays for LowCardinality columns.
Run D's version: "dict" is the sink with dictionary types for those columns (as tried, since reverted),
"plain" swaps them back to strings; usage: probe_dictionary_insert.py ROUNDS, from the checkout."""
import os, sys, time, random, statistics
sys.path.insert(0, os.getcwd())
import pyarrow as pa
from bench.pipeline import bench_settings
from bench.storage import clickhouse, fresh_database, server_process
from trainmon.stream_processors import sink
from trainmon.stream_processors.sink import Batch

def threads(pid):
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            data = open(f"/proc/{pid}/task/{task}/stat").read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[task] = (comm, int(fields[11]) + int(fields[12]))
    return out

def handler_ms(before, after):
    return 10 * sum(after[t][1] - before.get(t, (None, 0))[1] for t in after if after[t][0].startswith("HTTPHandler"))

names = [f"metric_{i:02d}" for i in range(64)]
step = [0]

def batch(events=1560):
    b = Batch()
    for e in range(events):
        step[0] += 1
        b.add_metrics({"project": "bench", "run": f"run-{e % 4}", "rank": e % 8, "host": f"node-{e % 8}", "step": step[0],
                       "time": time.time(), "values": {n: random.random() for n in names}}, "bench.metrics", e % 6, step[0])
    return b

VARIANTS = {"plain": "plain", "dict": "dict"}
with clickhouse(bench_settings(1, database="exp_dict"), None) as settings:
    server = server_process(settings.clickhouse)
    results = {v: [] for v in VARIANTS}
    handler = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        fresh_database(settings.replace(clickhouse_database=f"exp_{v}"), None)
    for round_ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
        for v, fn in (list(VARIANTS.items())[round_ % 3:] + list(VARIANTS.items())[:round_ % 3]):
            w = sink.ClickHouseSink(settings.replace(clickhouse_database=f"exp_{v}"))
            if v == "plain":
                w._types = {k: pa.string() if pa.types.is_dictionary(t) else t for k, t in w._types.items()}
            w.client.query("SELECT 1")
            chunk = [batch() for _ in range(8)]
            time.sleep(2)
            used = sum(server.cpu_times()[:2]); t0 = time.perf_counter(); tb = threads(server.pid)
            for b in chunk:
                w.write(b)
            ms = 1000 * (sum(server.cpu_times()[:2]) - used) / len(chunk)
            results[v].append(ms)
            handler[v].append(handler_ms(tb, threads(server.pid)) / len(chunk))
            print("  handler threads ms per write", handler[v][-1], sorted({c for c, _ in threads(server.pid).values()}) if round_ == 0 else "")
            print(f"round {round_} {v}: {ms:.1f} ms server CPU per write, wall {1000*(time.perf_counter()-t0)/len(chunk):.1f} ms", flush=True)
    for v in VARIANTS:
        print(v, "median", statistics.median(results[v]), results[v])
    print("handler", {v: statistics.median(x) for v, x in handler.items()}, handler)
    from trainmon.clickhouse import connect
    for v in VARIANTS:
        c = connect(settings.replace(clickhouse_database=f"exp_{v}"))
        print(v, c.query("SELECT count(), uniqExact(name), uniqExact(host), any(project), any(src_topic), sum(value) FROM metric_points").result_rows,
              c.query("SELECT sum(count) FROM metric_rollup_1m").result_rows)
