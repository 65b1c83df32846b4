"""What a run records about itself at init: code version, command line, software and hardware.

A researcher comparing runs weeks later needs these without having thought of logging them. Every
probe is guarded and bounded (git gets a short timeout, packages are looked up by metadata and never
imported), so a missing tool or an odd machine leaves a fact out instead of failing `trainmon.init`.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("trainmon.sdk")

GIT_TIMEOUT_S = 2.0
# Distribution names whose versions decide whether two runs are comparable; looked up, never imported.
PACKAGES = ("trainmon", "torch", "torchvision", "numpy", "jax", "jaxlib", "flax", "tensorflow", "keras",
            "transformers", "accelerate", "deepspeed", "datasets", "lightning", "pytorch-lightning",
            "scikit-learn", "triton", "nvidia-nccl-cu12", "nvidia-cudnn-cu12")
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS")  # never secrets


def guarded(probe: Callable[[], Any], what: str) -> Any:
    """The probe's answer, or None when it fails for any reason (logged at debug)."""
    try:
        return probe()
    except Exception as exc:
        log.debug("left out %s: %s", what, exc)
        return None


def _git(directory: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                          timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return done.stdout.strip() if done.returncode == 0 else None


def _without_credentials(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)  # https://user:token@host/... -> https://host/...


def script_directory(argv: Sequence[str]) -> Path:
    """Where the training script lives (its repository is the code version), else the cwd."""
    if argv and argv[0] and Path(argv[0]).is_file():
        return Path(argv[0]).resolve().parent
    return Path.cwd()


def code_version(argv: Sequence[str]) -> dict[str, Any]:
    """Git commit, branch, dirty flag (tracked files only) and remote of the script's repository,
    plus the command line. No git, no repository or a slow repository: only the command line."""
    code: dict[str, Any] = {"command": list(argv)}
    cwd = guarded(os.getcwd, "cwd")
    if cwd:
        code["cwd"] = cwd
    directory = script_directory(argv)
    head = guarded(lambda: _git(directory, "rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"), "git")
    lines = head.splitlines() if head else []
    if len(lines) != 3:
        return code
    code.update(repository=lines[0], commit=lines[1], branch=lines[2])
    status = guarded(lambda: _git(directory, "status", "--porcelain", "--untracked-files=no"), "git status")
    if status is not None:
        code["dirty"] = bool(status)
    remote = guarded(lambda: _git(directory, "config", "--get", "remote.origin.url"), "git remote")
    if remote:
        code["remote"] = _without_credentials(remote)
    return code


def packages(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that matter, from metadata (importing torch takes seconds)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except Exception:  # PackageNotFoundError, or a broken dist-info
            pass
    return found


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_total_bytes() -> int | None:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _gpu_inventory() -> dict[str, Any]:
    from trainmon.agent.collectors.gpu import gpu_inventory  # imports pynvml only now

    return gpu_inventory()


def environment(launch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Python, packages, OS, CPU, memory, GPUs (driver and CUDA versions via NVML) and launch facts."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": guarded(platform.platform, "platform"),
        "packages": guarded(packages, "packages"),
        "cpu_model": guarded(cpu_model, "cpu model"),
        "cpu_count": os.cpu_count(),
        "cpu_usable": guarded(_usable_cpus, "cpu affinity"),
        "mem_total_bytes": guarded(memory_total_bytes, "memory"),
        "pid": os.getpid(),
        "variables": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }
    gpus = guarded(_gpu_inventory, "GPU inventory")
    if gpus:
        env["gpu"] = gpus
    if launch:
        env["launch"] = launch
    return {key: value for key, value in env.items() if value is not None}


def user() -> str | None:
    """The login name; None in containers without a passwd entry for the uid."""
    return guarded(getpass.getuser, "user")
