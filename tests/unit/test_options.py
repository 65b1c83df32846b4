"""One declaration per option: the settings of [agent], [processors], [simulate] and [dashboard]
(trainmon/settings.py) are the flags of agent, process, simulate and dashboard, and a value reaches the
daemon, the worker and the simulator alike from the defaults, the config file, the environment or a
flag, each winning over the one before. docs/configuration.md lists every setting."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.unit.test_collectors_gpu import FakeGpu, FakeNvml
from trainmon import cli
from trainmon.agent import collectors
from trainmon.agent.daemon import AgentError, build_collectors
from trainmon.agent.simulator import SimConfig
from trainmon.settings import Settings, SettingsError, env_name, load, option, options

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"agent": "agent", "process": "processors", "simulate": "simulate", "dashboard": "dashboard"}
HANDLERS = {"agent": "_agent", "process": "_process", "simulate": "_simulate", "dashboard": "_dashboard"}
VALID = {"agent_collectors": "host", "processors_loglevel": "debug"}  # str settings with a check: a good value


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No TRAINMON_* variable and no ./trainmon.toml of the developer's: only what a test sets."""
    for name in [name for name in os.environ if name.startswith("TRAINMON_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def flags(field: dataclasses.Field) -> set[str]:
    flag = "--" + field.name.split("_", 1)[1].replace("_", "-")
    return {flag, flag.replace("--", "--no-", 1)} if field.type == "bool" else {flag}


def another_value(field: dataclasses.Field) -> tuple[list[str], Any]:
    """The argv that gives `field` a value other than its default, and that value."""
    flag = min(flags(field), key=len)
    if field.type == "bool":
        return ([flag.replace("--", "--no-", 1)] if field.default else [flag]), not field.default
    if field.type.startswith("int"):
        value: Any = (field.default or 0) + 7
    elif field.type.startswith("float"):
        value = (field.default or 0) + 7.5
    else:
        value = VALID.get(field.name, f"x-{field.name}")
    return [flag, str(value)], value


@pytest.mark.parametrize("command", SECTIONS)
def test_every_setting_of_a_section_is_a_flag_of_its_command_and_back(command: str, clean: pytest.MonkeyPatch) -> None:
    section = SECTIONS[command]
    parser = cli.build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    group = next(g for g in parser._action_groups if g.title == f"[{section}] settings")
    declared = options(section)
    assert declared and {s for a in group._group_actions for s in a.option_strings} == set().union(
        *(flags(f) for f in declared))
    for action, field in zip(group._group_actions, declared):
        key = field.name.split("_", 1)[1]
        assert action.dest == key and action.default is None  # None: "not given", the file decides
        assert f"[{section}] {key}, {env_name(field.name)}" in action.help
    others = {a.dest for a in parser._actions if a not in group._group_actions}
    assert not others & {f.name.split("_", 1)[1] for f in declared}, "a setting also declared by hand"

    seen: list[Settings] = []
    clean.setattr(cli, HANDLERS[command], lambda args, settings: seen.append(settings) or 0)
    for field in declared:
        argv, value = another_value(field)
        assert cli.main([command, *argv]) == 0
        assert getattr(seen[-1], field.name) == value, argv


def received(command: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the daemon, worker, simulator (config, spool_dir) or Streamlit (its command) get from each run."""
    got: list[Any] = []
    if command == "agent":
        import trainmon.agent.daemon as daemon

        monkeypatch.setattr(daemon, "configure_logging", lambda: None)
        monkeypatch.setattr(daemon, "serve", lambda settings, **_: got.append(settings) or 0)
    elif command == "process":
        from trainmon.stream_processors import worker

        monkeypatch.setattr(worker, "run", lambda settings: got.append(settings))
    elif command == "simulate":
        import trainmon.agent.daemon as daemon
        import trainmon.agent.simulator.runner as runner

        monkeypatch.setattr(daemon, "configure_logging", lambda: None)
        monkeypatch.setattr(runner, "serve", lambda settings, config, spool_dir, **_: got.append((config, spool_dir)))
    else:
        monkeypatch.setattr(os, "execv", lambda path, command: got.append(command))
    return got


def after(flag: str) -> Callable[[list[str]], str]:
    return lambda command: command[command.index(flag) + 1]


PRECEDENCE = [  # command, TOML line, environment value, flags, what the receiver got, from each layer
    ("agent", "interval = 2.5", "3.5", ["--interval", "4.5"], lambda s: s.agent_interval, (1.0, 2.5, 3.5, 4.5)),
    ("agent", "pcie = false", "yes", ["--no-pcie"], lambda s: s.agent_pcie, (True, False, True, False)),
    ("agent", 'collectors = "host"', "host,processes", ["--collectors", "processes"], lambda s: s.agent_collectors,
     ("host,processes,gpu", "host", "host,processes", "processes")),
    ("process", "session_timeout = 7", "8", ["--session-timeout", "9"], lambda s: s.processors_session_timeout,
     (6.0, 7.0, 8.0, 9.0)),
    ("process", 'group = "g-file"', "g-env", ["--group", "g-flag"], lambda s: s.processors_group,
     ("trainmon-processors", "g-file", "g-env", "g-flag")),
    ("process", "durable_state = false", "true", ["--no-durable-state"], lambda s: s.processors_durable_state,
     (True, False, True, False)),
    ("simulate", "nodes = 5", "6", ["--nodes", "7"], lambda got: got[0].nodes, (4, 5, 6, 7)),
    ("simulate", "max_rate = 0", "100", ["--max-rate", "250"], lambda got: got[0].max_rate, (None, 0.0, 100.0, 250.0)),
    ("simulate", "heartbeat = 2", "3", ["--heartbeat", "4"], lambda got: got[0].heartbeat, (1.0, 2.0, 3.0, 4.0)),
    ("simulate", 'spool_dir = "/f"', "/e", ["--spool-dir", "/g"], lambda got: got[1],
     (None, Path("/f"), Path("/e"), Path("/g"))),
    ("dashboard", "port = 8601", "8602", ["--port", "8603"], after("--server.port"), ("8501", "8601", "8602", "8603")),
    ("dashboard", 'address = "10.0.0.1"', "10.0.0.2", ["--address", "10.0.0.3"], after("--server.address"),
     ("127.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3")),
]


@pytest.mark.parametrize("command, line, env, argv, read, expected", PRECEDENCE,
                         ids=[f"{case[0]}-{case[1].split()[0]}" for case in PRECEDENCE])
def test_defaults_then_file_then_environment_then_flag(command: str, line: str, env: str, argv: list[str],
                                                      read: Callable[[Any], Any], expected: tuple,
                                                      clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    section = SECTIONS[command]
    got = received(command, clean)
    cli.main([command])
    (tmp_path / "trainmon.toml").write_text(f"[{section}]\n{line}\n")  # ./trainmon.toml: read when present
    cli.main([command])
    clean.setenv(env_name(f"{section}_{line.split()[0]}"), env)
    cli.main([command])
    cli.main([command, *argv])
    assert [read(each) for each in got] == list(expected)


def test_a_bad_value_in_the_file_stops_the_command_naming_file_line_and_key(clean: pytest.MonkeyPatch,
                                                                           tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[kafka]\nbootstrap_servers = "k:9092"\n\n[agent]\ncollectors = "host,gpus"\n')
    received("agent", clean)
    assert cli.main(["--config", str(config), "agent"]) == 2
    assert capsys.readouterr().err == (f"trainmon: error: {config}:5: [agent] collectors: unknown collector(s) gpus; "
                                       "known: host, processes, gpu\n")


@pytest.mark.parametrize("argv, message", [
    (["agent", "--interval", "0"], "argument --interval: must be > 0, got 0"),
    (["agent", "--collectors", "host,host"], "argument --collectors: names a collector twice"),
    (["process", "--loglevel", "loud"], "argument --loglevel: must be one of debug, info, warning, error"),
    (["process", "--batch-events", "0"], "argument --batch-events: must be at least 1, got 0"),
    (["simulate", "--duration", "inf"], "argument --duration: expected a finite number"),
    (["simulate", "--steps", ""], "argument --steps: expected a value, got an empty one"),
    (["dashboard", "--port", "http"], "argument --port: expected an integer"),
])
def test_a_bad_flag_is_refused_as_the_same_value_in_the_file_would_be(argv: list[str], message: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_sim_config_is_the_simulate_settings() -> None:
    taken = {f"simulate_{f.name}" for f in dataclasses.fields(SimConfig)} - {"simulate_faults", "simulate_hazards"}
    assert taken == {f.name for f in options("simulate")} - {"simulate_spool_dir"}  # the spool is the publisher's
    assert SimConfig() == SimConfig.from_settings(Settings())  # the same defaults, written once
    config = SimConfig.from_settings(Settings(simulate_nodes=3, simulate_steps=50, simulate_heartbeat=2.0),
                                     hazards=("eval",))
    assert (config.nodes, config.steps, config.heartbeat, config.hazards) == (3, 50, 2.0, ("eval",))


def test_the_worker_is_made_as_the_processors_settings_say(tmp_path: Path) -> None:
    from trainmon.stream_processors.app import create_app
    from trainmon.stream_processors.config import load_pipeline

    settings = Settings(services_home=str(tmp_path), kafka_bootstrap_servers="127.0.0.1:1",
                        processors_group="g-7", processors_web_port=6067, processors_session_timeout=9.0)
    app = create_app(settings, load_pipeline(), None)
    assert (app.conf.id, app.processing.group) == ("g-7", "g-7")
    assert (app.conf.web_enabled, app.conf.web_port, app.conf.broker_session_timeout) == (True, 6067, 9.0)
    assert create_app(settings.replace(processors_web_port=None), load_pipeline(), None).conf.web_enabled is False


def test_the_daemon_builds_the_collectors_the_settings_name_from_the_registry() -> None:
    built = build_collectors(Settings(agent_collectors="processes,host"), pids=dict)
    assert [c.name for c in built.collectors] == ["processes", "host"]
    built.close()
    calls = {}
    for pcie in (True, False):
        nvml = FakeNvml([FakeGpu(0)])
        built = build_collectors(Settings(agent_collectors="gpu", agent_pcie=pcie), pids=dict, nvml=nvml)
        built.collect(0.0)
        built.close()
        calls[pcie] = {function for function, _ in nvml.calls}
    assert "nvmlDeviceGetPcieThroughput" in calls[True] - calls[False]
    with pytest.raises(AgentError, match=r"\[agent\] collectors 'host,disk': unknown collector\(s\) disk"):
        build_collectors(Settings(agent_collectors="host,disk"), pids=dict)  # made in code, not loaded


@pytest.mark.parametrize("text, message", [
    ("host, gpus", "unknown collector(s) gpus; known: host, processes, gpu"),
    ("host,host", "names a collector twice"),
    (" , ", "names no collector"),
])
def test_collector_names_are_checked_against_the_registry(text: str, message: str, clean: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        collectors.names(text)
    with pytest.raises(SettingsError, match=re.escape(f"TRAINMON_AGENT_COLLECTORS: {message}")):
        load(environ={"TRAINMON_AGENT_COLLECTORS": text})
    assert collectors.names(" gpu,host ") == ["gpu", "host"]


def test_an_empty_default_must_say_what_it_means() -> None:
    with pytest.raises(TypeError, match="unset"):
        option("", "where to write")
    with pytest.raises(TypeError, match="unset"):
        option(5, "how many", unset="none")


DOC = ROOT / "docs" / "configuration.md"
ROW = re.compile(r"^\| `\[(\w+)\] (\w+)` \| `(\w+)` \| (.*?) \| (.*?) \| .+ \|$")


def test_docs_list_every_setting_with_its_variable_flag_and_default() -> None:
    rows = {f"{m[1]}_{m[2]}": m.groups()[2:] for line in DOC.read_text().splitlines() if (m := ROW.match(line))}
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert sorted(set(fields) - set(rows)) == [], "settings missing from docs/configuration.md"
    assert sorted(set(rows) - set(fields)) == [], "documented keys that are not settings"
    flagged = {name for name, field in fields.items() if "help" in field.metadata}  # option(): a flag
    for name, (env, flag, default) in rows.items():
        field = fields[name]
        assert env == env_name(name)
        assert set(re.findall(r"`(--[\w-]+)`", flag)) == (flags(field) if name in flagged else set()), name
        assert default == ("unset" if field.default is None else f"`{json.dumps(field.default)}`"), name


def test_docs_examples_are_valid_settings(tmp_path: Path) -> None:
    for number, block in enumerate(re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)):
        path = tmp_path / f"example{number}.toml"
        path.write_text(block)
        assert tomllib.loads(block) and load(path, environ={})  # fails naming the key when one is wrong
