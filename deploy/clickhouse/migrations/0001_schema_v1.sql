-- trainmon ClickHouse schema v1. See docs/schema.md for why each key, codec and TTL is what it is.
-- Statements are separated by a line ending in ';'. Every statement is idempotent (IF NOT EXISTS).
--
-- Idempotence: raw tables are ReplacingMergeTree on the event's natural key, so a re-sent event
-- collapses into one row; non_replicated_deduplication_window, on the raw tables AND on the rollup
-- tables their views write to, makes ClickHouse drop a re-inserted identical batch whole, including
-- what it would add to the rollups (each target table deduplicates its own dependent block).

-- Training metrics, one row per (run, rank, metric, step). Re-logging a step (resumed run) keeps
-- the latest ingest.
CREATE TABLE IF NOT EXISTS metric_points
(
    project     LowCardinality(String),
    run         String,
    rank        UInt32,
    host        LowCardinality(String),
    name        LowCardinality(String),
    step        UInt64                  CODEC(DoubleDelta, ZSTD(1)),
    epoch       Float64 DEFAULT nan     CODEC(Gorilla, ZSTD(1)),
    value       Float64                 CODEC(Gorilla, ZSTD(1)),
    time        DateTime64(6, 'UTC')    CODEC(DoubleDelta, ZSTD(1)),
    ingest_time DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(time)
ORDER BY (project, run, name, rank, step)
TTL toDateTime(time) + INTERVAL 730 DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- Host and GPU figures in long form: gpu = -1 for host-level figures. 1 Hz x 512 nodes x ~140
-- figures is ~6 billion rows a day, hence daily partitions dropped whole by TTL.
CREATE TABLE IF NOT EXISTS system_samples
(
    host        LowCardinality(String),
    gpu         Int16,
    gpu_uuid    LowCardinality(String),
    name        LowCardinality(String),
    value       Float64                 CODEC(Gorilla, ZSTD(1)),
    time        DateTime64(3, 'UTC')    CODEC(DoubleDelta, ZSTD(1)),
    ingest_time DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMMDD(time)
ORDER BY (host, gpu, name, time)
TTL toDateTime(time) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

-- The GPUs each node has, with the last NVML error seen for each (fallen off the bus, ...).
CREATE TABLE IF NOT EXISTS gpus
(
    host        LowCardinality(String),
    gpu         Int16,
    gpu_uuid    String,
    gpu_name    LowCardinality(String),
    last_error  String,
    last_seen   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(last_seen)
ORDER BY (host, gpu);

-- Lifecycle events as sent (start, meta updates, end; not heartbeats): the reproducibility record.
CREATE TABLE IF NOT EXISTS run_events
(
    project     LowCardinality(String),
    run         String,
    rank        UInt32,
    host        LowCardinality(String),
    kind        LowCardinality(String),
    time        DateTime64(6, 'UTC'),
    payload     String CODEC(ZSTD(3)),
    ingest_time DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(time)
ORDER BY (project, run, rank, kind, time)
SETTINGS non_replicated_deduplication_window = 10000;

-- The current state of each run, as the processors see it; the newest snapshot wins (FINAL).
CREATE TABLE IF NOT EXISTS runs
(
    project     LowCardinality(String),
    run         String,
    name        String,
    user        LowCardinality(String),
    status      LowCardinality(String),   -- running, finished, failed, killed, crashed, lost
    tags        Array(LowCardinality(String)),
    world_size  UInt32,
    hosts       Array(LowCardinality(String)),
    started_at  DateTime64(3, 'UTC'),
    ended_at    Nullable(DateTime64(3, 'UTC')),
    last_seen   DateTime64(3, 'UTC'),
    last_step   UInt64,
    config      String CODEC(ZSTD(3)),     -- JSON: hyperparameters and config
    datasets    String CODEC(ZSTD(3)),     -- JSON array of {name, version, ...}
    model       String CODEC(ZSTD(3)),     -- JSON: architecture summary, parameter counts
    code        String CODEC(ZSTD(3)),     -- JSON: commit, dirty, command line
    environment String CODEC(ZSTD(3)),     -- JSON: python, packages, CPU/GPU, driver, CUDA
    updated_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run);

-- One row per rank of each run: where it runs and how far it got (stragglers, silent ranks).
CREATE TABLE IF NOT EXISTS run_ranks
(
    project     LowCardinality(String),
    run         String,
    rank        UInt32,
    local_rank  Int32,
    host        LowCardinality(String),
    status      LowCardinality(String),
    started_at  DateTime64(3, 'UTC'),
    last_seen   DateTime64(3, 'UTC'),
    last_step   UInt64,
    updated_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (project, run, rank);

-- Rolling-window aggregates from the processors. scope: run (per run and metric), rank (per rank),
-- host / gpu (per node or GPU and figure), ranks (across the ranks of a run: spread for stragglers).
CREATE TABLE IF NOT EXISTS window_aggregates
(
    scope        LowCardinality(String),
    window       LowCardinality(String),  -- '10s', '1m', '5m'
    project      LowCardinality(String),
    run          String,
    rank         Int32,                   -- -1 when not per rank
    host         LowCardinality(String),
    gpu          Int16,                   -- -1 when not per GPU
    name         LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    count        UInt64,
    mean         Float64 CODEC(Gorilla, ZSTD(1)),
    min          Float64 CODEC(Gorilla, ZSTD(1)),
    max          Float64 CODEC(Gorilla, ZSTD(1)),
    last         Float64 CODEC(Gorilla, ZSTD(1)),
    stddev       Float64 CODEC(Gorilla, ZSTD(1)),
    median       Float64 DEFAULT nan CODEC(Gorilla, ZSTD(1)),
    updated_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (scope, window, project, run, host, gpu, rank, name, window_start)
TTL toDateTime(window_start) + INTERVAL 90 DAY
SETTINGS ttl_only_drop_parts = 1;

-- Alert transitions: one row per (fingerprint, start, state); repeats of the same state collapse.
CREATE TABLE IF NOT EXISTS alerts
(
    fingerprint  String,
    rule         LowCardinality(String),
    state        LowCardinality(String),  -- firing, resolved
    severity     LowCardinality(String),
    project      LowCardinality(String),
    run          String,
    labels       Map(LowCardinality(String), String),
    annotations  Map(LowCardinality(String), String),
    values       Map(LowCardinality(String), Float64),
    starts_at    DateTime64(3, 'UTC'),
    ends_at      Nullable(DateTime64(3, 'UTC')),
    time         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(time)
PARTITION BY toYYYYMM(starts_at)
ORDER BY (fingerprint, starts_at, state)
TTL toDateTime(starts_at) + INTERVAL 730 DAY;

-- Every attempt to deliver an alert to a route, and how it went.
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    fingerprint  String,
    rule         LowCardinality(String),
    state        LowCardinality(String),
    route        LowCardinality(String),  -- route name from the rules file
    kind         LowCardinality(String),  -- alertmanager, slack, pagerduty, webhook
    attempt      UInt16,
    outcome      LowCardinality(String),  -- delivered, retrying, failed
    http_status  UInt16,
    error        String,
    latency_ms   Float64,
    notified_at  DateTime64(3, 'UTC'),    -- when the notification was decided (groups attempts)
    time         DateTime64(3, 'UTC')     -- when this attempt finished
)
ENGINE = ReplacingMergeTree(time)
PARTITION BY toYYYYMM(notified_at)
ORDER BY (fingerprint, state, route, notified_at, attempt)
TTL toDateTime(notified_at) + INTERVAL 365 DAY;

-- Rollups: history queries read these, never raw points. SimpleAggregateFunction columns merge in
-- place; `last` keeps the value of the newest step (metrics) or time (system). Non-finite training
-- values are counted apart so one NaN does not poison min/max/mean.
CREATE TABLE IF NOT EXISTS metric_rollup_1m
(
    project     LowCardinality(String),
    run         String,
    name        LowCardinality(String),
    rank        UInt32,
    bucket      DateTime('UTC'),
    step_min    SimpleAggregateFunction(min, UInt64),
    step_max    SimpleAggregateFunction(max, UInt64),
    count       SimpleAggregateFunction(sum, UInt64),
    non_finite  SimpleAggregateFunction(sum, UInt64),
    sum         SimpleAggregateFunction(sum, Float64),
    min         SimpleAggregateFunction(min, Nullable(Float64)),
    max         SimpleAggregateFunction(max, Nullable(Float64)),
    last        AggregateFunction(argMax, Float64, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (project, run, name, rank, bucket)
TTL bucket + INTERVAL 1825 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS metric_rollup_1h AS metric_rollup_1m
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (project, run, name, rank, bucket)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS metric_rollup_1m_mv TO metric_rollup_1m AS
SELECT project, run, name, rank, toStartOfMinute(time) AS bucket,
       min(step) AS step_min, max(step) AS step_max, count() AS count,
       countIf(NOT isFinite(value)) AS non_finite,
       sumIf(value, isFinite(value)) AS sum,
       min(if(isFinite(value), value, NULL)) AS min,
       max(if(isFinite(value), value, NULL)) AS max,
       argMaxState(value, step) AS last
FROM metric_points
GROUP BY project, run, name, rank, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS metric_rollup_1h_mv TO metric_rollup_1h AS
SELECT project, run, name, rank, toStartOfHour(time) AS bucket,
       min(step) AS step_min, max(step) AS step_max, count() AS count,
       countIf(NOT isFinite(value)) AS non_finite,
       sumIf(value, isFinite(value)) AS sum,
       min(if(isFinite(value), value, NULL)) AS min,
       max(if(isFinite(value), value, NULL)) AS max,
       argMaxState(value, step) AS last
FROM metric_points
GROUP BY project, run, name, rank, bucket;

CREATE TABLE IF NOT EXISTS system_rollup_1m
(
    host        LowCardinality(String),
    gpu         Int16,
    name        LowCardinality(String),
    bucket      DateTime('UTC'),
    count       SimpleAggregateFunction(sum, UInt64),
    sum         SimpleAggregateFunction(sum, Float64),
    min         SimpleAggregateFunction(min, Float64),
    max         SimpleAggregateFunction(max, Float64),
    last        AggregateFunction(argMax, Float64, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (host, gpu, name, bucket)
TTL bucket + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS system_rollup_1h AS system_rollup_1m
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (host, gpu, name, bucket)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS system_rollup_1m_mv TO system_rollup_1m AS
SELECT host, gpu, name, toStartOfMinute(time) AS bucket,
       count() AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
       argMaxState(value, time) AS last
FROM system_samples
GROUP BY host, gpu, name, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS system_rollup_1h_mv TO system_rollup_1h AS
SELECT host, gpu, name, toStartOfHour(time) AS bucket,
       count() AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
       argMaxState(value, time) AS last
FROM system_samples
GROUP BY host, gpu, name, bucket;
