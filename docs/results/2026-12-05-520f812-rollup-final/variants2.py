import statistics, sys, time
exec(open(__file__.replace("variants2.py", "variants.py")).read().split("variants = {")[0].replace('username="reader"', 'username="default"'))
opts = {"final": {}, "before": {}, "nomerge_across": {"do_not_merge_across_partitions_select_final": 1},
        "no_vertical": {"enable_vertical_final": 0}, "no_split": {"split_parts_ranges_into_intersecting_and_non_intersecting_final": 0},
        "threads1": {"max_final_threads": 1}}
times = {k: [] for k in opts}
for i in range(30):
    for k, s in opts.items():
        sqlv = before if k == "before" else final
        t = time.perf_counter(); c.query(sqlv, parameters=params, settings=s); times[k].append((time.perf_counter() - t) * 1000)
for k, v in times.items():
    print(f"{k:15s} median {statistics.median(v):6.1f} ms  min {min(v):6.1f}")
