-- Where each run's epochs fall on its steps, one row per run and hour: metric_epochs_1m's map at the
-- 1h rollup's grain. An epoch overlay of long runs plans their step buckets from the 1h rollup (a run with
-- at least as many hours as the plot has points); mapping those buckets to epochs through the minute map
-- read 60 rows per bucket: 4.2 M rows and ~800 ms for 20 runs of 145 days at 1e9 points (bench/queries.py,
-- docs/benchmarks.md), against the 100 ms goal. min and argMin are idempotent, so a re-inserted batch (or
-- an insert that lands between this view's creation and the backfill below) changes nothing here.
-- Backfilled once from metric_epochs_1m, which holds the same points per minute.

CREATE TABLE IF NOT EXISTS metric_epochs_1h
(
    project     LowCardinality(String),
    run         String,
    bucket      DateTime('UTC'),
    first_step  SimpleAggregateFunction(min, UInt64),
    first_epoch AggregateFunction(argMin, Float64, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (project, run, bucket)
TTL bucket + INTERVAL 1825 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS metric_epochs_1h_mv TO metric_epochs_1h AS
SELECT project, run, toStartOfHour(time) AS bucket, min(step) AS first_step,
       argMinState(epoch, step) AS first_epoch
FROM metric_points
WHERE isFinite(epoch)
GROUP BY project, run, bucket;

INSERT INTO metric_epochs_1h
SELECT project, run, toStartOfHour(bucket) AS hour, min(first_step) AS first_step,
       argMinMergeState(first_epoch) AS first_epoch
FROM metric_epochs_1m
GROUP BY project, run, hour;
