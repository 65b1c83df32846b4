"""The cluster form of the migrations (deploy/clickhouse_cluster.py) and `migrate` with a cluster set.

The DDL of every migration is checked as text and parsed by the ClickHouse engine (chdb-core, in this
process: `formatQuerySingleLine` parses without running, so ON CLUSTER and Replicated engines, which this
engine cannot run, parse like any statement). tests/integration/test_clickhouse_cluster.py runs it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from trainmon.deploy import migrate as migrate_module
from trainmon.deploy.clickhouse_cluster import SHARDING_KEYS, ClusterFormError, ClusterSchema, split_top_level
from trainmon.deploy.migrate import _LEDGER, MIGRATIONS_DIR, discover, migrate
from trainmon.settings import Settings

CLUSTER, DATABASE = "prod-eu", "trainmon"
ON = "ON CLUSTER `prod-eu`"
WATERMARKED = {"metric_points", "system_samples", "run_events"}  # raw rows behind ingest_offsets


def forms() -> dict[str, list[str]]:
    """File name -> its statements in cluster form (the ledger as '(ledger)'), made in order."""
    schema = ClusterSchema(CLUSTER, DATABASE)
    out = {"(ledger)": schema.statements([_LEDGER])}
    for migration in discover():
        out[migration.path.name] = schema.statements(migration.statements)
    return out


def created(statements: list[str]) -> list[str]:
    return [m[1] for s in statements if (m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+) \(", s + " ("))]


def single_node_tables() -> dict[str, str]:
    """Table -> the CREATE statement that makes it, from the files as written (and the ledger)."""
    out = {"schema_migrations": _LEDGER}
    for migration in discover():
        for statement in migration.statements:
            if match := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement):
                out[match[1]] = statement
    return out


def test_every_table_becomes_a_replicated_local_table_and_a_distributed_table_over_it():
    everything = [s for statements in forms().values() for s in statements]
    for table, source in single_node_tables().items():
        local = next(s for s in everything if s.startswith(f"CREATE TABLE IF NOT EXISTS {table}_local {ON}"))
        engine = re.search(r"ENGINE = (\w*MergeTree)", source)
        assert engine, source
        path = f"'/clickhouse/tables/{{shard}}/{DATABASE}.{table}', '{{replica}}'"
        assert f"ENGINE = Replicated{engine[1]}({path}" in local, local
        distributed = [s for s in everything if s.startswith(f"CREATE TABLE IF NOT EXISTS {table} {ON}")]
        engine_args = f"'{CLUSTER}', '{DATABASE}', '{table}_local', {SHARDING_KEYS[table]}"
        assert distributed == [f"CREATE TABLE IF NOT EXISTS {table} {ON} AS {table}_local\n"
                               f"ENGINE = Distributed({engine_args})"]
        if "non_replicated_deduplication_window = 10000" in source:
            assert "SETTINGS replicated_deduplication_window = 10000" in local
        assert "non_replicated" not in local


def test_engine_arguments_follow_the_zookeeper_path_and_replica():
    statements = forms()["0001_schema_v1.sql"]
    metric = next(s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS metric_points_local"))
    assert ("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/trainmon.metric_points', '{replica}', "
            "ingest_time)") in metric
    rollup = next(s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS metric_rollup_1h_local"))
    assert f"{ON}\nAS metric_rollup_1m_local ENGINE = ReplicatedAggregatingMergeTree(" in rollup
    assert "'/clickhouse/tables/{shard}/trainmon.metric_rollup_1h', '{replica}')" in rollup


def test_views_read_and_write_local_tables_on_every_node():
    views = [s for statements in forms().values() for s in statements if "MATERIALIZED VIEW" in s]
    assert len(views) == 10
    for view in views:
        assert re.match(rf"CREATE MATERIALIZED VIEW IF NOT EXISTS \w+ {re.escape(ON)} TO \w+_local AS\n", view), view
        sources = re.findall(r"\bFROM (\w+)( AS (\w+))?", view)
        assert sources and all(name.endswith("_local") and alias == name.removesuffix("_local")
                               for name, _, alias in sources), view
    latest = next(v for v in views if "system_latest_mv" in v)  # columns qualified by the table's own name
    assert "argMaxState(value, system_samples.time)" in latest
    assert "FROM system_samples_local AS system_samples" in latest


def test_a_view_s_new_query_reads_local_tables_on_every_node():
    """0012: the hourly views read the minute tables; each node's view reads its own local minute table,
    as each node's minute view reads its own raw rows."""
    changed = forms()["0012_hourly_from_minutes.sql"]
    assert [s.split("\n")[0] for s in changed] == [
        f"ALTER TABLE {view}_mv {ON} MODIFY QUERY" for view in ("metric_rollup_1h", "system_rollup_1h", "metric_epochs_1h")]
    assert [re.findall(r"\bFROM (\w+ AS \w+)", s) for s in changed] == [
        [f"{table}_local AS {table}"] for table in ("metric_rollup_1m", "system_rollup_1m", "metric_epochs_1m")]


def test_alters_change_the_local_table_and_a_distributed_one_that_exists():
    events_dropped = forms()["0006_events_dropped.sql"]
    assert [s.split("\n")[0] for s in events_dropped] == [
        f"ALTER TABLE runs_local {ON}", f"ALTER TABLE runs {ON}",
        f"ALTER TABLE run_ranks_local {ON}", f"ALTER TABLE run_ranks {ON}"]
    # metric_points' sharding key (src_partition) arrives with 0002: its Distributed table comes right after.
    offsets = forms()["0002_ingest_offsets.sql"]
    assert offsets[0].startswith(f"ALTER TABLE metric_points_local {ON}\nADD COLUMN IF NOT EXISTS src_topic")
    assert offsets[1].startswith(f"CREATE TABLE IF NOT EXISTS metric_points {ON} AS metric_points_local")
    first = forms()["0001_schema_v1.sql"]
    assert not any(s.startswith(f"CREATE TABLE IF NOT EXISTS metric_points {ON}") for s in first)


def test_every_statement_runs_on_the_cluster_but_the_backfill_which_runs_once_through_distributed_tables():
    for name, statements in forms().items():
        for statement in statements:
            if statement.startswith("INSERT"):
                assert ON not in statement and "_local" not in statement, statement
            else:
                assert ON in statement.split("\n")[0], (name, statement)
    backfill = forms()["0004_epoch_map.sql"][-1]
    assert backfill.startswith("INSERT INTO metric_epochs_1m\nSELECT") and "FROM metric_points\n" in backfill
    hourly = forms()["0009_epochs_1h.sql"][-1]
    assert hourly.startswith("INSERT INTO metric_epochs_1h\nSELECT") and "FROM metric_epochs_1m\n" in hourly


def sort_key(create: str) -> set[str]:
    key = re.search(r"ORDER BY (\([^)]*\)|\w+)", create)[1].strip("()")
    return {column.strip() for column in key.split(",")}


def test_rows_deduplicated_together_share_a_shard():
    """FINAL and ReplacingMergeTree collapse rows of one sort key, shard by shard: the sharding key reads
    only sort-key columns. The watermarked raw tables shard by Kafka partition, which their sort key's
    run or host decides (events are keyed by run or host), so one partition's rows and watermark meet."""
    tables = single_node_tables()
    for table, create in tables.items():
        columns = set(re.findall(r"\b([a-z_]+)\b(?!\s*\()", SHARDING_KEYS[table]))
        if table in WATERMARKED:
            assert SHARDING_KEYS[table] == "src_partition"
        elif table == "ingest_offsets":
            assert SHARDING_KEYS[table] == "partition"  # the same shard as the raw rows of that partition
        else:
            assert columns <= sort_key(create), (table, SHARDING_KEYS[table], sort_key(create))


def test_the_cluster_form_parses_with_the_engine():
    chdb = pytest.importorskip("chdb", reason="the engine from the server extra: pip install 'trainmon[server]'")
    for name, statements in forms().items():
        for statement in statements:
            literal = "'" + statement.replace("\\", "\\\\").replace("'", "\\'") + "'"
            result = chdb.query(f"SELECT formatQuerySingleLine({literal})", "TSVRaw")
            formatted = result.data().strip()
            assert formatted, (name, statement, result.error_message() if result.has_error() else "")
            if not statement.startswith("INSERT"):
                assert "ON CLUSTER `prod-eu`" in formatted, formatted
            for engine in re.findall(r"ENGINE = (\w+)", statement):
                assert f"ENGINE = {engine}" in formatted


@pytest.mark.parametrize("sql, error", [
    ("CREATE TABLE IF NOT EXISTS mystery (a UInt8) ENGINE = MergeTree ORDER BY a", "add one to SHARDING_KEYS"),
    ("CREATE TABLE IF NOT EXISTS runs (a UInt8) ENGINE = Memory", "makes a \\*MergeTree engine Replicated"),
    ("CREATE TABLE IF NOT EXISTS runs (a UInt8) ENGINE = ReplicatedMergeTree ORDER BY a", "not 'ENGINE = Repl"),
    ("DROP TABLE runs", "no cluster form for 'DROP TABLE runs'"),
    ("ALTER TABLE runs ADD COLUMN x UInt8, MODIFY TTL updated_at + INTERVAL 1 DAY", "split column changes"),
    ("CREATE MATERIALIZED VIEW IF NOT EXISTS v TO nowhere AS SELECT 1", "nowhere is not created"),
    ("ALTER TABLE runs MODIFY QUERY SELECT 1", "runs is not a materialized view created"),
])
def test_what_has_no_cluster_form_is_refused_with_what_to_do(sql, error):
    schema = ClusterSchema(CLUSTER, DATABASE)
    schema.statements(discover()[0].statements)
    with pytest.raises(ClusterFormError, match=error):
        schema.statements([sql])


def test_an_insert_before_its_distributed_table_exists_is_refused():
    schema = ClusterSchema(CLUSTER, DATABASE)
    schema.statements(discover()[0].statements)  # metric_points has no src_partition yet
    with pytest.raises(ClusterFormError, match="before its Distributed table exists"):
        schema.statements(["INSERT INTO runs SELECT * FROM metric_points"])


def test_a_cluster_name_that_is_not_one_is_refused():
    with pytest.raises(ClusterFormError, match="is not a remote_servers name"):
        ClusterSchema("x` ; DROP", DATABASE)


def test_commas_inside_parentheses_quotes_and_comments_do_not_split():
    assert split_top_level("a Map(String, UInt8), b String DEFAULT ',', c Float64") == [
        "a Map(String, UInt8)", "b String DEFAULT ','", "c Float64"]
    schema = ClusterSchema(CLUSTER, DATABASE)
    [local, _] = schema.statements(["CREATE TABLE IF NOT EXISTS runs (project String, -- a, b (c\n"
                                    "run String) ENGINE = ReplacingMergeTree ORDER BY (project, run)"])
    assert schema.columns["runs"] == {"project", "run"} and "--" not in local


# --- migrate() with a cluster ------------------------------------------------------------------------------


class Recorder:
    """A client that records statements and inserts; `applied` is what schema_migrations holds."""

    def __init__(self, log: list[tuple[str, Any]], applied: dict[int, str]) -> None:
        self.log, self.applied = log, applied

    def command(self, sql: str, settings: dict | None = None) -> None:
        self.log.append(("command", sql, settings))

    def query(self, sql: str) -> Any:
        return type("Result", (), {"result_rows": list(self.applied.items())})()

    def insert(self, table: str, rows: list, column_names: list, settings: dict | None = None) -> None:
        self.log.append(("insert", table, settings))


def run_migrate(monkeypatch, applied: dict[int, str], directory: Path = MIGRATIONS_DIR,
                log: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    log = [] if log is None else log
    monkeypatch.setattr(migrate_module, "connect", lambda settings, database=None: Recorder(log, applied))
    migrate(Settings(clickhouse_cluster=CLUSTER, clickhouse_database=DATABASE), progress=lambda m: None,
            directory=directory)
    return log


def test_migrate_creates_the_database_and_ledger_on_the_cluster_then_applies_each_cluster_form(monkeypatch):
    log = run_migrate(monkeypatch, applied={})
    commands = [entry[1] for entry in log if entry[0] == "command"]
    assert commands[0] == f"CREATE DATABASE IF NOT EXISTS {DATABASE} {ON}"
    expected = [s for statements in forms().values() for s in statements]
    assert commands[1:] == expected
    inserts = [entry for entry in log if entry[0] == "insert"]
    assert len(inserts) == len(discover())
    assert all(table == "schema_migrations" and settings["distributed_foreground_insert"] == 1
               for _, table, settings in inserts)
    backfill = next(entry for entry in log if entry[0] == "command" and entry[1].startswith("INSERT"))
    assert backfill[2]["distributed_foreground_insert"] == 1  # the backfill waits for every shard


def test_migrate_on_a_migrated_cluster_runs_only_the_ledger(monkeypatch):
    applied = {m.version: m.checksum for m in discover()}
    log = run_migrate(monkeypatch, applied)
    assert [entry[1] for entry in log] == [f"CREATE DATABASE IF NOT EXISTS {DATABASE} {ON}", *forms()["(ledger)"]]


def test_a_statement_without_cluster_form_stops_migrate_before_anything_runs(monkeypatch, tmp_path):
    for source in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "0099_drop.sql").write_text("DROP TABLE runs;\n")
    log: list = []
    with pytest.raises(ClusterFormError, match="no cluster form"):
        run_migrate(monkeypatch, applied={}, directory=tmp_path, log=log)
    assert log == []
