"""The wheel `pip install trainmon` gets: everything inside the `trainmon` package (PyPI has
distributions named agent, dashboard and deploy), and it works without the checkout beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the files git would ship (tracked or not ignored): a stale build/ folder
    of the checkout must not leak old files into what is checked."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, timeout=240)
    (built,) = out.glob("trainmon-*.whl")
    return built


def test_the_wheel_puts_nothing_beside_the_trainmon_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"trainmon", wheel.name.split("-py")[0] + ".dist-info"}
    for needed in ("trainmon/agent/sdk.py", "trainmon/agent/integrations/lightning_logger.py", "trainmon/stream_processors/pipeline.yml",
                   "trainmon/dashboard/app.py", "trainmon/dashboard/views/run.py",
                   "trainmon/deploy/clickhouse/migrations/0001_schema_v1.sql",
                   "trainmon/deploy/docker/clickhouse/users.xml", "trainmon/deploy/alertmanager/install.sh"):
        assert needed in names, needed
    assert not [name for name in names if name.startswith("trainmon/deploy/helm/")]  # installed from the repo


def test_the_installed_package_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """Unpacked as pip would install it, with no site hooks (no editable finder) and away from the
    checkout: the CLI, the SDK, the migrations and the dashboard's pages are all found inside it."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    dependencies = sysconfig.get_paths()["purelib"]
    probe = ("import trainmon.cli, trainmon.agent.sdk, trainmon.stream_processors.app; "
             "from trainmon.deploy import migrate; from trainmon import dashboard; import pathlib, sys; "
             "assert migrate.discover(), 'no migrations'; "
             "assert (pathlib.Path(dashboard.__file__).parent / 'views' / 'alerts.py').exists(); "
             "print(trainmon.agent.sdk.__file__); "
             "import importlib.util; print(importlib.util.find_spec('agent'), importlib.util.find_spec('deploy'))")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{dependencies}"}
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(str(site / "trainmon" / "agent"))
    assert second == "None None"
    helped = subprocess.run([sys.executable, "-S", "-c", "from trainmon.cli import main; main(['--help'])"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "usage: trainmon" in helped.stdout, helped.stderr
