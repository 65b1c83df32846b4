"""docker-compose.yml describes the same stack as `trainmon services start`, and stays that way.

No Docker engine runs on the development machines, so the compose file and tests/containers.py are
never started here; these checks read their structure instead: pinned images that match the native
versions, ports on 127.0.0.1 that equal trainmon's defaults, the native broker settings, healthchecks,
the ClickHouse users file and the Alertmanager config; and for the services built from the Dockerfile,
commands that trainmon's CLI accepts, settings that exist, the backing services reached by name, and a
start order that creates topics and tables first.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import yaml

from trainmon.agent.identity import HOST_ENV
from trainmon.cli import build_parser
from trainmon.deploy.services.alertmanager import config_text
from trainmon.deploy.services.kafka import KafkaService
from trainmon.settings import CONFIG_ENV, Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
BACKING = ("kafka", "clickhouse", "alertmanager")  # official images
INTERNAL = "INTERNAL"  # Kafka's listener for the compose network
# The TRAINMON_* variables trainmon reads: every setting, the config file, and the agent's node name.
TRAINMON_VARIABLES = {env_name(field) for field in Settings.__dataclass_fields__} | {CONFIG_ENV, HOST_ENV}

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


@pytest.fixture(scope="module")
def built(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the trainmon image (built from ./Dockerfile)."""
    return {name: service for name, service in services.items() if "build" in service}


def trainmon_commands(service: dict[str, Any]) -> list[list[str]]:
    """The trainmon argument vectors a service runs: its command under the image's `trainmon`
    entrypoint, or each line of a `sh -c` script that calls trainmon."""
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [[str(arg) for arg in service.get("command") or []]]
    assert entrypoint[0] in {"sh", "/bin/sh"} and entrypoint[-1] in {"-c", "-ec"}, entrypoint
    (script,) = service["command"]
    argvs = [shlex.split(line) for line in script.splitlines() if line.strip()]
    assert all(argv[0] == "trainmon" for argv in argvs), f"{script!r}: every line runs trainmon"
    return [argv[1:] for argv in argvs]


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


def listener_addresses(listeners: str) -> dict[str, str]:
    """listener name -> host:port."""
    return dict(item.split("://") for item in listeners.split(","))


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


def test_all_services_exist(services):
    assert {*BACKING, "init", "processors", "dashboard", "agent"} <= set(services)


@pytest.mark.parametrize("name", BACKING)
def test_images_are_pinned(services, name):
    image = services[name]["image"]
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, f"{name}: {image!r} has no tag"
    assert tag != "latest" and re.match(r"v?\d+\.\d+", tag), f"{name}: {image!r} is not pinned to a version"


def test_images_are_the_official_ones(services):
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")


def test_trainmon_services_share_one_image_of_this_version(services, built):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert set(built) == set(services) - set(BACKING)
    for name, service in built.items():
        assert service["image"] == f"trainmon:{version}", name
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert (ROOT / service["build"]["dockerfile"]).is_file()


def test_kafka_image_is_the_native_kafka_version(services):
    assert services["kafka"]["image"] == f"apache/kafka:{Settings().services_kafka_version}"


def test_clickhouse_image_is_the_engine_version_of_chdb_core(services):
    tag = services["clickhouse"]["image"].rpartition(":")[2]
    major_minor = ".".join(chdb_pin().split(".")[:2])
    assert tag == major_minor or tag.startswith(major_minor + "."), (tag, chdb_pin())


# --- ports --------------------------------------------------------------------------------------------


def test_ports_are_published_on_loopback_only(services):
    for name, service in services.items():
        for host_ip, host_port, _ in published(service):
            assert host_ip == "127.0.0.1", f"{name}: port {host_port} published on {host_ip or 'all interfaces'}"
    assert {name for name, service in services.items() if published(service)} == {*BACKING, "dashboard"}


def test_host_ports_are_trainmons_defaults(services):
    settings = Settings()
    assert {(h, c) for _, h, c in published(services["kafka"])} == {(settings.services_kafka_port, 9092)}
    assert {(h, c) for _, h, c in published(services["clickhouse"])} == {
        (settings.services_clickhouse_http_port, 8123),
        (settings.services_clickhouse_tcp_port, 9000),
    }
    assert {(h, c) for _, h, c in published(services["alertmanager"])} == {(settings.services_alertmanager_port, 9093)}
    assert {(h, c) for _, h, c in published(services["dashboard"])} == {(settings.dashboard_port,) * 2}
    assert settings.bootstrap_servers == f"127.0.0.1:{settings.services_kafka_port}"
    assert settings.clickhouse == f"http://127.0.0.1:{settings.services_clickhouse_http_port}"
    assert settings.alertmanager == f"http://127.0.0.1:{settings.services_alertmanager_port}"


def test_kafka_advertises_the_published_address_to_the_host(services):
    props = broker_properties(environment(services["kafka"]))
    (host_ip, host_port, container_port), = published(services["kafka"])
    assert listener_addresses(props["advertised.listeners"])["PLAINTEXT"] == f"{host_ip}:{host_port}"
    assert listener_ports(props["listeners"])["PLAINTEXT"] == container_port == host_port


def test_kafka_advertises_its_service_name_to_containers(services):
    """The compose network's clients get a listener whose advertised address is kafka:<port>, unpublished."""
    props = broker_properties(environment(services["kafka"]))
    advertised = listener_addresses(props["advertised.listeners"])
    assert set(advertised) == {"PLAINTEXT", INTERNAL}, "advertise every client listener, never the controller"
    host, port = advertised[INTERNAL].rsplit(":", 1)
    assert host == "kafka" and int(port) == listener_ports(props["listeners"])[INTERNAL]
    assert int(port) not in {c for _, _, c in published(services["kafka"])}


# --- the trainmon services ----------------------------------------------------------------------------


def test_every_trainmon_command_parses(built):
    parser = build_parser()
    for name, service in built.items():
        for argv in trainmon_commands(service):
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}: `trainmon {shlex.join(argv)}` is refused by trainmon's CLI (see its error above)")


def test_services_run_what_they_are_named_for(built):
    commands = {name: [argv[0] for argv in trainmon_commands(service)] for name, service in built.items()}
    assert commands == {"init": ["topics", "db"], "processors": ["process"], "dashboard": ["dashboard"],
                        "agent": ["agent"]}


def test_dashboard_listens_on_all_container_interfaces(services):
    # Inside its container, 127.0.0.1 would not be reached through the published port.
    args = build_parser().parse_args(trainmon_commands(services["dashboard"])[0])
    assert args.address == "0.0.0.0"


def test_every_trainmon_variable_is_a_real_setting(services):
    for name, service in services.items():
        unknown = {key for key in environment(service) if key.startswith("TRAINMON_")} - TRAINMON_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are not trainmon settings (see `trainmon config`)"


def test_containers_reach_the_backing_services_by_name(services, built):
    props = broker_properties(environment(services["kafka"]))
    internal = listener_addresses(props["advertised.listeners"])[INTERNAL]
    for name, service in built.items():
        env = environment(service)
        assert env.get("TRAINMON_KAFKA_BOOTSTRAP_SERVERS") == internal, name
        assert env.get("TRAINMON_CLICKHOUSE_URL") == "http://clickhouse:8123", name
        assert env.get("TRAINMON_ALERTMANAGER_URL") == "http://alertmanager:9093", name


def depends(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as name -> condition (the short list form means service_started)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def test_init_waits_for_healthy_kafka_and_clickhouse(services):
    assert depends(services["init"]) == {"kafka": "service_healthy", "clickhouse": "service_healthy"}
    assert str(services["init"].get("restart")) == "no", "a one-shot: restarting it would loop"


@pytest.mark.parametrize("name", ["processors", "dashboard", "agent"])
def test_services_start_after_init_succeeded(services, name):
    # Topics and tables exist before anything produces or queries; this also makes `up --wait`
    # accept init's exit instead of reporting it as a failure.
    assert depends(services[name]).get("init") == "service_completed_successfully"
    assert services[name].get("restart") == "unless-stopped"


def test_processors_start_after_alertmanager_is_ready(services):
    assert depends(services["processors"]).get("alertmanager") == "service_healthy"


def test_dependencies_name_real_services_with_healthchecks(services):
    for name, service in services.items():
        for dependency, condition in depends(service).items():
            assert dependency in services, f"{name}: depends on unknown service {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name}: {dependency} has no healthcheck to wait for"


# --- Kafka: the native broker's settings ---------------------------------------------------------------


def test_kafka_env_mirrors_the_native_broker(services):
    props = broker_properties(environment(services["kafka"]))
    mismatched = {key: (props.get(key), value) for key, value in NATIVE_BROKER.items() if props.get(key) != value}
    assert not mismatched, f"compose vs native (compose value, native value): {mismatched}"


def test_kafka_runs_kraft_combined_with_its_own_quorum(services):
    env = environment(services["kafka"])
    props = broker_properties(env)
    ports = listener_ports(props["listeners"])
    assert set(ports) == {"PLAINTEXT", INTERNAL, "CONTROLLER"}
    assert ports["CONTROLLER"] == Settings().services_kafka_controller_port
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:{ports['CONTROLLER']}"
    assert set(props["listener.security.protocol.map"].split(",")) == {
        "PLAINTEXT:PLAINTEXT", f"{INTERNAL}:PLAINTEXT", "CONTROLLER:PLAINTEXT"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID: a base64 UUID (kafka-storage random-uuid)"


# --- data, health ------------------------------------------------------------------------------------


def test_data_lives_in_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    targets = {
        "kafka": environment(services["kafka"])["KAFKA_LOG_DIRS"],
        "clickhouse": "/var/lib/clickhouse",
        "alertmanager": "/alertmanager",
        "processors": "/var/lib/trainmon",  # the image's TRAINMON_SERVICES_HOME: state snapshots
        "agent": "/var/lib/trainmon",  # its spool
    }
    for name, target in targets.items():
        named = [v.split(":")[1] for v in services[name]["volumes"] if v.split(":")[0] in declared]
        assert target in named, f"{name}: {target} is not on a named volume"


@pytest.mark.parametrize("name", [*BACKING, "dashboard"])
def test_healthchecks_exist(services, name):
    test = services[name].get("healthcheck", {}).get("test")
    assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: no healthcheck"


def test_clickhouse_healthcheck_pings(services):
    assert any("/ping" in part for part in services["clickhouse"]["healthcheck"]["test"])


def test_agent_spools_on_its_volume(services):
    args = build_parser().parse_args(trainmon_commands(services["agent"])[0])
    assert Path(args.spool_dir).is_relative_to("/var/lib/trainmon")


# --- Alertmanager ---------------------------------------------------------------------------------------


def alertmanager_flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in service["command"])


def alertmanager_config(service: dict[str, Any]) -> Path:
    """The host file mounted where --config.file points."""
    target = alertmanager_flags(service)["config.file"]
    for volume in service.get("volumes") or []:
        source, mounted_at = str(volume).split(":")[:2]
        if mounted_at == target:
            return (COMPOSE.parent / source).resolve()
    raise AssertionError(f"alertmanager: nothing mounted at its --config.file {target}")


def test_alertmanager_runs_alone_with_the_mounted_config(services):
    assert alertmanager_flags(services["alertmanager"])["cluster.listen-address"] == "", "no gossip: one instance"
    assert alertmanager_config(services["alertmanager"]).is_file()


def test_alertmanager_routes_like_the_native_service(services):
    """The native service's routing and timings; only the receivers are the operator's to change."""
    mounted = yaml.safe_load(alertmanager_config(services["alertmanager"]).read_text())
    native = yaml.safe_load(config_text(""))
    assert {k: v for k, v in mounted["route"].items() if k != "receiver"} == {
        k: v for k, v in native["route"].items() if k != "receiver"}
    assert mounted["route"]["receiver"] in {receiver["name"] for receiver in mounted["receivers"]}


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
