"""Time the overlay's series SQL at 1e9 in three forms: as before (no FINAL), FINAL, merged-by-key subquery."""
import os, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import connect_capturing
c, q, captured, runs = connect_capturing(username="reader")
print(len(runs), "runs")
q.series("proj-big", runs, "loss", points=1000)
sql, params = captured[-1]
assert " FINAL" in sql, sql[:500]
final = sql
before = sql.replace("metric_rollup_1h FINAL", "metric_rollup_1h").replace("metric_rollup_1m FINAL", "metric_rollup_1m")
# the merged-by-key form: the rollup read GROUP BY its key first
def merged(m):
    table, where = m.group(1), m.group(2)
    key_conds, step_conds = [], []
    for cond in where.split(" AND "):
        (step_conds if ("step_" in cond or "{" in cond and "step" in cond) else key_conds).append(cond)
    return ("FROM (SELECT run, rank, bucket, min(step_min) AS s_lo, max(step_max) AS s_hi, min(min) AS v_lo, "
            "max(max) AS v_hi, sum(sum) AS v_sum, sum(count) AS v_n, sum(non_finite) AS v_bad, "
            f"argMaxMergeState(last) AS v_last_state FROM {table} WHERE {' AND '.join(key_conds)} GROUP BY run, rank, bucket)"
            f" WHERE {' AND '.join(step_conds)}")
print(final[:3000])
inner_from = "FROM metric_rollup_1h FINAL WHERE project = {p4:String} AND run IN {p0:Array(String)} AND name = {p5:String} AND "
assert inner_from in final
m = final.replace(inner_from, "FROM (SELECT run, rank, bucket, min(step_min) AS s_lo, max(step_max) AS s_hi, min(min) AS v_lo, "
    "max(max) AS v_hi, sum(sum) AS v_sum, sum(count) AS v_n, sum(non_finite) AS v_bad, argMaxMergeState(last) AS v_state "
    "FROM metric_rollup_1h WHERE project = {p4:String} AND run IN {p0:Array(String)} AND name = {p5:String} "
    "GROUP BY run, rank, bucket) WHERE ")
m = (m.replace("greatest(step_min,", "greatest(s_lo,").replace("step_max >=", "s_hi >=").replace("step_min <=", "s_lo <=")
      .replace("min(min) AS v_min, max(max) AS v_max, sum(sum) / nullIf(sum(count) - sum(non_finite), 0) AS v_mean, argMaxMerge(last) AS v_last, sum(count) AS n, sum(non_finite) AS n_bad",
               "min(v_lo) AS v_min, max(v_hi) AS v_max, sum(v_sum) / nullIf(sum(v_n) - sum(v_bad), 0) AS v_mean, argMaxMerge(v_state) AS v_last, sum(v_n) AS n, sum(v_bad) AS n_bad"))
variants = {"before": before, "final": final, "merged": m}
answers = {k: c.query(v, parameters=params).result_rows for k, v in variants.items()}
print({k: len(v) for k, v in answers.items()}, "final == merged:", answers["final"] == answers["merged"])
times = {k: [] for k in variants}
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 30):
    for k, v in variants.items():
        t = time.perf_counter(); c.query(v, parameters=params); times[k].append((time.perf_counter() - t) * 1000)
for k, v in times.items():
    print(f"{k:8s} median {statistics.median(v):6.1f} ms  min {min(v):6.1f}  p90 {sorted(v)[int(len(v)*0.9)]:6.1f}")
