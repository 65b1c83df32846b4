"""The cluster form of the migrations, for `[clickhouse] cluster` (a `remote_servers` cluster name).

The migration files are single-node SQL. On a cluster each table `X` becomes two, both made ON CLUSTER:
- `X_local`: the data, on every node, with `Replicated*MergeTree('/clickhouse/tables/{shard}/<db>.X',
  '{replica}', ...)` (the node's `<macros>` fill in {shard} and {replica});
- `X`: `Distributed(<cluster>, <db>, X_local, <sharding key>)`, which the sink and the dashboard read
  and write under the table's own name, so their SQL is the same on one node and on a cluster.
Materialized views are made on every node, from one local table into another, so each shard rolls
up its own rows (a view's new query, `ALTER TABLE <view> MODIFY QUERY`, reads local tables on every node
too); `INSERT ... SELECT` (a backfill) runs once, through the Distributed tables.

Sharding keys (SHARDING_KEYS) put the rows that must meet on the same shard:
- Rows whose versions collapse (ReplacingMergeTree, read with FINAL) by columns of their sort key.
- The raw tables the sink's exactly-once watermark covers (metric_points, system_samples, run_events)
  by their Kafka source partition, `src_partition`: one partition's rows are then one shard's, and that
  shard's `ingest_offsets` row (fed by its views) says exactly what of that partition is written. Shards
  by run or host instead, one partition's rows would spread over shards, and a crash between two shards'
  writes could leave the watermark above rows that were never written (lost on replay). A run's events
  are keyed by run and a host's by host (trainmon.contract.partition_key), so a re-sent event still
  meets its first copy. `src_partition` arrives in migrations 0002 and 0005: such a table's Distributed
  table is made by the first statement after which its local table has the key's columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from trainmon.errors import TrainmonError

LOCAL = "_local"
# Every table a migration creates needs one: a new table without one stops the migration with the fix.
SHARDING_KEYS = {
    "schema_migrations": "version",
    "metric_points": "src_partition",
    "system_samples": "src_partition",
    "run_events": "src_partition",
    "ingest_offsets": "partition",  # where the views of one partition's raw rows put its watermark
    "runs": "cityHash64(project, run)",
    "run_ranks": "cityHash64(project, run)",
    "metric_rollup_1m": "cityHash64(project, run)",
    "metric_rollup_1h": "cityHash64(project, run)",
    "metric_epochs_1m": "cityHash64(project, run)",
    "metric_epochs_1h": "cityHash64(project, run)",
    "window_aggregates": "cityHash64(project, run, host)",
    "gpus": "cityHash64(host)",
    "system_rollup_1m": "cityHash64(host)",
    "system_rollup_1h": "cityHash64(host)",
    "system_latest": "cityHash64(host)",
    "alerts": "cityHash64(fingerprint)",
    "alert_deliveries": "cityHash64(fingerprint)",
    "incidents": "cityHash64(incident)",
}
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_NAME = r"([A-Za-z_][A-Za-z0-9_]*)"
_CREATE_TABLE = re.compile(rf"^CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}\s*(.*)$", re.I | re.S)
_CREATE_AS = re.compile(rf"^AS\s+{_NAME}\s+(ENGINE\b.*)$", re.I | re.S)
_CREATE_VIEW = re.compile(
    rf"^CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}\s+TO\s+{_NAME}\s+AS\s+(.*)$", re.I | re.S)
_MODIFY_QUERY = re.compile(rf"^ALTER\s+TABLE\s+{_NAME}\s+MODIFY\s+QUERY\s+(.*)$", re.I | re.S)
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+{_NAME}\s+(.*)$", re.I | re.S)
_INSERT = re.compile(rf"^INSERT\s+INTO\s+{_NAME}\b", re.I)
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w+)", re.I)
_SOURCE = re.compile(rf"\b(FROM|JOIN)\s+{_NAME}(\s+AS\s+\w+)?", re.I)
_COLUMN_CLAUSE = re.compile(r"^(ADD|DROP|MODIFY|RENAME|CLEAR|COMMENT)\s+COLUMN\b", re.I)
_ADDED_COLUMN = re.compile(rf"^ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?`?{_NAME}", re.I)
_NOT_COLUMNS = re.compile(r"^(INDEX|PROJECTION|CONSTRAINT)\b", re.I)
_IDENTIFIERS = re.compile(rf"\b{_NAME}\b(?!\s*\()")


class ClusterFormError(TrainmonError):
    """A migration statement has no cluster form; the message says what to add or split."""


def on_cluster(cluster: str) -> str:
    """The ON CLUSTER clause for a cluster name, quoted (names like `prod-eu` are common)."""
    if not _CLUSTER_NAME.match(cluster):
        raise ClusterFormError(f"clickhouse.cluster {cluster!r} is not a remote_servers name (letters, digits, _ . -)")
    return f"ON CLUSTER `{cluster}`"


def strip_comments(sql: str) -> str:
    """The statement without `--` comments (outside quotes): they may hold commas, parentheses and words
    like FROM that the rewriting below must not see. ClickHouse does not keep them anyway."""
    out, quote, i = [], "", 0
    while i < len(sql):
        char = sql[i]
        if quote:
            out.append(char)
            if char == "\\" and i + 1 < len(sql):
                out.append(sql[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'`\"":
            quote = char
            out.append(char)
        elif sql.startswith("--", i):
            while i < len(sql) and sql[i] != "\n":
                i += 1
            continue
        else:
            out.append(char)
        i += 1
    return "\n".join(line.rstrip() for line in "".join(out).strip().splitlines())


def _outside_quotes(text: str) -> Iterable[tuple[int, str, int]]:
    """(index, character, parenthesis depth) of each character outside quotes."""
    depth, quote = 0, ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[i - 1] != "\\" else quote
        elif char in "'`\"":
            quote = char
        else:
            depth += {"(": 1, ")": -1}.get(char, 0)
            yield i, char, depth


def split_top_level(text: str) -> list[str]:
    """Comma-separated items outside parentheses and quotes (column lists, ALTER clauses)."""
    items, start = [], 0
    for i, char, depth in _outside_quotes(text):
        if char == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [item for item in items if item]


def _closing(text: str) -> int:
    """Index of the parenthesis that closes the one `text` starts with."""
    for i, char, depth in _outside_quotes(text):
        if char == ")" and depth == 0:
            return i
    raise ClusterFormError(f"unbalanced parentheses in: {text[:80]}...")


class ClusterSchema:
    """Turns migration statements into their cluster form, in order: it remembers which tables exist,
    their columns and which have their Distributed table yet, so feed it every migration from the first,
    applied or not (the cluster form of a migration depends on the ones before it)."""

    def __init__(self, cluster: str, database: str) -> None:
        self.on_cluster = on_cluster(cluster)
        self.cluster, self.database = cluster, database
        self.columns: dict[str, set[str]] = {}  # table -> columns of its local table
        self.distributed: set[str] = set()
        self.views: set[str] = set()

    def statements(self, statements: Iterable[str]) -> list[str]:
        out: list[str] = []
        for statement in statements:
            out += self.statement(strip_comments(statement))
        return out

    def statement(self, sql: str) -> list[str]:
        for pattern, form in ((_CREATE_TABLE, self._create_table), (_CREATE_VIEW, self._create_view),
                              (_MODIFY_QUERY, self._modify_query), (_ALTER, self._alter), (_INSERT, self._insert)):
            match = pattern.match(sql)
            if match:
                return form(match)
        raise ClusterFormError(f"no cluster form for {sql[:80]!r}: deploy/clickhouse_cluster.py knows CREATE TABLE, "
                               "CREATE MATERIALIZED VIEW ... TO, ALTER TABLE (a view's: MODIFY QUERY) and INSERT; "
                               "extend it or use those")

    # --- statement kinds ---------------------------------------------------------------------------

    def _create_table(self, match: re.Match) -> list[str]:
        table, rest = match[1], match[2]
        if table not in SHARDING_KEYS:
            raise ClusterFormError(f"table {table} has no sharding key: add one to SHARDING_KEYS in "
                                   "deploy/clickhouse_cluster.py (rows that FINAL or a watermark reads together "
                                   "must share it)")
        copied = _CREATE_AS.match(rest)
        if copied:
            self._known(copied[1])
            self.columns[table] = set(self.columns[copied[1]])
            body = f"AS {copied[1]}{LOCAL} {self._engine(table, copied[2])}"
        elif rest.startswith("("):
            end = _closing(rest)
            self.columns[table] = {item.split()[0].strip("`") for item in split_top_level(rest[1:end])
                                   if not _NOT_COLUMNS.match(item)}
            body = f"{rest[:end + 1]}\n{self._engine(table, rest[end + 1:].strip())}"
        else:
            raise ClusterFormError(f"CREATE TABLE {table}: give it a column list or AS <table> ENGINE = ...")
        return [f"CREATE TABLE IF NOT EXISTS {table}{LOCAL} {self.on_cluster}\n{body}", *self._distribute(table)]

    def _create_view(self, match: re.Match) -> list[str]:
        view, target, select = match[1], match[2], match[3]
        self._known(target)
        self.views.add(view)
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} {self.on_cluster} TO {target}{LOCAL} AS\n"
                f"{_SOURCE.sub(self._local_source, select)}"]

    def _modify_query(self, match: re.Match) -> list[str]:
        """A view's new query, on every node, reading the local tables as the view's first one did."""
        view, select = match[1], match[2]
        if view not in self.views:
            raise ClusterFormError(f"ALTER TABLE {view} MODIFY QUERY: {view} is not a materialized view created "
                                   "by an earlier migration statement")
        return [f"ALTER TABLE {view} {self.on_cluster} MODIFY QUERY\n{_SOURCE.sub(self._local_source, select)}"]

    def _alter(self, match: re.Match) -> list[str]:
        table, clauses = match[1], match[2]
        self._known(table)
        items = split_top_level(clauses)
        columns = [bool(_COLUMN_CLAUSE.match(item)) for item in items]
        if any(columns) and not all(columns):
            raise ClusterFormError(f"ALTER TABLE {table}: split column changes and other changes into two ALTERs "
                                   "(only column changes apply to its Distributed table too)")
        for item in items:
            added = _ADDED_COLUMN.match(item)
            if added:
                self.columns[table].add(added[1])
        out = [f"ALTER TABLE {table}{LOCAL} {self.on_cluster}\n{self._settings(clauses)}"]
        if table in self.distributed and all(columns):
            out.append(f"ALTER TABLE {table} {self.on_cluster}\n{clauses}")
        return out + self._distribute(table)

    def _insert(self, match: re.Match) -> list[str]:
        sql = match.string
        for name in [match[1], *(m[2] for m in _SOURCE.finditer(sql))]:
            if name in self.columns and name not in self.distributed:
                raise ClusterFormError(f"{sql[:60]!r}... reads or writes {name} before its Distributed table exists "
                                       f"(its sharding key {SHARDING_KEYS[name]} needs columns it lacks)")
        return [sql]  # once, through the Distributed tables: ClickHouse routes the rows by sharding key

    # --- pieces ------------------------------------------------------------------------------------

    def _engine(self, table: str, clause: str) -> str:
        """`ENGINE = XMergeTree(args) ...` as `ENGINE = ReplicatedXMergeTree(path, replica, args) ...`."""
        engine = _ENGINE.match(clause)
        if not engine or not engine[1].endswith("MergeTree") or engine[1].startswith("Replicated"):
            raise ClusterFormError(f"table {table}: the cluster form makes a *MergeTree engine Replicated; "
                                   f"write `ENGINE = <kind>MergeTree` in the migration, not {clause[:40]!r}")
        after = clause[engine.end():]
        arguments = ""
        if after.startswith("("):
            end = _closing(after)
            arguments, after = after[1:end].strip(), after[end + 1:]
        path = "'/clickhouse/tables/{shard}/" + f"{self.database}.{table}'"
        replicated = ", ".join(filter(None, (path, "'{replica}'", arguments)))
        return self._settings(f"ENGINE = Replicated{engine[1]}({replicated}){after}")

    @staticmethod
    def _settings(sql: str) -> str:
        # Replicated tables keep their block hashes for insert deduplication under another setting name.
        return re.sub(r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", sql)

    def _distribute(self, table: str) -> list[str]:
        """The Distributed table, once the local table has every column its sharding key reads."""
        key = SHARDING_KEYS[table]
        if table in self.distributed or not set(_IDENTIFIERS.findall(key)) <= self.columns[table]:
            return []
        self.distributed.add(table)
        return [f"CREATE TABLE IF NOT EXISTS {table} {self.on_cluster} AS {table}{LOCAL}\n"
                f"ENGINE = Distributed('{self.cluster}', '{self.database}', '{table}{LOCAL}', {key})"]

    def _local_source(self, match: re.Match) -> str:
        keyword, name, alias = match[1], match[2], match[3]
        if name not in self.columns:
            return match[0]
        # Keep the table's own name as the alias: views qualify columns with it (system_samples.time).
        return f"{keyword} {name}{LOCAL}{alias or f' AS {name}'}"

    def _known(self, table: str) -> None:
        if table not in self.columns:
            raise ClusterFormError(f"table {table} is not created by an earlier migration statement")
