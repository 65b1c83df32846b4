"""The natively started Kafka and ClickHouse: idempotent start, health, clean stop, port conflicts.

Each test uses its own home directory and free loopback ports, so it never touches a developer's
running stack. The Kafka jars come from the per-user cache (resolved once with Maven).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import clickhouse_connect
import psutil
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from trainmon.deploy.services import SERVICES, ServiceError, services, start_all, status_all, stop_all
from trainmon.deploy.services.alertmanager import AlertmanagerService
from trainmon.deploy.services.base import pid_alive
from trainmon.deploy.services.clickhouse import ClickHouseService
from trainmon.deploy.services.kafka import KafkaService
from trainmon.settings import Settings

pytestmark = pytest.mark.integration


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together while choosing, so none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def local_settings(home: Path) -> Settings:
    kafka, controller, http, tcp, alertmanager = free_ports(5)
    return Settings(
        services_home=str(home),
        services_kafka_port=kafka,
        services_kafka_controller_port=controller,
        services_clickhouse_http_port=http,
        services_clickhouse_tcp_port=tcp,
        services_alertmanager_port=alertmanager,
    )


def processes_with(*needles: str) -> list[int]:
    """PIDs of processes whose command line contains every needle."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if all(needle in cmdline for needle in needles):
            found.append(proc.info["pid"])
    return found


def service_processes(settings: Settings) -> dict[str, list[int]]:
    kafka = KafkaService(settings)
    clickhouse = ClickHouseService(settings)
    return {
        "kafka": processes_with("kafka.Kafka", str(kafka.properties)),
        "clickhouse": processes_with("trainmon.deploy.services.clickhouse_server", str(clickhouse.data_dir)),
        "alertmanager": processes_with("--config.file=" + str(AlertmanagerService(settings).config_file)),
    }


def quiet(message: str) -> None:
    print(message)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = local_settings(tmp_path / "home")
    yield settings
    stop_all(settings, progress=quiet)  # whatever happened in the test, leave no process behind


def test_start_is_idempotent_and_stop_leaves_nothing(settings: Settings) -> None:
    first = start_all(settings, progress=quiet)
    assert [s.name for s in first] == ["kafka", "clickhouse", "alertmanager"]
    assert all(s.healthy and s.state == "healthy" for s in first), first
    pids = {s.name: s.pid for s in first if s.pid is not None}

    again = start_all(settings, progress=quiet)
    assert {s.name: s.pid for s in again} == pids
    assert service_processes(settings) == {name: [pid] for name, pid in pids.items()}
    for service in services(settings):
        assert int(service.pidfile.read_text()) == pids[service.name]

    statuses = {s.name: s for s in status_all(settings)}
    assert statuses["kafka"].detail.startswith("1 broker")
    assert statuses["clickhouse"].detail.startswith("ClickHouse 26.")
    assert statuses["alertmanager"].detail.startswith("Alertmanager 0.25")
    assert all(s.healthy for s in statuses.values())

    stopped = stop_all(settings, progress=quiet)
    assert [s.name for s in stopped] == ["alertmanager", "clickhouse", "kafka"]
    assert all(s.state == "stopped" for s in stopped)
    assert all(s.state == "stopped" for s in status_all(settings))
    assert not any(pid_alive(pid) for pid in pids.values())
    assert service_processes(settings) == {"kafka": [], "clickhouse": [], "alertmanager": []}


def test_clickhouse_keeps_data_across_restart_and_reader_is_read_only(settings: Settings) -> None:
    start_all(settings, names=["clickhouse"], progress=quiet)
    client = clickhouse_connect.get_client(host="127.0.0.1", port=settings.services_clickhouse_http_port)
    client.command("CREATE TABLE kept (id UInt32) ENGINE = MergeTree ORDER BY id")
    client.insert("kept", [[1], [2], [3]], column_names=["id"])

    stop_all(settings, names=["clickhouse"], progress=quiet)
    # Clean even with the client's idle keep-alive connection open (the engine would exit 1 after 5 s).
    assert "stopped cleanly" in ClickHouseService(settings).logfile.read_text()
    start_all(settings, names=["clickhouse"], progress=quiet)

    reader = clickhouse_connect.get_client(
        host="127.0.0.1", port=settings.services_clickhouse_http_port, username="reader"
    )
    assert reader.query("SELECT count(), sum(id) FROM kept").result_rows == [(3, 6)]
    with pytest.raises(DatabaseError, match="readonly"):
        reader.command("INSERT INTO kept VALUES (4)")


@pytest.mark.parametrize(
    "service, port_field",
    [
        ("kafka", "services_kafka_port"),
        ("kafka", "services_kafka_controller_port"),
        ("clickhouse", "services_clickhouse_http_port"),
        ("clickhouse", "services_clickhouse_tcp_port"),
        ("alertmanager", "services_alertmanager_port"),
    ],
)
def test_taken_port_is_named(settings: Settings, service: str, port_field: str) -> None:
    port = getattr(settings, port_field)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServiceError, match=rf"\bport {port}\b"):
            SERVICES[service](settings).start(progress=quiet)
    assert SERVICES[service](settings).pid() is None


def test_unknown_service_is_refused(settings: Settings) -> None:
    with pytest.raises(ServiceError, match="unknown service zookeeper"):
        start_all(settings, names=["zookeeper"], progress=quiet)
