"""deploy/systemd: the agent, processors and dashboard units, and the spool root the agent sweeps.

systemd-analyze verifies each unit (with ExecStart pointed at a stub, since /opt/trainmon is not
installed here); the command lines must be ones trainmon's CLI accepts; every unit is hardened; and
the agent's sweep root is the directory tmpfiles.d makes, shared with the agent's sysusers.d group.
As root, sysusers.d and tmpfiles.d are applied for real to a scratch root, and the agent's uid
replays a training user's spool in the directory they make.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.unit.test_spool import TRAINER, as_user, open_spool, records
from trainmon.agent.orphans import orphaned
from trainmon.agent.sdk import SPOOL_ENV, spool_root
from trainmon.agent.spool import SHARED_ROOT
from trainmon.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = {"agent": "agent", "processors": "process", "dashboard": "dashboard"}  # unit -> sub-command
TMPFILES = SYSTEMD / "tmpfiles.d" / "trainmon.conf"
SYSUSERS = SYSTEMD / "sysusers.d" / "trainmon.conf"


def unit_path(name: str) -> Path:
    return SYSTEMD / f"trainmon-{name}.service"


def directives(path: Path) -> dict[str, list[str]]:
    """'Section.Key' -> its values in order (keys such as Environment= repeat); comments dropped."""
    result: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        result.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return result


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(f"Service.{key}", [])
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def environment(unit: dict[str, list[str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for value in unit.get("Service.Environment", []) for item in shlex.split(value))


def exec_start(unit: dict[str, list[str]]) -> list[str]:
    return shlex.split(one(unit, "ExecStart"))


def config_lines(path: Path) -> list[list[str]]:
    """The fields of each line of a tmpfiles.d / sysusers.d file."""
    return [shlex.split(line) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tool(name: str) -> str:
    """A systemd binary; missing: skipped, or failed under CI=true, where it must be there."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found: install systemd (Debian: apt-get install systemd)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return found


# --- each unit ------------------------------------------------------------------------------------------


def test_all_three_units_exist():
    assert {path.name for path in SYSTEMD.glob("*.service")} == {unit_path(name).name for name in UNITS}


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_finds_nothing(name, tmp_path):
    # verify requires ExecStart's binary to exist: point it at a stub, leave the rest as shipped.
    stub = tmp_path / "trainmon"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    binary = exec_start(directives(unit_path(name)))[0]
    copy = tmp_path / unit_path(name).name
    copy.write_text(unit_path(name).read_text().replace(binary, str(stub)))
    result = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit status 0): any line about this unit fails.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if copy.name in line]
    assert result.returncode == 0 and not complaints, "\n".join(complaints) or result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_is_a_command_trainmon_accepts(name):
    argv = exec_start(directives(unit_path(name)))
    assert Path(argv[0]).name == "trainmon" and Path(argv[0]).is_absolute()
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{unit_path(name).name}: `{shlex.join(argv)}` is refused by trainmon's CLI (see its error above)")
    assert args.command == UNITS[name]


@pytest.mark.parametrize("name", UNITS)
def test_every_unit_is_hardened(name):
    unit = directives(unit_path(name))
    required = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "Restart": "always",
                "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
                "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native"}
    assert {key: one(unit, key) for key in required} == required
    assert one(unit, "MemoryMax").rstrip("MG").isdigit()
    assert one(unit, "User") != "root" if "Service.User" in unit else one(unit, "DynamicUser") == "yes"


@pytest.mark.parametrize("name", ["processors", "dashboard"])
def test_services_without_hardware_get_private_tmp_and_devices_and_no_capabilities(name):
    unit = directives(unit_path(name))
    assert one(unit, "PrivateTmp") == one(unit, "PrivateDevices") == "yes"
    assert one(unit, "CapabilityBoundingSet") == ""


def test_the_agent_keeps_tmp_and_devices_and_only_a_read_capability():
    # The SDK's run registry is in /tmp and NVML opens /dev/nvidia*; reading other users' 0700
    # registry directories is all the capability is for.
    unit = directives(unit_path("agent"))
    assert one(unit, "PrivateTmp") == "no" and "Service.PrivateDevices" not in unit
    assert "Service.ProtectClock" not in unit and "Service.DevicePolicy" not in unit, "would hide the GPUs"
    assert one(unit, "AmbientCapabilities") == one(unit, "CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"


# --- the spool root ------------------------------------------------------------------------------------


def test_the_agent_sweeps_the_spool_root_tmpfiles_makes_for_its_group():
    unit = directives(unit_path("agent"))
    (kind, path, mode, owner, group, age), = config_lines(TMPFILES)
    (user_kind, user, *_), = config_lines(SYSUSERS)
    sweep_root = spool_root(environment(unit))  # what the daemon's sweep reads, with the unit's environment
    assert sweep_root == Path(path) and environment(unit)[SPOOL_ENV] == path
    assert kind == "d" and age == "-", "a directory never cleaned by age: undelivered events stay"
    assert int(mode, 8) & SHARED_ROOT == SHARED_ROOT, "setgid + sticky: what the SDK treats as a shared root"
    assert owner == "root" and group == one(unit, "Group") == user and one(unit, "User") == user and user_kind == "u"
    assert path in one(unit, "ReadWritePaths").split(), "ProtectSystem=strict leaves it read-only otherwise"


def test_the_agents_own_spool_is_its_state_directory_outside_the_sweep_root():
    unit = directives(unit_path("agent"))
    spool_dir = Path(build_parser().parse_args(exec_start(unit)[1:]).spool_dir)
    assert spool_dir.is_relative_to(Path("/var/lib") / one(unit, "StateDirectory"))
    assert not spool_dir.is_relative_to(spool_root(environment(unit)))


@pytest.fixture
def scratch_root():
    """An empty root for systemd-sysusers/-tmpfiles --root, reachable by other uids (root only)."""
    if os.geteuid() != 0:
        pytest.skip("creating users and root-owned directories needs root")
    base = Path(tempfile.mkdtemp(prefix="trainmon-systemd-"))
    base.chmod(0o755)
    for path, config in (("etc/sysusers.d", SYSUSERS), ("etc/tmpfiles.d", TMPFILES)):
        (base / path).mkdir(parents=True)
        shutil.copy(config, base / path / "trainmon.conf")
    yield base
    shutil.rmtree(base)


def test_the_agent_user_replays_a_spool_left_in_the_root_tmpfiles_makes(scratch_root):
    for name in ("systemd-sysusers", "systemd-tmpfiles"):
        # With --root a bare file name is looked up in the root's own sysusers.d / tmpfiles.d.
        arguments = [tool(name), f"--root={scratch_root}"] + (["--create"] if name == "systemd-tmpfiles" else [])
        subprocess.run([*arguments, "trainmon.conf"], check=True, capture_output=True, timeout=60)
    (_, path, *_), = config_lines(TMPFILES)
    shared = scratch_root / path.lstrip("/")
    agent = next(line.split(":") for line in (scratch_root / "etc" / "passwd").read_text().splitlines()
                 if line.startswith("trainmon:"))
    uid, gid = int(agent[2]), int(agent[3])
    info = shared.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o3773, 0, gid)

    def train_then_die() -> None:
        spool = open_spool(shared / "proj-run-rank0")
        spool.append(records(2))
        spool._close_fd()  # what SIGKILL leaves: no close()
        spool._lock.close()

    assert as_user(TRAINER, TRAINER, train_then_die) == ("ok", None)
    assert as_user(uid, gid, lambda: [str(p) for p in orphaned(shared)]) == ("ok", [str(shared / "proj-run-rank0")])
