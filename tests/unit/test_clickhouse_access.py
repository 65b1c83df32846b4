"""Who logs in to ClickHouse with which password, and where a password may never show up.

No engine here: tests/integration/test_clickhouse_security.py runs the same users on a real one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trainmon.cli import main
from trainmon.clickhouse import ClickHouseAccessError, local_password_file, login, login_user, migrations
from trainmon.dashboard import components
from trainmon.deploy.services.clickhouse import ClickHouseService
from trainmon.deploy.services.clickhouse_server import secure_users
from trainmon.settings import CONFIG_ENV, Settings


def secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    return path


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    """The local secure stack's settings, with the password files `trainmon services start` makes."""
    settings = Settings(services_home=str(tmp_path / "home"), services_secure=True)
    settings.secrets_dir.mkdir(parents=True)
    for user in ("trainmon_writer", "trainmon_migrator", "reader", "trainmon_control"):
        secret(local_password_file(settings.secrets_dir, user), f"{user}-local-secret")
    return settings


def test_the_open_local_stack_logs_in_as_before_without_a_password():
    found = login(Settings())
    assert (found.url, found.user, found.password, found.ca_file) == ("http://127.0.0.1:8123", "default", "", "")
    reader = login(Settings().dashboard_reader)
    assert (reader.user, reader.password) == ("reader", "")


def test_a_password_file_wins_over_the_password(tmp_path):
    settings = Settings(clickhouse_user="svc", clickhouse_password="inline",
                        clickhouse_password_file=str(secret(tmp_path / "pw", "from-file")))
    found = login(settings)
    assert (found.user, found.password) == ("svc", "from-file")
    assert found.source == f"the file {tmp_path / 'pw'}"
    assert "from-file" not in repr(found)


def test_the_secure_stack_gives_each_component_its_own_user_and_password(local):
    assert (login(local).user, login(local).password) == ("trainmon_writer", "trainmon_writer-local-secret")
    assert (login(local.dashboard_reader).user, login(local.dashboard_reader).password) == (
        "reader", "reader-local-secret")
    migrator = login(migrations(local))
    assert (migrator.user, migrator.password) == ("trainmon_migrator", "trainmon_migrator-local-secret")


def test_a_configured_server_is_not_the_local_stack(local):
    remote = local.replace(clickhouse_url="https://ch.example:8443", clickhouse_password="remote")
    assert (login_user(remote), login(remote).password) == ("default", "remote")
    assert migrations(remote) == remote


def test_the_migrations_user_brings_its_own_password_file(local, tmp_path):
    settings = local.replace(clickhouse_migrations_user="ops",
                             clickhouse_migrations_password_file=str(secret(tmp_path / "ops", "ops-secret")),
                             clickhouse_password="writer-secret")
    found = login(migrations(settings))
    assert (found.user, found.password) == ("ops", "ops-secret")


def test_the_dashboard_never_borrows_the_writers_password(tmp_path):
    settings = Settings(clickhouse_user="writer", clickhouse_password="writer-secret",
                        clickhouse_password_file=str(secret(tmp_path / "writer", "writer-file-secret")),
                        dashboard_clickhouse_password_file=str(secret(tmp_path / "reader", "reader-secret")))
    found = login(settings.dashboard_reader)
    assert (found.user, found.password) == ("reader", "reader-secret")
    assert login(settings.replace(dashboard_clickhouse_password_file="").dashboard_reader).password == ""


def test_a_missing_local_password_file_says_how_to_make_it(local):
    local_password_file(local.secrets_dir, "reader").unlink()
    with pytest.raises(ClickHouseAccessError, match=r"reader's password from .*clickhouse-reader\.password "
                       r"\(No such file or directory\): `trainmon services start clickhouse` makes it"):
        login(local.dashboard_reader)


def test_the_service_makes_every_password_and_hands_the_server_its_database(tmp_path):
    settings = Settings(services_home=str(tmp_path / "home"), services_secure=True, clickhouse_database="tm_x")
    service = ClickHouseService(settings)
    service.prepare(lambda message: None)
    made = sorted(p.name for p in settings.secrets_dir.glob("*.password"))
    assert made == [f"clickhouse-{u}.password" for u in ("reader", "trainmon_control", "trainmon_migrator",
                                                           "trainmon_writer")]
    secrets = settings.secrets_dir
    assert service.command()[-8:] == ["--secrets", str(secrets), "--database", "tm_x", "--tls-cert",
                                      str(secrets / "server.pem"), "--tls-key", str(secrets / "server.key")]
    assert service.address == f"https://127.0.0.1:{settings.services_clickhouse_http_port}"
    assert "--secrets" not in ClickHouseService(settings.replace(services_secure=False)).command()


def test_the_servers_users_hold_digests_and_grant_on_the_configured_database_only(local):
    users, control = secure_users(local.secrets_dir, "tm_x")
    for user in ("trainmon_writer", "trainmon_migrator", "reader", "trainmon_control"):
        assert f"{user}-local-secret" not in users
        assert hashlib.sha256(f"{user}-local-secret".encode()).hexdigest() in users
    assert "GRANT SELECT, INSERT ON tm_x.*" in users and "GRANT SELECT ON tm_x.*" in users
    assert "trainmon." not in users  # nothing on the default database name
    assert control == {"X-ClickHouse-User": "trainmon_control", "X-ClickHouse-Key": "trainmon_control-local-secret"}
    with pytest.raises(SystemExit, match="must be a plain identifier"):
        secure_users(local.secrets_dir, "tm; DROP")


def test_trainmon_config_prints_no_password_from_the_environment_a_file_or_toml(tmp_path, monkeypatch, capsys):
    secrets = {name: f"{name}-s3cret" for name in ("env", "env-kafka", "toml", "toml-url", "file", "migrations")}
    password_file = secret(tmp_path / "clickhouse.password", secrets["file"])
    config = tmp_path / "trainmon.toml"
    config.write_text(f'[clickhouse]\npassword_file = "{password_file}"\n'
                      f'migrations_password_file = "{secret(tmp_path / "m.password", secrets["migrations"])}"\n'
                      f'[dashboard]\nclickhouse_password = "{secrets["toml"]}"\n'
                      f'[alertmanager]\nurl = "https://am:{secrets["toml-url"]}@alerts.example/"\n')
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("TRAINMON_CLICKHOUSE_PASSWORD", secrets["env"])
    monkeypatch.setenv("TRAINMON_KAFKA_SASL_PASSWORD", secrets["env-kafka"])
    assert main(["--config", str(config), "config"]) == 0
    out = capsys.readouterr().out
    assert not [name for name, value in secrets.items() if value in out]
    assert "[clickhouse] password = '***'" in out and "https://am:***@alerts.example/" in out
    assert f"[clickhouse] password_file = '{password_file}'" in out  # a path is not a secret


def test_the_dashboards_client_key_holds_no_password_and_follows_a_rotated_file(tmp_path):
    password = secret(tmp_path / "reader.password", "reader-secret-1")
    settings = Settings(dashboard_clickhouse_password_file=str(password), dashboard_clickhouse_password="inline-secret")
    key = components._key(settings)
    assert not any("secret" in str(part) for part in key)
    assert key[:4] == ("http://127.0.0.1:8123", "trainmon", "reader", str(password))
    secret(password, "reader-secret-2")
    stat = password.stat()
    os.utime(password, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert components._key(settings) != key
