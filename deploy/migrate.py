"""Versioned, idempotent ClickHouse migrations: `trainmon db migrate`.

Each file `clickhouse/migrations/NNNN_name.sql` is applied once, in order, and recorded with its
checksum in `schema_migrations`. Editing an applied file is refused: add a new migration instead.
With `[clickhouse] cluster` set, each statement is applied in its cluster form (Replicated and
Distributed tables, ON CLUSTER: deploy/clickhouse_cluster.py); the files and checksums are the same.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainmon.clickhouse import connect
from trainmon.deploy.clickhouse_cluster import ClusterSchema, on_cluster
from trainmon.errors import TrainmonError
from trainmon.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "clickhouse" / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MigrationError(TrainmonError):
    """A migration file is malformed or was changed after it was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        body = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [part.strip() for part in re.split(r";\s*\n", body + "\n") if part.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        found.append(Migration(int(match[1]), match[2], path, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number")
    return found


_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"""
# On a cluster, inserts (the ledger's rows, a migration's backfill) go through Distributed tables:
# wait until every shard has its rows, rather than queue them; ignored by plain tables.
WRITE_SETTINGS = {"distributed_foreground_insert": 1}


def migrate(
    settings: Settings, progress: Callable[[str], None] = print, directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Create the database if needed and apply what is missing; returns what was applied."""
    database = settings.clickhouse_database
    if not _IDENTIFIER.match(database):
        raise MigrationError(f"clickhouse.database {database!r} must be a plain identifier")
    migrations = discover(directory)
    cluster = settings.clickhouse_cluster
    where = f" {on_cluster(cluster)}" if cluster else ""
    # Every form is made before anything runs, so a statement without a cluster form changes nothing.
    ledger, *forms = _forms([_LEDGER], *(m.statements for m in migrations), cluster=cluster, database=database)
    connect(settings, database="default").command(f"CREATE DATABASE IF NOT EXISTS {database}{where}")
    client = connect(settings)
    for statement in ledger:
        client.command(statement)
    applied = dict(client.query("SELECT version, checksum FROM schema_migrations FINAL").result_rows)
    done = []
    for migration, statements in zip(migrations, forms):
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"{migration.path.name} changed after it was applied to {database}; "
                    f"restore it and add a new migration for the change"
                )
            continue
        progress(f"db: applying {migration.path.name} ({len(statements)} statements{where})")
        for statement in statements:
            client.command(statement, settings=WRITE_SETTINGS)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
            settings=WRITE_SETTINGS,
        )
        done.append(migration)
    latest = max((m.version for m in migrations), default=0)
    progress(f"db: {database} at version {latest} ({len(done)} applied now)")
    return done


def _forms(*statements: list[str], cluster: str, database: str) -> list[list[str]]:
    """Each list of statements as applied: as written on one node; on a cluster, in cluster form, made in
    order from the first (a migration's cluster form depends on the ones before it, applied or not)."""
    if not cluster:
        return list(statements)
    schema = ClusterSchema(cluster, database)
    return [schema.statements(part) for part in statements]


def applied_versions(settings: Settings) -> dict[int, str]:
    client = connect(settings)
    return dict(client.query("SELECT version, name FROM schema_migrations FINAL ORDER BY version").result_rows)
