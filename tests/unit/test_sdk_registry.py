"""The local registry the node daemon reads to tag samples with the runs active on the node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainmon
from trainmon.agent import registry


class NullPublisher:
    def publish(self, event: dict) -> bool:
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        pass


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_init_registers_and_finish_removes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINMON_REGISTRY_DIR", str(tmp_path))
    run = trainmon.init("llm", run_id="r-1", rank=3, world_size=4, local_rank=1, publisher=NullPublisher(),
                        heartbeat_s=60)
    entry = json.loads((tmp_path / f"{os.getpid()}.json").read_text())
    assert {key: entry[key] for key in ("pid", "project", "run", "rank", "local_rank")} == {
        "pid": os.getpid(), "project": "llm", "run": "r-1", "rank": 3, "local_rank": 1}
    assert entry["started"] > 0
    assert registry.active_processes([tmp_path]) == {os.getpid(): "r-1"}
    run.finish()
    assert list(tmp_path.iterdir()) == []


class ListPublisher(NullPublisher):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def publish(self, event: dict) -> bool:
        self.events.append(event)
        return True


def test_run_start_names_the_pid_the_daemon_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The liveness rule matches run_start's pid against the node's process list (the registry's)."""
    monkeypatch.setenv("TRAINMON_REGISTRY_DIR", str(tmp_path))
    publisher = ListPublisher()
    run = trainmon.init("llm", run_id="r-1", publisher=publisher, heartbeat_s=60)
    start = next(event for event in publisher.events if event["kind"] == "run_start")
    assert registry.active_processes([tmp_path]) == {start["pid"]: "r-1"}
    run.finish()


def test_finish_of_an_older_run_keeps_the_newer_runs_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINMON_REGISTRY_DIR", str(tmp_path))
    first = trainmon.init("llm", run_id="a", publisher=NullPublisher(), heartbeat_s=60)
    second = trainmon.init("llm", run_id="b", publisher=NullPublisher(), heartbeat_s=60)
    first.finish()
    assert registry.active_processes([tmp_path]) == {os.getpid(): "b"}
    second.finish()


def test_dead_and_reused_pids_are_pruned(tmp_path: Path) -> None:
    gone = dead_pid()
    (tmp_path / f"{gone}.json").write_text(json.dumps({"pid": gone, "run": "old"}))
    reused = {"pid": os.getpid(), "run": "older", "proc_start": -1}  # our pid, another start time
    (tmp_path / f"{os.getpid()}.json").write_text(json.dumps(reused))
    assert registry.active_processes([tmp_path]) == {}
    assert list(tmp_path.iterdir()) == []


def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text("{not json")
    (tmp_path / "2.json").write_text(json.dumps({"pid": 3, "run": "x"}))  # name and pid disagree
    registry.register({"run": "good"}, tmp_path)
    assert registry.active_processes([tmp_path]) == {os.getpid(): "good"}
    assert registry.active_processes([tmp_path / "missing"]) == {}


def test_default_directory_is_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_DEFAULT_ROOT", tmp_path)
    path = registry.register({"run": "r"}, registry.registry_dir({}))
    assert path.parent == tmp_path / f"trainmon-{os.getuid()}" / "procs"
    assert path.parent.stat().st_mode & 0o777 == 0o700 and path.parent.parent.stat().st_mode & 0o777 == 0o700
    assert registry.registry_dirs({}) == [path.parent]
    path.parent.parent.chmod(0o777)  # someone made it writable for others: refused
    with pytest.raises(PermissionError):
        registry.register({"run": "r"}, registry.registry_dir({}))


def test_configured_directory(tmp_path: Path) -> None:
    environ = {"TRAINMON_REGISTRY_DIR": str(tmp_path / "x")}
    assert registry.registry_dir(environ) == tmp_path / "x"
    assert registry.registry_dirs(environ) == [tmp_path / "x"]


def test_unwritable_registry_does_not_stop_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TRAINMON_REGISTRY_DIR", str(blocker / "procs"))  # a directory under a file
    run = trainmon.init("llm", publisher=NullPublisher(), heartbeat_s=60)
    run.log({"a": 1.0})
    run.finish()
