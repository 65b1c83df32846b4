"""The pipeline file: the shipped one loads (and its commented examples too); every kind of mistake is
refused at start with the file, the line and the key."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from trainmon.stream_processors.config import DEFAULT_PIPELINE, PipelineConfigError, load_pipeline
from trainmon.stream_processors.rules import RULE_KINDS, build_rule
from trainmon.errors import TrainmonError
from trainmon.settings import Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_shipped_file_loads_with_every_rule_kind() -> None:
    config = load_pipeline(settings=Settings())
    assert config.path == str(DEFAULT_PIPELINE)
    assert {rule.kind for rule in config.rules} == set(RULE_KINDS)
    assert config.windows_s == [10.0, 60.0, 300.0]
    assert (config.repeat_interval_s, config.dashboard_url) == (3600.0, "http://127.0.0.1:8501")
    assert [(r.kind, r.url) for r in config.routes] == [("alertmanager", "http://127.0.0.1:9094")]
    for rule in config.rules:
        assert {"summary", "description"} <= set(rule.annotations), rule.name
        build_rule(rule)
    by_name = {rule.name: rule for rule in config.rules}
    assert by_name["gpu_memory_high"].for_s == 10 and by_name["disk_full"].for_s == 300
    assert by_name["loss_non_finite"].severity == "critical"


def test_shipped_example_routes_validate_once_uncommented(tmp_path: Path) -> None:
    text = re.sub(r"(?m)^  # (  |- )", r"  \1", DEFAULT_PIPELINE.read_text())
    environ = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x", "PAGERDUTY_ROUTING_KEY": "k" * 32,
               "TRAINMON_WEBHOOK_SECRET": "s3cret"}
    config = load_pipeline(write(tmp_path, text), environ=environ)
    assert [r.kind for r in config.routes] == ["alertmanager", "slack", "pagerduty", "webhook"]
    slack, pagerduty, webhook = config.routes[1:]
    assert slack.url == environ["SLACK_WEBHOOK_URL"] and slack.match == {"severity": ["critical", "warning"]}
    assert pagerduty.params == {"routing_key": "k" * 32}
    assert (webhook.timeout_s, webhook.retries, webhook.backoff_s) == (5.0, 5, 0.5)


def test_defaults_durations_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, """
        windows: [30, 2m, 1h]
        alerting: {repeat_interval: 90m, dashboard_url: "https://dash.example/"}
        rules:
          - name: gpu_idle
            kind: idle_gpu
          - name: nan
            kind: non_finite
            labels: {team: "${TEAM}"}
        routes:
          - {name: hook, kind: webhook, url: "${HOOK_URL}", params: {secret: x}}
    """)
    config = load_pipeline(path, environ={"TEAM": "ml-infra", "HOOK_URL": "http://127.0.0.1:9/h"})
    assert config.windows_s == [30.0, 120.0, 3600.0]
    assert (config.repeat_interval_s, config.dashboard_url) == (5400.0, "https://dash.example")
    idle, nan = config.rules
    assert (idle.severity, idle.for_s, nan.severity, nan.for_s) == ("warning", 300.0, "critical", 0.0)
    assert nan.labels == {"team": "ml-infra"} and config.routes[0].url == "http://127.0.0.1:9/h"
    empty = load_pipeline(write(tmp_path, "# nothing configured\n"))
    assert (empty.rules, empty.routes, empty.windows_s) == ([], [], [10.0, 60.0, 300.0])


BASE = """
rules:
  - name: loss_plateau
    kind: plateau
    params: {patience: 5}
  - name: gpu_hot
    kind: threshold
    for: 1m
    selector:
      figure: temperature_c
    params:
      value: 85
routes:
  - name: am
    kind: alertmanager
    url: http://127.0.0.1:9094
"""

ERRORS = [
    # (replace this, with this, line, key path, message)
    ("rules:\n", "rulez:\n", 1, "rulez", "unknown key (known: windows, alerting, rules, routes, incidents)"),
    ("rules:\n", "alerting: {repeat: 1h}\nrules:\n", 1, "alerting.repeat", "unknown key (known: repeat_interval"),
    ("  - name: loss_plateau\n    kind: plateau\n", "  - kind: plateau\n", 2, "rules[0]", "missing name"),
    ("    kind: plateau\n", "", 2, "rules[0]", "missing kind"),
    ("kind: plateau", "kind: plateu", 3, "rules[0].kind", "unknown rule kind 'plateu' (known: threshold, "),
    ("    for: 1m\n", "    fro: 1m\n", 7, "rules[1].fro", "unknown key (known: name, kind, severity,"),
    ("{patience: 5}", "{patience: -1}", 4, "rules[0].params.patience", "expected a positive integer, got -1"),
    ("{patience: 5}", "{patience: 5, pateince: 6}", 4, "rules[0].params.pateince", "unknown key (known: "),
    ("      value: 85\n", "      value: hot\n", 11, "rules[1].params.value", "expected a number, got 'hot'"),
    ("      figure: temperature_c\n", "      figure: temperature_c\n      scope: rack\n", 10,
     "rules[1].selector.scope", "expected one of gpu, host, got 'rack'"),
    ("name: gpu_hot", "name: loss_plateau", 5, "rules[1].name", "duplicate name 'loss_plateau'"),
    ("    for: 1m\n", "    for: 1m\n    severity: page\n", 8, "rules[1].severity",
     "expected one of info, warning, critical, got 'page'"),
    ("for: 1m", "for: soon", 7, "rules[1].for", "expected a duration"),
    ("    for: 1m\n", "    for: 1m\n    labels: {team: 42}\n", 8, "rules[1].labels.team", "expected a string"),
    ("    for: 1m\n", "    for: 1m\n    annotations:\n      summary: 'hot {gpu'\n", 9,
     "rules[1].annotations.summary", "bad template"),
    ("kind: alertmanager", "kind: opsgenie", 14, "routes[0].kind",
     "unknown route kind 'opsgenie' (known: alertmanager"),
    ("url: http://127.0.0.1:9094", "url: ftp://127.0.0.1:9094", 15, "routes[0].url", "expected an http:// or https://"),
    ("    kind: alertmanager\n", "    kind: pagerduty\n", 13, "routes[0].params.routing_key", "required"),
    ("    url: http://127.0.0.1:9094\n", "    url: http://127.0.0.1:9094\n    retries: -1\n", 16,
     "routes[0].retries", "expected an integer >= 0, got -1"),
    ("    url: http://127.0.0.1:9094\n", "    url: http://127.0.0.1:9094\n    match: {severity: []}\n", 16,
     "routes[0].match.severity", "expected a non-empty string or a non-empty list"),
    ("url: http://127.0.0.1:9094", "url: ${AM_URL}", 15, "routes[0].url", "environment variable AM_URL is not set"),
    ("url: http://127.0.0.1:9094", "url: ${AM_URL}", 15, "routes[0].url", "(write ${AM_URL:-default} to give"),
    ("url: http://127.0.0.1:9094", "url: ${AM_URL:http://127.0.0.1:9094}", 15, "routes[0].url",
     "bad variable reference '${AM_URL:http://127.0.0.1:9094}': write ${NAME} or ${NAME:-default}"),
    ("url: http://127.0.0.1:9094", "url: http://${AM_HOST:-127.0.0.1:9094", 15, "routes[0].url",
     "bad variable reference '${AM_HOST:-127.0.0.1:9094'"),
    ("url: http://127.0.0.1:9094", "url: ${AM_URL:-${FALLBACK}}", 15, "routes[0].url", "no nesting"),
    ("url: http://127.0.0.1:9094", "url: ${9AM}", 15, "routes[0].url", "bad variable reference '${9AM}'"),
    ("      value: 85\n", "      value: 85\n    labels: {team: '${TEAM}'}\n", 12, "rules[1].labels.team",
     "environment variable TEAM is not set"),
    ("rules:\n", "windows: [10s, fast]\nrules:\n", 1, "windows[1]", "expected a duration"),
    ("rules:\n", "alerting:\n  dashboard_url: 127.0.0.1:8501\nrules:\n", 2, "alerting.dashboard_url",
     "expected an http:// or https:// URL"),
    ("    params: {patience: 5}\n", "    params: {patience: 5}\n    kind: plateau\n", 5, "rules[0].kind", "duplicate key"),
    ("      value: 85\n", "      value: [85\n", 12, "", "not valid YAML"),
]


@pytest.mark.parametrize("old, new, line, key, message", ERRORS, ids=[e[3] or e[4] for e in ERRORS])
def test_errors_name_file_line_and_key(tmp_path: Path, old: str, new: str, line: int, key: str, message: str) -> None:
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(PipelineConfigError) as caught:
        load_pipeline(path, environ={})
    where = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert str(caught.value).startswith(where) and message in str(caught.value), str(caught.value)
    assert isinstance(caught.value, TrainmonError)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineConfigError, match="cannot read the pipeline file"):
        load_pipeline(tmp_path / "absent.yml")


def test_base_document_is_valid(tmp_path: Path) -> None:
    assert [r.name for r in load_pipeline(write(tmp_path, BASE)).rules] == ["loss_plateau", "gpu_hot"]


def test_variable_defaults_are_shell_like(tmp_path: Path) -> None:
    path = write(tmp_path, """
        alerting: {dashboard_url: "${DASH:-http://127.0.0.1:8501/}"}
        rules:
          - name: nan
            kind: non_finite
            labels: {team: "${TEAM:-ml}", env: "${ENV:-}", owner: "${USER_A}-${USER_B:-b}", note: "a:-b ${X:-x y}"}
    """)

    def labels(**environ: str) -> dict[str, str]:
        return load_pipeline(path, environ={"USER_A": "a", **environ}).rules[0].labels

    assert labels() == {"team": "ml", "env": "", "owner": "a-b", "note": "a:-b x y"}
    assert labels(TEAM="infra", ENV="prod", USER_B="c", X="z") == {"team": "infra", "env": "prod", "owner": "a-c",
                                                                  "note": "a:-b z"}
    assert labels(TEAM="", X="")["team"] == "ml"  # set but empty: the default, as ${TEAM:-ml} in the shell
    assert load_pipeline(path, environ={"USER_A": ""}).rules[0].labels["owner"] == "-b"  # ${NAME}: empty is a value
    assert load_pipeline(path, environ={"USER_A": "a", "DASH": "https://dash.example"}).dashboard_url == \
        "https://dash.example"
    with pytest.raises(PipelineConfigError) as caught:
        load_pipeline(path, environ={})
    assert str(caught.value).startswith(f"{path}:5: rules[0].labels.owner: environment variable USER_A is not set")


def alertmanager_url(**kwargs) -> str:
    (route,) = load_pipeline(**kwargs).routes
    assert route.kind == "alertmanager"
    return route.url


def test_shipped_file_follows_the_settings_alertmanager(tmp_path: Path) -> None:
    assert alertmanager_url(environ={}) == "http://127.0.0.1:9094"
    assert alertmanager_url(settings=Settings(services_alertmanager_port=19094)) == "http://127.0.0.1:19094"
    assert alertmanager_url(settings=Settings(alertmanager_url="https://am.example:9093/")) == "https://am.example:9093"
    # Without settings handed in, they are loaded from the environment handed in: file, then variables.
    assert alertmanager_url(environ={"TRAINMON_SERVICES_ALERTMANAGER_PORT": "29094"}) == "http://127.0.0.1:29094"
    assert alertmanager_url(environ={"TRAINMON_ALERTMANAGER_URL": "http://am.internal:9093"}) == \
        "http://am.internal:9093"
    config = tmp_path / "trainmon.toml"
    config.write_text("[services]\nalertmanager_port = 39094\n")
    assert alertmanager_url(environ={"TRAINMON_CONFIG": str(config)}) == "http://127.0.0.1:39094"
    config.write_text("[services]\nalertmanager_port = 39094\n[alertmanager]\nurl = \"https://am.example\"\n")
    assert alertmanager_url(environ={"TRAINMON_CONFIG": str(config)}) == "https://am.example"
    # Settings handed in win over a variable of the same name (they already include the environment).
    assert alertmanager_url(settings=Settings(services_alertmanager_port=19094),
                            environ={"TRAINMON_ALERTMANAGER_URL": "http://elsewhere:1"}) == "http://127.0.0.1:19094"


def test_settings_are_loaded_only_when_the_file_uses_them(tmp_path: Path) -> None:
    missing = {"TRAINMON_CONFIG": str(tmp_path / "absent.toml")}
    assert [r.url for r in load_pipeline(write(tmp_path, BASE), environ=missing).routes] == ["http://127.0.0.1:9094"]
    with pytest.raises(PipelineConfigError) as caught:
        load_pipeline(environ=missing)
    message = str(caught.value)
    assert message.startswith(f"{DEFAULT_PIPELINE}: ${{TRAINMON_ALERTMANAGER_URL}} comes from the settings: ")
    assert "config file not found" in message


@pytest.mark.parametrize("name", ["TRAINMON_KAFKA_SASL_PASSWORD", "TRAINMON_CLICKHOUSE_PASSWORD_FILE",
                                  "TRAINMON_DASHBOARD_CLICKHOUSE_PASSWORD"])
def test_trainmon_credentials_cannot_reach_a_pipeline(tmp_path: Path, name: str) -> None:
    """A rule's annotations and labels travel with every alert: trainmon's own passwords must never
    get there through a variable, even one that is set."""
    path = write(tmp_path, f"""
        rules:
          - name: nan
            kind: non_finite
            annotations: {{summary: "loss is NaN ${{{name}}}"}}
    """)
    with pytest.raises(PipelineConfigError, match=f"{path}:4: rules\\[0\\].annotations.summary: \\${{{name}}} is one of "
                                                  "trainmon's own credentials"):
        load_pipeline(path, environ={name: "hunter2"})
