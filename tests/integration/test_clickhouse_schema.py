"""Schema v1 on the real ClickHouse: migrations are idempotent, keys make re-inserts harmless."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest

from trainmon.deploy.migrate import MigrationError, discover, migrate

pytestmark = pytest.mark.integration

# Recent, on an hour boundary: system samples keep 30 days, and rollup buckets are then predictable.
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
SINK_INSERT = {"async_insert": 0}  # what the sink uses (docs/schema.md, Inserts)
POINT_COLUMNS = ["project", "run", "rank", "host", "name", "step", "epoch", "value", "time"]


def points(run: str, steps: range, value=lambda s: 1.0 / (s + 1)):
    return [["p", run, 0, "node-1", "loss", s, 0.0, value(s), T0 + timedelta(seconds=s)] for s in steps]


def test_migrate_twice_applies_once(migrated, clickhouse):
    assert migrate(migrated, progress=lambda m: None) == []
    versions = clickhouse.query("SELECT version FROM schema_migrations FINAL ORDER BY version").result_rows
    assert versions == [(m.version,) for m in discover()]  # every migration file, once
    dropped = {r[0] for r in clickhouse.query("SELECT table FROM system.columns WHERE database = currentDatabase() "
                                              "AND name = 'events_dropped'").result_rows}
    assert dropped == {"runs", "run_ranks"}
    tables = {r[0] for r in clickhouse.query("SHOW TABLES").result_rows}
    assert {"metric_points", "system_samples", "runs", "run_ranks", "run_events", "window_aggregates", "alerts",
            "alert_deliveries", "gpus", "metric_rollup_1m", "metric_rollup_1h", "system_rollup_1m",
            "system_rollup_1h", "ingest_offsets", "system_latest", "metric_epochs_1m", "metric_epochs_1h"} <= tables


READ_WITH_FINAL_BY_STEP = {"metric_rollup_1m", "metric_rollup_1h", "metric_epochs_1m", "metric_epochs_1h"}


def test_every_table_the_processors_write_merges_wide_but_the_rollups_read_with_final(migrated, clickhouse):
    """Migration 0010: a new table written at every flush needs the wide merges too, or it merges its
    largest small part again with every few flushes (docs/benchmarks.md, "Cost at rest"); migration 0011:
    the rollups the dashboard reads with FINAL keep ClickHouse's base 5, or FINAL merges a part per flush."""
    engines = dict(clickhouse.query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
                                    "AND engine LIKE '%MergeTree' AND name != 'schema_migrations'").result_rows)
    assert len(engines) >= 18
    bases = {name: re.findall(r"\bmerge_selector_base = (\d+)", engine) for name, engine in engines.items()}
    assert {name: ["5"] if name in READ_WITH_FINAL_BY_STEP else ["20"] for name in engines} == bases
    assert READ_WITH_FINAL_BY_STEP <= set(engines)


def test_an_edited_applied_migration_is_refused(migrated, tmp_path):
    from trainmon.deploy.migrate import MIGRATIONS_DIR

    for source in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / source.name).write_text(source.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="0001_schema_v1.sql changed after it was applied"):
        migrate(migrated, progress=lambda m: None, directory=tmp_path)


def test_reinserting_the_same_batch_counts_once_in_raw_and_rollups(clickhouse):
    batch = points("dedup-batch", range(100))
    for _ in range(2):
        clickhouse.insert("metric_points", batch, column_names=POINT_COLUMNS, settings=SINK_INSERT)
    raw = clickhouse.query("SELECT count() FROM metric_points WHERE run = 'dedup-batch'").result_rows[0][0]
    rolled = clickhouse.query(
        "SELECT sum(count) FROM metric_rollup_1m WHERE run = 'dedup-batch'").result_rows[0][0]
    assert raw == 100 and rolled == 100


def test_a_re_sent_event_in_another_batch_collapses_on_its_natural_key(clickhouse):
    clickhouse.insert("metric_points", points("dedup-key", range(0, 60)), column_names=POINT_COLUMNS)
    clickhouse.insert("metric_points", points("dedup-key", range(50, 80)), column_names=POINT_COLUMNS)
    final = clickhouse.query("SELECT count() FROM metric_points FINAL WHERE run = 'dedup-key'").result_rows[0][0]
    assert final == 80


def test_non_finite_values_are_stored_and_kept_out_of_rollup_min_max(clickhouse):
    values = {0: math.nan, 1: math.inf, 2: 3.0, 3: 5.0}
    clickhouse.insert("metric_points", points("nan-run", range(4), value=values.__getitem__),
                      column_names=POINT_COLUMNS)
    stored = clickhouse.query("SELECT value FROM metric_points WHERE run = 'nan-run' ORDER BY step").result_rows
    assert math.isnan(stored[0][0]) and stored[1][0] == math.inf
    row = clickhouse.query(
        "SELECT sum(count), sum(non_finite), min(min), max(max), argMaxMerge(last) "
        "FROM metric_rollup_1m WHERE run = 'nan-run'").result_rows[0]
    assert row == (4, 2, 3.0, 5.0, 5.0)


def test_system_samples_roll_up_per_minute_and_hour(clickhouse):
    rows = [["node-9", gpu, f"GPU-{gpu}", "util_percent", float(s % 100), T0 + timedelta(seconds=s)]
            for gpu in (-1, 0) for s in range(180)]
    clickhouse.insert("system_samples", rows, column_names=["host", "gpu", "gpu_uuid", "name", "value", "time"],
                      settings=SINK_INSERT)
    minutes = clickhouse.query(
        "SELECT gpu, bucket, sum(count), max(max) FROM system_rollup_1m WHERE host = 'node-9' "
        "GROUP BY gpu, bucket ORDER BY gpu, bucket").result_rows
    assert [(r[0], r[2]) for r in minutes] == [(-1, 60)] * 3 + [(0, 60)] * 3
    hours = clickhouse.query(
        "SELECT sum(count), argMaxMerge(last) FROM system_rollup_1h WHERE host = 'node-9' AND gpu = 0").result_rows
    assert hours == [(180, 79.0)]


def test_the_epoch_map_is_backfilled_for_points_written_before_its_migration(migrated, tmp_path):
    from trainmon.deploy.migrate import MIGRATIONS_DIR
    from trainmon.clickhouse import connect

    older = tmp_path / "older"
    older.mkdir()
    for source in sorted(MIGRATIONS_DIR.glob("*.sql"))[:3]:  # the schema before 0004
        (older / source.name).write_text(source.read_text())
    settings = migrated.replace(clickhouse_database=migrated.clickhouse_database + "_backfill")
    try:
        migrate(settings, progress=lambda m: None, directory=older)
        client = connect(settings)
        rows = [["p", "old", 0, "node-1", "loss", s, s / 120, 1.0, T0 + timedelta(seconds=s)] for s in range(180)]
        rows += [["p", "old", 0, "node-1", "loss", 1000, math.nan, 1.0, T0 + timedelta(minutes=5)]]
        client.insert("metric_points", rows, column_names=POINT_COLUMNS, settings=SINK_INSERT)
        assert [m.version for m in migrate(settings, progress=lambda m: None)][0] == 4  # 0004 applied, and any later
        backfilled = client.query(
            "SELECT bucket, min(first_step), argMinMerge(first_epoch) FROM metric_epochs_1m WHERE run = 'old' "
            "GROUP BY bucket ORDER BY bucket").result_rows
        assert [(step, epoch) for _, step, epoch in backfilled] == [(0, 0.0), (60, 0.5), (120, 1.0)]  # no NaN minute
    finally:
        connect(settings, database="default").command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
