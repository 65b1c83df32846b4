"""Kafka and ClickHouse in throwaway containers, for test runs on machines with a Docker engine.

tests/conftest.py calls `start_containers()` only when TRAINMON_TEST_CONTAINERS=1; everywhere else the
suite uses the native services and never imports testcontainers. The images, the broker settings and
the ClickHouse users come from docker-compose.yml, so the containers the tests use are the stack
people run with `docker compose up`, never a second copy that drifts from it. Only what must differ
for a throwaway container differs: random host ports, and Kafka's advertised address, which is
known only once the port is mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
KAFKA_SERVICE = "kafka"
CLICKHOUSE_SERVICE = "clickhouse"

NO_DOCKER = "TRAINMON_TEST_CONTAINERS=1 needs a running Docker engine; unset it to use the native services"

KAFKA_PORT = 9092  # PLAINTEXT, for clients: published on a random host port
KAFKA_BROKER_PORT = 9094  # BROKER, for the broker itself: 9092's advertised host port is not reachable inside
KAFKA_START_SCRIPT = "/tmp/trainmon-start.sh"
KAFKA_READY = r"Kafka Server started"
CLICKHOUSE_HTTP_PORT = 8123
CLICKHOUSE_TCP_PORT = 9000
START_TIMEOUT_S = 180
LOCALHOSTS = {"localhost", "127.0.0.1", "::1"}


class ContainersUnavailable(RuntimeError):
    """The containers cannot be started here; the message says why and what to do."""


def compose_services(path: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    """The `services` of docker-compose.yml, parsed (PyYAML)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        raise ValueError(f"{path}: no 'services' mapping")
    return services


def compose_images(path: Path = COMPOSE_FILE) -> dict[str, str]:
    """Image per service, as pinned in docker-compose.yml: the single place tags are written."""
    return {name: str(service["image"]) for name, service in compose_services(path).items()}


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either compose form (mapping, or list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def compose_bind_mounts(service: dict[str, Any], base: Path = ROOT) -> list[tuple[Path, str]]:
    """(host file, container path) of a service's bind mounts (short syntax, `./...` sources)."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith((".", "/")):
            source, target = volume.split(":")[:2]
            mounts.append(((base / source).resolve(), target))
    return mounts


def _check_docker() -> None:
    """Fail at once with the one-line fix, not with a stack trace from deep inside the Docker SDK."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        raise ContainersUnavailable(
            f"{NO_DOCKER} and the testcontainers package (pip install -e '.[test]'): {exc}"
        ) from exc
    try:
        DockerClient().client.ping()
    except Exception as exc:  # DockerException, ConnectionError, PermissionError on the socket...
        raise ContainersUnavailable(f"{NO_DOCKER} ({type(exc).__name__}: {exc})") from exc


def _engine_is_local(container: DockerContainer) -> bool:
    """True when the Docker engine runs on this machine and its ports are reached on loopback."""
    from testcontainers.core.config import ConnectionMode

    client = container.get_docker_client()
    return client.get_connection_mode() == ConnectionMode.docker_host and client.host() in LOCALHOSTS


def _publish(container: DockerContainer, port: int) -> None:
    """Publish `port` on a random host port: on 127.0.0.1 only when the engine is this machine."""
    # docker-py reads ("127.0.0.1", None) as "this address, any free port".
    local = _engine_is_local(container)
    container.ports[str(port)] = ("127.0.0.1", None) if local else None  # type: ignore[assignment]


def _host(container: DockerContainer) -> str:
    """Where the published ports answer; 127.0.0.1 rather than "localhost", which may resolve to ::1 first."""
    return "127.0.0.1" if _engine_is_local(container) else container.get_container_host_ip()


def _ulimits(service: dict[str, Any]) -> list[Any]:
    from docker.types import Ulimit

    limits = []
    for name, value in (service.get("ulimits") or {}).items():
        soft, hard = (value["soft"], value["hard"]) if isinstance(value, dict) else (value, value)
        limits.append(Ulimit(name=name, soft=int(soft), hard=int(hard)))
    return limits


def _start_kafka(service: dict[str, Any]) -> tuple[DockerContainer, str]:
    """The compose broker, with a second listener so the advertised client address can be the mapped port.

    The advertised address must name the host port Docker picks, which exists only after the container
    starts; so the container waits for a start script that exports it (what testcontainers-java does
    for the apache/kafka image), and the script runs the image's own entry point.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    env = compose_environment(service)
    env.pop("KAFKA_ADVERTISED_LISTENERS", None)
    controller = next(item for item in env["KAFKA_LISTENERS"].split(",") if item.startswith("CONTROLLER://"))
    env.update(
        KAFKA_LISTENERS=f"PLAINTEXT://0.0.0.0:{KAFKA_PORT},BROKER://0.0.0.0:{KAFKA_BROKER_PORT},{controller}",
        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        KAFKA_INTER_BROKER_LISTENER_NAME="BROKER",
    )
    container = DockerContainer(str(service["image"]), env=env)
    _publish(container, KAFKA_PORT)
    container.with_command(
        ["sh", "-c", f"while [ ! -f {KAFKA_START_SCRIPT} ]; do sleep 0.1; done; exec bash {KAFKA_START_SCRIPT}"]
    )
    container.start()
    try:
        host = _host(container)
        port = container.get_exposed_port(KAFKA_PORT)
        script = (
            "#!/bin/bash\n"
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://127.0.0.1:{KAFKA_BROKER_PORT}\n"
            "exec /etc/kafka/docker/run\n"
        )
        container.copy_into_container(script.encode(), KAFKA_START_SCRIPT, 0o755)
        LogMessageWaitStrategy(KAFKA_READY).with_startup_timeout(START_TIMEOUT_S).wait_until_ready(container)
    except BaseException:
        container.stop()
        raise
    return container, f"{host}:{port}"


def _start_clickhouse(service: dict[str, Any]) -> tuple[DockerContainer, str]:
    """The compose server: same image, environment, users file (copied in, so a remote engine works too)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    container = DockerContainer(str(service["image"]), env=compose_environment(service))
    _publish(container, CLICKHOUSE_HTTP_PORT)
    _publish(container, CLICKHOUSE_TCP_PORT)
    for source, target in compose_bind_mounts(service):
        container.with_copy_into_container(source, target, 0o644)
    if ulimits := _ulimits(service):
        container.with_kwargs(ulimits=ulimits)
    container.waiting_for(
        HttpWaitStrategy(CLICKHOUSE_HTTP_PORT, "/ping")
        .for_response_predicate(lambda body: body.strip() == "Ok.")
        .with_startup_timeout(START_TIMEOUT_S)
    )
    try:
        container.start()
    except BaseException:
        container.stop()
        raise
    return container, f"http://{_host(container)}:{container.get_exposed_port(CLICKHOUSE_HTTP_PORT)}"


def start_containers() -> tuple[str, str, Callable[[], None]]:
    """Start Kafka and ClickHouse from docker-compose.yml's images: (bootstrap_servers, clickhouse_url, stop)."""
    _check_docker()
    services = compose_services()
    kafka, bootstrap = _start_kafka(services[KAFKA_SERVICE])
    try:
        clickhouse, url = _start_clickhouse(services[CLICKHOUSE_SERVICE])
    except BaseException:
        kafka.stop()
        raise

    def stop() -> None:
        try:
            clickhouse.stop()
        finally:
            kafka.stop()

    return bootstrap, url, stop
