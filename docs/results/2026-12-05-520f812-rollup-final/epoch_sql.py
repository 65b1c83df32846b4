import os, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import PROJECT as P, connect_capturing
c, q, captured, runs = connect_capturing()
plan, _ = q._metric_plan(P, runs, "loss", x="step", points=1000, rank=None, start=None, end=None, source="auto")
q.epoch_map(P, runs, "loss", points=1000, plan=plan)
sql, params = captured[-1]
print(sql)
inner = sql[sql.index("SELECT run, toFloat64(min(s))"):sql.index(") ORDER BY run, first")]
flat = inner.replace("SELECT run, toFloat64(min(s)) AS first, argMin(e, s) AS at FROM (SELECT run, bucket, min(first_step) AS s, argMinMerge(first_epoch) AS e FROM metric_epochs_1h ", "SELECT run, toFloat64(min(first_step)) AS first, argMinMerge(first_epoch) AS at FROM metric_epochs_1h FINAL ")
flat = flat.replace(" GROUP BY run, bucket) GROUP BY run, intDiv(s - ", " GROUP BY run, intDiv(first_step - ")
flat = sql.replace(inner, flat)
print(flat)
variants = {"now": sql, "final_flat": flat, "trivial": "SELECT 1"}
ans = {k: c.query(v, parameters=params).result_rows for k, v in variants.items() if k != "trivial"}
print("same:", ans["now"] == ans["final_flat"], len(ans["now"]))
times = {k: [] for k in variants}
for i in range(30):
    for k, v in variants.items():
        t = time.perf_counter(); c.query(v, parameters=params); times[k].append((time.perf_counter() - t) * 1000)
for k, v in times.items():
    print(f"{k:12s} median {statistics.median(v):6.1f} ms  min {min(v):6.1f}")
