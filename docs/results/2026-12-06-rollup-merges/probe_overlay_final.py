"""Probe: what the overlay's bucket query costs over the 1-minute rollup's parts. Run from the checkout against a
database that `python bench/queries.py --url http://127.0.0.1:28123 --keep` left (ClickHouse still running):
python docs/results/2026-12-06-rollup-merges/probe_overlay_final.py. It times the dashboard's own SQL for the
overlay (dashboard/queries.py `series`) as is, without FINAL, with each FINAL setting, and on a merged copy of
the table (r1m_merged, made here with INSERT ... SELECT and OPTIMIZE FINAL); median of 7 calls each."""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout
import clickhouse_connect
from dashboard.queries import Queries

c = clickhouse_connect.get_client(host="127.0.0.1", port=28123, database="trainmon_bench")
captured = {}
arrow = c.query_arrow
def capture(sql, parameters=None, **kw):
    captured.setdefault("sql", (sql, parameters))
    return arrow(sql, parameters=parameters, **kw)
c.query_arrow = capture
runs = [r for (r,) in c.query("SELECT DISTINCT run FROM runs WHERE project = 'proj-big' ORDER BY run").result_rows]
Queries(c).series("proj-big", runs, "loss", points=1000)
sql, params = captured["sql"]
print(c.query("SELECT count() FROM system.parts WHERE database = 'trainmon_bench' AND table = 'metric_rollup_1m' "
              "AND active").result_rows[0][0], "active parts in metric_rollup_1m")
print("overlay keys' rows:", c.query("SELECT count() FROM metric_rollup_1m WHERE project = 'proj-big' AND name = 'loss'").result_rows[0][0],
      "unmerged,", c.query("SELECT count() FROM metric_rollup_1m FINAL WHERE project = 'proj-big' AND name = 'loss'").result_rows[0][0], "merged")

def timed(label, statement, settings=None, n=7):
    ms = []
    for _ in range(n):
        start = time.perf_counter()
        r = c.query(statement, parameters=params, settings=settings or {})
        ms.append((time.perf_counter() - start) * 1000)
    print(f"{label:72s} {statistics.median(ms):7.1f} ms  read_rows {r.summary.get('read_rows')}  rows {len(r.result_rows)}")

timed("as is (FINAL)", sql)
timed("without FINAL", sql.replace(" FINAL", ""))
for s in ({"enable_vertical_final": 0}, {"split_intersecting_parts_ranges_into_layers_final": 0},
          {"split_parts_ranges_into_intersecting_and_non_intersecting_final": 0}, {"max_final_threads": 2},
          {"do_not_merge_across_partitions_select_final": 1}):
    timed("FINAL, " + json.dumps(s), sql, s)
c.command("DROP TABLE IF EXISTS r1m_merged")
c.command("CREATE TABLE r1m_merged AS metric_rollup_1m")
c.command("INSERT INTO r1m_merged SELECT * FROM metric_rollup_1m")
c.command("OPTIMIZE TABLE r1m_merged FINAL")
merged = sql.replace("metric_rollup_1m", "r1m_merged")
timed("merged copy (1 part), FINAL", merged)
timed("merged copy (1 part), without FINAL", merged.replace(" FINAL", ""))
timed("as is again", sql)
c.command("DROP TABLE r1m_merged")
