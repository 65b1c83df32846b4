"""The whole path on the secured local stack (`trainmon services start --secure`): a training script
logs through the SDK over SASL_SSL + SCRAM, a `trainmon process` worker reads it over SASL_SSL and
writes to ClickHouse as the password-protected writer, the migrations ran as the migrations user, the
dashboard's queries read as the reader, the NaN pages the on-call webhook; and no password shows up in
any process's output. Every component gets the same `TRAINMON_SERVICES_SECURE=true` and nothing else
about security: the local stack's certificates and password files are found by the settings.

Its own services on 23390/23391 (Kafka) and 23180/23181 (ClickHouse), home under a tmp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_kafka_cluster import running
from tests.integration.test_processors import ROOT, pipeline_file, stop, wait_until
from tests.receivers import Receiver
from trainmon.clickhouse import connect
from trainmon.dashboard.queries import Queries
from trainmon.deploy.topics import TopicsError, create_topics
from trainmon.settings import Settings, environment

pytestmark = pytest.mark.integration
STEPS = 300


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Iterator[Settings]:
    settings = Settings(services_home=str(tmp_path_factory.mktemp("secure-stack") / "home"), services_secure=True,
                        services_kafka_port=23390, services_kafka_controller_port=23391,
                        services_clickhouse_http_port=23180, services_clickhouse_tcp_port=23181,
                        kafka_topic_prefix=f"sec-{uuid.uuid4().hex[:6]}.", kafka_partitions=2,
                        clickhouse_database="trainmon_secure")
    with running(settings, ["kafka", "clickhouse"]):
        yield settings


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **environment(settings)}
    return subprocess.run([sys.executable, "-m", "trainmon.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def passwords(settings: Settings) -> dict[str, str]:
    return {path.name: path.read_text().strip() for path in settings.secrets_dir.glob("*.password")}


def test_sdk_to_worker_to_clickhouse_to_dashboard_and_a_page_all_authenticated(secure: Settings, tmp_path: Path):
    for step in (("topics", "create"), ("db", "migrate")):
        done = cli(secure, *step)
        assert done.returncode == 0, done.stderr
    run = f"secure-{uuid.uuid4().hex[:6]}"
    with Receiver() as webhook:
        log = tmp_path / "worker.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **environment(secure)}
        worker = subprocess.Popen([sys.executable, "-m", "trainmon.cli", "process", "--pipeline",
                                   str(pipeline_file(tmp_path, webhook.url)), "--group", "secure", "--loglevel", "info"],
                                  env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        try:
            trainer = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
                import math, time, trainmon
                run = trainmon.init(project="secure", name="{run}", config={{"lr": 0.1}})
                for step in range({STEPS}):
                    run.log({{"loss": math.nan if step == {STEPS // 2} else 1.0 / (step + 1), "acc": 0.5}}, step=step)
                time.sleep(10)  # still running when the page goes out: a run that ends resolves its alerts
                run.finish(timeout_s=60)  # waits for delivery
            """)], env={**env, "TRAINMON_RUN_ID": run}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert trainer.returncode == 0, trainer.stderr
            reader = connect(secure.dashboard_reader)
            assert secure.dashboard_reader.clickhouse_user == "reader"
            wait_until(lambda: reader.query("SELECT count() FROM metric_points WHERE run = {r:String}",
                                            parameters={"r": run}).result_rows[0][0] == 2 * STEPS, 90,
                       "every value in ClickHouse")
            alert = webhook.wait_for(1, timeout=60)[0].json()
            assert (alert["rule"], alert["state"], alert["run"]) == ("loss_non_finite", "firing", run)
            wait_until(lambda: run in set(Queries(reader).runs(project="secure")["run"]), 60,
                       "the run in the dashboard's runs list")
        finally:
            stop(worker)
    output = log.read_text() + trainer.stdout + trainer.stderr
    assert "SASL_SSL" in output or "sasl_ssl" in output.lower(), "the worker's start line names its security"
    leaked = [name for name, value in passwords(secure).items() if value in output]
    assert not leaked, leaked


def test_the_writer_cannot_alter_and_a_plaintext_worker_gets_nothing(secure: Settings, tmp_path: Path):
    """Least privilege seen from the components' own settings: the processors' user cannot change the
    schema; a worker configured without security on the SASL_SSL port never joins."""
    writer = connect(secure)
    assert secure.clickhouse_user == "default" and writer.query("SELECT currentUser()").result_rows[0][0] == \
        "trainmon_writer"
    with pytest.raises(Exception, match="ACCESS_DENIED|Not enough privileges"):
        writer.command("DROP TABLE metric_points")
    plain = secure.replace(services_secure=False, kafka_bootstrap_servers=secure.bootstrap_servers,
                           clickhouse_url=secure.clickhouse)
    with pytest.raises(TopicsError) as refused:  # what `trainmon topics create` prints, after its 30 s
        create_topics(plain, progress=lambda message: None, timeout_s=5)
    message = str(refused.value)
    assert f"Kafka at {secure.bootstrap_servers} did not answer" in message and "PLAINTEXT" in message
    assert "security_protocol" in message
