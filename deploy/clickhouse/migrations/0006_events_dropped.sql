-- Events the SDK dropped for good (its queue cap, a full spool, Kafka refusing them), from the
-- `dropped` count every heartbeat carries: per rank (all its processes) and per run (all its ranks),
-- so the dashboard can say a run's curves have holes, and where.

ALTER TABLE runs ADD COLUMN IF NOT EXISTS events_dropped UInt64 DEFAULT 0;

ALTER TABLE run_ranks ADD COLUMN IF NOT EXISTS events_dropped UInt64 DEFAULT 0;
