-- Exactly-once ingest: raw rows remember the Kafka message they came from, and a view keeps the
-- highest offset written per topic and partition, updated by the very INSERT that writes the rows.
-- A processor that takes over a partition reads that watermark and skips what is already written,
-- so a replay after a crash adds nothing to the raw tables or their rollups (docs/schema.md).

ALTER TABLE metric_points
    ADD COLUMN IF NOT EXISTS src_topic LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS src_partition UInt16 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS src_offset UInt64 DEFAULT 0 CODEC(Delta, ZSTD(1));

ALTER TABLE system_samples
    ADD COLUMN IF NOT EXISTS src_topic LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS src_partition UInt16 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS src_offset UInt64 DEFAULT 0 CODEC(Delta, ZSTD(1));

CREATE TABLE IF NOT EXISTS ingest_offsets
(
    topic     LowCardinality(String),
    partition UInt16,
    offset    SimpleAggregateFunction(max, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (topic, partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS ingest_offsets_metric_points_mv TO ingest_offsets AS
SELECT src_topic AS topic, src_partition AS partition, max(src_offset) AS offset
FROM metric_points WHERE src_topic != ''
GROUP BY topic, partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS ingest_offsets_system_samples_mv TO ingest_offsets AS
SELECT src_topic AS topic, src_partition AS partition, max(src_offset) AS offset
FROM system_samples WHERE src_topic != ''
GROUP BY topic, partition;
