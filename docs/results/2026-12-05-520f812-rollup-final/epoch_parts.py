import statistics, sys, time
sys.path.insert(0, ".")  # run from the checkout
import clickhouse_connect
from trainmon.dashboard.queries import Queries
c = clickhouse_connect.get_client(host="127.0.0.1", port=24123, database="trainmon_bench", username="reader")
q = Queries(c)
runs = [r for (r,) in c.query("SELECT DISTINCT run FROM runs WHERE project = 'proj-big' ORDER BY run").result_rows]
P = "proj-big"
plan, _ = q._metric_plan(P, runs, "loss", x="step", points=1000, rank=None, start=None, end=None, source="auto")
calls = {
  "plan": lambda: q._metric_plan(P, runs, "loss", x="step", points=1000, rank=None, start=None, end=None, source="auto"),
  "series_step": lambda: q.series(P, runs, "loss", points=1000),
  "epoch_map": lambda: q.epoch_map(P, runs, "loss", points=1000, plan=plan),
  "series_epoch": lambda: q.series(P, runs, "loss", x="epoch", points=1000),
}
times = {k: [] for k in calls}
for i in range(int(sys.argv[1])):
    for k, f in calls.items():
        t = time.perf_counter(); f(); times[k].append((time.perf_counter() - t) * 1000)
for k, v in times.items():
    print(f"{k:14s} median {statistics.median(v):6.1f} ms  min {min(v):6.1f}")
