"""ClickHouse as a cluster of two shards: the cluster form of the migrations, the sink and the dashboard
queries through Distributed tables, on two chdb-core engine processes that share one `remote_servers`
definition (cluster `trainmon_test`, 2 shards x 1 replica, each node its own `<macros>`).

SUBSTITUTION. This engine (clickhouse-local in chdb-core 26.9) cannot run `ON CLUSTER` DDL ("Replicated
DDL queries are disabled") nor replicate (ReplicatedMergeTree needs an interserver port it lacks), so
`trainmon.deploy.migrate.migrate` runs here with its client replaced by `OnEveryNode`, which does by hand
what ON CLUSTER would: each statement of the cluster form that says `ON CLUSTER` is run on every node,
  - without its `ON CLUSTER `<name>`` clause,
  - with `Replicated<X>MergeTree('/clickhouse/tables/{shard}/<db>.<table>', '{replica}'[, args])` run as
    `<X>MergeTree([args])`,
  - with `replicated_deduplication_window` run as `non_replicated_deduplication_window`;
and every other statement (the ledger's reads and inserts, a migration's INSERT ... SELECT backfill) runs
once, on the first node, as it would on the node `trainmon db migrate` connects to. Everything else is
real: the Distributed tables and their sharding keys, the materialized views on the local tables, the sink
(`distributed_foreground_insert=1`), the dashboard's SQL, two engines talking over their TCP ports.

Node 1 also holds the single-node schema (plain `migrate`, another database) as the reference the
cluster's answers must equal. Ports: HTTP 23126-23127, TCP 23006-23007 on 127.0.0.1.
"""

from __future__ import annotations

import re
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests import dashboard_seed as seeded
from trainmon.clickhouse import connect
from trainmon.dashboard.queries import Queries
from trainmon.deploy import migrate as migrate_module
from trainmon.deploy.migrate import discover, migrate
from trainmon.deploy.services.clickhouse import ClickHouseService
from trainmon.settings import Settings
from trainmon.stream_processors.sink import Batch, ClickHouseSink

pytestmark = pytest.mark.integration

CLUSTER = "trainmon_test"
HTTP_PORTS, TCP_PORTS = (23126, 23127), (23006, 23007)
PARTITIONS = 4  # of each simulated Kafka topic; shard = src_partition % 2
TOPICS = {"metrics": "metrics#t1", "system": "system#t1", "runs": "runs#t1"}
EVENTS_PER_BATCH = 40  # events of all partitions in one sink write, as the processors merge them
NOW_DEPENDENT = ("duration_s", "silent_s")  # computed from now64() at query time: differ between two calls
# `last` / `final` pooled over ranks: argMax by step, and every rank logs the same steps, so which rank's
# value wins a tie depends on the order rows are read in, on one node (parts, threads) as on a cluster.
TIED = {"series, ranks pooled": ["last"], "final metrics": ["final"]}
TAG = uuid.uuid4().hex[:6]

ON_CLUSTER = re.compile(r"\s+ON CLUSTER `[^`]+`")
REPLICATED = re.compile(r"\bReplicated(\w*MergeTree)\('/clickhouse/tables/\{shard\}/[^']+', '\{replica\}'(?:, )?")
REPLICATED_WINDOW = re.compile(r"\breplicated_deduplication_window\b")


def on_this_engine(sql: str) -> str:
    """A cluster-form statement as one node of this engine runs it (the module docstring's substitution)."""
    sql = REPLICATED.sub(r"\1(", ON_CLUSTER.sub("", sql))
    return REPLICATED_WINDOW.sub("non_replicated_deduplication_window", sql)


class OnEveryNode:
    """A client that runs ON CLUSTER statements on every node (substituted) and the rest on the first."""

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients

    def command(self, sql: str, **options: Any) -> Any:
        if not ON_CLUSTER.search(sql):
            return self.clients[0].command(sql, **options)
        for client in self.clients:
            client.command(on_this_engine(sql), **options)
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.clients[0], name)


class ClusterNode(ClickHouseService):
    """The local ClickHouse service with the cluster's config fragments (remote_servers, macros)."""

    def __init__(self, settings: Settings, fragments: list[Path]) -> None:
        super().__init__(settings)
        self.fragments = fragments

    def command(self) -> list[str]:
        return [*super().command(), *(arg for f in self.fragments for arg in ("--config-fragment", str(f)))]


def _fragments(home: Path) -> list[list[Path]]:
    """One remote_servers file for both nodes, and each node's macros."""
    home.mkdir(parents=True, exist_ok=True)
    shards = "".join(f"<shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host>"
                     f"<port>{port}</port></replica></shard>" for port in TCP_PORTS)
    servers = home / "remote_servers.xml"
    servers.write_text(f"<clickhouse><remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers></clickhouse>\n")
    out = []
    for index in range(len(TCP_PORTS)):
        macros = home / f"macros-{index + 1}.xml"
        macros.write_text(f"<clickhouse><macros><shard>0{index + 1}</shard><replica>node-{index + 1}</replica>"
                          "</macros></clickhouse>\n")
        out.append([servers, macros])
    return out


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ClusterNode]]:
    pytest.importorskip("chdb", reason="the cluster test runs two chdb-core engines: pip install 'trainmon[server]'")
    home = tmp_path_factory.mktemp("clickhouse-cluster")
    started: list[ClusterNode] = []
    try:
        for index, fragments in enumerate(_fragments(home / "config")):
            settings = Settings(services_home=str(home / f"node-{index + 1}"),
                                services_clickhouse_http_port=HTTP_PORTS[index],
                                services_clickhouse_tcp_port=TCP_PORTS[index])
            node = ClusterNode(settings, fragments)
            node.start(progress=print)
            started.append(node)
        yield started
    finally:
        for node in started:
            node.stop(progress=print)


def _migrate_on_cluster(settings: Settings, nodes: list[ClusterNode]) -> None:
    def fan_out(settings: Settings, database: str | None = None, **options: Any) -> OnEveryNode:
        return OnEveryNode([connect(settings.replace(services_clickhouse_http_port=node.http_port), database,
                                    **options) for node in nodes])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(migrate_module, "connect", fan_out)
        migrate(settings, progress=print)


@pytest.fixture(scope="module")
def databases(nodes: list[ClusterNode]) -> tuple[Settings, Settings]:
    """(one node, cluster): the same migrations, plain in one database and in cluster form in another."""
    first = Settings(services_clickhouse_http_port=nodes[0].http_port)
    single = first.replace(clickhouse_database=f"single_{TAG}")
    cluster = first.replace(clickhouse_database=f"cluster_{TAG}", clickhouse_cluster=CLUSTER)
    migrate(single, progress=print)
    _migrate_on_cluster(cluster, nodes)
    return single, cluster


# --- the data: the dashboard's seeded history, as the processors hand it to the sink ----------------------


class Captured:
    """Stands in for a client: keeps what `dashboard_seed.seed` inserts, per table, as row dicts."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str], **_: Any) -> None:
        self.rows[table] += [dict(zip(column_names, row)) for row in rows]


def _partition(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS


def _events(captured: Captured) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic, kind, event) in seeding order: metric and system rows regrouped into the events that carry them."""
    metrics: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in captured.rows.pop("metric_points"):
        key = (row["project"], row["run"], row["rank"], row["host"], row["step"], row["epoch"], row["time"])
        metrics[key][row["name"]] = row["value"]
    system: dict[tuple, dict[str, Any]] = {}
    for row in captured.rows.pop("system_samples"):
        event = system.setdefault((row["host"], row["time"]), {"host": row["host"], "time": row["time"].timestamp(),
                                                                 "figures": {}, "gpus": {}})
        if row["gpu"] < 0:
            event["figures"][row["name"]] = row["value"]
        else:
            gpu = event["gpus"].setdefault(row["gpu"], {"index": row["gpu"], "uuid": row["gpu_uuid"], "figures": {}})
            gpu["figures"][row["name"]] = row["value"]
    out = [("metrics", "metrics", {"project": p, "run": r, "rank": k, "host": h, "step": s, "epoch": e,
                                   "time": t.timestamp(), "values": values})
           for (p, r, k, h, s, e, t), values in metrics.items()]
    out += [("system", "system", {**event, "gpus": list(event["gpus"].values())}) for event in system.values()]
    out += [("runs", "run_event", row) for row in captured.rows.pop("run_events")]
    return out


def _batches(events: list[tuple[str, str, dict[str, Any]]], other_rows: dict[str, list[dict[str, Any]]]
             ) -> list[list[tuple[str, int, int, str, dict[str, Any]]]]:
    """Events with their Kafka source (topic, partition by run or host as the SDK keys them, offset), in
    sink writes of EVENTS_PER_BATCH; the rows the processors write without a source go in the first write."""
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    sourced = []
    for topic, kind, event in events:
        partition = _partition(event["host"] if kind == "system" else event["run"])
        offset = offsets[topic, partition]
        offsets[topic, partition] += 1
        sourced.append((TOPICS[topic], partition, offset, kind, event))
    writes = [sourced[i:i + EVENTS_PER_BATCH] for i in range(0, len(sourced), EVENTS_PER_BATCH)]
    writes[0] = [*[("", 0, 0, table, rows) for table, rows in other_rows.items()], *writes[0]]
    return writes


def _batch(write: list[tuple[str, int, int, str, Any]], sink: ClickHouseSink | None = None) -> Batch:
    """The write's events and rows as a sink Batch; with a sink, without what it says is written already."""
    batch = Batch()
    for topic, partition, offset, kind, event in write:
        if sink is not None and topic and sink.skip(topic, partition, offset):
            continue
        if kind == "metrics":
            batch.add_metrics(event, topic, partition, offset)
        elif kind == "system":
            batch.add_system(event, topic, partition, offset)
        elif kind == "run_event":
            batch.add_run_event(dict(event), topic, partition, offset)
        else:
            batch.add(kind, event)
    return batch


@pytest.fixture(scope="module")
def history() -> tuple[seeded.Seeded, list]:
    captured = Captured()
    seed = seeded.seed(captured, datetime.now(timezone.utc))
    # An older snapshot of every run, written first: FINAL must keep the newer one on either schema.
    stale = [{**run, "status": "running", "updated_at": run["updated_at"].replace(year=2000)}
             for run in captured.rows["runs"]]
    captured.rows["runs"] = stale + captured.rows["runs"]
    events = _events(captured)
    return seed, _batches(events, dict(captured.rows))


@pytest.fixture(scope="module")
def written(databases: tuple[Settings, Settings], history) -> tuple[Settings, Settings]:
    _, writes = history
    for settings in databases:
        sink = ClickHouseSink(settings)
        for write in writes:
            sink.write(_batch(write, sink))
        print(f"sink: {sink.written_values} values into {settings.clickhouse_database}")
    return databases


def _scalar(settings: Settings, sql: str) -> Any:
    return connect(settings).query(sql).result_rows[0][0]


# --- the schema ---------------------------------------------------------------------------------------


def test_the_cluster_form_makes_local_tables_on_every_node_and_distributed_tables_over_them(databases, nodes):
    _, cluster = databases
    database = cluster.clickhouse_database
    for node in nodes:
        client = connect(cluster.replace(services_clickhouse_http_port=node.http_port))
        engines = dict(client.query("SELECT name, engine_full FROM system.tables WHERE database = {d:String}",
                                    parameters={"d": database}).result_rows)
        local = {name for name, engine in engines.items() if name.endswith("_local")}
        assert {"metric_points_local", "runs_local", "ingest_offsets_local", "schema_migrations_local"} <= local
        for name in local:  # every local table has its Distributed table, pointing at it, on every node
            assert engines[name.removesuffix("_local")].startswith(f"Distributed('{CLUSTER}', '{database}', '{name}'")
        assert "src_partition" in engines["metric_points"] and "cityHash64(project, run)" in engines["runs"]
        views = client.query("SELECT create_table_query FROM system.tables WHERE database = {d:String} "
                             "AND engine = 'MaterializedView'", parameters={"d": database}).result_rows
        local_to_local = re.compile(rf"\bTO {database}\.\w+_local\b.* FROM {database}\.\w+_local\b", re.S)
        assert len(views) == 10 and all(local_to_local.search(sql) for (sql,) in views), views


def test_migrating_the_cluster_again_applies_nothing_and_the_ledger_lists_each_migration_once(databases, nodes):
    _, cluster = databases
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(migrate_module, "connect", lambda *a, **k: OnEveryNode([connect(*a, **k)]))
        applied = migrate(cluster, progress=print)
    assert applied == []
    versions = connect(cluster).query("SELECT version FROM schema_migrations FINAL ORDER BY version").result_rows
    assert versions == [(m.version,) for m in discover()]  # every migration file, once


# --- the sink -----------------------------------------------------------------------------------------


def test_the_sink_writes_exact_counts_through_the_distributed_tables(written, history):
    single, cluster = written
    seed, writes = history
    for table in ("metric_points", "system_samples", "run_events"):
        assert _scalar(cluster, f"SELECT count() FROM {table}") == _scalar(single, f"SELECT count() FROM {table}") > 0
    values = _scalar(single, "SELECT count() FROM metric_points")
    for rollup in ("metric_rollup_1m", "metric_rollup_1h"):
        assert _scalar(cluster, f"SELECT sum(count) FROM {rollup}") == values
    assert _scalar(cluster, "SELECT count() FROM runs FINAL") == len(seed.runs)
    # Both shards hold rows, and every Kafka partition's rows (and its watermark) are on one shard.
    per_shard = connect(cluster).query("SELECT _shard_num, count() FROM metric_points GROUP BY _shard_num").result_rows
    assert len(per_shard) == 2 and all(count > 0 for _, count in per_shard)
    for table, partition in (("metric_points", "src_partition"), ("system_samples", "src_partition"),
                             ("run_events", "src_partition"), ("ingest_offsets", "partition")):
        spread = connect(cluster).query(f"SELECT {partition}, uniqExact(_shard_num) FROM {table} "
                                        f"GROUP BY {partition}").result_rows
        assert spread and all(shards == 1 for _, shards in spread), (table, spread)
    offsets = connect(cluster).query("SELECT topic, partition, max(offset) FROM ingest_offsets "
                                     "GROUP BY topic, partition ORDER BY topic, partition").result_rows
    expected = defaultdict(lambda: -1)
    for write in writes:
        for topic, partition, offset, _, _ in write:
            if topic:
                expected[topic, partition] = max(expected[topic, partition], offset)
    assert offsets == sorted((topic, partition, offset) for (topic, partition), offset in expected.items())


COUNTS = ("SELECT count() FROM metric_points", "SELECT sum(count) FROM metric_rollup_1m",
          "SELECT count() FROM system_samples", "SELECT sum(count) FROM system_rollup_1m",
          "SELECT count() FROM run_events",
          "SELECT groupArray((topic, partition, offset)) FROM (SELECT topic, partition, max(offset) AS offset "
          "FROM ingest_offsets GROUP BY topic, partition ORDER BY topic, partition)")


@pytest.mark.parametrize("schema", ["one node", "cluster"])
def test_a_write_sent_again_and_a_replay_by_a_new_worker_add_nothing(written, history, schema):
    settings = written[schema == "cluster"]
    _, writes = history
    before = [_scalar(settings, sql) for sql in COUNTS]
    # Retried inserts (the first write holds the rows without a source; then system samples, run events).
    kinds = [{item[3] for item in write} for write in writes]
    for index in (0, kinds.index(next(k for k in kinds if "system" in k)),
                  kinds.index(next(k for k in kinds if "run_event" in k))):
        ClickHouseSink(settings).write(_batch(writes[index]))
    replay = ClickHouseSink(settings)  # a worker taking over every partition from offset 0
    for write in writes:
        assert not _batch([item for item in write if item[0]], replay)
    assert replay.skipped_events == sum(1 for write in writes for item in write if item[0])
    assert [_scalar(settings, sql) for sql in COUNTS] == before


# --- the dashboard ------------------------------------------------------------------------------------


def _calls(seed: seeded.Seeded) -> dict[str, Callable[[Queries], Any]]:
    """Every read the dashboard's pages make, over the seeded history (raw and rollup sources both)."""
    project, live, done, failed = seeded.PROJECT, seeded.LIVE_RUN, seeded.DONE_RUN, seeded.FAILED_RUN
    runs, hosts = [live, done, failed], seeded.HOSTS
    since = pd.Timestamp(seed.now) - pd.Timedelta(minutes=30)
    return {
        "projects": lambda q: q.projects(), "users": lambda q: q.users(project), "tags": lambda q: q.tags(),
        "statuses": lambda q: q.statuses(),
        "runs": lambda q: q.runs(), "runs by best loss": lambda q: q.runs(metric="loss", order_by="best"),
        "runs by alerts": lambda q: q.runs(project=project, order_by="alerts_firing"),
        "run": lambda q: q.run(project, live), "ranks": lambda q: q.ranks(project, live),
        "metric names": lambda q: q.metric_names(project, runs),
        "series, ranks pooled": lambda q: q.series(project, runs, "loss", points=40),
        "series by step": lambda q: q.series(project, runs, "loss", points=40, rank=0),
        "series by time, 1m": lambda q: q.series(project, runs, "loss", x="time", points=20, source="1m", rank=0),
        "series by step, 1h": lambda q: q.series(project, runs, "accuracy", points=20, source="1h", rank=1),
        "series by epoch": lambda q: q.series(project, runs, "loss", x="epoch", points=30, rank=0),
        "epoch map": lambda q: q.epoch_map(project, runs, "loss", points=30),
        "rank spread": lambda q: q.rank_spread(project, live, "loss", points=25),
        "final metrics": lambda q: q.final_metrics(project, runs, "loss"),
        "config diff": lambda q: q.config_diff(project, runs),
        "hosts": lambda q: q.hosts(),
        "host series, raw": lambda q: q.host_series(hosts, ["util_percent", "cpu_percent"], since, seed.now, points=40),
        "host series, 1m": lambda q: q.host_series(hosts, "temperature_c", since, seed.now, points=20, source="1m"),
        "host series, 1h": lambda q: q.host_series(hosts, "power_w", since, seed.now, source="1h"),
        "cluster": lambda q: q.cluster(), "silent nodes": lambda q: q.silent_nodes(),
        "stragglers": lambda q: q.stragglers(),
        "alerts": lambda q: q.alerts(), "alerts firing": lambda q: q.alerts(firing_only=True),
        "incidents": lambda q: q.incidents(), "deliveries": lambda q: q.deliveries(),
    }


def _comparable(name: str, answer: Any) -> Any:
    """An answer without what depends on the instant it was computed (a running run's duration) or on
    the order rows are read in (TIED)."""
    if isinstance(answer, pd.DataFrame):
        undefined = (*NOW_DEPENDENT, *TIED.get(name, ()))
        return answer.drop(columns=[c for c in undefined if c in answer.columns])
    if isinstance(answer, dict):
        return {key: value for key, value in answer.items() if key not in NOW_DEPENDENT}
    return answer


def test_the_dashboard_queries_answer_the_same_on_one_node_and_on_the_cluster(written, history):
    seed, _ = history
    readers = [Queries(connect(settings.replace(clickhouse_user="reader"))) for settings in written]
    empty = []
    for name, call in _calls(seed).items():
        one, cluster = (_comparable(name, call(q)) for q in readers)
        if isinstance(one, pd.DataFrame):
            pd.testing.assert_frame_equal(cluster, one, obj=name)
            assert cluster.attrs == one.attrs, name  # the same source tables chosen
            empty += [name] if one.empty else []
        else:
            assert cluster == one, name
            empty += [name] if not one else []
    assert not empty, f"answers with nothing to compare: {empty}"


# --- a shard refusing its part of a write ----------------------------------------------------------------


class Crash(BaseException):
    """The worker dies: raised past the sink's retries, which catch Exception."""


class DiesOnFailedInsert:
    """A real client whose first failed insert kills the worker, so the write is never retried."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not name.startswith("insert"):
            return attribute

        def insert(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except Exception as exc:
                raise Crash(f"{type(exc).__name__}: {str(exc)[:200]}") from exc

        return insert


RUNS_PER_PARTITION = 4  # runs hashed to both shards share a partition (what sharding by run would split)


def _metric_events(project: str, steps: int) -> list[tuple[str, int, int, str, dict[str, Any]]]:
    """RUNS_PER_PARTITION runs in each partition, `steps` events each, in the order a poll reads them."""
    runs: dict[int, list[str]] = defaultdict(list)
    for run in (f"{project}-{index}" for index in range(200)):
        if len(runs[_partition(run)]) < RUNS_PER_PARTITION:
            runs[_partition(run)].append(run)
    assert sorted(len(names) for names in runs.values()) == [RUNS_PER_PARTITION] * PARTITIONS
    start = datetime.now(timezone.utc).timestamp() - steps
    events, offsets = [], defaultdict(int)
    for step in range(steps):
        for partition, names in sorted(runs.items()):
            for run in names:
                event = {"project": project, "run": run, "rank": 0, "host": "cut-node", "step": step,
                         "epoch": step / 10, "time": start + step, "values": {"loss": 1 / (step + 1), "lr": 0.1}}
                events.append((TOPICS["metrics"] + "-cut", partition, offsets[partition], "metrics", event))
                offsets[partition] += 1
    return events


def test_a_write_cut_short_by_a_shard_refusing_it_is_replayed_with_nothing_lost_or_doubled(databases, nodes):
    """Each shard's part of a write succeeds or fails on its own. Shard 2 refuses inserts (too many parts,
    as when merges fall behind) while shard 1 takes its rows and their watermark, and the worker dies
    before shard 2 recovers. The next one re-reads from the committed offsets, skips by the watermark
    exactly what shard 1 took, and writes the rest once. (Sharded by run, one partition's rows would be
    on both shards, and the watermark shard 1 took would skip rows shard 2 never wrote.)"""
    _, cluster = databases
    project = f"cut-{TAG}"
    events = _metric_events(project, steps=30)
    per_step = len(events) // 30
    first, cut, rest = events[:10 * per_step], events[10 * per_step:20 * per_step], events[20 * per_step:]
    ClickHouseSink(cluster).write(_batch(first))  # written, and its offsets committed
    shard_1, shard_2 = (connect(cluster.replace(services_clickhouse_http_port=node.http_port)) for node in nodes)
    cut_rows = ("SELECT count() FROM metric_points_local WHERE project = {p:String} AND step BETWEEN 10 AND 19")
    dying = ClickHouseSink(cluster, client_factory=lambda s: DiesOnFailedInsert(connect(s)))
    batch = _batch(cut, dying)
    shard_2.command("ALTER TABLE metric_points_local MODIFY SETTING parts_to_throw_insert = 1")
    try:
        with pytest.raises(Crash) as died:
            dying.write(batch)
        print(f"the worker died on: {died.value}")
        taken = [shard.query(cut_rows, parameters={"p": project}).result_rows[0][0] for shard in (shard_1, shard_2)]
        assert taken[0] > 0 and taken[1] == 0, f"not a write cut short: rows of it on shards 1 and 2: {taken}"
    finally:
        shard_2.command("ALTER TABLE metric_points_local RESET SETTING parts_to_throw_insert")
    taking_over = ClickHouseSink(cluster)
    for write in (cut[:33], cut[33:], rest):  # the uncommitted events again, in other batches
        batch = _batch(write, taking_over)
        if batch:
            taking_over.write(batch)
    assert taking_over.skipped_events == taken[0] // 2  # the cut write's events shard 1 took (2 values each)
    values = len(events) * 2
    where = f"WHERE project = '{project}'"
    assert _scalar(cluster, f"SELECT count() FROM metric_points {where}") == values
    assert _scalar(cluster, f"SELECT count() FROM metric_points FINAL {where}") == values
    assert _scalar(cluster, f"SELECT sum(count) FROM metric_rollup_1m {where}") == values
