"""The local ClickHouse server: the engine from the `chdb-core` wheel serving HTTP and TCP on loopback.

clickhouse-local (what chdb embeds) only keeps its listeners open while a query runs, so this process
issues `SYSTEM START LISTEN` followed by a keep-alive query that sleeps one second per row forever, in
a background thread. SIGTERM or SIGINT ends that query with `KILL QUERY ... SYNC` over HTTP, so the
engine shuts down cleanly (parts flushed, data-directory lock released), and the process exits 0.

Run by `trainmon.deploy.services.clickhouse.ClickHouseService`; standalone:
    TZ=UTC python -m trainmon.deploy.services.clickhouse_server --data DIR --http-port 8123 --tcp-port 9000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainmon.deploy.services.tls_front import TlsFront

# A column alias nothing else uses, so the KILL below matches exactly this query.
KEEPALIVE_MARK = "trainmon_keepalive"
# system.numbers never ends; one row per block and sleepEachRow(1) make it wake once a second
# and see a KILL within a second. WHERE on the sleep's 0 keeps the result buffer empty. The thread
# that runs the query (chdb's, in this process) polls it for progress every `interactive_delay`:
# every 0.1 s by default, 0.22 % of a core with nothing to do; every 2 s, 0.03 % (docs/benchmarks.md,
# cost at rest), and a stop still takes about 2 s.
KEEPALIVE_SQL = (
    f"SELECT number AS {KEEPALIVE_MARK} FROM system.numbers WHERE sleepEachRow(1) "
    "SETTINGS max_block_size = 1, max_threads = 1, max_execution_time = 0, interactive_delay = 2000000"
)
KILL_SQL = f"KILL QUERY WHERE query LIKE 'SELECT number AS {KEEPALIVE_MARK} %' SYNC"

# Talks to our own loopback listener, never through an http_proxy from the environment.
DIRECT_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FRAGMENT_PREFIX = "fragment-"  # config.d files written from --config-fragment

LOOPBACK_NETWORKS = "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"

# keep_alive_timeout: at shutdown the engine waits up to 5 s for open connections, then exits 1
# without cleaning up; clients (clickhouse-connect's shared pool) keep idle connections open, so
# idle ones are closed after 1 s (clients reconnect transparently; loopback connects are cheap).
# memory_worker_period_ms: how often the engine corrects its memory tracker from the allocator's
# figures; every 100 ms by default, 0.28 % of a core with nothing to do here, a third of the idle
# engine's cost (0.77 %); once a second, 0.02 % (docs/benchmarks.md, cost at rest).
# background_processing_pool_*: when a table's background task (merge selection, clean-up) looks again
# after finding nothing to do. By default 0.1 s x 1.1 per idle look, plus up to 1 s at random, and every
# insert starts it over: with a flush every 2 s the busy tables looked about twice a second each, 0.66 %
# of a core at rest in the schedule pool's threads (bench/idle.py, per thread). 1 s x 2 per idle look:
# 0.20 %. Merges wait no longer for it: an insert, and a merge that ends, still start a look at once.
CONFIG_XML = """<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <keep_alive_timeout>1</keep_alive_timeout>
    <memory_worker_period_ms>1000</memory_worker_period_ms>
    <background_processing_pool_thread_sleep_seconds_if_nothing_to_do>1</background_processing_pool_thread_sleep_seconds_if_nothing_to_do>
    <background_processing_pool_task_sleep_seconds_when_no_work_multiplier>2</background_processing_pool_task_sleep_seconds_when_no_work_multiplier>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <users_config>users.xml</users_config>
</clickhouse>
"""

USERS_XML = f"""<clickhouse>
    <profiles>
        <default>
            <cancel_http_readonly_queries_on_client_close>1</cancel_http_readonly_queries_on_client_close>
        </default>
        <readonly>
            <readonly>1</readonly>
            <cancel_http_readonly_queries_on_client_close>1</cancel_http_readonly_queries_on_client_close>
        </readonly>
    </profiles>
    <users>
        <!-- Writers (processors, migrations): no password, loopback only. -->
        <default>
            <password></password>
            {LOOPBACK_NETWORKS}
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <!-- The dashboard: read-only, loopback only. -->
        <reader>
            <password></password>
            {LOOPBACK_NETWORKS}
            <profile>readonly</profile>
            <quota>default</quota>
        </reader>
    </users>
    <quotas>
        <default></default>
    </quotas>
</clickhouse>
"""

# With --secrets (the local stack's [services] secure): every user but the engine's own has a password
# (from <secrets>/clickhouse-<user>.password; only its SHA-256 is written here) and only the grants
# it needs, on the configured database alone. Quotas and grants are ClickHouse's own; per-team readers
# with row policies go in users.d/*.xml beside this file (docs/services.md).
SECURE_USERS_XML = """<clickhouse>
    <profiles>
        <default>
            <cancel_http_readonly_queries_on_client_close>1</cancel_http_readonly_queries_on_client_close>
        </default>
        <readonly>
            <readonly>1</readonly>
            <cancel_http_readonly_queries_on_client_close>1</cancel_http_readonly_queries_on_client_close>
            <max_execution_time>{reader_max_execution_s}</max_execution_time>
            <max_memory_usage>{reader_max_memory_bytes}</max_memory_usage>
        </readonly>
    </profiles>
    <users>
        <!-- The engine's own login: chdb signs its local session in as `default` with an empty password
             (hard-coded, a password makes the engine fail with AUTHENTICATION_FAILED), so `default` keeps
             no password and may only open the listeners and run the keep-alive query: no data. -->
        <default>
            <password></password>
            {loopback}
            <profile>default</profile>
            <quota>default</quota>
            <grants>
                <query>GRANT SYSTEM LISTEN ON *.*</query>
                <query>GRANT SELECT ON system.numbers</query>
            </grants>
        </default>
        <!-- The processors' sink: inserts, and reads its offset watermarks once the inserts a previous
             owner left running (system.processes) have ended. -->
        <{writer}>
            <password_sha256_hex>{writer_sha256}</password_sha256_hex>
            {loopback}
            <profile>default</profile>
            <quota>default</quota>
            <grants>
                <query>GRANT SELECT, INSERT ON {database}.*</query>
                <query>GRANT SELECT ON system.processes</query>
            </grants>
        </{writer}>
        <!-- `trainmon db migrate`: the database, its tables and views (the views' definer), backfills. -->
        <{migrator}>
            <password_sha256_hex>{migrator_sha256}</password_sha256_hex>
            {loopback}
            <profile>default</profile>
            <quota>default</quota>
            <grants>
                <query>GRANT CREATE DATABASE, CREATE TABLE, CREATE VIEW, ALTER TABLE, ALTER VIEW ON {database}.*</query>
                <query>GRANT DROP TABLE, DROP VIEW, SELECT, INSERT, OPTIMIZE, SHOW ON {database}.*</query>
                {engine_grants}
            </grants>
        </{migrator}>
        <!-- The dashboard: SELECT only, read-only profile with time and memory limits, a quota. -->
        <{reader}>
            <password_sha256_hex>{reader_sha256}</password_sha256_hex>
            {loopback}
            <profile>readonly</profile>
            <quota>reader</quota>
            <grants><query>GRANT SELECT ON {database}.*</query></grants>
        </{reader}>
        <!-- This server process, to end the keep-alive query at shutdown: the engine runs it as no user,
             so `default` may not kill it, and KILL QUERY reads system.processes (every user's queries). -->
        <{control}>
            <password_sha256_hex>{control_sha256}</password_sha256_hex>
            {loopback}
            <profile>default</profile>
            <quota>default</quota>
            <grants>
                <query>GRANT KILL QUERY ON *.*</query>
                <query>GRANT SELECT ON system.processes</query>
            </grants>
        </{control}>
    </users>
    <quotas>
        <default></default>
        <!-- Enforced by a ClickHouse server; the embedded engine counts no queries that come through its
             listeners (measured on chdb-core 26.9: quota_usage stays 0), so it does not enforce it. -->
        <reader>
            <interval>
                <duration>60</duration>
                <queries>1200</queries>
                <execution_time>600</execution_time>
            </interval>
        </reader>
    </quotas>
</clickhouse>
"""
READER_MAX_EXECUTION_S = 30  # dashboard queries take well under a second; a runaway one is stopped
READER_MAX_MEMORY_BYTES = 2 * 2**30
# Creating a table needs a grant on its engine (clickhouse-local turns table_engines_require_grant on).
MIGRATION_ENGINES = ("MergeTree", "ReplacingMergeTree", "AggregatingMergeTree")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def secure_users(secrets: Path, database: str) -> tuple[str, dict[str, str]]:
    """users.xml of the secure stack (with the SHA-256 of each password file under `secrets`), and the
    HTTP headers that log this process in as the control user."""
    from trainmon.clickhouse import LOCAL_CONTROL, LOCAL_MIGRATOR, LOCAL_READER, LOCAL_WRITER, local_password_file

    if not _IDENTIFIER.match(database):
        raise SystemExit(f"clickhouse_server: --database {database!r} must be a plain identifier (letters, digits, _)")
    roles = {"writer": LOCAL_WRITER, "migrator": LOCAL_MIGRATOR, "reader": LOCAL_READER, "control": LOCAL_CONTROL}
    passwords = {}
    for role, user in roles.items():
        path = local_password_file(secrets, user)
        if not path.is_file():
            raise SystemExit(f"clickhouse_server: {path} is missing; `trainmon services start clickhouse` makes it")
        passwords[role] = path.read_text().strip()
    digests = {f"{role}_sha256": hashlib.sha256(value.encode()).hexdigest() for role, value in passwords.items()}
    engine_grants = "".join(f"<query>GRANT TABLE ENGINE ON {engine}</query>" for engine in MIGRATION_ENGINES)
    users = SECURE_USERS_XML.format(
        loopback=LOOPBACK_NETWORKS, database=database, engine_grants=engine_grants,
        reader_max_execution_s=READER_MAX_EXECUTION_S, reader_max_memory_bytes=READER_MAX_MEMORY_BYTES,
        **roles, **digests)
    return users, {"X-ClickHouse-User": LOCAL_CONTROL, "X-ClickHouse-Key": passwords["control"]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainmon.deploy.services.clickhouse_server",
        description="Serve the chdb-core ClickHouse engine over HTTP and TCP on 127.0.0.1 until SIGTERM.",
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="data directory (created if missing; one server per directory)"
    )
    parser.add_argument("--http-port", type=int, default=8123, help="HTTP interface port on 127.0.0.1 (default 8123)")
    parser.add_argument(
        "--tcp-port", type=int, default=9000, help="native TCP interface port on 127.0.0.1 (default 9000)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where config.xml and users.xml are written (default: 'run' beside the data directory)",
    )
    parser.add_argument(
        "--secrets",
        type=Path,
        default=None,
        metavar="DIR",
        help="the secure stack: passwords from DIR/clickhouse-<user>.password and least-privilege grants "
        "(default: the open loopback users)",
    )
    parser.add_argument("--database", default="trainmon", help="the database --secrets grants on (default trainmon)")
    parser.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                        help="serve HTTPS on --http-port with this certificate (and --tls-key): the engine itself "
                        "then listens on an internal loopback port behind a TLS front (it has no HTTPS listener)")
    parser.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--config-fragment",
        type=Path,
        action="append",
        default=[],
        metavar="XML",
        help="a <clickhouse> XML file merged into config.xml, e.g. remote_servers and macros for a cluster "
        "(repeatable; copied into <run-dir>/config.d)",
    )
    return parser.parse_args(argv)


def write_config(run_dir: Path, http_port: int, tcp_port: int, users: str = USERS_XML) -> None:
    """clickhouse-local reads config.xml from the current directory; users.xml beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.xml").write_text(CONFIG_XML.format(http_port=http_port, tcp_port=tcp_port))
    (run_dir / "users.xml").write_text(users)


def write_fragments(run_dir: Path, fragments: Sequence[Path]) -> None:
    """The engine merges config.d/*.xml into config.xml; fragments of an earlier start are removed first."""
    config_d = run_dir / "config.d"
    config_d.mkdir(parents=True, exist_ok=True)
    for stale in config_d.glob(f"{FRAGMENT_PREFIX}*.xml"):
        stale.unlink()
    for index, fragment in enumerate(fragments):
        if not fragment.is_file():
            raise SystemExit(f"clickhouse_server: --config-fragment {fragment}: no such file; give an XML file's path")
        (config_d / f"{FRAGMENT_PREFIX}{index}-{fragment.stem}.xml").write_text(fragment.read_text())


def kill_keepalive(http_port: int, login: Mapping[str, str] | None = None) -> bool:
    """Ask the engine to end the keep-alive query, as the user of the `login` headers if given; False if it
    does not answer (yet)."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/", data=KILL_SQL.encode(),
                                     headers=dict(login or {}))
    try:
        with DIRECT_HTTP.open(request, timeout=5) as response:
            response.read()
    except (urllib.error.URLError, OSError):
        return False
    return True


class Engine(threading.Thread):
    """Runs the listening query until it is killed.

    `error` holds what chdb returned if the query ended by itself; the engine prints most reasons
    (port taken, data directory locked) to stderr instead.
    """

    def __init__(self, data: Path) -> None:
        super().__init__(name="clickhouse-engine", daemon=True)
        self.data = data
        self.error = ""

    def run(self) -> None:
        import chdb

        sql = f"SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; {KEEPALIVE_SQL}"
        # The format given here becomes the HTTP interface's default output format, and clients
        # (clickhouse-connect's handshake) expect ClickHouse's usual TabSeparated there.
        try:
            result = chdb._chdb.query(sql, "TabSeparated", path=str(self.data))  # type: ignore[attr-defined]
        except Exception as exc:  # the engine reports start-up failures (port, lock) this way
            self.error = str(exc) or type(exc).__name__
            return
        if result.has_error():
            self.error = result.error_message()


def free_port() -> int:
    """A loopback port nothing listens on now, for the engine behind the TLS front."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(data: Path, http_port: int, tcp_port: int, run_dir: Path, users: str = USERS_XML,
          login: Mapping[str, str] | None = None, tls: tuple[Path, Path] | None = None) -> int:
    """Start the engine, wait for SIGTERM/SIGINT, stop it cleanly; the exit status. With `tls` (cert,
    key), HTTPS on http_port in front of the engine's HTTP on an internal port."""
    import chdb  # noqa: F401  (before chdir: importing chdb changes and restores the cwd)

    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    front = None
    if tls is not None:
        engine_port = free_port()
        try:
            front = TlsFront(tls[0].resolve(), tls[1].resolve(), engine_port, port=http_port)
        except OSError as exc:
            print(f"clickhouse_server: cannot serve HTTPS on 127.0.0.1:{http_port}: {exc}", file=sys.stderr, flush=True)
            return 1
        http_port = engine_port
    write_config(run_dir, http_port, tcp_port, users)
    os.chdir(run_dir)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    engine = Engine(data)
    engine.start()
    while engine.is_alive() and not stop.wait(0.5):
        pass
    if not stop.is_set():
        reason = engine.error or "its reason (e.g. port taken, data directory locked) is on the line above"
        print(f"clickhouse_server: the engine stopped by itself: {reason}", file=sys.stderr, flush=True)
        return 1
    while engine.is_alive():  # retried: a signal during start-up may come before the listener
        kill_keepalive(http_port, login)
        engine.join(1.0)
    if front is not None:
        front.close()
    print("clickhouse_server: stopped cleanly ('Query was cancelled' above is the keep-alive query)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = (args.run_dir or args.data.resolve().parent / "run").resolve()
    write_fragments(run_dir, args.config_fragment)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("clickhouse_server: --tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.secrets is None:
        return serve(args.data, args.http_port, args.tcp_port, run_dir, tls=tls)
    users, login = secure_users(args.secrets, args.database)
    return serve(args.data, args.http_port, args.tcp_port, run_dir, users, login, tls)


if __name__ == "__main__":
    sys.exit(main())
