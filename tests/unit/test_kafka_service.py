"""The local Kafka's configuration without starting it: one node or a 3-node cluster, plaintext or
SASL_SSL; the checks that refuse a start that could not work; and the service layer launching all
processes of one service before waiting, and stopping them all at once."""

from __future__ import annotations

import json
import os
import subprocess
import socket
import sys
import time
from pathlib import Path

import pytest

from trainmon.cli import build_parser
from trainmon.deploy import services
from trainmon.deploy.services.base import LocalService, Progress, bindable, listening
from trainmon.deploy.services.kafka import FORMAT_RECORD, KafkaService, java_argfile, new_cluster_id
from trainmon.deploy.topics import topic_configs
from trainmon.settings import Settings


def local(tmp_path: Path, **changes) -> Settings:
    return Settings(services_home=str(tmp_path / "home"), services_kafka_port=39092,
                    services_kafka_controller_port=39093, **changes)


def test_one_node_is_a_standalone_quorum_with_replication_1(tmp_path: Path) -> None:
    [node] = KafkaService.configured(local(tmp_path))
    conf = node.broker_settings()
    assert node.name == "kafka" and node.dir == tmp_path / "home" / "kafka"
    assert conf["controller.quorum.bootstrap.servers"] == "127.0.0.1:39093"
    assert conf["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert conf["offsets.topic.replication.factor"] == "1" and conf["transaction.state.log.min.isr"] == "1"
    assert "controller.quorum.voters" not in conf and "broker.session.timeout.ms" not in conf
    assert "-Xmx512m" in node.command()


def test_three_nodes_are_static_voters_on_ports_100_apart_with_replication_3_min_isr_2(tmp_path: Path) -> None:
    nodes = KafkaService.configured(local(tmp_path, services_kafka_brokers=3))
    assert [(n.name, n.node_id, n.address, n.controller_port) for n in nodes] == [
        ("kafka-1", 1, "127.0.0.1:39092", 39093), ("kafka-2", 2, "127.0.0.1:39192", 39193),
        ("kafka-3", 3, "127.0.0.1:39292", 39293)]
    conf = nodes[1].broker_settings()
    assert conf["node.id"] == "2"
    assert conf["controller.quorum.voters"] == "1@127.0.0.1:39093,2@127.0.0.1:39193,3@127.0.0.1:39293"
    assert "controller.quorum.bootstrap.servers" not in conf
    assert conf["listeners"] == "PLAINTEXT://127.0.0.1:39192,CONTROLLER://127.0.0.1:39193"
    assert conf["log.dirs"] == str(tmp_path / "home" / "kafka-2" / "data")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "share.coordinator.state.topic.replication.factor", "default.replication.factor"):
        assert conf[key] == "3", key
    for key in ("transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr", "min.insync.replicas"):
        assert conf[key] == "2", key
    assert (conf["broker.session.timeout.ms"], conf["broker.heartbeat.interval.ms"]) == ("3000", "1000")
    assert "-Xmx384m" in nodes[0].command() and "-Xms384m" in nodes[0].command()


def test_zero_brokers_is_refused_with_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(services.ServiceError, match=r"kafka_brokers must be 1"):
        services.services(local(tmp_path, services_kafka_brokers=0), ["kafka"])


def test_secure_listens_sasl_ssl_with_pem_files_and_keeps_the_controller_plaintext(tmp_path: Path) -> None:
    settings = local(tmp_path, services_secure=True, services_kafka_brokers=3)
    conf = KafkaService(settings, 1).broker_settings()
    assert conf["listeners"] == "SASL_SSL://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert conf["advertised.listeners"] == "SASL_SSL://127.0.0.1:39092"
    assert conf["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert conf["inter.broker.listener.name"] == "SASL_SSL"
    assert conf["sasl.enabled.mechanisms"] == conf["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    admin_password = (settings.secrets_dir / "kafka-admin.password").read_text().strip()
    assert f'username="admin" password="{admin_password}";' in conf[
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert (conf["ssl.keystore.type"], conf["ssl.truststore.type"]) == ("PEM", "PEM")
    assert conf["ssl.truststore.location"] == str(settings.secrets_dir / "ca.pem")
    assert "PLAINTEXT://" not in conf["listeners"]


def record(node: KafkaService, **changes) -> None:
    node.data_dir.mkdir(parents=True)
    (node.data_dir / "meta.properties").write_text("cluster.id=x\n")
    (node.dir / FORMAT_RECORD).write_text(json.dumps({**node.format_record(), **changes}))


def test_a_data_dir_without_scram_users_starts_plaintext_but_refuses_secure_saying_what_to_do(tmp_path) -> None:
    node = KafkaService(local(tmp_path))
    node.data_dir.mkdir(parents=True)
    (node.data_dir / "meta.properties").write_text("cluster.id=x\n")
    node.check_format()
    secure = KafkaService(local(tmp_path, services_secure=True))
    with pytest.raises(services.ServiceError, match=r"has no SCRAM users.*without --secure, or remove .*data"):
        secure.check_format()


def test_a_data_dir_formatted_with_users_switches_between_plaintext_and_secure(tmp_path: Path) -> None:
    record(KafkaService(local(tmp_path)))
    KafkaService(local(tmp_path, services_secure=True)).check_format()
    KafkaService(local(tmp_path)).check_format()


def test_a_regenerated_password_or_another_cluster_size_is_refused(tmp_path: Path) -> None:
    settings = local(tmp_path, services_secure=True, services_kafka_brokers=3)
    node = KafkaService(settings, 1)
    record(node, scram_sha256={"admin": "0" * 64, "trainmon": "0" * 64})
    with pytest.raises(services.ServiceError, match=r"other passwords than .*kafka-\*\.password"):
        node.check_format()
    KafkaService(settings.replace(services_secure=False), 1).check_format()  # plaintext does not use them
    with pytest.raises(services.ServiceError, match=r"was formatted for the quorum .*start with the kafka_brokers and controller port"):
        KafkaService(settings.replace(services_kafka_brokers=5), 1).check_format()


def test_nodes_of_another_size_still_running_are_stopped_and_block_a_start(tmp_path: Path) -> None:
    cluster = local(tmp_path, services_kafka_brokers=3)
    stray = KafkaService(cluster, 2)
    stray.dir.mkdir(parents=True)
    jvm = subprocess.Popen(["sleep", "60"], cwd=stray.dir)  # stands in for the JVM, in its folder
    try:
        stray.pidfile.write_text(f"{jvm.pid}\n")
        single = local(tmp_path)
        assert [n.name for n in services.services(single, ["kafka"])] == ["kafka", "kafka-2"]
        with pytest.raises(services.ServiceError, match=r"kafka-2 from a start with another kafka_brokers is still "
                                                        r"running; stop it first: trainmon services stop kafka"):
            KafkaService(single).ensure_running(progress=lambda message: None)
    finally:
        jvm.kill()
        jvm.wait()
    stray.pidfile.unlink()
    assert [n.name for n in services.services(single, ["kafka"])] == ["kafka"]


def test_a_pidfile_naming_someone_elses_process_is_stale(tmp_path: Path) -> None:
    """The PID in a pidfile left behind may belong to another process by now: never taken for the
    service, never stopped."""
    node = KafkaService(local(tmp_path))
    node.dir.mkdir(parents=True)
    node.pidfile.write_text(f"{os.getpid()}\n")  # alive, but works elsewhere: this test run
    assert node.pid() is None
    assert node.stop(progress=lambda message: None) is False and not node.pidfile.exists()


def test_cluster_ids_look_like_kafkas_own() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and set(i) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for i in ids)


def test_java_argfile_quotes_every_argument() -> None:
    assert java_argfile(["-cp", "/a b/*", 'x="y"', "c:\\d"]) == '"-cp"\n"/a b/*"\n"x=\\"y\\""\n"c:\\\\d"\n'


def test_topics_carry_min_insync_replicas_only_when_set() -> None:
    assert not any("min.insync.replicas" in c for c in topic_configs(Settings()).values())
    configs = topic_configs(Settings(kafka_min_insync_replicas=2))
    assert {c["min.insync.replicas"] for c in configs.values()} == {"2"}


def test_bindable_and_listening_see_a_port_without_connecting_to_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert not listening(port)
        server.listen()
        assert listening(port) and not bindable(port)
    assert bindable(port)


# The service layer, with a stand-in service of three processes --------------------------------------

# Takes 1 s to exit on SIGTERM; writes `ready` (in its cwd, the service's folder) once that holds.
SLOW_EXIT = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), "
             "sys.exit(0))); pathlib.Path('ready').touch(); time.sleep(60)")


class Trio(LocalService):
    """Three processes that are healthy only once all three run (like a KRaft quorum) and take 1 s to stop."""

    name = "trio"
    start_timeout_s = 5.0

    def __init__(self, settings: Settings, member: int = 0) -> None:
        self.name = f"trio-{member}"
        super().__init__(settings)

    @classmethod
    def instances(cls, settings: Settings) -> list[LocalService]:
        return [cls(settings, member) for member in range(3)]

    address = "-"
    ports = ()

    def prepare(self, progress: Progress) -> None:
        pass

    def command(self) -> list[str]:
        return [sys.executable, "-c", SLOW_EXIT]

    def health(self) -> tuple[bool, str]:
        ready = sum((member.dir / "ready").exists() for member in self.instances(self.settings))
        return ready == 3, f"{ready} of 3 ready"


def test_all_processes_of_a_service_start_before_any_is_waited_for_and_stop_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "SERVICES", {"trio": Trio})
    settings = Settings(services_home=str(tmp_path))
    try:
        started = services.start_all(settings, progress=lambda message: None)
        assert [s.name for s in started] == ["trio-0", "trio-1", "trio-2"] and all(s.healthy for s in started)
        began = time.monotonic()
        stopped = services.stop_all(settings, progress=lambda message: None)
        assert time.monotonic() - began < 2.5, "stopped one after another (1 s each), not at once"
        assert [s.name for s in stopped] == ["trio-2", "trio-1", "trio-0"]
        assert all(s.state == "stopped" for s in stopped)
    finally:
        for member in Trio.instances(settings):
            member.stop(progress=lambda message: None, timeout_s=2)


class Missing(LocalService):
    """A service whose binary is not installed: start fails in prepare, after the trio has started."""

    name = "missing"
    address = "-"
    ports = ()

    def prepare(self, progress: Progress) -> None:
        raise services.ServiceError("missing: binary not found; install it")

    def command(self) -> list[str]:
        return [sys.executable, "-c", "pass"]

    def health(self) -> tuple[bool, str]:
        return False, ""


@pytest.mark.parametrize("already", [False, True])
def test_a_failed_start_stops_what_it_launched_and_nothing_else(tmp_path, monkeypatch, already):
    settings = Settings(services_home=str(tmp_path))
    quiet = lambda message: None  # noqa: E731
    monkeypatch.setattr(services, "SERVICES", {"trio": Trio})
    try:
        if already:  # running before the failing start: not this start's to stop
            services.start_all(settings, progress=quiet)
        before = [member.pid() for member in Trio.instances(settings)]
        monkeypatch.setattr(services, "SERVICES", {"trio": Trio, "missing": Missing})
        with pytest.raises(services.ServiceError, match="missing: binary not found"):
            services.start_all(settings, progress=quiet)
        after = [member.pid() for member in Trio.instances(settings)]
        assert after == (before if already else [None, None, None])
    finally:
        for member in Trio.instances(settings):
            member.stop(progress=quiet, timeout_s=2)


def test_services_flags_feed_the_settings() -> None:
    args = build_parser().parse_args(["services", "start", "kafka", "--kafka-brokers", "3", "--secure"])
    assert (args.kafka_brokers, args.secure, args.names) == (3, True, ["kafka"])
    args = build_parser().parse_args(["services", "status", "--no-secure"])
    assert (args.kafka_brokers, args.secure) == (None, False)
