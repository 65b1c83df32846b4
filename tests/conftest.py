"""Session fixtures: the real Kafka and ClickHouse for integration tests.

Where they come from, first match wins:
- TRAINMON_TEST_KAFKA and TRAINMON_TEST_CLICKHOUSE_URL: services already running elsewhere;
- TRAINMON_TEST_CONTAINERS=1: the official images via testcontainers (needs a Docker engine);
- otherwise the native services, started here under .trainmon/test on test ports and stopped at the end
  (only if this session started them). Under pytest-xdist the first worker to need them starts them
  (a lock keeps the others waiting) and the controller stops them once every worker is done.
Each session gets its own topic prefix and database, so runs never see each other's data.
Under CI=true a service that cannot start fails the run; elsewhere its tests are skipped with the reason.
Tests that start services of their own bind fixed ports in 23000-23999, below Linux's ephemeral range
(32768-60999), so an outgoing connection elsewhere in the suite can never be holding one of them.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from trainmon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_PORTS = {
    "services_kafka_port": int(os.environ.get("TRAINMON_TEST_KAFKA_PORT", "19092")),
    "services_kafka_controller_port": int(os.environ.get("TRAINMON_TEST_KAFKA_CONTROLLER_PORT", "19093")),
    "services_clickhouse_http_port": int(os.environ.get("TRAINMON_TEST_CLICKHOUSE_HTTP_PORT", "18123")),
    "services_clickhouse_tcp_port": int(os.environ.get("TRAINMON_TEST_CLICKHOUSE_TCP_PORT", "19000")),
    "services_alertmanager_port": int(os.environ.get("TRAINMON_TEST_ALERTMANAGER_PORT", "19094")),
}


TEST_HOME = ROOT / ".trainmon" / "test"
STARTED_BY_WORKERS = ROOT / ".trainmon" / "test-started-by-workers"  # names, for the controller to stop
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... in a pytest-xdist worker


# The integration test files that neither run workers under load nor time the stack (dashboards, schema,
# queries, security, services of their own). Under `make test` (`-n 2 --dist loadfile`) they run beside
# the rest, a file at a time (a file's services and fixed ports are set up once); every other file, a new
# one included, is in the timed lane: one work unit, one test at a time, as the whole suite ran before.
BESIDE_THE_TIMED_LANE = frozenset({
    "test_alertmanager.py", "test_clickhouse_cluster.py", "test_clickhouse_schema.py",
    "test_clickhouse_security.py", "test_dashboard_browser.py", "test_dashboard_login.py",
    "test_dashboard_pages.py", "test_history.py", "test_importers.py", "test_kafka_secure.py",
    "test_queries.py", "test_services.py"})


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: a run without it needs no scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """--dist loadfile with the timed lane's files as one file (xdist_group marks are lost under pytest 9)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Lanes(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return path if Path(path).name in BESIDE_THE_TIMED_LANE else "the timed lane"
    return Lanes(config, log)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and a required service is unavailable: {reason}", pytrace=False)
    pytest.skip(f"service unavailable: {reason}")


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """Settings pointing at a live Kafka and ClickHouse, with a fresh topic prefix and database."""
    session = uuid.uuid4().hex[:8]
    base = Settings(
        services_home=str(TEST_HOME),
        kafka_topic_prefix=f"test-{session}.",
        kafka_partitions=4,
        clickhouse_database=f"trainmon_test_{session}",
        **TEST_PORTS,
    )
    stop = None
    if os.environ.get("TRAINMON_TEST_KAFKA") and os.environ.get("TRAINMON_TEST_CLICKHOUSE_URL"):
        settings = base.replace(kafka_bootstrap_servers=os.environ["TRAINMON_TEST_KAFKA"],
                                clickhouse_url=os.environ["TRAINMON_TEST_CLICKHOUSE_URL"])
    elif os.environ.get("TRAINMON_TEST_CONTAINERS") == "1":
        from tests.containers import start_containers

        bootstrap, url, stop = start_containers()
        settings = base.replace(kafka_bootstrap_servers=bootstrap, clickhouse_url=url)
    else:
        from trainmon.deploy import services

        STARTED_BY_WORKERS.parent.mkdir(parents=True, exist_ok=True)
        with open(STARTED_BY_WORKERS.parent / "test.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time: xdist workers share the services
            already = {s.name for s in services.status_all(base) if s.pid is not None}
            try:
                services.start_all(base)
            except Exception as exc:  # ServiceError names the fix (Java, Maven, port)
                _unavailable(str(exc))
            started = [name for name in services.SERVICES if name not in already]
            if XDIST_WORKER and started:  # the other workers may still use them: the controller stops them
                with open(STARTED_BY_WORKERS, "a") as out:
                    out.write("".join(f"{name}\n" for name in started))
            elif started:
                stop = lambda: services.stop_all(base, started)  # noqa: E731
        settings = base
    try:
        yield settings
    finally:
        _drop_session_data(settings)
        if stop is not None:
            stop()


def _drop_session_data(settings: Settings) -> None:
    """This session's database and topics (prefix-named), so repeated runs do not pile up data."""
    from confluent_kafka.admin import AdminClient

    from trainmon.clickhouse import connect

    try:
        connect(settings, database="default").command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.kafka_topic_prefix)]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                future.result(timeout=30)
    except Exception as exc:  # cleanup must not hide the tests' own outcome
        print(f"conftest: could not drop session data: {exc}")


@pytest.fixture(scope="session")
def migrated(stack: Settings) -> Settings:
    """The stack with this session's database migrated and topics created."""
    from trainmon.deploy.migrate import migrate
    from trainmon.deploy.topics import create_topics

    migrate(stack, progress=lambda message: None)
    create_topics(stack, progress=lambda message: None)
    return stack


def with_own_topics(settings: Settings) -> Settings:
    """The stack with fresh topics of its own (under the session prefix, so the session drops them):
    for tests whose workers read topics from the start, or that put bad bytes on them."""
    from trainmon.deploy.topics import create_topics

    own = settings.replace(kafka_topic_prefix=f"{settings.kafka_topic_prefix}{uuid.uuid4().hex[:6]}.")
    create_topics(own, progress=lambda message: None)
    return own


@pytest.fixture
def own_topics(migrated: Settings) -> Settings:
    return with_own_topics(migrated)


@pytest.fixture
def clickhouse(migrated: Settings):
    from trainmon.clickhouse import connect

    client = connect(migrated)
    yield client
    client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In the xdist controller (or a plain run), once every worker is done: stop what workers started."""
    if XDIST_WORKER or not STARTED_BY_WORKERS.exists():
        return
    from trainmon.deploy import services

    names = set(STARTED_BY_WORKERS.read_text().split())
    STARTED_BY_WORKERS.unlink()
    services.stop_all(Settings(services_home=str(TEST_HOME), **TEST_PORTS),
                      [name for name in services.SERVICES if name in names])
