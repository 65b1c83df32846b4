-- Storage codecs measured by bench/storage.py (docs/benchmarks.md, "Storage per point"): the same rows and
-- values (every copy read back bit for bit), fewer bytes. Per row, before -> after, on the bench's rows:
-- - time: Delta instead of DoubleDelta. Equal on a regular grid (0.01 B), but real timestamps jitter (a
--   step ends a little late, a sample lands a few ms after its tick) and DoubleDelta doubles that noise:
--   with jitter 3.35 -> 2.06 B per training point, 0.85 -> 0.49 B per system value.
-- - src_offset: ZSTD(3) after Delta instead of ZSTD(1), which leaves a run of equal deltas at 0.39 B per
--   row (-> 0.01); in a partition shared by ~85 hosts 1.16 -> 0.93 B.
-- - epoch: Delta instead of Gorilla, for a fraction that grows by the same step every step: 1.07 -> 0.24 B.
-- - run (a String in the sort key): ZSTD(3) instead of the default codec, LZ4 in parts under ~100 MB, which
--   stops at ~250:1 on a repeated string: 0.14 -> 0.016 B per point, without rewriting the column as
--   LowCardinality would.
-- A codec change rewrites nothing: parts written from now on use it, older parts once a merge rewrites them.
-- The value columns keep Gorilla, ZSTD(1): no lossless codec did better on both noisy training values and
-- GPU figures.

ALTER TABLE metric_points
    MODIFY COLUMN time CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN epoch CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN src_offset CODEC(Delta, ZSTD(3)),
    MODIFY COLUMN run CODEC(ZSTD(3));

ALTER TABLE system_samples
    MODIFY COLUMN time CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN src_offset CODEC(Delta, ZSTD(3));
