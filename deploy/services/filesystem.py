"""The filesystem a services home lies on, named in every benchmark's figures.

ClickHouse writes every part as a directory of about a dozen small files. On ext4 without a journal the
kernel's inode allocator steps over every inode freed in the last minute or more, one at a time
(`recently_deleted` in fs/ext4/ialloc.c, checked only when there is no journal): in the minute after a
dropped database ClickHouse's writes cost twice the CPU on the benchmark VM, whose root filesystem is
such a one (docs/benchmarks.md, "The disk under ClickHouse").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
SYSFS = Path("/sys")


@dataclass(frozen=True)
class Filesystem:
    kind: str  # "ext4", "xfs", "tmpfs", ...; "unknown" where the mount table could not be read
    mount_point: str
    device: str  # the kernel's name for the block device ("vda", "loop0", "dm-0"), "" if none
    journal: bool | None = None  # ext4 only: whether it has a journal; None where not ext4 or not known

    def __str__(self) -> str:
        journal = {None: "", True: " with a journal", False: " without a journal"}[self.journal]
        return f"{self.kind}{journal} ({self.device or 'no device'} on {self.mount_point})"


def _unescape(field: str) -> str:
    """Mount points in mountinfo have space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _within(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem(path: str | os.PathLike, *, mountinfo: Path = MOUNTINFO, sysfs: Path = SYSFS) -> Filesystem:
    """The mount that holds `path` (which need not exist yet). Never raises: a benchmark runs
    whatever this can or cannot read."""
    where = str(Path(path).resolve())
    best: tuple[str, str, str] | None = None  # (mount point, kind, major:minor)
    try:
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            if " - " not in line or len(fields) < 5:
                continue
            mount_point = _unescape(fields[4])
            kind = line.split(" - ", 1)[1].split()[0]
            if _within(where, mount_point) and (best is None or len(mount_point) >= len(best[0])):
                best = (mount_point, kind, fields[2])
    except (OSError, IndexError):
        pass
    if best is None:
        return Filesystem("unknown", "", "")
    mount_point, kind, numbers = best
    device = ""
    try:
        device = Path(os.path.realpath(sysfs / "dev" / "block" / numbers)).name if numbers.split(":")[0] != "0" else ""
    except OSError:
        pass
    journal = None
    if kind == "ext4" and device:
        try:  # "<none>" without a journal, else the journal thread's pid
            journal = (sysfs / "fs" / "ext4" / device / "journal_task").read_text().strip() != "<none>"
        except OSError:
            pass
    return Filesystem(kind, mount_point, device, journal)
