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
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# A column alias nothing else uses, so the KILL below matches exactly this query.
KEEPALIVE_MARK = "trainmon_keepalive"
# system.numbers never ends; one row per block and sleepEachRow(1) make it wake once a second
# (~0% CPU) and see a KILL within a second. WHERE on the sleep's 0 keeps the result buffer empty.
KEEPALIVE_SQL = (
    f"SELECT number AS {KEEPALIVE_MARK} FROM system.numbers WHERE sleepEachRow(1) "
    "SETTINGS max_block_size = 1, max_threads = 1, max_execution_time = 0"
)
KILL_SQL = f"KILL QUERY WHERE query LIKE 'SELECT number AS {KEEPALIVE_MARK} %' SYNC"

# Talks to our own loopback listener, never through an http_proxy from the environment.
DIRECT_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

LOOPBACK_NETWORKS = "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"

# keep_alive_timeout: at shutdown the engine waits up to 5 s for open connections, then exits 1
# without cleaning up; clients (clickhouse-connect's shared pool) keep idle connections open, so
# idle ones are closed after 1 s (clients reconnect transparently; loopback connects are cheap).
CONFIG_XML = """<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <keep_alive_timeout>1</keep_alive_timeout>
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
    return parser.parse_args(argv)


def write_config(run_dir: Path, http_port: int, tcp_port: int) -> None:
    """clickhouse-local reads config.xml from the current directory; users.xml beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.xml").write_text(CONFIG_XML.format(http_port=http_port, tcp_port=tcp_port))
    (run_dir / "users.xml").write_text(USERS_XML)


def kill_keepalive(http_port: int) -> bool:
    """Ask the engine to end the keep-alive query; False if it does not answer (yet)."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/", data=KILL_SQL.encode())
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


def serve(data: Path, http_port: int, tcp_port: int, run_dir: Path) -> int:
    """Start the engine, wait for SIGTERM/SIGINT, stop it cleanly; the exit status."""
    import chdb  # noqa: F401  (before chdir: importing chdb changes and restores the cwd)

    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, http_port, tcp_port)
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
        kill_keepalive(http_port)
        engine.join(1.0)
    print("clickhouse_server: stopped cleanly ('Query was cancelled' above is the keep-alive query)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = (args.run_dir or args.data.resolve().parent / "run").resolve()
    return serve(args.data, args.http_port, args.tcp_port, run_dir)


if __name__ == "__main__":
    sys.exit(main())
