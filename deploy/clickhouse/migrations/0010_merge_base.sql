-- Merges wait for wider ranges of parts: merge_selector_base 20 instead of 5, in every table the
-- processors write. At rest each of these tables gets a small part per flush (every 2 s). ClickHouse's
-- merge selector weighs each part as at least 5 MiB and prefers longer ranges, so while a partition's
-- largest part is under ~1 MiB (a raw partition for its first minutes; a rollup's month for hours)
-- every merge of 5 or 6 new parts took that part in as well and rewrote it: at rest 1.5 merges a second,
-- 57,000-62,000 rows merged a second for ~8,500 written (bench/idle.py --part-log; docs/benchmarks.md,
-- "Cost at rest"). With base 20 a merge waits for ~20 parts and, by the selector's formula, leaves out a
-- part over ~0.3 MiB: 0.44-0.53 merges and 15,600-18,000 rows merged a second, and ClickHouse 1.5-1.8
-- points of a core cheaper at rest (7.7-8.0 -> 6.2 %). The cost is more small parts between merges
-- (128-151 active parts at the end of an idle run, against 64-65), which the dashboard's views at 1e9
-- points did not notice (bench/queries.py, every view within its goals). The selector still lowers the
-- base towards 2 as parts age, so older partitions end in few parts. A setting change rewrites nothing.

ALTER TABLE metric_points MODIFY SETTING merge_selector_base = 20;
ALTER TABLE system_samples MODIFY SETTING merge_selector_base = 20;
ALTER TABLE gpus MODIFY SETTING merge_selector_base = 20;
ALTER TABLE run_events MODIFY SETTING merge_selector_base = 20;
ALTER TABLE runs MODIFY SETTING merge_selector_base = 20;
ALTER TABLE run_ranks MODIFY SETTING merge_selector_base = 20;
ALTER TABLE window_aggregates MODIFY SETTING merge_selector_base = 20;
ALTER TABLE alerts MODIFY SETTING merge_selector_base = 20;
ALTER TABLE alert_deliveries MODIFY SETTING merge_selector_base = 20;
ALTER TABLE metric_rollup_1m MODIFY SETTING merge_selector_base = 20;
ALTER TABLE metric_rollup_1h MODIFY SETTING merge_selector_base = 20;
ALTER TABLE system_rollup_1m MODIFY SETTING merge_selector_base = 20;
ALTER TABLE system_rollup_1h MODIFY SETTING merge_selector_base = 20;
ALTER TABLE ingest_offsets MODIFY SETTING merge_selector_base = 20;
ALTER TABLE system_latest MODIFY SETTING merge_selector_base = 20;
ALTER TABLE metric_epochs_1m MODIFY SETTING merge_selector_base = 20;
ALTER TABLE incidents MODIFY SETTING merge_selector_base = 20;
ALTER TABLE metric_epochs_1h MODIFY SETTING merge_selector_base = 20;
