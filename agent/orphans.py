"""Replaying spools that their process left behind.

A training process that crashed with events still on disk is replayed by the next process with the
same identity; a one-off run (single process, fresh run id) has no such successor. The node daemon
sweeps the spool root instead: every spool no live process holds (its lock is free) and that still
has undelivered events is replayed to Kafka. A delivered spool deletes its own segments; its
directory stays (removing it could race with a new process taking it over).
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainmon.agent.spool import Spool, SpoolLocked
from trainmon.settings import Settings

log = logging.getLogger("trainmon.agent")


def orphaned(root: Path) -> list[Path]:
    """Spool directories under root with undelivered events and no owner."""
    found = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
        try:
            spool = Spool(directory, max_bytes=1 << 62, segment_bytes=16 << 20, fsync_interval_s=1.0)
        except SpoolLocked:
            continue  # a live process owns it
        except OSError as exc:
            log.warning("trainmon: cannot inspect spool %s: %s", directory, exc)
            continue
        pending = spool.pending
        spool.close()
        if pending:
            found.append(directory)
    return found


def replay_orphans(settings: Settings, root: Path, timeout_s: float = 60.0) -> int:
    """Deliver what orphaned spools hold; returns how many events were replayed."""
    from trainmon.agent.publisher import Publisher

    replayed = 0
    for directory in orphaned(root):
        publisher = Publisher(settings, spool_dir=directory, client_id="trainmon-replay")
        pending = publisher.stats["replayed"]
        delivered = publisher.flush(timeout_s)
        publisher.close(timeout_s=1.0)
        if delivered:
            replayed += pending
            log.info("trainmon: replayed %d events left in %s by a process that ended", pending, directory)
        else:
            log.warning("trainmon: %s still holds undelivered events (Kafka unreachable?); retrying later",
                        directory)
    return replayed
