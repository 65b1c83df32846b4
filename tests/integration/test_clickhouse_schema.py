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


@pytest.mark.parametrize("token", [None, "sink-token"])
def test_reinserting_the_same_batch_counts_once_in_raw_and_rollups(clickhouse, token):
    """By block hash, or by the deduplication token the sink sends (sink.py: dedup_settings), down the
    chain of views: the hourly rollup is fed by the minute one's block (migration 0012)."""
    run = f"dedup-batch-{token}"
    batch = points(run, range(100))
    settings = {**SINK_INSERT, "insert_deduplication_token": token} if token else SINK_INSERT
    for _ in range(2):
        clickhouse.insert("metric_points", batch, column_names=POINT_COLUMNS, settings=settings)
    args = {"parameters": {"r": run}}
    raw = clickhouse.query("SELECT count() FROM metric_points WHERE run = {r:String}", **args).result_rows[0][0]
    rolled = [clickhouse.query(f"SELECT sum(count) FROM {table} WHERE run = {{r:String}}", **args).result_rows[0][0]
              for table in ("metric_rollup_1m", "metric_rollup_1h")]
    assert raw == 100 and rolled == [100, 100]


# Each hourly table merged per key, and the same figures straight from the raw rows.
HOURLY_AGAINST_RAW = {
    "metric_rollup_1h": (
        "SELECT run, name, rank, bucket, min(step_min), max(step_max), sum(count), sum(non_finite), sum(sum), "
        "min(min), max(max), argMaxMerge(last) FROM metric_rollup_1h WHERE project = 'hourly' "
        "GROUP BY run, name, rank, bucket ORDER BY ALL",
        "SELECT run, name, rank, toStartOfHour(time) AS hour, min(step), max(step), count(), "
        "countIf(NOT isFinite(value)), sumIf(value, isFinite(value)), min(if(isFinite(value), value, NULL)), "
        "max(if(isFinite(value), value, NULL)), argMax(value, step) FROM metric_points WHERE project = 'hourly' "
        "GROUP BY run, name, rank, hour ORDER BY ALL"),
    "metric_epochs_1h": (
        "SELECT run, bucket, min(first_step), argMinMerge(first_epoch) FROM metric_epochs_1h WHERE project = 'hourly' "
        "GROUP BY run, bucket ORDER BY ALL",
        "SELECT run, toStartOfHour(time) AS hour, min(step), argMin(epoch, step) FROM metric_points "
        "WHERE project = 'hourly' AND isFinite(epoch) GROUP BY run, hour ORDER BY ALL"),
    "system_rollup_1h": (
        "SELECT gpu, name, bucket, sum(count), sum(sum), min(min), max(max), argMaxMerge(last) "
        "FROM system_rollup_1h WHERE host = 'hourly-node' GROUP BY gpu, name, bucket ORDER BY ALL",
        "SELECT gpu, name, toStartOfHour(time) AS hour, count(), sum(value), min(value), max(value), "
        "argMax(value, time) FROM system_samples WHERE host = 'hourly-node' GROUP BY gpu, name, hour ORDER BY ALL"),
}


def test_the_hourly_tables_hold_the_raw_rows_hours_through_the_minute_tables(clickhouse):
    """Migration 0012 fills the hourly tables from the minute tables' inserted blocks: what they hold must
    be what the raw rows give, over inserts that each span several minutes and hours, with NaNs and
    infinities, epochs missing or not, steps out of order, and a batch sent twice."""
    def value(s: int) -> float:
        return math.nan if s % 97 == 0 else math.inf if s % 89 == 0 else math.sin(s) * 1000.0

    batches = []
    for first in range(0, 3 * 3600, 900):  # 12 inserts of 15 minutes each, over three hours
        steps = list(range(first, first + 900, 7))
        if first % 1800:
            steps.reverse()  # some batches arrive newest step first
        batches.append([["hourly", run, rank, "node-1", name, s, math.nan if s % 5 == 0 else s / 1000.0,
                         value(s + rank), T0 + timedelta(seconds=s)]
                        for run in ("h1", "h2") for rank in (0, 3) for name in ("loss", "acc") for s in steps])
    for batch in batches + batches[4:5]:  # the fifth sent twice: counted once, in every table
        clickhouse.insert("metric_points", batch, column_names=POINT_COLUMNS, settings=SINK_INSERT)
    samples = [["hourly-node", gpu, f"GPU-{gpu}", name, float((s * 7 + gpu) % 101), T0 + timedelta(seconds=s)]
               for gpu in (-1, 0, 1) for name in ("util_percent", "power_w") for s in range(0, 7200, 10)]
    for start in range(0, len(samples), 1000):
        clickhouse.insert("system_samples", samples[start:start + 1000],
                          column_names=["host", "gpu", "gpu_uuid", "name", "value", "time"], settings=SINK_INSERT)

    def same(a: object, b: object) -> bool:  # sums up to the order they were added in; NaN equal to NaN
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        return a == b

    for table, (hourly, raw) in HOURLY_AGAINST_RAW.items():
        held, expected = clickhouse.query(hourly).result_rows, clickhouse.query(raw).result_rows
        assert len(expected) >= 6, f"{table}: too few hours to tell"
        assert len(held) == len(expected) and all(
            len(x) == len(y) and all(map(same, x, y)) for x, y in zip(held, expected)), f"{table} differs from its raw rows' hours"
    views = dict(clickhouse.query("SELECT name, as_select FROM system.tables WHERE database = currentDatabase() "
                                  "AND engine = 'MaterializedView' AND name LIKE '%_1h_mv'").result_rows)
    assert {name: re.findall(r"\bFROM (?:\w+\.)?(\w+)", select) for name, select in views.items()} == {
        "metric_rollup_1h_mv": ["metric_rollup_1m"], "system_rollup_1h_mv": ["system_rollup_1m"],
        "metric_epochs_1h_mv": ["metric_epochs_1m"]}


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
