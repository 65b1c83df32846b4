"""Settings: file then environment override defaults; bad config fails naming file, line and key."""

from __future__ import annotations

import pytest

from trainmon.settings import Settings, SettingsError, load


def test_defaults_point_at_the_local_stack():
    settings = load(environ={})
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.clickhouse == "http://127.0.0.1:8123"
    assert settings.kafka_topic_prefix == "trainmon."


def test_file_then_environment(tmp_path):
    config = tmp_path / "trainmon.toml"
    config.write_text('[kafka]\nbootstrap_servers = "k1:9092,k2:9092"\npartitions = 24\n'
                      '[clickhouse]\nurl = "https://ch.example:8443"\n[services]\nkafka_port = 19092\n')
    settings = load(config, environ={"TRAINMON_KAFKA_PARTITIONS": "48", "TRAINMON_CLICKHOUSE_DATABASE": "tm"})
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka_partitions == 48
    assert settings.clickhouse == "https://ch.example:8443"
    assert settings.clickhouse_database == "tm"
    assert settings.services_kafka_port == 19092


def test_local_addresses_follow_the_service_ports():
    settings = load(environ={"TRAINMON_SERVICES_KAFKA_PORT": "29092", "TRAINMON_SERVICES_CLICKHOUSE_HTTP_PORT": "28123"})
    assert settings.bootstrap_servers == "127.0.0.1:29092"
    assert settings.clickhouse == "http://127.0.0.1:28123"


@pytest.mark.parametrize(
    "body,expected",
    [
        ('[kafka]\nbootstrap_servers = "x"\npartitons = 3\n', ":3: [kafka] partitons: unknown key"),
        ("[kafka]\npartitions = \"many\"\n", ":2: [kafka] partitions: expected an integer"),
        ("[kafka]\npartitions = -1\n", "must be >= 0"),
        ("[clickhouse]\nurl = 5\n", "[clickhouse] url: expected a string"),
        ("[metrics]\nx = 1\n", "unknown section [metrics]"),
        ("[kafka\n", "not valid TOML"),
        ("[agent]\ninterval = 0\n", ":2: [agent] interval: must be > 0, got 0"),
        ("[processors]\nsession_timeout = 2.5\n", ":2: [processors] session_timeout: must be at least 3, got 2.5"),
        ('[processors]\nloglevel = "loud"\n', "[processors] loglevel: must be one of debug, info, warning, error"),
        ("[simulate]\nduration = nan\n", ":2: [simulate] duration: expected a finite number"),
        ("[simulate]\nmax_rate = true\n", "[simulate] max_rate: expected a number, got True"),
    ],
)
def test_bad_config_fails_fast_naming_file_line_and_key(tmp_path, body, expected):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    with pytest.raises(SettingsError) as caught:
        load(config, environ={})
    assert str(config) in str(caught.value)
    assert expected in str(caught.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(SettingsError, match="TRAINMON_KAFKA_PARTITIONS: expected an integer"):
        load(environ={"TRAINMON_KAFKA_PARTITIONS": "six"})
    with pytest.raises(SettingsError, match="TRAINMON_SIMULATE_NODES: must be at least 1, got 0"):
        load(environ={"TRAINMON_SIMULATE_NODES": "0"})


def test_optional_numbers_are_unset_until_given_and_by_an_empty_value(tmp_path):
    config = tmp_path / "trainmon.toml"
    config.write_text("[simulate]\nsteps = 10\nmax_rate = 0\n")
    assert load(environ={}).simulate_steps is None
    assert (load(config, environ={}).simulate_steps, load(config, environ={}).simulate_max_rate) == (10, 0.0)
    unset = load(config, environ={"TRAINMON_SIMULATE_STEPS": "", "TRAINMON_SIMULATE_MAX_RATE": "2.5"})
    assert (unset.simulate_steps, unset.simulate_max_rate) == (None, 2.5)


def test_missing_config_file_says_so(tmp_path):
    with pytest.raises(SettingsError, match="config file not found"):
        load(environ={"TRAINMON_CONFIG": str(tmp_path / "nope.toml")})


def test_local_cluster_bootstrap_lists_every_node():
    settings = Settings(services_kafka_port=39092, services_kafka_brokers=3)
    assert settings.bootstrap_servers == "127.0.0.1:39092,127.0.0.1:39192,127.0.0.1:39292"
    assert Settings(services_kafka_brokers=3, kafka_bootstrap_servers="k:9092").bootstrap_servers == "k:9092"


def test_environment_hands_settings_to_a_child_process_unchanged(tmp_path):
    """What a worker or trainer started by trainmon (demo, tests, benchmarks) reads back: the same
    settings, optional values left unset, booleans and numbers as the loader takes them."""
    from trainmon.settings import environment

    settings = Settings(services_secure=True, kafka_partitions=4, simulate_step_interval=0.25,
                        processors_web_port=None, kafka_sasl_username="u")
    env = environment(settings)
    assert "TRAINMON_PROCESSORS_WEB_PORT" not in env and env["TRAINMON_SERVICES_SECURE"] == "true"
    assert load(environ=env) == settings
    assert load(environ=environment(Settings())) == Settings()
