"""trainmon.kafka_client: the one place [kafka] security settings become client configuration."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from trainmon import kafka_client
from trainmon.settings import Settings, SettingsError, load


def test_plaintext_by_default_carries_no_credentials() -> None:
    conf = kafka_client.config(Settings(services_kafka_port=39092))
    assert conf == {"bootstrap.servers": "127.0.0.1:39092", "security.protocol": "PLAINTEXT"}
    assert kafka_client.faust_credentials(Settings()) is None


def test_sasl_ssl_reads_the_password_from_its_file_and_trusts_the_ca(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("-")
    settings = Settings(kafka_bootstrap_servers="k1:9093,k2:9093", kafka_security_protocol="sasl_ssl",
                        kafka_sasl_username="alice", kafka_sasl_password_file=str(tmp_path / "pw"),
                        kafka_ssl_ca_file=str(tmp_path / "ca.pem"))
    conf = kafka_client.config(settings, **{"group.id": "g"})
    assert conf == {"bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "s3cret",
                    "ssl.ca.location": str(tmp_path / "ca.pem"), "group.id": "g"}
    assert "s3cret" not in repr(kafka_client.security(settings))


def test_the_local_secure_stack_is_used_when_no_brokers_are_configured(tmp_path: Path) -> None:
    settings = Settings(services_home=str(tmp_path), services_secure=True)
    with pytest.raises(SettingsError, match="services start --secure"):
        kafka_client.config(settings)  # nothing made yet: says what to run
    settings.secrets_dir.mkdir()
    kafka_client.local_password_file(settings, kafka_client.LOCAL_USER).write_text("pw\n")
    settings.local_ca.write_text("-")
    conf = kafka_client.config(settings)
    assert (conf["security.protocol"], conf["sasl.username"], conf["sasl.password"]) == ("SASL_SSL", "trainmon", "pw")
    assert conf["ssl.ca.location"] == str(settings.secrets_dir / "ca.pem")
    # A remote cluster configured explicitly is not the local stack: its own settings apply.
    assert kafka_client.config(settings.replace(kafka_bootstrap_servers="k:9092"))["security.protocol"] == "PLAINTEXT"


@pytest.mark.parametrize("changes, named", [
    ({"kafka_security_protocol": "TLS"}, r"\[kafka\] security_protocol \(TRAINMON_KAFKA_SECURITY_PROTOCOL\)"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT"}, r"\[kafka\] sasl_username"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "a", "kafka_sasl_password": "b",
      "kafka_sasl_mechanism": "GSSAPI"}, r"\[kafka\] sasl_mechanism"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nonexistent/ca.pem"}, r"\[kafka\] ssl_ca_file.*no such file"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": __file__}, r"mTLS needs both"),
])
def test_a_setting_that_cannot_work_fails_naming_the_key(changes: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        kafka_client.config(Settings(kafka_bootstrap_servers="k:9092", **changes))


def test_faust_gets_the_same_security(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap_servers="k:9093", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_username="bob", kafka_sasl_password="pw", kafka_sasl_mechanism="scram-sha-256")
    credentials = kafka_client.faust_credentials(settings)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == ("bob", "pw", "SCRAM-SHA-256")
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is not None
    tls_only = kafka_client.faust_credentials(settings.replace(kafka_security_protocol="SSL"))
    assert tls_only.protocol.value == "SSL"


def test_settings_come_from_the_environment_like_every_other_key(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file")
    settings = load(environ={"TRAINMON_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "TRAINMON_KAFKA_SASL_USERNAME": "u",
                             "TRAINMON_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
                             "TRAINMON_KAFKA_BOOTSTRAP_SERVERS": "k:9093"})
    assert kafka_client.config(settings)["sasl.password"] == "from-file"


def test_mtls_hands_the_client_certificate_to_librdkafka_and_to_faust(tmp_path: Path) -> None:
    from trainmon.deploy.services.local_secrets import ensure_certificates

    made = ensure_certificates(tmp_path / "pki")
    settings = Settings(kafka_bootstrap_servers="k:9093", kafka_security_protocol="SSL", kafka_ssl_ca_file=str(made.ca),
                        kafka_ssl_cert_file=str(made.client_cert), kafka_ssl_key_file=str(made.client_key))
    conf = kafka_client.config(settings)
    assert (conf["ssl.certificate.location"], conf["ssl.key.location"]) == (str(made.client_cert), str(made.client_key))
    credentials = kafka_client.faust_credentials(settings)
    assert credentials.protocol.value == "SSL"
    assert credentials.context.verify_mode.name == "CERT_REQUIRED"  # the broker's certificate is checked
    with pytest.raises(ssl.SSLError):  # a key that is not the certificate's: refused when the context is built
        kafka_client.faust_credentials(settings.replace(kafka_ssl_key_file=str(made.server_key)))
