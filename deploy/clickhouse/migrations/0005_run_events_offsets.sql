-- The runs topic gets the same exactly-once watermark as metrics and system: run_events rows remember
-- the Kafka message they came from, and ingest_offsets keeps the highest written per partition.
-- src_topic is "name#topic-id", so a topic re-created under the same name starts a watermark of its own.

ALTER TABLE run_events
    ADD COLUMN IF NOT EXISTS src_topic LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS src_partition UInt16 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS src_offset UInt64 DEFAULT 0 CODEC(Delta, ZSTD(1));

CREATE MATERIALIZED VIEW IF NOT EXISTS ingest_offsets_run_events_mv TO ingest_offsets AS
SELECT src_topic AS topic, src_partition AS partition, max(src_offset) AS offset
FROM run_events WHERE src_topic != ''
GROUP BY topic, partition;
