"""The local ClickHouse started with [services] secure: passwords, least privilege, row policies, TLS.

One engine of this module's own (own home, free ports and database), started as `trainmon services start`
starts it, with a per-team reader dropped into users.d/ before the start, as docs/services.md tells
an operator to. The chdb engine cannot serve HTTPS (docs/services.md), so the TLS test puts a TLS
front of its own before the engine's HTTP port to check what trainmon's client does with a CA.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from trainmon.cli import main
from trainmon.clickhouse import ClickHouseAccessError, connect, local_password_file, migrations
from trainmon.contract import envelope
from trainmon.dashboard.queries import Queries
from trainmon.deploy.migrate import migrate
from trainmon.deploy.services.clickhouse import ClickHouseService
from trainmon.deploy.services.local_secrets import ensure_certificates
from trainmon.settings import CONFIG_ENV, Settings, env_name
from trainmon.stream_processors.sink import Batch, ClickHouseSink
from tests.integration.test_services import free_ports

pytestmark = pytest.mark.integration
# Fresh ports each run: a fixed port stays taken by the last run's closing connections for a minute.
HTTP_PORT, TCP_PORT = free_ports(2)
DATABASE = "trainmon_secure"
WRONG = "not-the-password-0123456789"
TEAM, TEAM_PASSWORD = "team_a", "team-a-password-9876543210"
# Every table with a `project` column: a team reader's row policy must name each one (checked below).
PROJECT_TABLES = ("alerts", "incidents", "metric_epochs_1h", "metric_epochs_1m", "metric_points", "metric_rollup_1h",
                  "metric_rollup_1m", "run_events", "run_ranks", "runs", "window_aggregates")
T0 = float(int(time.time()) // 60 * 60 - 600)
APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def quiet(message: str) -> None:
    pass


def team_reader_xml(projects: tuple[str, ...]) -> str:
    """users.d/<team>.xml as docs/services.md shows it: the reader's profile, SELECT on the database,
    and a row filter on every table with a project column."""
    allowed = ", ".join(f"'{p}'" for p in projects)
    filters = "".join(f"<{t}><filter>project IN ({allowed})</filter></{t}>" for t in PROJECT_TABLES)
    return (f"<clickhouse><users><{TEAM}>"
            f"<password_sha256_hex>{hashlib.sha256(TEAM_PASSWORD.encode()).hexdigest()}</password_sha256_hex>"
            "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>readonly</profile><quota>reader</quota>"
            f"<grants><query>GRANT SELECT ON {DATABASE}.*</query></grants>"
            f"<databases><{DATABASE}>{filters}</{DATABASE}></databases>"
            f"</{TEAM}></users></clickhouse>")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("secure-stack")
    settings = Settings(services_home=str(home), services_secure=True, services_clickhouse_http_port=HTTP_PORT,
                        services_clickhouse_tcp_port=TCP_PORT, clickhouse_database=DATABASE)
    service = ClickHouseService(settings)
    users_d = service.dir / "run" / "users.d"
    users_d.mkdir(parents=True)
    (users_d / f"{TEAM}.xml").write_text(team_reader_xml(("team-a",)))
    service.start(progress=quiet)
    try:
        migrate(migrations(settings), progress=quiet)
        yield settings
    finally:
        service.stop(progress=quiet)


def team(settings: Settings, tmp_path: Path) -> Settings:
    """The dashboard of team A: its own ClickHouse user, password from a file."""
    secret = tmp_path / "team.password"
    secret.write_text(TEAM_PASSWORD + "\n")
    return settings.replace(dashboard_clickhouse_user=TEAM, dashboard_clickhouse_password_file=str(secret))


def toml(tmp_path: Path, settings: Settings, clickhouse: str = "") -> Path:
    path = tmp_path / "trainmon.toml"
    path.write_text(f'[services]\nhome = "{settings.services_home}"\nsecure = true\n'
                    f"clickhouse_http_port = {HTTP_PORT}\nclickhouse_tcp_port = {TCP_PORT}\n"
                    f'[clickhouse]\ndatabase = "{DATABASE}"\n{clickhouse}')
    return path


def metrics_batch(project: str, run: str, offsets: range, topic: str) -> Batch:
    batch = Batch()
    for offset in offsets:
        event = envelope("metrics", project=project, run=run, rank=0, host="node-1", step=offset, epoch=0,
                         time=T0 + offset, values={"loss": 1.0 / (offset + 1), "acc": math.nan})
        batch.add_metrics(event, topic, 0, offset)
    return batch


def refusal(statement: str, client) -> str:
    with pytest.raises(DatabaseError) as refused:
        client.command(statement)
    return str(refused.value)


# --- who is who ------------------------------------------------------------------------------------

def test_each_component_logs_in_as_its_own_user_with_the_stacks_password(secure):
    assert connect(secure).query("SELECT currentUser()").result_rows == [("trainmon_writer",)]
    assert connect(secure.dashboard_reader).query("SELECT currentUser(), getSetting('readonly')").result_rows == [
        ("reader", 1)]
    assert connect(migrations(secure)).query("SELECT currentUser()").result_rows == [("trainmon_migrator",)]


def test_the_writer_feeds_the_sink_and_the_rollups_and_its_password_is_not_logged(secure, caplog):
    caplog.set_level(logging.DEBUG)
    sink = ClickHouseSink(secure)
    assert sink.write(metrics_batch("sink", "sec-run", range(10), "sec.metrics")) == []
    again = ClickHouseSink(secure)  # a worker taking over reads the offset watermark as the writer
    assert again.skip("sec.metrics", 0, 9) and not again.skip("sec.metrics", 0, 10)
    client = connect(secure)
    assert client.query("SELECT count() FROM metric_points WHERE run = 'sec-run'").result_rows == [(20,)]
    # The rollup's view runs as its definer (the migrator), not as the writer, who has no grant on it.
    assert client.query("SELECT sum(count) FROM metric_rollup_1m WHERE run = 'sec-run'").result_rows == [(20,)]
    writer_password = local_password_file(secure.secrets_dir, "trainmon_writer").read_text().strip()
    assert writer_password not in caplog.text


# --- least privilege -------------------------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "INSERT INTO runs (project, run) VALUES ('x', 'y')",
    "ALTER TABLE runs ADD COLUMN leak UInt8",
    "ALTER TABLE runs DELETE WHERE 1",
    "DROP TABLE runs",
    f"DROP DATABASE {DATABASE}",
    f"CREATE TABLE {DATABASE}.leak (a UInt8) ENGINE = Memory",
    "TRUNCATE TABLE runs",
])
def test_the_reader_cannot_insert_alter_drop_or_create(secure, statement):
    reader = connect(secure.dashboard_reader)
    assert reader.query("SELECT count() >= 0 FROM runs").result_rows == [(1,)]
    message = refusal(statement, reader)
    assert "Code: 497" in message and "reader: Not enough privileges" in message, message


def test_the_reader_runs_under_limits_it_cannot_lift(secure):
    reader = connect(secure.dashboard_reader)
    limits = reader.query("SELECT getSetting('max_execution_time'), getSetting('max_memory_usage')").result_rows
    assert limits == [(30, 2 * 2**30)]
    assert "Code: 164" in refusal("SET max_memory_usage = 0", reader)  # READONLY


@pytest.mark.parametrize("statement", ["DROP TABLE runs", "ALTER TABLE runs ADD COLUMN leak UInt8",
                                       f"CREATE TABLE {DATABASE}.leak (a UInt8) ENGINE = MergeTree ORDER BY a"])
def test_the_writer_cannot_change_the_schema(secure, statement):
    assert "trainmon_writer: Not enough privileges" in refusal(statement, connect(secure))


@pytest.mark.parametrize("statement", [f"SELECT count() FROM {DATABASE}.runs", "SELECT query FROM system.processes",
                                       f"INSERT INTO {DATABASE}.runs (project, run) VALUES ('x', 'y')"])
def test_default_the_engines_own_login_holds_no_data(secure, statement):
    # Without a password (the engine's session needs it so), but with nothing to read or write.
    engine = connect(secure.replace(clickhouse_url=f"https://127.0.0.1:{HTTP_PORT}",
                                    clickhouse_ca_file=str(secure.local_ca)))
    assert engine.query("SELECT currentUser()").result_rows == [("default",)]
    assert "default: Not enough privileges" in refusal(statement, engine)


def test_migrations_run_as_the_migrator_from_the_cli(secure, tmp_path, capsys):
    config = toml(tmp_path, secure)
    assert main(["--config", str(config), "db", "migrate"]) == 0
    assert f"db: {DATABASE} at version" in capsys.readouterr().out
    assert main(["--config", str(config), "db", "status"]) == 0
    assert capsys.readouterr().out.startswith("0001 schema_v1")


# --- refusals that say what to do, and hold no secret ------------------------------------------------

def test_a_wrong_password_is_refused_with_a_clear_error(secure):
    with pytest.raises(ClickHouseAccessError) as refused:
        connect(secure.replace(clickhouse_password=WRONG))
    message = str(refused.value)
    assert f"ClickHouse at https://127.0.0.1:{HTTP_PORT} refused user 'trainmon_writer'" in message
    assert "AUTHENTICATION_FAILED" in message and "came from a password setting" in message
    assert WRONG not in message


def test_the_cli_names_the_password_file_never_the_password(secure, tmp_path, capsys):
    wrong = tmp_path / "migrator.password"
    wrong.write_text(WRONG + "\n")
    config = toml(tmp_path, secure, f'migrations_user = "trainmon_migrator"\nmigrations_password_file = "{wrong}"\n')
    assert main(["--config", str(config), "db", "migrate"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"trainmon: error: ClickHouse at https://127.0.0.1:{HTTP_PORT} refused user "
                          "'trainmon_migrator'") and str(wrong) in err
    assert WRONG not in out + err


def test_a_failed_connection_holds_the_stream_and_logs_no_password(secure, caplog):
    caplog.set_level(logging.DEBUG)
    attempts = []

    def client_factory(settings: Settings):
        attempts.append(1)
        if len(attempts) > 3:  # enough of holding the stream: end the test's retry loop
            raise RuntimeError("test over")
        return connect(settings)

    sink = ClickHouseSink(secure.replace(clickhouse_password=WRONG), client_factory=client_factory,
                          max_backoff_s=0.01)
    sink.write(metrics_batch("sink", "sec-wrong", range(1), "sec.wrong"))
    assert len(attempts) > 3  # a refused login is retried like a server that is away, never dead-lettered at once
    assert "refused user 'trainmon_writer'" in caplog.text
    assert WRONG not in caplog.text


# --- a team's dashboard sees its projects only --------------------------------------------------------

def test_a_team_reader_sees_only_its_projects(secure, tmp_path):
    writer = connect(secure)
    writer.insert("runs", [["team-a", "run-a", "running"], ["team-b", "run-b", "running"]],
                  column_names=["project", "run", "status"])
    for project in ("team-a", "team-b"):
        ClickHouseSink(secure).write(metrics_batch(project, f"{project}-run", range(3), f"sec.{project}"))
    mine = Queries(connect(team(secure, tmp_path).dashboard_reader))
    assert [p for p in mine.projects() if p.startswith("team-")] == ["team-a"]
    assert mine.client.query("SELECT DISTINCT project FROM metric_points").result_rows == [("team-a",)]
    everyone = Queries(connect(secure.dashboard_reader))
    assert [p for p in everyone.projects() if p.startswith("team-")] == ["team-a", "team-b"]


def test_the_team_dashboard_lists_its_runs_only_and_a_refused_login_shows_no_password(secure, tmp_path,
                                                                                      monkeypatch):
    from streamlit.testing.v1 import AppTest

    now = datetime.now(timezone.utc)
    rows = [["team-a", "dash-a", "running", now, now], ["team-b", "dash-b", "running", now, now]]
    connect(secure).insert("runs", rows, column_names=["project", "run", "status", "started_at", "last_seen"])
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    for field in ("services_home", "services_secure", "services_clickhouse_http_port", "services_clickhouse_tcp_port",
                  "clickhouse_database"):
        monkeypatch.setenv(env_name(field), str(getattr(secure, field)))
    mine = team(secure, tmp_path)
    monkeypatch.setenv("TRAINMON_DASHBOARD_CLICKHOUSE_USER", TEAM)
    monkeypatch.setenv("TRAINMON_DASHBOARD_CLICKHOUSE_PASSWORD_FILE", mine.dashboard_clickhouse_password_file)
    monkeypatch.setenv("TRAINMON_DASHBOARD_REFRESH_S", "0")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    runs = {link.split("run=")[-1] for link in at.dataframe[0].value["run"]}
    assert "dash-a" in runs and "dash-b" not in runs

    wrong = tmp_path / "wrong.password"
    wrong.write_text(WRONG + "\n")
    monkeypatch.setenv("TRAINMON_DASHBOARD_CLICKHOUSE_PASSWORD_FILE", str(wrong))
    at = AppTest.from_file(APP, default_timeout=60).run()
    shown = " ".join(str(element.value) for element in (*at.error, *at.caption, *at.markdown))
    assert f"refused user '{TEAM}'" in shown and str(wrong) in shown
    assert WRONG not in shown and not at.exception


def test_the_team_policy_names_every_table_with_a_project_column(secure):
    tables = connect(secure).query(
        "SELECT DISTINCT c.table FROM system.columns AS c JOIN system.tables AS t "
        "ON c.database = t.database AND c.table = t.name "
        "WHERE c.database = {db:String} AND c.name = 'project' AND t.engine NOT LIKE '%View' ORDER BY c.table",
        parameters={"db": DATABASE}).result_rows
    assert tuple(t for (t,) in tables) == PROJECT_TABLES


# --- TLS ---------------------------------------------------------------------------------------------

def test_the_secure_stack_serves_https_only_verified_against_its_ca(secure, tmp_path):
    """The engine has no HTTPS listener; the server process puts a TLS front on the configured port
    (deploy/services/tls_front.py) and the engine behind it on an internal loopback port."""
    assert secure.clickhouse == f"https://127.0.0.1:{HTTP_PORT}"
    assert connect(secure).query("SELECT currentUser()").result_rows == [("trainmon_writer",)]  # CA found alone
    over_tls = secure.replace(clickhouse_url=f"https://127.0.0.1:{HTTP_PORT}", clickhouse_ca_file=str(secure.local_ca),
                              clickhouse_user="trainmon_writer",
                              clickhouse_password_file=str(local_password_file(secure.secrets_dir, "trainmon_writer")))
    assert connect(over_tls).query("SELECT currentUser()").result_rows == [("trainmon_writer",)]
    other_ca = ensure_certificates(tmp_path / "other").ca
    for ca_file, named in (("", "a CA this machine trusts"), (str(other_ca), str(other_ca))):
        with pytest.raises(ClickHouseAccessError) as refused:
            connect(over_tls.replace(clickhouse_ca_file=ca_file))
        assert f"its TLS certificate is not signed by {named}; set [clickhouse] ca_file" in str(refused.value)
    with pytest.raises(Exception) as plaintext:  # the password never travels unencrypted
        connect(over_tls.replace(clickhouse_url=f"http://127.0.0.1:{HTTP_PORT}")).query("SELECT 1")
    assert not isinstance(plaintext.value, AssertionError)