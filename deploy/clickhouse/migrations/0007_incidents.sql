-- Incidents: the alerts of one root cause grouped into one page (stream_processors/incidents.py).
-- One row per notification; ReplacingMergeTree keeps each incident's latest (its full member list,
-- its state), so `FINAL` reads one row per incident. Members: the alerts' fingerprints (table
-- `alerts`), the first 50 in the order they started; `members_total` counts them all.

CREATE TABLE IF NOT EXISTS incidents
(
    incident      String,
    state         LowCardinality(String),  -- firing, resolved
    rule          LowCardinality(String),  -- the root alert's: the likely cause
    severity      LowCardinality(String),  -- the highest of the members
    summary       String,
    cause         String,
    project       LowCardinality(String),
    run           String,
    hosts         Array(String),
    runs          Array(String),
    members       Array(String),
    member_rules  Array(LowCardinality(String)),
    members_total UInt32,
    starts_at     DateTime64(3, 'UTC'),
    ends_at       Nullable(DateTime64(3, 'UTC')),
    time          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(time)
PARTITION BY toYYYYMM(starts_at)
ORDER BY incident
TTL toDateTime(starts_at) + INTERVAL 730 DAY;
