"""Local registration of training processes, so the node daemon can tag samples with their runs.

The SDK writes `<registry dir>/<pid>.json` at init and removes it at finish; the daemon reads the
directory (it needs no connection to the training processes). A file whose process is gone, or whose
pid now belongs to another process (pid reuse, told apart by the process start time), is pruned.

Directory: $TRAINMON_REGISTRY_DIR, else `/tmp/trainmon-<uid>/procs` (mode 0700, per user, so users
cannot forge each other's entries). The daemon reads $TRAINMON_REGISTRY_DIR, else every
`/tmp/trainmon-*/procs` it can read: as root it sees every user's training processes.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger("trainmon.agent")

REGISTRY_ENV = "TRAINMON_REGISTRY_DIR"
_DEFAULT_ROOT = Path("/tmp")


def _default_dir() -> Path:
    return _DEFAULT_ROOT / f"trainmon-{os.getuid()}" / "procs"


def registry_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get(REGISTRY_ENV)
    return Path(configured) if configured else _default_dir()


def registry_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where the daemon looks: the configured directory, else every user's default one."""
    environ = os.environ if environ is None else environ
    if environ.get(REGISTRY_ENV):
        return [Path(environ[REGISTRY_ENV])]
    return sorted(_DEFAULT_ROOT.glob("trainmon-*/procs"))


def process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22); None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    try:  # the command name may contain spaces and parentheses: count fields after the last ")"
        return int(stat[stat.rfind(b")") + 2:].split()[19])
    except (IndexError, ValueError):
        return None


def _private_dir(directory: Path) -> None:
    """Create the directory 0700. The default one lives in shared /tmp: refuse it (and its parent)
    if it is a link, someone else's, or writable by others. A configured directory is the
    administrator's choice and used as it is."""
    if directory != _default_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    for path in (directory.parent, directory):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(f"{path} is not a directory private to uid {os.getuid()}")


def register(record: dict[str, Any], directory: Path | None = None) -> Path:
    """Write this process's entry atomically; returns its path. Raises OSError on failure."""
    directory = directory or registry_dir()
    _private_dir(directory)
    pid = os.getpid()
    entry = {"pid": pid, "started": time.time(), "proc_start": process_start(pid), **record}
    path = directory / f"{pid}.json"
    temporary = directory / f".{pid}.json.tmp"
    temporary.write_text(json.dumps(entry))
    os.replace(temporary, path)
    return path


def unregister(path: Path, run: str) -> None:
    """Remove the entry if it is still this run's (a later init in the same process replaced it)."""
    try:
        if json.loads(path.read_text()).get("run") == run:
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(entry: Mapping[str, Any], owner: int) -> bool:
    pid = entry["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    start = process_start(pid)
    if start is not None and entry.get("proc_start") not in (None, start):
        return False  # the pid was reused
    try:
        return os.stat(f"/proc/{pid}").st_uid == owner  # an entry may only name its owner's processes
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc: trust kill(0)


def active_processes(directories: Iterable[Path] | None = None) -> dict[int, str]:
    """pid -> run id of the live training processes on this node; prunes entries of dead pids."""
    active: dict[int, str] = {}
    for directory in registry_dirs() if directories is None else directories:
        try:
            paths = list(directory.glob("*.json"))
        except OSError:
            continue
        for path in paths:
            try:
                owner = path.stat().st_uid
                entry = json.loads(path.read_text())
                pid, run = entry["pid"], entry["run"]
                if type(pid) is not int or type(run) is not str or path.stem != str(pid):
                    raise ValueError("malformed entry")
            except FileNotFoundError:
                continue  # removed meanwhile
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("registry: skipped %s: %s", path, exc)
                continue
            if _alive(entry, owner):
                active[pid] = run
            else:
                try:
                    path.unlink()
                except OSError:
                    pass
    return active
