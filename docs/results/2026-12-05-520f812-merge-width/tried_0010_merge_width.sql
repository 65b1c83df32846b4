-- TRIED, NOT ADOPTED (mw10_pl.log beside this file): merges fell from 1.58 to 0.94 a second, but
-- metric_points then merged 19 times the rows written instead of 6.7 (a range of 10 parts had to take
-- in the partition's large part) and ClickHouse + worker rose from 16.9 to 17.9 % of a core.
-- The header below is the hypothesis as written before the measurement.
-- Merges at least 10 parts at a time in every table the processors write. At rest each of these tables
-- gets a small part per flush (every 2 s). ClickHouse's merge selector counts each part as at least
-- 5 MiB when it weighs a merge, so while a partition's parts are all smaller than that (the first hour
-- of a day's GPU samples, a rollup for days) any 5 of them qualify, the partition's largest part
-- included: system.part_log at rest (bench/idle.py --part-log, docs/benchmarks.md) showed
-- system_samples merging 22 times the rows written, metric_points 6.7 times. Waiting for 10 parts
-- halves the merges and leaves up to ~20 small parts per partition between them, which the
-- dashboard's reads do not notice. A setting change rewrites nothing.

ALTER TABLE metric_points MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE system_samples MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE gpus MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE run_events MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE runs MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE run_ranks MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE window_aggregates MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE alerts MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE alert_deliveries MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE metric_rollup_1m MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE metric_rollup_1h MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE system_rollup_1m MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE system_rollup_1h MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE ingest_offsets MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE system_latest MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE metric_epochs_1m MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE incidents MODIFY SETTING min_parts_to_merge_at_once = 10;
ALTER TABLE metric_epochs_1h MODIFY SETTING min_parts_to_merge_at_once = 10;
