"""The local broker started `--secure` (SASL_SSL + SCRAM-SHA-512 on the client port, certificates and
passwords from local_secrets): trainmon's own clients get through with trainmon.kafka_client's config;
a wrong password and a plaintext client get nothing, with errors that say why; the same data dir
switches to plaintext and back.

The broker runs on its own ports (23095/23096) and home under a tmp dir, and is stopped at the end.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from tests.integration.test_kafka_cluster import read_all, running, trainer_env
from trainmon import kafka_client
from trainmon.contract import Topic, decode, topic_name
from trainmon.deploy.services import start_all, status_all, stop_all
from trainmon.deploy.topics import create_topics
from trainmon.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Iterator[Settings]:
    settings = Settings(
        services_home=str(tmp_path_factory.mktemp("kafka-secure") / "home"),
        services_kafka_port=23095,
        services_kafka_controller_port=23096,
        services_secure=True,
        kafka_topic_prefix=f"secure-{uuid.uuid4().hex[:6]}.",
        kafka_partitions=2,
    )
    with running(settings, ["kafka"]):
        create_topics(settings, progress=lambda message: None)
        yield settings


def produce(config: dict, topic: str, count: int, timeout_s: float = 15.0,
            refused: Callable[[list[KafkaError]], bool] | None = None) -> tuple[int, list[KafkaError]]:
    """(messages Kafka acknowledged, errors the client reported) for `count` messages sent with `config`;
    once `refused(errors)` holds, what is still queued is purged instead of waiting out its timeout."""
    errors: list[KafkaError] = []
    acked: list[bool] = []
    producer = Producer({**config, "error_cb": errors.append, "message.timeout.ms": int(timeout_s * 1000) - 2000,
                         "log_level": 0})
    for index in range(count):
        producer.produce(topic, f"m{index}".encode(), on_delivery=lambda err, _msg: acked.append(err is None))
    deadline = time.monotonic() + timeout_s
    while len(acked) < count and time.monotonic() < deadline and not (refused and refused(errors)):
        producer.poll(0.1)
    producer.purge()
    producer.flush(5)
    return sum(acked), errors


def test_the_broker_listens_sasl_ssl_only_and_its_health_check_authenticates(secure: Settings) -> None:
    assert kafka_client.security(secure).protocol == "SASL_SSL"
    properties = (Path(secure.services_home) / "kafka" / "server.properties")
    text = properties.read_text()
    assert "listeners=SASL_SSL://127.0.0.1:23095,CONTROLLER://127.0.0.1:23096\n" in text
    assert "PLAINTEXT://" not in text
    assert properties.stat().st_mode & 0o077 == 0, "server.properties holds the admin password: owner only"
    [healthy] = status_all(secure, ["kafka"])
    assert healthy.healthy, healthy
    # The health check connects as clients with these settings do: without --secure it cannot get in.
    [plain] = status_all(secure.replace(services_secure=False), ["kafka"])
    assert plain.pid == healthy.pid and not plain.healthy and "it runs --secure" in plain.detail, plain


def raw_topic(settings: Settings) -> str:
    """Where these tests write bytes that are not events (the SDK's test reads the metrics topic)."""
    return topic_name(Topic.ALERTS, settings.kafka_topic_prefix)


def test_produce_and_consume_through_kafka_client_config(secure: Settings) -> None:
    topic = raw_topic(secure)
    acked, errors = produce(kafka_client.config(secure), topic, 100)
    assert (acked, errors) == (100, [])
    consumer = Consumer(kafka_client.config(secure, **{"group.id": f"t-{uuid.uuid4().hex}",
                                                       "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            values += [m.value() for m in consumer.consume(100, 0.5) if m.error() is None]
            if len(values) >= 100:
                break
    finally:
        consumer.close()
    assert sorted(values) == sorted(f"m{i}".encode() for i in range(100))


def test_a_wrong_password_delivers_nothing_and_says_authentication_failed(secure: Settings) -> None:
    wrong = secure.replace(kafka_sasl_password="not-the-password")
    acked, errors = produce(kafka_client.config(wrong), raw_topic(secure), 5,
                            refused=lambda errors: KafkaError._AUTHENTICATION in {e.code() for e in errors})
    assert acked == 0
    assert KafkaError._AUTHENTICATION in {e.code() for e in errors}, errors
    assert any("Authentication failed" in e.str() for e in errors), errors


def test_a_plaintext_client_on_the_sasl_ssl_port_is_refused(secure: Settings) -> None:
    plaintext = {"bootstrap.servers": secure.bootstrap_servers, "security.protocol": "PLAINTEXT"}
    acked, errors = produce(plaintext, raw_topic(secure), 5, refused=bool)
    assert acked == 0
    assert errors and {e.code() for e in errors} <= {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}, errors


SCRIPT = textwrap.dedent("""
    import sys, trainmon
    run = trainmon.init(project="secure", run_id=sys.argv[1], spool_dir=sys.argv[2])  # settings from TRAINMON_*
    for step in range(500):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    print(run._publisher.flush(30), flush=True)
    run.finish()
""")


def test_the_sdk_delivers_through_the_secure_broker(secure: Settings, tmp_path: Path) -> None:
    run_id = f"secure-{uuid.uuid4().hex[:6]}"
    done = subprocess.run([sys.executable, "-c", SCRIPT, run_id, str(tmp_path / "spool")], cwd=ROOT,
                          env=trainer_env(secure), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["True"], done.stderr
    events = [decode(m.value()) for m in read_all(secure, [topic_name(Topic.METRICS, secure.kafka_topic_prefix)])]
    assert sorted(e["step"] for e in events if e["run"] == run_id) == list(range(500))


def test_the_data_dir_switches_to_plaintext_and_back_keeping_its_topics(secure: Settings) -> None:
    topic = topic_name(Topic.SYSTEM, secure.kafka_topic_prefix)  # no other test writes there
    plain = secure.replace(services_secure=False)
    try:
        stop_all(secure, ["kafka"], progress=print)
        start_all(plain, ["kafka"], progress=print)
        assert produce(kafka_client.config(plain), topic, 3) == (3, [])
    finally:
        stop_all(plain, ["kafka"], progress=print)
        start_all(secure, ["kafka"], progress=print)
    assert len(read_all(secure, [topic])) == 3  # written in plaintext, read back over SASL_SSL
