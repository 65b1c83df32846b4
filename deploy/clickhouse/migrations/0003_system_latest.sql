-- The newest sample of every host and GPU figure, kept as samples arrive: the live views (cluster
-- heatmap, silent nodes, recent hosts) read about one row per series here. system_samples and the
-- system rollups are sorted by (host, gpu, name, time), so "the last minutes of every series" touches
-- the newest granule of every series there, which grows with the history kept (measured with one
-- day of 1-minute rollups for 512 nodes x 8 GPUs: 0.4-1.1 s for the heatmap; docs/dashboard_queries.md).
-- Fed by the view below from now on, with no backfill: live agents refill it within one interval.
-- max and argMax are idempotent, so a re-inserted batch changes nothing here.

CREATE TABLE IF NOT EXISTS system_latest
(
    host  LowCardinality(String),
    gpu   Int16,
    name  LowCardinality(String),
    time  SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last  AggregateFunction(argMax, Float64, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (host, gpu, name)
TTL toDateTime(time) + INTERVAL 30 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS system_latest_mv TO system_latest AS
SELECT host, gpu, name, argMaxState(value, system_samples.time) AS last, max(system_samples.time) AS time
FROM system_samples
GROUP BY host, gpu, name;
