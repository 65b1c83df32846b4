-- The metric rollups and epoch maps merge with ClickHouse's own merge_selector_base (5) again, not 0010's 20.
-- The dashboard reads them with FINAL (dashboard/queries.py: a step bucket places each row by its first
-- step), and every flush's part holds the newest minute of every series, so its one or two granules span
-- the whole key range: FINAL then merges every part's rows for the runs read. At 20 M ingest-shaped points
-- the overlay's 1-minute series read 14 parts in 110-136 ms, the same rows merged into one part in 43 ms
-- (bench/queries.py; docs/benchmarks.md, "The overlay at 20 M points and the rollups' merges"). These
-- tables are small beside metric_points and system_samples, whose wider merges 0010 keeps.

ALTER TABLE metric_rollup_1m MODIFY SETTING merge_selector_base = 5;
ALTER TABLE metric_rollup_1h MODIFY SETTING merge_selector_base = 5;
ALTER TABLE metric_epochs_1m MODIFY SETTING merge_selector_base = 5;
ALTER TABLE metric_epochs_1h MODIFY SETTING merge_selector_base = 5;
