"""What init records by itself: code version, software, hardware; every probe failing softly."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from trainmon.agent import environment


def git(directory: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    git(tmp_path, "remote", "add", "origin", "https://user:secret@example.com/org/repo.git")
    (tmp_path / "train.py").write_text("print(1)\n")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_code_version_of_the_scripts_repository(repo: Path) -> None:
    argv = [str(repo / "train.py"), "--lr", "0.1"]
    code = environment.code_version(argv)
    assert code["command"] == argv and len(code["commit"]) == 40
    assert (code["branch"], code["dirty"], code["repository"]) == ("main", False, str(repo))
    assert code["remote"] == "https://example.com/org/repo.git"  # credentials stripped
    (repo / "train.py").write_text("print(2)\n")
    assert environment.code_version(argv)["dirty"] is True


def test_no_repository_or_no_git_leaves_only_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    assert set(environment.code_version([str(script)])) <= {"command", "cwd"}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert "commit" not in environment.code_version([str(script)])


def test_packages_by_metadata_without_importing() -> None:
    found = environment.packages(("trainmon", "pytest", "surely-not-installed-pkg"))
    assert set(found) == {"trainmon", "pytest"}
    assert "surely_not_installed_pkg" not in sys.modules


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert environment.cpu_model(str(cpuinfo)) == "AMD EPYC 9654 96-Core Processor"
    assert environment.cpu_model(str(tmp_path / "missing")) == (platform.processor() or None)


def test_environment_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(environment, "_gpu_inventory", lambda: {"driver_version": "550.54", "gpus": []})
    env = environment.environment({"launcher": "torchrun"})
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["cpu_count"] >= 1 and env["mem_total_bytes"] > 0
    assert env["variables"] == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert env["gpu"]["driver_version"] == "550.54" and env["launch"] == {"launcher": "torchrun"}


def test_a_failing_probe_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("NVML exploded")

    monkeypatch.setattr(environment, "_gpu_inventory", broken)
    monkeypatch.setattr(environment, "cpu_model", broken)
    env = environment.environment()
    assert "gpu" not in env and "cpu_model" not in env and env["python"]
