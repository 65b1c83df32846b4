-- Where each run's epochs fall on its steps, one row per run and minute: the step and epoch of the
-- first finite-epoch point in the minute. The dashboard plots a long run against epoch by mapping
-- its (rollup-fed) step buckets through this, instead of scanning every raw point's epoch
-- (20 runs x 1 M steps: ~620 ms from metric_points; docs/dashboard_queries.md).
-- min and argMin are idempotent, so a re-inserted batch changes nothing here. Backfilled once from
-- metric_points below.

CREATE TABLE IF NOT EXISTS metric_epochs_1m
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

CREATE MATERIALIZED VIEW IF NOT EXISTS metric_epochs_1m_mv TO metric_epochs_1m AS
SELECT project, run, toStartOfMinute(time) AS bucket, min(step) AS first_step,
       argMinState(epoch, step) AS first_epoch
FROM metric_points
WHERE isFinite(epoch)
GROUP BY project, run, bucket;

INSERT INTO metric_epochs_1m
SELECT project, run, toStartOfMinute(time) AS bucket, min(step) AS first_step,
       argMinState(epoch, step) AS first_epoch
FROM metric_points
WHERE isFinite(epoch)
GROUP BY project, run, bucket;
