"""docker-compose.yml describes the same stack as `trainmon services start`, and stays that way.

No Docker engine runs on the development machines, so the compose file and tests/containers.py are
never started here; these checks read their structure instead: pinned images that match the native
versions, ports on 127.0.0.1 that equal trainmon's defaults, the native broker settings, healthchecks,
and the ClickHouse users file.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import yaml

from trainmon.deploy.services.kafka import KafkaService
from trainmon.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

# The settings the native broker runs with (deploy/services/kafka.py) that the image must share; the
# listener, quorum and log-dir keys differ on purpose (container addresses) and are checked apart.
SHARED_BROKER_KEYS = (
    "process.roles", "node.id", "controller.listener.names", "inter.broker.listener.name",
    "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr", "group.initial.rebalance.delay.ms", "auto.create.topics.enable",
)
NATIVE_BROKER = {key: KafkaService(Settings()).broker_settings()[key] for key in SHARED_BROKER_KEYS}
# Environment variables the apache/kafka image passes to the JVM rather than into server.properties.
NOT_BROKER_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS",
                         "KAFKA_LOG4J_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_VERSION"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def broker_properties(env: dict[str, str]) -> dict[str, str]:
    """server.properties as the apache/kafka image renders it from KAFKA_* variables.

    KAFKA_FOO_BAR -> foo.bar; a double underscore stands for '_' and a triple one for '-'.
    """
    properties = {}
    for key, value in env.items():
        if key.startswith("KAFKA_") and key not in NOT_BROKER_PROPERTIES:
            name = key.removeprefix("KAFKA_").lower().replace("_", ".").replace("...", "-").replace("..", "_")
            properties[name] = value
    return properties


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every published port, short or long syntax."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result.append((str(port.get("host_ip", "")), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        assert len(parts) == 3, f"{port!r}: publish as HOST_IP:HOST_PORT:CONTAINER_PORT"
        result.append((parts[0], int(parts[1]), int(parts[2])))
    return result


def listener_ports(listeners: str) -> dict[str, int]:
    return {item.split("://")[0]: int(item.rsplit(":", 1)[1]) for item in listeners.split(",")}


def load_containers_module() -> ModuleType:
    """tests/containers.py by path, so this works whatever pytest put on sys.path."""
    spec = importlib.util.spec_from_file_location("trainmon_test_containers", ROOT / "tests" / "containers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chdb_pin() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["optional-dependencies"]["server"]:
        if match := re.fullmatch(r"chdb-core==(\d+\.\d+\.\d+)", requirement.replace(" ", "")):
            return match.group(1)
    raise AssertionError("pyproject.toml: chdb-core is not pinned with == in [project.optional-dependencies] server")


def users_file(service: dict[str, Any]) -> Path:
    for volume in service.get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        if target == "/etc/clickhouse-server/users.xml":
            return (COMPOSE.parent / source).resolve()
    raise AssertionError("clickhouse: no users.xml mounted at /etc/clickhouse-server/users.xml")


def users_config(root: ET.Element) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(profiles, users) of a ClickHouse users file, each as name -> {setting: value}; networks left out."""
    def children(tag: str) -> list[ET.Element]:
        section = root.find(tag)
        return [] if section is None else list(section)

    profiles = {p.tag: {s.tag: (s.text or "").strip() for s in p} for p in children("profiles")}
    users = {u.tag: {s.tag: (s.text or "").strip() for s in u if s.tag != "networks"} for u in children("users")}
    return profiles, users


# --- services and images ------------------------------------------------------------------------------


def test_both_services_exist(services):
    assert {"kafka", "clickhouse"} <= set(services)


@pytest.mark.parametrize("name", ["kafka", "clickhouse"])
def test_images_are_pinned(services, name):
    image = services[name]["image"]
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, f"{name}: {image!r} has no tag"
    assert tag != "latest" and re.match(r"\d+\.\d+", tag), f"{name}: {image!r} is not pinned to a version"


def test_images_are_the_official_ones(services):
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")


def test_kafka_image_is_the_native_kafka_version(services):
    assert services["kafka"]["image"] == f"apache/kafka:{Settings().services_kafka_version}"


def test_clickhouse_image_is_the_engine_version_of_chdb_core(services):
    tag = services["clickhouse"]["image"].rpartition(":")[2]
    major_minor = ".".join(chdb_pin().split(".")[:2])
    assert tag == major_minor or tag.startswith(major_minor + "."), (tag, chdb_pin())


# --- ports --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kafka", "clickhouse"])
def test_ports_are_published_on_loopback_only(services, name):
    ports = published(services[name])
    assert ports, f"{name}: publishes no port"
    for host_ip, host_port, _ in ports:
        assert host_ip == "127.0.0.1", f"{name}: port {host_port} published on {host_ip or 'all interfaces'}"


def test_host_ports_are_trainmons_defaults(services):
    settings = Settings()
    assert {(h, c) for _, h, c in published(services["kafka"])} == {(settings.services_kafka_port, 9092)}
    assert {(h, c) for _, h, c in published(services["clickhouse"])} == {
        (settings.services_clickhouse_http_port, 8123),
        (settings.services_clickhouse_tcp_port, 9000),
    }
    assert settings.bootstrap_servers == f"127.0.0.1:{settings.services_kafka_port}"
    assert settings.clickhouse == f"http://127.0.0.1:{settings.services_clickhouse_http_port}"


def test_kafka_advertises_the_published_address(services):
    props = broker_properties(environment(services["kafka"]))
    (host_ip, host_port, container_port), = published(services["kafka"])
    assert props["advertised.listeners"] == f"PLAINTEXT://{host_ip}:{host_port}"
    assert listener_ports(props["listeners"])["PLAINTEXT"] == container_port == host_port


# --- Kafka: the native broker's settings ---------------------------------------------------------------


def test_kafka_env_mirrors_the_native_broker(services):
    props = broker_properties(environment(services["kafka"]))
    mismatched = {key: (props.get(key), value) for key, value in NATIVE_BROKER.items() if props.get(key) != value}
    assert not mismatched, f"compose vs native (compose value, native value): {mismatched}"


def test_kafka_runs_kraft_combined_with_its_own_quorum(services):
    env = environment(services["kafka"])
    props = broker_properties(env)
    ports = listener_ports(props["listeners"])
    assert set(ports) == {"PLAINTEXT", "CONTROLLER"}
    assert ports["CONTROLLER"] == Settings().services_kafka_controller_port
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:{ports['CONTROLLER']}"
    assert set(props["listener.security.protocol.map"].split(",")) == {"PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID: a base64 UUID (kafka-storage random-uuid)"


# --- data, health ------------------------------------------------------------------------------------


def test_data_lives_in_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    targets = {
        "kafka": environment(services["kafka"])["KAFKA_LOG_DIRS"],
        "clickhouse": "/var/lib/clickhouse",
    }
    for name, target in targets.items():
        named = [v.split(":")[1] for v in services[name]["volumes"] if v.split(":")[0] in declared]
        assert target in named, f"{name}: {target} is not on a named volume"


@pytest.mark.parametrize("name", ["kafka", "clickhouse"])
def test_healthchecks_exist(services, name):
    test = services[name].get("healthcheck", {}).get("test")
    assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: no healthcheck"


def test_clickhouse_healthcheck_pings(services):
    assert any("/ping" in part for part in services["clickhouse"]["healthcheck"]["test"])


# --- ClickHouse users ------------------------------------------------------------------------------------


def test_clickhouse_keeps_the_mounted_users(services):
    # Without it the image's entrypoint limits `default` to the container's loopback.
    assert environment(services["clickhouse"]).get("CLICKHOUSE_SKIP_USER_SETUP") == "1"


def test_users_file_has_default_and_a_read_only_reader(services):
    path = users_file(services["clickhouse"])
    assert path.is_file(), f"{path} is missing"
    profiles, users = users_config(ET.parse(path).getroot())
    assert {"default", "reader"} <= set(users)
    assert users["default"]["password"] == ""
    assert profiles[users["reader"]["profile"]].get("readonly") == "1"
    assert profiles[users["default"]["profile"]].get("readonly", "0") == "0"
    assert profiles["default"]["cancel_http_readonly_queries_on_client_close"] == "1"


def test_users_file_matches_the_native_server(services):
    """Same users, passwords, profiles and settings as the native server; only `networks` differ."""
    from trainmon.deploy.services.clickhouse_server import USERS_XML

    native = users_config(ET.fromstring(USERS_XML))
    docker = users_config(ET.parse(users_file(services["clickhouse"])).getroot())
    assert docker == native


# --- tests/containers.py -------------------------------------------------------------------------------


def test_containers_read_their_images_from_compose(services):
    containers = load_containers_module()
    assert containers.COMPOSE_FILE.resolve() == COMPOSE.resolve()
    assert containers.compose_images() == {name: service["image"] for name, service in services.items()}
    source = (ROOT / "tests" / "containers.py").read_text()
    assert not re.search(r"apache/kafka:|clickhouse-server:", source), "tests/containers.py hard-codes an image"


def test_containers_use_the_compose_environment(services):
    containers = load_containers_module()
    assert containers.compose_environment(services["kafka"]) == environment(services["kafka"])
    mounts = containers.compose_bind_mounts(services["clickhouse"])
    assert (users_file(services["clickhouse"]), "/etc/clickhouse-server/users.xml") in mounts
